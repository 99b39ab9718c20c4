//! Errors of reading.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a read failed. Every variant about a file names it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened or inspected.
    Open {
        /// The file.
        file: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file system refuses `O_DIRECT` for this file.
    DirectUnsupported {
        /// The file.
        file: PathBuf,
        /// The operating system's error, if opening failed; `None` when the
        /// file system says it cannot (it reports a direct-I/O alignment of
        /// 0, or keeps files in memory, as tmpfs and ramfs do).
        source: Option<io::Error>,
    },
    /// A read failed.
    Read {
        /// The file.
        file: PathBuf,
        /// Where the read started.
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file ended before the size it had when it was opened: it was
    /// truncated or replaced during the load.
    Truncated {
        /// The file.
        file: PathBuf,
        /// Where it ended.
        at: u64,
        /// Its size at open.
        size: u64,
    },
    /// A direct read whose offset, length or buffer address is not a
    /// multiple of the file system's alignment (the kernel would refuse it).
    Misaligned {
        /// The file.
        file: PathBuf,
        /// `"offset"`, `"length"` or `"buffer address"`.
        what: &'static str,
        /// The value.
        value: u64,
        /// The alignment required.
        align: u64,
    },
    /// Asking about or dropping a file's cached pages failed.
    Cache {
        /// The file.
        file: PathBuf,
        /// The operation: `"stat"`, `"map"`, `"mincore"`, `"fdatasync"` or
        /// `"posix_fadvise"`.
        op: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// A buffer of this size and alignment cannot be allocated.
    Alloc {
        /// Bytes asked for.
        len: usize,
        /// Alignment asked for.
        align: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Open { file, source } => write!(f, "{}: cannot open: {source}", file.display()),
            Error::DirectUnsupported {
                file,
                source: Some(e),
            } => write!(f, "{}: direct I/O refused: {e}", file.display()),
            Error::DirectUnsupported { file, source: None } => write!(
                f,
                "{}: its file system does not do direct I/O (it keeps files in memory or reports no alignment)",
                file.display()
            ),
            Error::Read {
                file,
                offset,
                len,
                source,
            } => write!(
                f,
                "{}: reading {len} bytes at offset {offset}: {source}",
                file.display()
            ),
            Error::Truncated { file, at, size } => write!(
                f,
                "{}: file ends at {at} but was {size} bytes when opened (changed during the load)",
                file.display()
            ),
            Error::Misaligned {
                file,
                what,
                value,
                align,
            } => write!(
                f,
                "{}: direct read {what} {value} is not a multiple of {align}",
                file.display()
            ),
            Error::Cache { file, op, source } => {
                write!(f, "{}: page cache {op}: {source}", file.display())
            }
            Error::Alloc { len, align } => {
                write!(f, "cannot allocate {len} bytes aligned to {align}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Open { source, .. }
            | Error::Read { source, .. }
            | Error::Cache { source, .. } => Some(source),
            Error::DirectUnsupported {
                source: Some(e), ..
            } => Some(e),
            _ => None,
        }
    }
}
