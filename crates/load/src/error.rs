//! Errors of loading.
//!
//! One convention throughout: a variant's `Display` says what it adds, and
//! its cause is returned by [`std::error::Error::source`], never repeated in
//! the message. A wrapper of another crate's error (`Open`, `Io`, `Device`,
//! `Select`) is transparent: it displays and sources as the error it holds.
//! Print the whole chain (`anyhow`'s `{:#}`, or a walk over `source()`) to
//! see the file, the tensor and the cause together.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why a load failed. Every failure about a file names it; every failure
/// about a tensor names it ([`Error::Tensor`] around the cause).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Opening the checkpoint failed: a file, a header, an index.
    Open(weightlift_format::Error),
    /// Reading failed: the I/O engine's error, which names the file.
    Io(weightlift_io::Error),
    /// A device failed: a missing driver, out of memory, a failed copy.
    Device(weightlift_gpu::Error),
    /// The selection cannot be planned: it names a tensor the checkpoint
    /// lacks, say.
    Select(weightlift_plan::Error),
    /// A remote location or its settings (the errors of reads are
    /// [`Error::Io`], naming the URL, with the remote cause as source).
    Remote(weightlift_remote::Error),
    /// Requests a group cannot be scheduled for (a split of a tensor that
    /// has no such dimension, say).
    Group(weightlift_dist::Error),
    /// A file is not the version its header was read from: it was replaced
    /// or rewritten between opening the checkpoint and reading it. (A
    /// change during the reads is [`weightlift_io::Error::Changed`].)
    Changed {
        /// The file.
        file: PathBuf,
        /// What differs: `"size"`, `"header length"`, or what
        /// [`Stamp::change`](weightlift_format::Stamp::change) names.
        what: &'static str,
    },
    /// A failure about one tensor: its name, its file, and the cause.
    Tensor {
        /// The tensor's name.
        tensor: String,
        /// The file holding it.
        file: PathBuf,
        /// The failure.
        source: Box<Error>,
    },
    /// A tensor queued for reading while it is already being read.
    Queued {
        /// Its file.
        file: PathBuf,
        /// Where its bytes start in the file.
        offset: u64,
    },
    /// A byte range that does not lie inside its tensor.
    Range {
        /// Where the range starts, inside the tensor.
        start: u64,
        /// Where it ends.
        end: u64,
        /// The tensor's length in bytes.
        len: u64,
    },
    /// A destination whose size is not its tensor's.
    Destination {
        /// Bytes the tensor holds.
        expected: u64,
        /// Bytes the destination holds.
        given: u64,
    },
    /// A tensor whose pieces would not lie one after another where they are
    /// read (a fault of the read layout, not of the file).
    NotContiguous {
        /// Where, in the tensor, the piece that does not continue it starts.
        offset: u64,
    },
    /// A read straight into device memory of bytes its file did not hold
    /// when it was opened (a range that does not lie inside the file).
    PastEnd {
        /// The file.
        file: PathBuf,
        /// Where the bytes start.
        offset: u64,
        /// How many.
        len: u64,
        /// The file's size when it was opened.
        size: u64,
    },
    /// No destination was given for a tensor while nothing else was in
    /// flight to make room for it.
    NoRoom {
        /// Bytes the tensor needs.
        len: u64,
    },
    /// The caller's provider of destinations failed (a Python allocator
    /// raised, say).
    Destinations(Box<dyn std::error::Error + Send + Sync>),
    /// A setting out of range, in an option or an environment variable.
    Setting {
        /// The option or the variable.
        name: &'static str,
        /// The value given, as given.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
    /// A device name that names no device this crate can load onto.
    UnknownDevice {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A thread could not be started.
    Spawn {
        /// What the thread was for.
        what: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// The memory for a session's tables of tensors could not be
    /// allocated: the process may not have that much more (an address-space
    /// limit, strict overcommit).
    OutOfMemory {
        /// The checkpoint's index, or its first file.
        file: PathBuf,
        /// Tensors in the checkpoint.
        tensors: usize,
        /// About the bytes the tables need.
        bytes: u64,
    },
    /// The load was cancelled.
    Cancelled,
    /// A load ended without handing out every tensor and without saying why
    /// (its thread ended unexpectedly).
    Incomplete {
        /// Tensors the load was to hand out.
        expected: usize,
        /// Tensors it handed out.
        delivered: usize,
    },
}

impl Error {
    /// The file the error is about, if any.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Error::Open(e) => Some(e.file()),
            Error::Io(e) => e.file(),
            Error::Changed { file, .. }
            | Error::Tensor { file, .. }
            | Error::PastEnd { file, .. }
            | Error::OutOfMemory { file, .. }
            | Error::Select(weightlift_plan::Error::OutOfMemory { file, .. }) => Some(file),
            _ => None,
        }
    }

    /// The tensor the error is about, if known.
    pub fn tensor(&self) -> Option<&str> {
        match self {
            Error::Tensor { tensor, .. } => Some(tensor),
            Error::Open(e) => e.tensor(),
            _ => None,
        }
    }

    /// The cause inside any [`Error::Tensor`] wrappers.
    pub fn innermost(&self) -> &Error {
        match self {
            Error::Tensor { source, .. } => source.innermost(),
            e => e,
        }
    }

    /// This error about tensor `id` of `ckpt`, unless it already names a
    /// tensor.
    pub fn about(
        self,
        ckpt: &weightlift_format::Checkpoint,
        id: weightlift_format::TensorId,
    ) -> Error {
        if self.tensor().is_some() {
            return self;
        }
        let t = ckpt.tensor(id);
        Error::Tensor {
            tensor: t.name.clone(),
            file: ckpt.shard(t.file).path().to_path_buf(),
            source: Box::new(self),
        }
    }
}

