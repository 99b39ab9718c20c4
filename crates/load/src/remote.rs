//! Checkpoints at remote locations: `s3://bucket/key` (a file, an index,
//! or a prefix holding shards) and `http(s)://` URLs (a file, or an index
//! with its shards beside it).
//!
//! [`open_checkpoint`] opens local paths as [`Checkpoint::open`] does, and
//! remote ones through `weightlift-remote`'s file system: each object is
//! opened with one ranged GET (its header, size and ETag), and the objects
//! at the versions their headers came from go into the options
//! ([`weightlift_io::EngineOptions::remote`]), so every load, session or
//! group made with those options reads them by ranges, into the same
//! destinations and staging as local files, refusing another version.

use std::io;
use std::path::Path;
use std::sync::Arc;

use weightlift_format::{Checkpoint, Source};
use weightlift_io::{RangeRead, RemoteFiles};
use weightlift_remote::{Client, Limits, Object, RemoteFs};

use crate::{Error, LoadOptions};

pub use weightlift_remote::{is_remote, is_remote_path};

/// An object as the engine reads it.
#[derive(Debug)]
struct Shard(Arc<Object>);

impl RangeRead for Shard {
    fn path(&self) -> &Path {
        self.0.path()
    }

    fn size(&self) -> u64 {
        self.0.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        Ok(self.0.read_at(buf, offset)?)
    }
}

/// Open the checkpoint at `paths`: one path (a file, a directory or
/// prefix, an index) or several files, all local or all remote. For a
/// remote checkpoint, `options` get its objects
/// ([`weightlift_io::EngineOptions::remote`]), which loads with them
/// read; the client's limits come from the environment
/// ([`Limits::from_env`]), its S3 settings from the standard AWS chain.
pub fn open_checkpoint<P: AsRef<Path>>(
    paths: &[P],
    options: &mut LoadOptions,
) -> Result<Checkpoint, Error> {
    let remote = paths.iter().filter(|p| is_remote_path(p.as_ref())).count();
    if remote == 0 {
        return Ok(match paths {
            [one] => Checkpoint::open(one)?,
            many => Checkpoint::open_files(many)?,
        });
    }
    if remote != paths.len() || paths.is_empty() {
        return Err(Error::Remote(weightlift_remote::Error::Location {
            location: paths[0].as_ref().display().to_string(),
            reason: "one checkpoint's files are all local or all remote",
        }));
    }
    let limits = Limits::from_env().map_err(Error::Remote)?;
    open_remote(paths, options, Arc::new(Client::new(limits)))
}

/// Open remote `paths` through `client` (its own limits and S3 settings),
/// as [`open_checkpoint`] does.
pub fn open_remote<P: AsRef<Path>>(
    paths: &[P],
    options: &mut LoadOptions,
    client: Arc<Client>,
) -> Result<Checkpoint, Error> {
    let fs = RemoteFs::new(client);
    let source = match paths {
        [one] => Source::Path(one.as_ref().to_path_buf()),
        many => Source::Files(many.iter().map(|p| p.as_ref().to_path_buf()).collect()),
    };
    let ckpt = Checkpoint::open_in(&fs, &source)?;
    let mut files: Vec<Arc<dyn RangeRead>> = Vec::with_capacity(ckpt.shards().len());
    for s in ckpt.shards() {
        let Some(object) = fs.object(s.path()) else {
            return Err(Error::Remote(weightlift_remote::Error::Location {
                location: s.path().display().to_string(),
                reason: "a shard was not opened through the remote file system",
            }));
        };
        files.push(Arc::new(Shard(object)));
    }
    options.engine.remote = Some(RemoteFiles::new(files));
    Ok(ckpt)
}
