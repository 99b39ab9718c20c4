//! Files opened for positional reads, buffered or direct.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::Error;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Through the page cache.
    Buffered,
    /// With `O_DIRECT`: reads go straight from the device into the caller's
    /// buffer, bypassing the page cache. Offsets, lengths and buffer
    /// addresses must be multiples of [`ReadFile::alignment`].
    Direct,
}

/// Alignment that direct reads of a file need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DioAlignment {
    /// Buffer addresses must be multiples of this.
    pub memory: usize,
    /// File offsets and lengths must be multiples of this.
    pub offset: u64,
    /// Whether the file system reported these (`statx` with
    /// `STATX_DIOALIGN`, Linux 6.1+), rather than the 4096-byte fallback.
    pub reported: bool,
}

impl DioAlignment {
    /// Used where the file system does not report its alignment: a multiple
    /// of every common logical block size.
    pub const FALLBACK: DioAlignment = DioAlignment {
        memory: 4096,
        offset: 4096,
        reported: false,
    };
}

/// A file opened for positional reads.
///
/// Its size and direct-I/O alignment are read once, at open. Reads retry
/// when interrupted and continue after short reads, so they return fewer
/// bytes than asked only at the end of the file (which, for a direct read,
/// happens inside the file's last aligned block).
#[derive(Debug)]
pub struct ReadFile {
    file: File,
    path: PathBuf,
    size: u64,
    mode: OpenMode,
    align: DioAlignment,
}

impl ReadFile {
    /// Open `path` for reading in `mode`.
    ///
    /// In [`OpenMode::Direct`], a file system that refuses `O_DIRECT` gives
    /// [`Error::DirectUnsupported`], so a caller can fall back to buffered reads.
    pub fn open(path: impl AsRef<Path>, mode: OpenMode) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true);
        if mode == OpenMode::Direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = match opts.open(&path) {
            Ok(f) => f,
            Err(e) if mode == OpenMode::Direct && e.raw_os_error() == Some(libc::EINVAL) => {
                return Err(Error::DirectUnsupported {
                    file: path,
                    source: Some(e),
                });
            }
            Err(source) => return Err(Error::Open { file: path, source }),
        };
        let meta = file.metadata().map_err(|source| Error::Open {
            file: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            return Err(Error::Open {
                file: path,
                source: io::Error::new(io::ErrorKind::IsADirectory, "is a directory"),
            });
        }
        let align = dio_alignment(&file).unwrap_or(DioAlignment::FALLBACK);
        Ok(Self {
            file,
            path,
            size: meta.len(),
            mode,
            align,
        })
    }

    /// The path it was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes, at open.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How it was opened.
    pub fn mode(&self) -> OpenMode {
        self.mode
    }

    /// The alignment direct reads of it need.
    pub fn alignment(&self) -> DioAlignment {
        self.align
    }

    /// The open file, for backends that submit reads themselves.
    pub fn as_file(&self) -> &File {
        &self.file
    }

    /// Fill `buf` from `offset`, stopping early only at the end of the file.
    /// Returns the number of bytes read.
    ///
    /// In direct mode the offset, the length and the buffer's address must
    /// be multiples of the alignment ([`Error::Misaligned`] otherwise,
    /// before anything is read). A file that ends before the size it had at
    /// open gives [`Error::Truncated`].
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, Error> {
        if self.mode == OpenMode::Direct {
            self.check_direct(buf, offset)?;
        }
        // What the file held at open, from `offset`, up to the buffer's length.
        let expected = usize::try_from(self.size.saturating_sub(offset))
            .map_or(buf.len(), |left| left.min(buf.len()));
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Read {
                        file: self.path.clone(),
                        offset: at,
                        len: buf.len() - done,
                        source,
                    });
                }
            }
            // A direct read that stopped short of its request inside the
            // file can continue only from an aligned offset; a short read
            // ends at the end of the file (or at an aligned boundary).
            if self.mode == OpenMode::Direct && !(done as u64).is_multiple_of(self.align.offset) {
                break;
            }
        }
        if done < expected {
            return Err(Error::Truncated {
                file: self.path.clone(),
                at: offset + done as u64,
                size: self.size,
            });
        }
        Ok(done)
    }

    fn check_direct(&self, buf: &[u8], offset: u64) -> Result<(), Error> {
        let misaligned = |what, value: u64, align: u64| Error::Misaligned {
            file: self.path.clone(),
            what,
            value,
            align,
        };
        let a = self.align;
        if !offset.is_multiple_of(a.offset) {
            return Err(misaligned("offset", offset, a.offset));
        }
        if !(buf.len() as u64).is_multiple_of(a.offset) {
            return Err(misaligned("length", buf.len() as u64, a.offset));
        }
        if !(buf.as_ptr() as usize).is_multiple_of(a.memory) {
            return Err(misaligned(
                "buffer address",
                buf.as_ptr() as u64,
                a.memory as u64,
            ));
        }
        Ok(())
    }
}

/// The direct-I/O alignment the file system reports for `file`, if any.
fn dio_alignment(file: &File) -> Option<DioAlignment> {
    // SAFETY: `statx` is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, an empty NUL-terminated path with
    // AT_EMPTY_PATH (so the descriptor itself is inspected), and a pointer
    // to a `statx` that lives across the call.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    let usable = |x: u32| x != 0 && x.is_power_of_two();
    (rc == 0
        && stx.stx_mask & libc::STATX_DIOALIGN != 0
        && usable(stx.stx_dio_mem_align)
        && usable(stx.stx_dio_offset_align))
    .then(|| DioAlignment {
        memory: stx.stx_dio_mem_align as usize,
        offset: u64::from(stx.stx_dio_offset_align),
        reported: true,
    })
}