impl From<weightlift_format::Error> for Error {
    fn from(e: weightlift_format::Error) -> Self {
        Error::Open(e)
    }
}

impl From<weightlift_io::Error> for Error {
    fn from(e: weightlift_io::Error) -> Self {
        match e {
            weightlift_io::Error::Cancelled => Error::Cancelled,
            e => Error::Io(e),
        }
    }
}

impl From<weightlift_gpu::Error> for Error {
    fn from(e: weightlift_gpu::Error) -> Self {
        Error::Device(e)
    }
}

impl From<weightlift_plan::Error> for Error {
    fn from(e: weightlift_plan::Error) -> Self {
        Error::Select(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Open(e) => e.fmt(f),
            Error::Io(e) => e.fmt(f),
            Error::Device(e) => e.fmt(f),
            Error::Select(e) => e.fmt(f),
            Error::Group(e) => e.fmt(f),
            Error::Remote(e) => e.fmt(f),
            Error::Changed { file, what } => write!(
                f,
                "{}: {what} changed since its header was read (the file was replaced or rewritten)",
                file.display()
            ),
            // The file, unless the cause names it.
            Error::Tensor {
                tensor,
                file,
                source,
            } => match source.file() {
                Some(_) => write!(f, "tensor {tensor:?}"),
                None => write!(f, "{}: tensor {tensor:?}", file.display()),
            },
            Error::Queued { file, offset } => write!(
                f,
                "{}: the tensor at {offset} is already being read",
                file.display()
            ),
            Error::Range { start, end, len } => write!(
                f,
                "byte range {start}..{end} does not lie inside the tensor's {len} bytes"
            ),
            Error::Destination { expected, given } => write!(
                f,
                "its destination holds {given} bytes, the tensor {expected}"
            ),
            Error::NotContiguous { offset } => write!(
                f,
                "its piece at byte {offset} would not continue it in memory (the read layout is wrong)"
            ),
            Error::PastEnd {
                file,
                offset,
                len,
                size,
            } => write!(
                f,
                "{}: {len} bytes at offset {offset} lie past its end ({size} bytes when opened)",
                file.display()
            ),
            Error::NoRoom { len } => write!(
                f,
                "no device memory was given for its {len} bytes, and nothing in flight could make room"
            ),
            Error::Destinations(_) => write!(f, "the destination provider failed"),
            Error::Setting {
                name,
                value,
                reason,
            } => write!(f, "{name} = {value}: {reason}"),
            Error::UnknownDevice { name, reason } => write!(f, "device {name:?}: {reason}"),
            Error::Spawn { what, .. } => write!(f, "cannot start a thread for {what}"),
            Error::OutOfMemory {
                file,
                tensors,
                bytes,
            } => write!(
                f,
                "{}: a session of {tensors} tensors needs about {bytes} bytes of memory, which could not be allocated",
                file.display()
            ),
            Error::Cancelled => write!(f, "the load was cancelled"),
            Error::Incomplete {
                expected,
                delivered,
            } => write!(
                f,
                "the load ended after {delivered} of {expected} tensors without an error (its thread ended unexpectedly)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Open(e) => e.source(),
            Error::Io(e) => e.source(),
            Error::Device(e) => e.source(),
            Error::Select(e) => e.source(),
            Error::Group(e) => e.source(),
            Error::Remote(e) => e.source(),
            Error::Tensor { source, .. } => Some(&**source),
            Error::Destinations(e) => Some(&**e),
            Error::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_room_names_the_file() {
        let e = Error::OutOfMemory {
            file: "m.safetensors".into(),
            tensors: 3,
            bytes: 27,
        };
        assert_eq!(e.file(), Some(Path::new("m.safetensors")));
        assert_eq!(
            e.to_string(),
            "m.safetensors: a session of 3 tensors needs about 27 bytes of memory, which could not be allocated"
        );
        let e = Error::Select(weightlift_plan::Error::OutOfMemory {
            file: "n.safetensors".into(),
            tensors: 3,
            bytes: 264,
        });
        assert_eq!(e.file(), Some(Path::new("n.safetensors")));
    }
}
