//! Errors of devices and uploads.

use std::fmt;

/// Why a device operation or an upload failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A GPU library could not be loaded or initialized.
    Unavailable {
        /// What: `"CUDA driver"`.
        api: &'static str,
        /// Why, as the loader or the library said.
        reason: String,
    },
    /// An allocation did not fit in the device's free memory.
    OutOfMemory {
        /// The device.
        device: String,
        /// What kind of memory: `"device"` or `"pinned host"`.
        kind: &'static str,
        /// Bytes asked for.
        requested: u64,
        /// Bytes free when it failed, where the device can tell.
        free: Option<u64>,
    },
    /// A copy, or the stream it was queued on, failed.
    Copy {
        /// The device.
        device: String,
        /// What the device reported.
        reason: String,
    },
    /// A setting that cannot work, such as a zero-sized staging slot.
    Setting {
        /// The setting.
        name: &'static str,
        /// Why not.
        reason: String,
    },
    /// A read straight into device memory failed.
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Where in it.
        offset: u64,
        /// What the reader said.
        reason: String,
    },
    /// An upload failed: which tensor, and what went wrong.
    Upload {
        /// The caller's name for the tensor.
        tensor: String,
        /// The device's error.
        source: Box<Error>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unavailable { api, reason } => write!(f, "{api} unavailable: {reason}"),
            Error::OutOfMemory {
                device,
                kind,
                requested,
                free,
            } => {
                write!(
                    f,
                    "{device}: out of {kind} memory allocating {requested} bytes"
                )?;
                match free {
                    Some(free) => write!(f, " ({free} bytes free)"),
                    None => Ok(()),
                }
            }
            Error::Copy { device, reason } => write!(f, "{device}: copy failed: {reason}"),
            Error::Setting { name, reason } => write!(f, "{name}: {reason}"),
            Error::Read {
                path,
                offset,
                reason,
            } => write!(f, "{}: reading at byte {offset}: {reason}", path.display()),
            Error::Upload { tensor, source } => write!(f, "uploading {tensor}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Upload { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}
