//! The file access that opening a checkpoint needs, behind a trait.
//!
//! Parsing and validation in this crate are pure functions of bytes. Opening
//! a [`Checkpoint`](crate::Checkpoint) from paths needs three things from a
//! file system: open a file and read at an offset, tell directories from
//! files, and list a directory. [`Fs`] names them; [`StdFs`] provides them
//! with `std::fs`, and tests or other storage (an object store, an archive)
//! can provide their own.

use std::io;
use std::path::{Path, PathBuf};

/// A file opened for positional reads.
pub trait FileAt: Send {
    /// The file's size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Read into `buf` from `offset`, returning the number of bytes read
    /// (0 at the end of the file). May read fewer than asked.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

/// A file system that checkpoints are opened from.
pub trait Fs: Sync {
    /// Open the file at `path` for reading.
    fn open(&self, path: &Path) -> io::Result<Box<dyn FileAt + '_>>;
    /// Whether `path` is a directory (following symbolic links).
    fn is_dir(&self, path: &Path) -> io::Result<bool>;
    /// The paths of the entries of directory `path`, in any order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
}

/// The operating system's file system, through `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

impl FileAt for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl Fs for StdFs {
    fn open(&self, path: &Path) -> io::Result<Box<dyn FileAt + '_>> {
        let f = std::fs::File::open(path)?;
        // Opening a directory succeeds on Linux; reading it would fail later
        // with a less helpful message.
        if f.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            ));
        }
        Ok(Box::new(f))
    }

    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        Ok(std::fs::metadata(path)?.is_dir())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect()
    }
}

/// Fill `buf` from `offset`, retrying interrupted and short reads.
/// Returns `Ok(false)` when the file ends first.
pub(crate) fn read_full_at(
    file: &dyn FileAt,
    mut buf: &mut [u8],
    mut offset: u64,
) -> io::Result<bool> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                let Some(rest) = buf.get_mut(n..) else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "read returned more bytes than asked for",
                    ));
                };
                buf = rest;
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
