//! Files opened for positional reads, buffered or direct.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use weightlift_format::{Stamp, open_regular};

use crate::{Error, ReadProgress, Verdict};

/// Clear `O_NONBLOCK`, which [`open_regular`] opens with: reads submitted
/// through io_uring to a file marked non-blocking may fail with `EAGAIN`
/// instead of waiting.
fn blocking(file: File) -> io::Result<File> {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is a valid descriptor owned by `file`; F_GETFL and
    // F_SETFL only read and set its status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

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
/// Its size and direct-I/O alignment are read once, at open. Reads follow
/// the one rule of [`ReadProgress`]: they retry when interrupted and
/// continue after short reads, so they return fewer bytes than asked only
/// at the end of the file as it was at open (which, for a direct read,
/// happens inside the file's last aligned block).
#[derive(Debug)]
pub struct ReadFile {
    file: File,
    path: PathBuf,
    size: u64,
    mode: OpenMode,
    align: DioAlignment,
    in_memory: bool,
    stamp: Stamp,
}

impl ReadFile {
    /// Open `path` for reading in `mode`.
    ///
    /// In [`OpenMode::Direct`], a file system that refuses `O_DIRECT` gives
    /// [`Error::DirectUnsupported`], so a caller can fall back to buffered reads.
    pub fn open(path: impl AsRef<Path>, mode: OpenMode) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let flags = match mode {
            OpenMode::Direct => libc::O_DIRECT,
            OpenMode::Buffered => 0,
        };
        // Only a regular file, refused without blocking: opening a FIFO
        // would otherwise wait for a writer forever.
        let file = match open_regular(&path, flags).and_then(blocking) {
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
        let in_memory = in_memory_fs(&file);
        if in_memory && mode == OpenMode::Direct {
            // tmpfs and ramfs accept O_DIRECT but serve from memory.
            return Err(Error::DirectUnsupported {
                file: path,
                source: None,
            });
        }
        let align = match dio_alignment(&file) {
            DioSupport::Aligned(a) => a,
            // The file system says it cannot do direct I/O for this file
            // (tmpfs, say, accepts O_DIRECT but serves from memory).
            DioSupport::Unsupported if mode == OpenMode::Direct => {
                return Err(Error::DirectUnsupported {
                    file: path,
                    source: None,
                });
            }
            DioSupport::Unsupported | DioSupport::Unknown => DioAlignment::FALLBACK,
        };
        Ok(Self {
            file,
            path,
            size: meta.len(),
            mode,
            align,
            in_memory,
            stamp: Stamp::of(&meta),
        })
    }

    /// The version of the file that was opened.
    pub fn stamp(&self) -> &Stamp {
        &self.stamp
    }

    /// Confirm, after a read at `offset`, that the file is still the
    /// version that was opened ([`Error::Changed`], naming the offset, if
    /// not). Bytes read before a call that succeeds are all of that
    /// version (see [`Stamp`] for the file system's part in that).
    pub fn check_unchanged(&self, offset: u64) -> Result<(), Error> {
        let now = self.file.metadata().map_err(|source| Error::Open {
            file: self.path.clone(),
            source,
        })?;
        match self.stamp.change(&Stamp::of(&now)) {
            None => Ok(()),
            Some(what) => Err(Error::Changed {
                file: self.path.clone(),
                what,
                offset,
            }),
        }
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

    /// Whether the file lives on an in-memory file system (tmpfs, ramfs),
    /// where mapping it beats any read and direct I/O does not apply.
    pub fn in_memory(&self) -> bool {
        self.in_memory
    }

    /// The open file, for backends that submit reads themselves.
    pub fn as_file(&self) -> &File {
        &self.file
    }

    /// Fill `buf` from `offset`, stopping early only at the end of the file
    /// as it was at open. Returns the number of bytes read.
    ///
    /// In direct mode the offset, the length and the buffer's address must
    /// be multiples of the alignment ([`Error::Misaligned`] otherwise,
    /// before anything is read). A file that ends before the size it had at
    /// open gives [`Error::Truncated`]; a read error, or more than
    /// [`ReadProgress::MAX_STALLS`] tries in a row without progress,
    /// [`Error::Read`].
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.mode == OpenMode::Direct {
            self.check_direct(buf, offset)?;
        }
        // A direct read may continue only from a point aligned for both
        // the file offset and the buffer address.
        let step = match self.mode {
            OpenMode::Direct => self.align.offset.max(self.align.memory as u64),
            OpenMode::Buffered => 1,
        };
        let mut progress = ReadProgress::new(offset, buf.len(), self.size).resume_aligned(step);
        let mut result = self.file.read_at(buf, offset);
        loop {
            match progress.feed(result) {
                Verdict::Finished(n) => return Ok(n),
                Verdict::Resume(rest) => {
                    result = self.file.read_at(&mut buf[rest.at..], rest.offset);
                }
                Verdict::Failed(failure) => return Err(failure.into_error(&self.path)),
            }
        }
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

/// Whether `file` is on tmpfs or ramfs (by `fstatfs` magic).
pub(crate) fn in_memory_fs(file: &File) -> bool {
    // SAFETY: `statfs` is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a pointer to a `statfs` that lives
    // across the call.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    // ramfs's magic (linux/magic.h), which libc does not name.
    const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;
    rc == 0 && (st.f_type == libc::TMPFS_MAGIC || st.f_type == RAMFS_MAGIC)
}

/// What the file system says about direct I/O on a file.
enum DioSupport {
    /// Supported, with this alignment.
    Aligned(DioAlignment),
    /// Not supported (`statx` reports an alignment of 0).
    Unsupported,
    /// Not reported (a kernel before 6.1, or a file system that does not say).
    Unknown,
}

/// Ask `statx(STATX_DIOALIGN)` about `file`.
fn dio_alignment(file: &File) -> DioSupport {
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
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return DioSupport::Unknown;
    }
    let (memory, offset) = (stx.stx_dio_mem_align, stx.stx_dio_offset_align);
    if memory == 0 || offset == 0 {
        return DioSupport::Unsupported;
    }
    if !(memory.is_power_of_two() && offset.is_power_of_two()) {
        return DioSupport::Unknown;
    }
    DioSupport::Aligned(DioAlignment {
        memory: memory as usize,
        offset: u64::from(offset),
        reported: true,
    })
}
