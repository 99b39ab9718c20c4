//! Finding the runtime's library and binding the calls used: by hand, with
//! libloading, so that nothing GPU is needed to build or to import, and a
//! machine without the library gets an error value.

use std::ffi::{c_char, c_int, c_uint, c_void};

use libloading::Library;

use super::results::CuResult;
use crate::Error;

/// Which GPU runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Runtime {
    /// NVIDIA's CUDA driver API.
    Cuda,
    /// AMD's HIP runtime (ROCm).
    Hip,
}

impl Runtime {
    /// Its name in messages.
    pub fn api(self) -> &'static str {
        match self {
            Runtime::Cuda => "CUDA driver",
            Runtime::Hip => "HIP runtime",
        }
    }

    /// The prefix of its devices' names (`cuda:0`, `hip:0`).
    pub(super) fn prefix(self) -> &'static str {
        match self {
            Runtime::Cuda => "cuda",
            Runtime::Hip => "hip",
        }
    }

    /// The names its library goes by, most specific first.
    fn libraries(self) -> &'static [&'static str] {
        match self {
            Runtime::Cuda => &["libcuda.so.1", "libcuda.so"],
            Runtime::Hip => &[
                "libamdhip64.so",
                "libamdhip64.so.7",
                "libamdhip64.so.6",
                "libamdhip64.so.5",
            ],
        }
    }

    pub(super) fn names(self) -> &'static Names {
        match self {
            Runtime::Cuda => &CUDA,
            Runtime::Hip => &HIP,
        }
    }
}

/// The symbol of each call, per runtime.
pub(super) struct Names {
    pub(super) init: &'static str,
    pub(super) driver_version: &'static str,
    pub(super) device_count: &'static str,
    pub(super) device_get: &'static str,
    pub(super) device_name: &'static str,
    pub(super) mem_get_info: &'static str,
    pub(super) mem_alloc: &'static str,
    pub(super) mem_free: &'static str,
    pub(super) host_alloc: &'static str,
    pub(super) host_free: &'static str,
    pub(super) host_register: &'static str,
    pub(super) host_unregister: &'static str,
    pub(super) stream_create: &'static str,
    pub(super) stream_destroy: &'static str,
    pub(super) stream_synchronize: &'static str,
    pub(super) event_create: &'static str,
    pub(super) event_destroy: &'static str,
    pub(super) event_record: &'static str,
    pub(super) event_query: &'static str,
    pub(super) event_synchronize: &'static str,
    pub(super) stream_wait_event: &'static str,
    pub(super) copy_htod_async: &'static str,
    pub(super) copy_dtoh: &'static str,
    pub(super) current: CurrentNames,
}

/// The calls that make a device current.
pub(super) enum CurrentNames {
    /// CUDA: retain and release a primary context, set and get the current
    /// context.
    Contexts {
        retain: &'static str,
        release: &'static str,
        set: &'static str,
        get: &'static str,
    },
    /// HIP: set and get the current device.
    Devices {
        set: &'static str,
        get: &'static str,
    },
}

/// The driver API (cuda.h; the `_v2` names are those the 64-bit headers
/// map the plain names to).
const CUDA: Names = Names {
    init: "cuInit",
    driver_version: "cuDriverGetVersion",
    device_count: "cuDeviceGetCount",
    device_get: "cuDeviceGet",
    device_name: "cuDeviceGetName",
    mem_get_info: "cuMemGetInfo_v2",
    mem_alloc: "cuMemAlloc_v2",
    mem_free: "cuMemFree_v2",
    host_alloc: "cuMemHostAlloc",
    host_free: "cuMemFreeHost",
    host_register: "cuMemHostRegister_v2",
    host_unregister: "cuMemHostUnregister",
    stream_create: "cuStreamCreate",
    stream_destroy: "cuStreamDestroy_v2",
    stream_synchronize: "cuStreamSynchronize",
    event_create: "cuEventCreate",
    event_destroy: "cuEventDestroy_v2",
    event_record: "cuEventRecord",
    event_query: "cuEventQuery",
    event_synchronize: "cuEventSynchronize",
    stream_wait_event: "cuStreamWaitEvent",
    copy_htod_async: "cuMemcpyHtoDAsync_v2",
    copy_dtoh: "cuMemcpyDtoH_v2",
    current: CurrentNames::Contexts {
        retain: "cuDevicePrimaryCtxRetain",
        release: "cuDevicePrimaryCtxRelease_v2",
        set: "cuCtxSetCurrent",
        get: "cuCtxGetCurrent",
    },
};

