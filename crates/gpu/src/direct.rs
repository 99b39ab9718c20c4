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

    /// The size of file `file` when it was opened (checked then against the
    /// size its header was read with).
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

/// Check that each of `paths` still has the size it had when its header
/// was read (`sizes`), and open it.
pub(crate) fn open_checked(
    paths: &[PathBuf],
    sizes: &[u64],
    open: impl Fn(&Path) -> io::Result<File>,
) -> Result<Vec<File>, Error> {
    paths
        .iter()
        .zip(sizes)
        .map(|(path, &size)| {
            let failed = |source: io::Error| Error::Open {
                path: path.clone(),
                source,
            };
            let file = open(path).map_err(failed)?;
            let now = file.metadata().map_err(failed)?.len();
            if now != size {
                return Err(Error::Changed {
                    path: path.clone(),
                    size: now,
                    expected: size,
                });
            }
            Ok(file)
        })
        .collect()
}

/// The stand-in for tests: "device memory" is host memory, read with
/// `pread`.
pub struct HostFileReader {
    paths: Vec<PathBuf>,
    sizes: Vec<u64>,
    files: Vec<File>,
}

impl HostFileReader {
    /// Open `paths`, each of which must still be `sizes[i]` bytes long.
    pub fn open(paths: &[PathBuf], sizes: &[u64]) -> Result<Self, Error> {
        Ok(HostFileReader {
            paths: paths.to_vec(),
            sizes: sizes.to_vec(),
            files: open_checked(paths, sizes, |p| File::open(p))?,
        })
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
