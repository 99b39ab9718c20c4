//! The runtimes' results: the codes this crate tests for, what each means
//! in its runtime's words, and failed calls as errors.

use std::ffi::c_int;

use super::Runtime;
use crate::{DriverError, Error};

/// `CUresult` / `hipError_t`: 0 is success.
pub(super) type CuResult = c_int;
/// The result of a query whose work has not finished (both APIs).
pub(super) const NOT_READY: CuResult = 600;
/// The result of an allocation that did not fit (both APIs).
pub(super) const OUT_OF_MEMORY: CuResult = 2;

/// A failed call on `device`.
pub(super) fn check(
    device: &str,
    runtime: Runtime,
    call: &'static str,
    rc: CuResult,
) -> Result<(), Error> {
    if rc == 0 {
        return Ok(());
    }
    Err(Error::Driver {
        device: Some(device.to_string()),
        source: DriverError {
            runtime,
            call,
            code: rc,
        },
    })
}

/// A failed call while loading the runtime: it cannot be used here.
pub(super) fn check_init(runtime: Runtime, call: &'static str, rc: CuResult) -> Result<(), Error> {
    if rc == 0 {
        return Ok(());
    }
    Err(Error::Driver {
        device: None,
        source: DriverError {
            runtime,
            call,
            code: rc,
        },
    })
}

/// The runtime's own name for result `rc` and what it means, in its words,
/// for the results this crate meets (the two runtimes number these alike,
/// and differ in the rarer ones).
pub(crate) fn describe(runtime: Runtime, rc: CuResult) -> Option<(&'static str, &'static str)> {
    let (cuda, hip, text) = match rc {
        1 => (
            "CUDA_ERROR_INVALID_VALUE",
            "hipErrorInvalidValue",
            "invalid value",
        ),
        2 => (
            "CUDA_ERROR_OUT_OF_MEMORY",
            "hipErrorOutOfMemory",
            "out of memory",
        ),
        3 => (
            "CUDA_ERROR_NOT_INITIALIZED",
            "hipErrorNotInitialized",
            "not initialized",
        ),
        4 => (
            "CUDA_ERROR_DEINITIALIZED",
            "hipErrorDeinitialized",
            "the runtime is shutting down",
        ),
        101 => (
            "CUDA_ERROR_INVALID_DEVICE",
            "hipErrorInvalidDevice",
            "invalid device",
        ),
        201 => (
            "CUDA_ERROR_INVALID_CONTEXT",
            "hipErrorInvalidContext",
            "invalid context",
        ),
        304 => (
            "CUDA_ERROR_OPERATING_SYSTEM",
            "hipErrorOperatingSystem",
            "the operating system refused (is the device node accessible?)",
        ),
        400 => (
            "CUDA_ERROR_INVALID_HANDLE",
            "hipErrorInvalidHandle",
            "invalid handle",
        ),
        600 => ("CUDA_ERROR_NOT_READY", "hipErrorNotReady", "not ready"),
        700 => (
            "CUDA_ERROR_ILLEGAL_ADDRESS",
            "hipErrorIllegalAddress",
            "illegal address",
        ),
        712 => (
            "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
            "hipErrorHostMemoryAlreadyRegistered",
            "the memory is already registered",
        ),
        713 => (
            "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
            "hipErrorHostMemoryNotRegistered",
            "the memory is not registered",
        ),
        719 => (
            "CUDA_ERROR_LAUNCH_FAILED",
            "hipErrorLaunchFailure",
            "launch failure: the context is unusable",
        ),
        801 => (
            "CUDA_ERROR_NOT_SUPPORTED",
            "hipErrorNotSupported",
            "not supported",
        ),
        999 => ("CUDA_ERROR_UNKNOWN", "hipErrorUnknown", "unknown error"),
        _ => {
            return match (runtime, rc) {
                (Runtime::Cuda, 34) => Some((
                    "CUDA_ERROR_STUB_LIBRARY",
                    "the stub library, not a driver: no driver is installed",
                )),
                (Runtime::Cuda, 46) => Some((
                    "CUDA_ERROR_DEVICE_UNAVAILABLE",
                    "the device is unavailable (exclusive use, or busy)",
                )),
                (Runtime::Cuda, 100) => Some(("CUDA_ERROR_NO_DEVICE", "no CUDA device is visible")),
                (Runtime::Cuda, 803) => Some((
                    "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
                    "the driver and the kernel module do not match",
                )),
                (Runtime::Hip, 35) => Some((
                    "hipErrorInsufficientDriver",
                    "the driver is older than the runtime",
                )),
                (Runtime::Hip, 100) => Some(("hipErrorNoDevice", "no AMD GPU is visible")),
                _ => None,
            };
        }
    };
    Some(match runtime {
        Runtime::Cuda => (cuda, text),
        Runtime::Hip => (hip, text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_read_in_their_runtime_s_words() {
        let e = |runtime, call, code| DriverError {
            runtime,
            call,
            code,
        };
        let no_device = e(Runtime::Cuda, "cuInit", 100);
        assert_eq!(no_device.name(), Some("CUDA_ERROR_NO_DEVICE"));
        assert_eq!(no_device.description(), Some("no CUDA device is visible"));
        assert_eq!(
            no_device.to_string(),
            "cuInit: no CUDA device is visible (CUDA_ERROR_NO_DEVICE, CUDA driver result 100)"
        );
        let no_gpu = e(Runtime::Hip, "hipInit", 100);
        assert_eq!(no_gpu.name(), Some("hipErrorNoDevice"));
        assert_eq!(no_gpu.description(), Some("no AMD GPU is visible"));
        let oom = e(Runtime::Hip, "hipMalloc", 2);
        assert_eq!(oom.name(), Some("hipErrorOutOfMemory"));
        assert_eq!(oom.description(), Some("out of memory"));
        // CUDA's stub-library result means nothing to HIP.
        let odd = e(Runtime::Hip, "hipInit", 34);
        assert_eq!((odd.name(), odd.description()), (None, None));
        assert_eq!(odd.to_string(), "hipInit failed: HIP runtime result 34");
    }
}