/// The HIP runtime API (hip_runtime_api.h): the same shapes, argument for
/// argument, and the same codes and flag values for what is used here.
const HIP: Names = Names {
    init: "hipInit",
    driver_version: "hipDriverGetVersion",
    device_count: "hipGetDeviceCount",
    device_get: "hipDeviceGet",
    device_name: "hipDeviceGetName",
    mem_get_info: "hipMemGetInfo",
    mem_alloc: "hipMalloc",
    mem_free: "hipFree",
    host_alloc: "hipHostMalloc",
    host_free: "hipHostFree",
    host_register: "hipHostRegister",
    host_unregister: "hipHostUnregister",
    stream_create: "hipStreamCreateWithFlags",
    stream_destroy: "hipStreamDestroy",
    stream_synchronize: "hipStreamSynchronize",
    event_create: "hipEventCreateWithFlags",
    event_destroy: "hipEventDestroy",
    event_record: "hipEventRecord",
    event_query: "hipEventQuery",
    event_synchronize: "hipEventSynchronize",
    stream_wait_event: "hipStreamWaitEvent",
    copy_htod_async: "hipMemcpyHtoDAsync",
    copy_dtoh: "hipMemcpyDtoH",
    current: CurrentNames::Devices {
        set: "hipSetDevice",
        get: "hipGetDevice",
    },
};

/// `dlopen` flag: only find a library already loaded (Linux's value, glibc
/// and musl alike).
const RTLD_NOLOAD: c_int = 4;

/// The files mapped into this process whose name starts with `stem`.
fn loaded_paths(stem: &str) -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut paths: Vec<String> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| {
            std::path::Path::new(path)
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(stem))
        })
        .map(str::to_owned)
        .collect();
    paths.dedup();
    paths
}

pub(super) type Ctx = *mut c_void;
pub(super) type Stream = *mut c_void;
pub(super) type Event = *mut c_void;
/// `CUdeviceptr`.
pub(super) type DevPtr = u64;

/// How a device is made current on the calling thread.
pub(super) enum CurrentCalls {
    /// CUDA: each device's primary context, made current per thread.
    Contexts {
        retain: unsafe extern "C" fn(*mut Ctx, c_int) -> CuResult,
        release: unsafe extern "C" fn(c_int) -> CuResult,
        set: unsafe extern "C" fn(Ctx) -> CuResult,
        get: unsafe extern "C" fn(*mut Ctx) -> CuResult,
    },
    /// HIP: a current device per thread.
    Devices {
        set: unsafe extern "C" fn(c_int) -> CuResult,
        get: unsafe extern "C" fn(*mut c_int) -> CuResult,
    },
}

/// The calls used, bound once.
pub(super) struct Api {
    pub(super) runtime: Runtime,
    pub(super) init: unsafe extern "C" fn(c_uint) -> CuResult,
    pub(super) driver_version: unsafe extern "C" fn(*mut c_int) -> CuResult,
    pub(super) device_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    pub(super) device_get: unsafe extern "C" fn(*mut c_int, c_int) -> CuResult,
    pub(super) device_name: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult,
    pub(super) current: CurrentCalls,
    pub(super) mem_get_info: unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult,
    pub(super) mem_alloc: unsafe extern "C" fn(*mut DevPtr, usize) -> CuResult,
    pub(super) mem_free: unsafe extern "C" fn(DevPtr) -> CuResult,
    pub(super) host_alloc: unsafe extern "C" fn(*mut *mut c_void, usize, c_uint) -> CuResult,
    pub(super) host_free: unsafe extern "C" fn(*mut c_void) -> CuResult,
    pub(super) host_register: unsafe extern "C" fn(*mut c_void, usize, c_uint) -> CuResult,
    pub(super) host_unregister: unsafe extern "C" fn(*mut c_void) -> CuResult,
    pub(super) stream_create: unsafe extern "C" fn(*mut Stream, c_uint) -> CuResult,
    pub(super) stream_destroy: unsafe extern "C" fn(Stream) -> CuResult,
    pub(super) stream_synchronize: unsafe extern "C" fn(Stream) -> CuResult,
    pub(super) event_create: unsafe extern "C" fn(*mut Event, c_uint) -> CuResult,
    pub(super) event_destroy: unsafe extern "C" fn(Event) -> CuResult,
    pub(super) event_record: unsafe extern "C" fn(Event, Stream) -> CuResult,
    pub(super) event_query: unsafe extern "C" fn(Event) -> CuResult,
    pub(super) event_synchronize: unsafe extern "C" fn(Event) -> CuResult,
    pub(super) stream_wait_event: unsafe extern "C" fn(Stream, Event, c_uint) -> CuResult,
    pub(super) copy_htod_async:
        unsafe extern "C" fn(DevPtr, *const c_void, usize, Stream) -> CuResult,
    pub(super) copy_dtoh: unsafe extern "C" fn(*mut c_void, DevPtr, usize) -> CuResult,
    // The calls above are plain pointers into it: it is unloaded when
    // this goes, which is after everything that could call them (each
    // holds this `Api` through an `Arc`).
    _library: Library,
}

