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
//! With [`LoadOptions::cache_dir`], each shard is first copied whole into
//! that directory (unless a copy of the version opened is there already)
//! and loads read the copy.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use weightlift_format::{Checkpoint, Source};
use weightlift_io::{RangeRead, RemoteFiles};
use weightlift_remote::{Cache, Client, Limits, Object, RemoteFs};

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

/// A local copy of an object ([`Cache`]), named as the object is.
#[derive(Debug)]
struct Copy {
    path: PathBuf,
    size: u64,
    file: File,
}

impl RangeRead for Copy {
    fn path(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.size.saturating_sub(offset)) as usize;
        let mut at = 0;
        while at < want {
            match self.file.read_at(&mut buf[at..want], offset + at as u64) {
                Ok(0) => break,
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(at)
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
    let mut objects = Vec::with_capacity(ckpt.shards().len());
    for s in ckpt.shards() {
        let Some(object) = fs.object(s.path()) else {
            return Err(Error::Remote(weightlift_remote::Error::Location {
                location: s.path().display().to_string(),
                reason: "a shard was not opened through the remote file system",
            }));
        };
        objects.push(object);
    }
    let copies = match &options.cache_dir {
        Some(dir) => {
            // Each thread holds one chunk: within the host staging budget.
            let threads = options
                .engine
                .queue_depth
                .min(options.engine.ring_bytes / Cache::FETCH_CHUNK as usize)
                .max(1);
            Cache::new(dir)
                .fill(&objects, threads)
                .map_err(Error::Remote)?
        }
        None => objects.iter().map(|_| None).collect(),
    };
    let files = objects.into_iter().zip(copies).map(|(object, copy)| {
        let file: Arc<dyn RangeRead> = match copy {
            Some(file) => Arc::new(Copy {
                path: object.path().to_path_buf(),
                size: object.size(),
                file,
            }),
            None => Arc::new(Shard(object)),
        };
        file
    });
    options.engine.remote = Some(RemoteFiles::new(files));
    Ok(ckpt)
}
