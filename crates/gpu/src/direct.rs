//! Reading file bytes straight into device memory, with no staging on the
//! host: the [`DirectReader`] trait (one read into a device's memory), which
//! GPUDirect Storage implements ([`crate::CuFileReader`]), and for tests a
//! host-memory stand-in ([`HostFileReader`]).
//!
//! This is the one place this crate touches files: a read into device
//! memory is a device's (cuFile's) own call, so it belongs with the device.
//! Each call is one read, its result raw; running many of them, and the
//! retry and end-of-file rule, are the loader's.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// Reads from a set of files into a device's memory, one read per call.
///
/// Files are numbered by their place in the paths the reader was opened
/// with; every method takes such a number.
pub trait DirectReader: Send + Sync {
    /// The path of file `file`, for messages.
    fn path(&self, file: usize) -> &Path;

    /// The size of file `file` when it was opened.
    fn size(&self, file: usize) -> u64;

    /// One read of up to `len` bytes at `offset` of file `file` into device
    /// memory at `dst`, its result as the read returned it, for the
    /// caller's retry and end-of-file rule: `Ok(Ok(n))`, `n` bytes read
    /// (fewer than asked after a short read, 0 at the end of the file);
    /// `Ok(Err(e))`, the read's error (`EINTR` included; a cuFile status
    /// wrapped in an [`io::Error`]). `Err` is the device failing around the
    /// read (it could not be made current), with nothing read.
    ///
    /// # Safety
    ///
    /// `dst..dst + len` must be memory of the reader's device, allocated,
    /// and untouched by anything else until this returns.
    unsafe fn read(
        &self,
        file: usize,
        dst: u64,
        len: usize,
        offset: u64,
    ) -> Result<io::Result<usize>, Error>;
}

/// A file a [`DirectReader`] reads: opened by the caller (which checked it
/// is the file it means to read), with its path for messages and its size
/// when it was opened.
#[derive(Debug)]
pub struct OpenedFile {
    /// The path, for messages.
    pub path: PathBuf,
    /// The open file.
    pub file: File,
    /// Its size when it was opened.
    pub size: u64,
}

/// The stand-in for tests: "device memory" is host memory, read with
/// `pread`.
pub struct HostFileReader {
    paths: Vec<PathBuf>,
    sizes: Vec<u64>,
    files: Vec<File>,
}

/// `files` as their paths, sizes and open files, in order.
pub(crate) fn unzip(files: Vec<OpenedFile>) -> (Vec<PathBuf>, Vec<u64>, Vec<File>) {
    let mut out = (
        Vec::with_capacity(files.len()),
        Vec::with_capacity(files.len()),
        Vec::with_capacity(files.len()),
    );
    for f in files {
        out.0.push(f.path);
        out.1.push(f.size);
        out.2.push(f.file);
    }
    out
}

impl HostFileReader {
    /// A reader of `files`, numbered in this order.
    pub fn new(files: Vec<OpenedFile>) -> Self {
        let (paths, sizes, files) = unzip(files);
        HostFileReader {
            paths,
            sizes,
            files,
        }
    }
}

impl DirectReader for HostFileReader {
    fn path(&self, file: usize) -> &Path {
        &self.paths[file]
    }

    fn size(&self, file: usize) -> u64 {
        self.sizes[file]
    }

    unsafe fn read(
        &self,
        file: usize,
        dst: u64,
        len: usize,
        offset: u64,
    ) -> Result<io::Result<usize>, Error> {
        // SAFETY: the caller's contract: `dst..dst + len` is memory nothing
        // else touches until this returns.
        let buf = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, len) };
        Ok(self.files[file].read_at(buf, offset))
    }
}