impl Api {
    pub(super) fn load(runtime: Runtime) -> Result<Self, Error> {
        let lib = open_library(runtime)?;
        let n = runtime.names();
        // SAFETY: each symbol is looked up by its name in the runtime's API
        // and given its signature from the header (`Names`); the two APIs'
        // signatures agree for every call bound here.
        unsafe {
            let current = match &n.current {
                CurrentNames::Contexts {
                    retain,
                    release,
                    set,
                    get,
                } => CurrentCalls::Contexts {
                    retain: symbol(&lib, runtime, retain)?,
                    release: symbol(&lib, runtime, release)?,
                    set: symbol(&lib, runtime, set)?,
                    get: symbol(&lib, runtime, get)?,
                },
                CurrentNames::Devices { set, get } => CurrentCalls::Devices {
                    set: symbol(&lib, runtime, set)?,
                    get: symbol(&lib, runtime, get)?,
                },
            };
            Ok(Api {
                runtime,
                init: symbol(&lib, runtime, n.init)?,
                driver_version: symbol(&lib, runtime, n.driver_version)?,
                device_count: symbol(&lib, runtime, n.device_count)?,
                device_get: symbol(&lib, runtime, n.device_get)?,
                device_name: symbol(&lib, runtime, n.device_name)?,
                current,
                mem_get_info: symbol(&lib, runtime, n.mem_get_info)?,
                mem_alloc: symbol(&lib, runtime, n.mem_alloc)?,
                mem_free: symbol(&lib, runtime, n.mem_free)?,
                host_alloc: symbol(&lib, runtime, n.host_alloc)?,
                host_free: symbol(&lib, runtime, n.host_free)?,
                host_register: symbol(&lib, runtime, n.host_register)?,
                host_unregister: symbol(&lib, runtime, n.host_unregister)?,
                stream_create: symbol(&lib, runtime, n.stream_create)?,
                stream_destroy: symbol(&lib, runtime, n.stream_destroy)?,
                stream_synchronize: symbol(&lib, runtime, n.stream_synchronize)?,
                event_create: symbol(&lib, runtime, n.event_create)?,
                event_destroy: symbol(&lib, runtime, n.event_destroy)?,
                event_record: symbol(&lib, runtime, n.event_record)?,
                event_query: symbol(&lib, runtime, n.event_query)?,
                event_synchronize: symbol(&lib, runtime, n.event_synchronize)?,
                stream_wait_event: symbol(&lib, runtime, n.stream_wait_event)?,
                copy_htod_async: symbol(&lib, runtime, n.copy_htod_async)?,
                copy_dtoh: symbol(&lib, runtime, n.copy_dtoh)?,
                _library: lib,
            })
        }
    }

    pub(super) fn names(&self) -> &'static Names {
        self.runtime.names()
    }
}

/// The runtime's library: for HIP, first the copy already loaded in this
/// process (torch's own, whatever its file is called), so that both use one
/// runtime; then by name.
fn open_library(runtime: Runtime) -> Result<Library, Error> {
    let names = runtime.libraries();
    if runtime == Runtime::Hip {
        let loaded = loaded_paths("libamdhip64");
        for name in loaded
            .iter()
            .map(String::as_str)
            .chain(names.iter().copied())
        {
            // SAFETY: RTLD_NOLOAD only finds a library already loaded (and
            // so already initialized); nothing of it runs here.
            let found = unsafe {
                libloading::os::unix::Library::open(
                    Some(name),
                    libloading::os::unix::RTLD_NOW | RTLD_NOLOAD,
                )
            };
            if let Ok(lib) = found {
                return Ok(lib.into());
            }
        }
    }
    let mut failures = Vec::new();
    for name in names {
        // SAFETY: loading the library runs its initializers, which have no
        // preconditions; nothing else of it is used yet.
        match unsafe { Library::new(name) } {
            Ok(lib) => return Ok(lib),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(unavailable(runtime, failures.join("; ")))
}

/// Look up `name` in `library`, copied out as a plain function pointer;
/// the error says which library lacks it. Shared with cuFile's bindings.
///
/// # Safety
///
/// `T` must be the symbol's true type, and the pointer must not be called
/// after `library` is unloaded (each binding keeps both together).
pub(crate) unsafe fn lookup<T: Copy>(
    library: &Library,
    library_name: &str,
    name: &str,
) -> Result<T, String> {
    let mut c_name = name.as_bytes().to_vec();
    c_name.push(0);
    // SAFETY: the caller vouches for the type.
    unsafe { library.get::<T>(&c_name) }
        .map(|s| *s)
        .map_err(|e| format!("{library_name} lacks {name}: {e}"))
}

/// [`lookup`] for `runtime`'s library, failing as the runtime being
/// unavailable.
///
/// # Safety
///
/// As [`lookup`].
unsafe fn symbol<T: Copy>(library: &Library, runtime: Runtime, name: &str) -> Result<T, Error> {
    // SAFETY: the caller's contract is `lookup`'s.
    unsafe { lookup(library, runtime.libraries()[0], name) }.map_err(|e| unavailable(runtime, e))
}

fn unavailable(runtime: Runtime, reason: String) -> Error {
    Error::Unavailable {
        api: runtime.api(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_libraries_are_found_by_the_start_of_their_name() {
        // The test binary itself is mapped; libc is, on any Linux.
        let found = loaded_paths("libc");
        assert!(
            found.iter().any(|p| p.contains("libc")),
            "no libc among the mapped files: {found:?}"
        );
        assert!(loaded_paths("libnothing-of-the-sort").is_empty());
    }
}
