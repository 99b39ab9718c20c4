//! Errors of devices and uploads.
//!
//! One convention throughout: an error's cause is what
//! [`std::error::Error::source`] returns, and its `Display` does not repeat
//! it, so that a reporter walking the chain prints each part once.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::Runtime;

/// A call into the CUDA driver or the HIP runtime that failed: which
/// runtime, which call, and the result it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverError {
    /// The runtime called.
    pub runtime: Runtime,
    /// The call, by its symbol (`cuMemAlloc_v2`, `hipMalloc`).
    pub call: &'static str,
    /// The result it returned (`CUresult`, `hipError_t`).
    pub code: i32,
}

impl DriverError {
    /// The runtime's own name for the result (`CUDA_ERROR_NO_DEVICE`,
    /// `hipErrorNoDevice`), for the results this crate knows.
    pub fn name(&self) -> Option<&'static str> {
        crate::driver::describe(self.runtime, self.code).map(|(name, _)| name)
    }

    /// What the result means, in the runtime's words, for the results this
    /// crate knows.
    pub fn description(&self) -> Option<&'static str> {
        crate::driver::describe(self.runtime, self.code).map(|(_, text)| text)
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (call, api, code) = (self.call, self.runtime.api(), self.code);
        match crate::driver::describe(self.runtime, code) {
            Some((name, text)) => write!(f, "{call}: {text} ({name}, {api} result {code})"),
            None => write!(f, "{call} failed: {api} result {code}"),
        }
    }
}

impl std::error::Error for DriverError {}

/// A call into cuFile that failed: its status (`CUfileOpError`) and, when
/// that says the CUDA driver failed under it, the driver's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CuFileError {
    /// The call, by its symbol (`cuFileDriverOpen`).
    pub call: &'static str,
    /// cuFile's status (5001 and up).
    pub code: i32,
    /// The CUDA driver's result under it, for `CU_FILE_CUDA_DRIVER_ERROR`.
    pub cuda: Option<DriverError>,
}

impl fmt::Display for CuFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: cuFile error {}", self.call, self.code)
    }
}

impl std::error::Error for CuFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cuda.as_ref().map(|e| e as _)
    }
}

/// Why a device operation or an upload failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A GPU library could not be loaded (none of its names opened, or it
    /// lacks a call), or does not apply here.
    Unavailable {
        /// What: `"CUDA driver"`, `"HIP runtime"`, `"cuFile"`.
        api: &'static str,
        /// Why, in the loader's words.
        reason: String,
    },
    /// A call into the CUDA driver or the HIP runtime failed: on a device,
    /// or while loading the runtime (`device` is `None`), which then cannot
    /// be used here (no device, the stub library, a driver and kernel
    /// module that do not match, ...).
    Driver {
        /// The device (`cuda:0`), if the call was made on one.
        device: Option<String>,
        /// The call and its result.
        source: DriverError,
    },
    /// A call into cuFile failed: registering a file (`path`), or opening
    /// cuFile's driver (`path` is `None`), which then cannot be used here.
    CuFile {
        /// The file registered, if any.
        path: Option<PathBuf>,
        /// The call and its status.
        source: CuFileError,
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
    /// A copy refused before it reached a GPU runtime (its range lies
    /// outside a buffer), or a copy, or the stream it was queued on, failed
    /// on the host-memory device.
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
    /// A file to read straight into device memory could not be opened or
    /// inspected.
    Open {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A thread could not be started.
    Spawn {
        /// What the thread was for: `"fill thread"`, `"host stream
        /// thread"`.
        what: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// An upload failed: which tensor, and what went wrong.
    Upload {
        /// The caller's name for the tensor.
        tensor: String,
        /// The device's error.
        source: Box<Error>,
    },
}

impl Error {
    /// The file the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Open { path, .. } => Some(path),
            Error::CuFile { path, .. } => path.as_deref(),
            Error::Upload { source, .. } => source.path(),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unavailable { api, reason } => write!(f, "{api} unavailable: {reason}"),
            Error::Driver {
                device: Some(device),
                source,
            } => write!(f, "{device}: {} call failed", source.runtime.api()),
            Error::Driver {
                device: None,
                source,
            } => write!(f, "{} unavailable", source.runtime.api()),
            Error::CuFile {
                path: Some(path), ..
            } => write!(f, "{}: registering it with cuFile", path.display()),
            Error::CuFile { path: None, .. } => write!(f, "cuFile unavailable"),
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
            Error::Open { path, .. } => write!(f, "{}: cannot open", path.display()),
            Error::Spawn { what, .. } => write!(f, "starting a {what}"),
            Error::Upload { tensor, .. } => write!(f, "uploading {tensor}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Driver { source, .. } => Some(source),
            Error::CuFile { source, .. } => Some(source),
            Error::Open { source, .. } | Error::Spawn { source, .. } => Some(source),
            Error::Upload { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// Each message of the chain, outermost first.
    fn chain(e: &dyn std::error::Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut cause = e.source();
        while let Some(c) = cause {
            out.push(c.to_string());
            cause = c.source();
        }
        out
    }

    #[test]
    fn a_cause_is_the_source_and_is_not_repeated() {
        let open = Error::Upload {
            tensor: "w".into(),
            source: Box::new(Error::Open {
                path: "/m/a.safetensors".into(),
                source: io::Error::from_raw_os_error(5),
            }),
        };
        let parts = chain(&open);
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts[0], "uploading w");
        assert_eq!(parts[1], "/m/a.safetensors: cannot open");
        assert_eq!(parts[2], io::Error::from_raw_os_error(5).to_string());
        assert_eq!(open.path(), Some(Path::new("/m/a.safetensors")));

        let driver = Error::Driver {
            device: Some("cuda:1".into()),
            source: DriverError {
                runtime: Runtime::Cuda,
                call: "cuMemcpyHtoDAsync_v2",
                code: 700,
            },
        };
        assert_eq!(
            chain(&driver),
            [
                "cuda:1: CUDA driver call failed",
                "cuMemcpyHtoDAsync_v2: illegal address (CUDA_ERROR_ILLEGAL_ADDRESS, CUDA driver result 700)",
            ]
        );

        // cuFile's status wrapped as a read's operating-system error, as a
        // `DirectReader` returns it, and the CUDA driver's result under it.
        let cufile = io::Error::other(CuFileError {
            call: "cuFileRead",
            code: 5011,
            cuda: Some(DriverError {
                runtime: Runtime::Cuda,
                call: "cuFileRead",
                code: 201,
            }),
        });
        assert_eq!(
            chain(&cufile),
            [
                "cuFileRead failed: cuFile error 5011",
                "cuFileRead: invalid context (CUDA_ERROR_INVALID_CONTEXT, CUDA driver result 201)",
            ]
        );
        assert!(cufile.source().is_some());
    }
}
