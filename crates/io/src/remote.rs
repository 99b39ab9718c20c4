//! Files that are not on a local file system: objects read by byte ranges
//! (an S3-compatible store, an HTTP server), which the engine reads with
//! [`Backend::Remote`](crate::Backend::Remote) through the same plans,
//! staging and destinations as local files.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file read by ranges, its size and version fixed when it was opened.
///
/// Implementations bound every wait and retry what is transient
/// themselves: the engine reports an error as the read's failure, naming
/// the file, and does not retry it.
pub trait RangeRead: Send + Sync + fmt::Debug {
    /// How plans and errors name it (the checkpoint's shard path).
    fn path(&self) -> &Path;
    /// Its size when it was opened.
    fn size(&self) -> u64;
    /// Read into `buf` from `offset`: all of it, or fewer bytes only where
    /// the file ends; 0 at or past its end. A version other than the one
    /// opened is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

/// Remote files by the paths plans name them by. When the engine's
/// options hold them, [`Engine::open`](crate::Engine::open) reads paths
/// found here with [`Backend::Remote`](crate::Backend::Remote).
#[derive(Clone, Default)]
pub struct RemoteFiles {
    files: Arc<HashMap<PathBuf, Arc<dyn RangeRead>>>,
}

impl RemoteFiles {
    /// These files, each under its [`RangeRead::path`].
    pub fn new(files: impl IntoIterator<Item = Arc<dyn RangeRead>>) -> RemoteFiles {
        RemoteFiles {
            files: Arc::new(
                files
                    .into_iter()
                    .map(|f| (f.path().to_path_buf(), f))
                    .collect(),
            ),
        }
    }

    /// The file at `path`.
    pub fn get(&self, path: &Path) -> Option<&Arc<dyn RangeRead>> {
        self.files.get(path)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl PartialEq for RemoteFiles {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.files, &other.files)
    }
}

impl Eq for RemoteFiles {}

impl fmt::Debug for RemoteFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.files.keys()).finish()
    }
}
