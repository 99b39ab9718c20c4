//! Errors of reading.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::Backend;

/// A backend that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The backend.
    pub backend: Backend,
    /// Why it was rejected.
    pub reason: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.backend, self.reason)
    }
}

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
    /// Memory could not be mapped (an anonymous region, or a file).
    Map {
        /// The file mapped, if any.
        file: Option<PathBuf>,
        /// Bytes asked for.
        len: usize,
        /// The operating system's error.
        source: io::Error,
    },
    /// A backend name that does not exist (in `WEIGHTLIFT_BACKEND` or an option).
    UnknownBackend {
        /// The name given.
        name: String,
    },
    /// No candidate backend can read these files: each with its reason.
    NoBackend {
        /// Every candidate tried, in order.
        rejected: Vec<Rejected>,
    },
    /// The read queue itself failed (setting it up, submitting, waiting).
    Queue {
        /// The backend.
        backend: Backend,
        /// `"setup"`, `"submit"` or `"wait"`.
        op: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// A plan that does not fit the files or the engine: a file index out of
    /// range, an extent longer than a staging slot, a direct read that is
    /// not aligned.
    Plan {
        /// What is wrong.
        reason: &'static str,
        /// The value at fault.
        value: u64,
    },
    /// A setting out of range.
    Setting {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The consumer of the bytes failed (a device copy, say).
    Sink(Box<dyn std::error::Error + Send + Sync>),
    /// The load was cancelled.
    Cancelled,
}

impl Error {
    /// The file the error is about, if any.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            Error::Open { file, .. }
            | Error::DirectUnsupported { file, .. }
            | Error::Read { file, .. }
            | Error::Truncated { file, .. }
            | Error::Misaligned { file, .. }
            | Error::Cache { file, .. } => Some(file),
            Error::Map { file, .. } => file.as_deref(),
            _ => None,
        }
    }
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
            Error::Map {
                file: Some(file),
                len,
                source,
            } => write!(f, "{}: cannot map {len} bytes: {source}", file.display()),
            Error::Map {
                file: None,
                len,
                source,
            } => write!(f, "cannot map {len} bytes of memory: {source}"),
            Error::UnknownBackend { name } => write!(
                f,
                "unknown backend {name:?}; known: {}",
                crate::backend::known_names()
            ),
            Error::NoBackend { rejected } => {
                write!(f, "no read backend can be used:")?;
                for r in rejected {
                    write!(f, "\n  {r}")?;
                }
                Ok(())
            }
            Error::Queue {
                backend,
                op,
                source,
            } => {
                write!(f, "{backend} {op} failed: {source}")
            }
            Error::Plan { reason, value } => {
                write!(f, "read plan does not fit: {reason} ({value})")
            }
            Error::Setting {
                name,
                value,
                reason,
            } => write!(f, "setting {name} = {value}: {reason}"),
            Error::Sink(e) => write!(f, "delivering read bytes failed: {e}"),
            Error::Cancelled => write!(f, "the load was cancelled"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Open { source, .. }
            | Error::Read { source, .. }
            | Error::Cache { source, .. }
            | Error::Map { source, .. }
            | Error::Queue { source, .. } => Some(source),
            Error::Sink(e) => Some(&**e),
            Error::DirectUnsupported {
                source: Some(e), ..
            } => Some(e),
            _ => None,
        }
    }
}
