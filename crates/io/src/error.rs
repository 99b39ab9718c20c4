//! Errors of reading.
//!
//! One convention throughout: a variant's `Display` says what it adds, and
//! its cause (the operating system's error, a consumer's failure) is
//! returned by [`std::error::Error::source`], never repeated in the
//! message. Print the whole chain (`anyhow`'s `{:#}`, or a walk over
//! `source()`) to see the file, the offset and the cause together.

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

/// How a read plan does not fit the engine or the destinations it is run
/// with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanMismatch {
    /// An extent of a file the engine does not have.
    UnknownFile {
        /// The extent's file index.
        index: usize,
        /// Files the engine has.
        files: usize,
    },
    /// An extent longer than a staging slot.
    ExtentOverSlot {
        /// The extent's length.
        len: u64,
        /// Bytes per slot.
        slot_size: usize,
    },
    /// Destinations laid out for another plan: a different number of
    /// extents, or more regions than the engine has files.
    OtherLayout {
        /// Extents of the plan.
        extents: usize,
        /// Extents the destinations were laid out for.
        laid_out: usize,
        /// Regions of the destinations, one per file.
        regions: usize,
        /// Files the engine has.
        files: usize,
    },
    /// A destination with less room than its extent.
    DestinationTooSmall {
        /// The extent's index in the plan.
        extent: usize,
        /// The extent's length.
        len: u64,
        /// Bytes from the destination to the end of its region.
        room: u64,
    },
    /// A plan alignment that is not a multiple of the engine's (direct reads
    /// need the engine's).
    Alignment {
        /// The plan's alignment.
        plan: u64,
        /// The engine's.
        engine: u64,
    },
    /// An extent, or one file's extents laid out together, longer than this
    /// machine can address.
    TooLong {
        /// Bytes asked for.
        len: u64,
    },
}

