//! The file access that opening a checkpoint needs, behind a trait.
//!
//! Parsing and validation in this crate are pure functions of bytes. Opening
//! a [`Checkpoint`](crate::Checkpoint) from paths needs three things from a
//! file system: open a file and read at an offset, tell directories from
//! files, and list a directory. [`Fs`] names them; [`StdFs`] provides them
//! with `std::fs`, and tests or other storage (an object store, an archive)
//! can provide their own.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// One version of one file: which file it is (device and inode), its size,
/// and when its contents last changed (`mtime`, to the nanosecond the file
/// system keeps).
///
/// A write(2), a truncation or a hole punch moves the modification time
/// when it starts, so a stamp unchanged after a read means no such change
/// started between the two stamps: the read saw the version stamped,
/// unless a write was already running when the first stamp was taken.
/// That holds up to the file system's timestamp granularity: two writes
/// within one clock tick may share a time (Linux 6.13 and later give a
/// write after a `stat` a fine-grained time on local file systems). Stores
/// through a shared writable mapping move the time only when they dirty a
/// clean page. Changes to the inode alone (renaming, linking, `chmod`) are
/// not changes of version, and a process that sets the time back by hand
/// (`utimensat`) can hide a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The device the file is on.
    pub dev: u64,
    /// Its inode number.
    pub ino: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Last modification of its contents: seconds and nanoseconds.
    pub mtime: (i64, i64),
}

impl Stamp {
    /// The stamp of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }

    /// What differs in `now`, taken later, from this stamp: `None` when it
    /// is the same version.
    pub fn change(&self, now: &Stamp) -> Option<&'static str> {
        if (self.dev, self.ino) != (now.dev, now.ino) {
            Some("identity (device and inode)")
        } else if self.size != now.size {
            Some("size")
        } else if self.mtime != now.mtime {
            Some("modification time")
        } else {
            None
        }
    }
}

/// Open `path` for reading, with `flags` (such as `O_DIRECT`) added, and
/// only if it is a regular file (following symbolic links).
///
/// The file is opened with `O_NONBLOCK`, so that a FIFO or a device cannot
/// block the open, and refused if it is anything but a regular file. On a
/// regular file `O_NONBLOCK` has no effect on `read` and `pread`; callers
/// that submit reads asynchronously should clear it.
pub fn open_regular(path: &Path, flags: i32) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | flags)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let (error_kind, what) = if kind.is_dir() {
        (io::ErrorKind::IsADirectory, "is a directory")
    } else if kind.is_fifo() {
        (io::ErrorKind::InvalidInput, "is a FIFO, not a regular file")
    } else if kind.is_socket() {
        (
            io::ErrorKind::InvalidInput,
            "is a socket, not a regular file",
        )
    } else if kind.is_block_device() || kind.is_char_device() {
        (
            io::ErrorKind::InvalidInput,
            "is a device, not a regular file",
        )
    } else {
        (io::ErrorKind::InvalidInput, "is not a regular file")
    };
    Err(io::Error::new(error_kind, what))
}

/// A file opened for positional reads.
pub trait FileAt: Send {
    /// The file's size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Read into `buf` from `offset`, returning the number of bytes read
    /// (0 at the end of the file). May read fewer than asked.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// The file's current [`Stamp`], where the storage has one.
    fn stamp(&self) -> io::Result<Option<Stamp>> {
        Ok(None)
    }
}

/// A file system that checkpoints are opened from.
pub trait Fs: Sync {
    /// Open the file at `path` for reading.
    fn open(&self, path: &Path) -> io::Result<Box<dyn FileAt + '_>>;
    /// Whether `path` is a directory (following symbolic links).
    fn is_dir(&self, path: &Path) -> io::Result<bool>;
    /// The paths of the entries of directory `path`, in any order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// Whether directory `dir` can be listed. Where it cannot (HTTP has no
    /// listing), a ServerlessLLM index's partitions are found by opening
    /// `tensor.data_0`, `tensor.data_1`, ... beside it in turn, until one
    /// is not found.
    fn can_list(&self, dir: &Path) -> bool {
        let _ = dir;
        true
    }
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

    fn stamp(&self) -> io::Result<Option<Stamp>> {
        Ok(Some(Stamp::of(&self.metadata()?)))
    }
}

impl Fs for StdFs {
    fn open(&self, path: &Path) -> io::Result<Box<dyn FileAt + '_>> {
        // A directory, a FIFO or a device is refused here, without blocking,
        // rather than failing (or waiting forever) on its first read.
        Ok(Box::new(open_regular(path, 0)?))
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