impl fmt::Display for PlanMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PlanMismatch::UnknownFile { index, files } => write!(
                f,
                "an extent of file {index}, but the engine has {files} files"
            ),
            PlanMismatch::ExtentOverSlot { len, slot_size } => write!(
                f,
                "an extent of {len} bytes, longer than a staging slot ({slot_size} bytes)"
            ),
            PlanMismatch::OtherLayout {
                extents,
                laid_out,
                regions,
                files,
            } => write!(
                f,
                "destinations laid out for another plan ({laid_out} extents in {regions} regions, \
                 for a plan of {extents} extents over {files} files)"
            ),
            PlanMismatch::DestinationTooSmall { extent, len, room } => write!(
                f,
                "extent {extent} of {len} bytes has {room} bytes of room in its destination"
            ),
            PlanMismatch::Alignment { plan, engine } => write!(
                f,
                "plan alignment {plan} is not a multiple of the engine's {engine}"
            ),
            PlanMismatch::TooLong { len } => {
                write!(f, "{len} bytes do not fit in this machine's memory")
            }
        }
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
    /// The file is no longer the version that was opened: it was written,
    /// resized or replaced while it was being read, so bytes read from it
    /// may mix versions.
    Changed {
        /// The file.
        file: PathBuf,
        /// What differs from the version opened (see
        /// [`Stamp::change`](weightlift_format::Stamp::change)).
        what: &'static str,
        /// Where the read that was checked started.
        offset: u64,
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
    /// A read plan that does not fit the engine or the destinations it is
    /// run with (a plan made for other files or another geometry).
    Plan(PlanMismatch),
    /// A setting out of range.
    Setting {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A thread could not be started (and none of its kind had been, so
    /// the work cannot be done with fewer).
    Spawn {
        /// What the thread was for.
        what: &'static str,
        /// The operating system's error.
        source: io::Error,
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
            | Error::Changed { file, .. }
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
            Error::Open { file, .. } => write!(f, "{}: cannot open", file.display()),
            Error::DirectUnsupported {
                file,
                source: Some(_),
            } => write!(f, "{}: direct I/O refused", file.display()),
            Error::DirectUnsupported { file, source: None } => write!(
                f,
                "{}: its file system does not do direct I/O (it keeps files in memory or reports no alignment)",
                file.display()
            ),
            Error::Read {
                file, offset, len, ..
            } => write!(
                f,
                "{}: reading {len} bytes at offset {offset}",
                file.display()
            ),
            Error::Truncated { file, at, size } => write!(
                f,
                "{}: file ends at {at} but was {size} bytes when opened (changed during the load)",
                file.display()
            ),
            Error::Changed { file, what, .. } => write!(
                f,
                "{}: changed during the load (its {what} differs from the version opened)",
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
            Error::Cache { file, op, .. } => {
                write!(f, "{}: page cache {op} failed", file.display())
            }
            Error::Alloc { len, align } => {
                write!(f, "cannot allocate {len} bytes aligned to {align}")
            }
            Error::Map {
                file: Some(file),
                len,
                ..
            } => write!(f, "{}: cannot map {len} bytes", file.display()),
            Error::Map {
                file: None, len, ..
            } => {
                write!(f, "cannot map {len} bytes of memory")
            }
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
            Error::Queue { backend, op, .. } => write!(f, "{backend} {op} failed"),
            Error::Plan(mismatch) => write!(f, "read plan does not fit: {mismatch}"),
            Error::Setting {
                name,
                value,
                reason,
            } => write!(f, "setting {name} = {value}: {reason}"),
            Error::Spawn { what, .. } => write!(f, "cannot start a thread for {what}"),
            Error::Sink(_) => write!(f, "delivering read bytes failed"),
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
            | Error::Queue { source, .. }
            | Error::Spawn { source, .. } => Some(source),
            Error::Sink(e) => Some(&**e),
            Error::DirectUnsupported {
                source: Some(e), ..
            } => Some(e),
            _ => None,
        }
    }
}

/// `e`'s message followed by its causes, as `a: b: c`: the whole of what
/// went wrong, where it must fit in one string (a rejected backend's
/// reason, a Python exception's message). A cause whose words the message
/// already holds (an error that repeats its source) is not added again.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_cause_is_the_source_and_is_not_repeated() {
        let eio = || io::Error::from_raw_os_error(libc::EIO);
        let file = PathBuf::from("/models/a.safetensors");
        let errors = [
            Error::Open {
                file: file.clone(),
                source: eio(),
            },
            Error::DirectUnsupported {
                file: file.clone(),
                source: Some(eio()),
            },
            Error::Read {
                file: file.clone(),
                offset: 4096,
                len: 8192,
                source: eio(),
            },
            Error::Cache {
                file: file.clone(),
                op: "mincore",
                source: eio(),
            },
            Error::Map {
                file: Some(file.clone()),
                len: 10,
                source: eio(),
            },
            Error::Map {
                file: None,
                len: 10,
                source: eio(),
            },
            Error::Queue {
                backend: Backend::Uring,
                op: "submit",
                source: eio(),
            },
            Error::Spawn {
                what: "reading",
                source: eio(),
            },
            Error::Sink(Box::new(eio())),
        ];
        let cause = eio().to_string();
        for e in &errors {
            let message = e.to_string();
            assert!(!message.contains(&cause), "{message}");
            assert_eq!(e.source().map(|s| s.to_string()), Some(cause.clone()));
            let whole = chain(e);
            assert_eq!(whole.matches(&cause).count(), 1, "{whole}");
            if let Some(file) = e.file() {
                assert!(whole.contains(&*file.to_string_lossy()), "{whole}");
            }
        }
        assert!(chain(&errors[2]).contains("at offset 4096"));
    }

    #[test]
    fn a_plan_mismatch_says_what_does_not_fit() {
        let e = Error::Plan(PlanMismatch::ExtentOverSlot {
            len: 20_000,
            slot_size: 16_384,
        });
        let message = e.to_string();
        assert!(
            message.contains("20000") && message.contains("16384"),
            "{message}"
        );
        assert!(e.source().is_none());
    }
}
