//! The GPU runtime, found at run time: the CUDA driver (`libcuda`) or the
//! HIP runtime (`libamdhip64`, the copy torch already loaded when there is
//! one). Nothing GPU is needed to build or to import weightlift, and a
//! machine without it gets an error that says what is missing, never a
//! panic. Bindings that assume a driver panic or abort without one, so this
//! module loads the library itself with libloading and binds the few calls
//! the upload pipeline needs; the two APIs have the same shapes for them,
//! and differ in names and in how a device is made current (a primary
//! context for CUDA, a current device for HIP).
//!
//! [`GpuDevice`] implements [`Device`] on one device (for CUDA, on its
//! primary context, the one torch uses): device memory, page-locked staging
//! memory (so copies are truly asynchronous), non-blocking streams, and
//! events without timing.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::Arc;

use libloading::Library;

use crate::{Device, DeviceMemory, DriverError, Error, PinnedMemory};

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
    fn prefix(self) -> &'static str {
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

    fn names(self) -> &'static Names {
        match self {
            Runtime::Cuda => &CUDA,
            Runtime::Hip => &HIP,
        }
    }
}

/// The symbol of each call, per runtime.
struct Names {
    init: &'static str,
    driver_version: &'static str,
    device_count: &'static str,
    device_get: &'static str,
    device_name: &'static str,
    mem_get_info: &'static str,
    mem_alloc: &'static str,
    mem_free: &'static str,
    host_alloc: &'static str,
    host_free: &'static str,
    host_register: &'static str,
    host_unregister: &'static str,
    stream_create: &'static str,
    stream_destroy: &'static str,
    stream_synchronize: &'static str,
    event_create: &'static str,
    event_destroy: &'static str,
    event_record: &'static str,
    event_query: &'static str,
    event_synchronize: &'static str,
    stream_wait_event: &'static str,
    copy_htod_async: &'static str,
    copy_dtoh: &'static str,
    current: CurrentNames,
}

/// The calls that make a device current.
enum CurrentNames {
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

/// `CUresult` / `hipError_t`: 0 is success.
type CuResult = c_int;
/// The result of a query whose work has not finished (both APIs).
const NOT_READY: CuResult = 600;
/// The result of an allocation that did not fit (both APIs).
const OUT_OF_MEMORY: CuResult = 2;
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
type Ctx = *mut c_void;
type Stream = *mut c_void;
type Event = *mut c_void;
/// `CUdeviceptr`.
type DevPtr = u64;

/// How a device is made current on the calling thread.
enum CurrentCalls {
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
struct Api {
    runtime: Runtime,
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    driver_version: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut c_int, c_int) -> CuResult,
    device_name: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult,
    current: CurrentCalls,
    mem_get_info: unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult,
    mem_alloc: unsafe extern "C" fn(*mut DevPtr, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(DevPtr) -> CuResult,
    host_alloc: unsafe extern "C" fn(*mut *mut c_void, usize, c_uint) -> CuResult,
    host_free: unsafe extern "C" fn(*mut c_void) -> CuResult,
    host_register: unsafe extern "C" fn(*mut c_void, usize, c_uint) -> CuResult,
    host_unregister: unsafe extern "C" fn(*mut c_void) -> CuResult,
    stream_create: unsafe extern "C" fn(*mut Stream, c_uint) -> CuResult,
    stream_destroy: unsafe extern "C" fn(Stream) -> CuResult,
    stream_synchronize: unsafe extern "C" fn(Stream) -> CuResult,
    event_create: unsafe extern "C" fn(*mut Event, c_uint) -> CuResult,
    event_destroy: unsafe extern "C" fn(Event) -> CuResult,
    event_record: unsafe extern "C" fn(Event, Stream) -> CuResult,
    event_query: unsafe extern "C" fn(Event) -> CuResult,
    event_synchronize: unsafe extern "C" fn(Event) -> CuResult,
    stream_wait_event: unsafe extern "C" fn(Stream, Event, c_uint) -> CuResult,
    copy_htod_async: unsafe extern "C" fn(DevPtr, *const c_void, usize, Stream) -> CuResult,
    copy_dtoh: unsafe extern "C" fn(*mut c_void, DevPtr, usize) -> CuResult,
    // Last, so that it is unloaded after nothing can call into it.
    _library: Library,
}

impl Api {
    fn load(runtime: Runtime) -> Result<Self, Error> {
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

    fn names(&self) -> &'static Names {
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

/// A GPU runtime library, loaded and initialized.
pub struct GpuDriver {
    api: Arc<Api>,
    version: i32,
    devices: Vec<String>,
}

impl std::fmt::Debug for GpuDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDriver")
            .field("runtime", &self.api.runtime)
            .field("version", &self.version())
            .field("devices", &self.devices)
            .finish()
    }
}

impl GpuDriver {
    /// Load the CUDA driver (`libcuda`), initialize it and list its
    /// devices.
    pub fn cuda() -> Result<Self, Error> {
        Self::load(Runtime::Cuda)
    }

    /// Load the HIP runtime (`libamdhip64`, the copy already in the process
    /// first), initialize it and list its devices.
    pub fn hip() -> Result<Self, Error> {
        Self::load(Runtime::Hip)
    }

    fn load(runtime: Runtime) -> Result<Self, Error> {
        let api = Api::load(runtime)?;
        let n = api.names();
        // SAFETY: the init call takes flags, which must be 0.
        check_init(runtime, n.init, unsafe { (api.init)(0) })?;
        let mut v: c_int = 0;
        // SAFETY: writes one int through a valid pointer.
        check_init(runtime, n.driver_version, unsafe {
            (api.driver_version)(&mut v)
        })?;
        let mut count: c_int = 0;
        // SAFETY: as above; the runtime is initialized.
        check_init(runtime, n.device_count, unsafe {
            (api.device_count)(&mut count)
        })?;
        let mut devices = Vec::new();
        for ordinal in 0..count {
            let mut device: c_int = 0;
            // SAFETY: writes one handle; the ordinal is below the count.
            check_init(runtime, n.device_get, unsafe {
                (api.device_get)(&mut device, ordinal)
            })?;
            let mut buf = [0 as c_char; 256];
            // SAFETY: writes at most `buf.len()` bytes, NUL-terminated.
            check_init(runtime, n.device_name, unsafe {
                (api.device_name)(buf.as_mut_ptr(), buf.len() as c_int, device)
            })?;
            // SAFETY: the runtime NUL-terminated it within the buffer.
            let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
            devices.push(text.to_string_lossy().into_owned());
        }
        Ok(GpuDriver {
            api: Arc::new(api),
            version: v,
            devices,
        })
    }

    /// Which runtime it is.
    pub fn runtime(&self) -> Runtime {
        self.api.runtime
    }

    /// The runtime's version, as (major, minor).
    pub fn version(&self) -> (i32, i32) {
        match self.api.runtime {
            Runtime::Cuda => (self.version / 1000, self.version % 1000 / 10),
            Runtime::Hip => (self.version / 10_000_000, self.version / 100_000 % 100),
        }
    }

    /// The names of the devices it sees, by ordinal.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// Device `ordinal` (for CUDA, on its primary context).
    pub fn device(&self, ordinal: usize) -> Result<GpuDevice, Error> {
        let name = format!("{}:{ordinal}", self.api.runtime.prefix());
        if ordinal >= self.devices.len() {
            return Err(Error::Setting {
                name: "device",
                reason: format!(
                    "{name}: the {} sees {} device(s)",
                    self.api.runtime.api(),
                    self.devices.len()
                ),
            });
        }
        let api = self.api.clone();
        let n = api.names();
        let mut device: c_int = 0;
        // SAFETY: writes one handle; the ordinal is below the count.
        check(&name, api.runtime, n.device_get, unsafe {
            (api.device_get)(&mut device, ordinal as c_int)
        })?;
        let mut raw: Ctx = std::ptr::null_mut();
        if let (
            CurrentCalls::Contexts { retain, .. },
            CurrentNames::Contexts { retain: call, .. },
        ) = (&api.current, &n.current)
        {
            // SAFETY: writes one context handle for a valid device.
            check(&name, api.runtime, call, unsafe {
                retain(&mut raw, device)
            })?;
        }
        Ok(GpuDevice {
            ctx: Arc::new(Context { api, device, raw }),
            name,
        })
    }
}

/// A device made current: for CUDA its retained primary context, shared by
/// everything made in it so that it outlives all of them; for HIP the
/// device number.
struct Context {
    api: Arc<Api>,
    device: c_int,
    /// The primary context (CUDA); null for HIP.
    raw: Ctx,
}

// SAFETY: a context handle may be made current on any thread; the driver
// API is thread-safe.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

/// What was current before [`Context::enter`], to put back.
enum Previous {
    Context(Ctx),
    Device(c_int),
}

impl Context {
    /// Make it current on the calling thread (the calls act on the current
    /// context or device) until the guard is dropped, which puts back what
    /// was current before: torch takes its current device from it, so a
    /// load onto device 1 must not leave device 1 current.
    fn enter(&self) -> (Entered<'_>, CuResult) {
        let (previous, rc) = match &self.api.current {
            CurrentCalls::Contexts { set, get, .. } => {
                // SAFETY: the runtime's calls for contexts; `raw` is a
                // retained primary context.
                let (p, rc) = unsafe { swap_current(*get, *set, self.raw, std::ptr::null_mut()) };
                (p.map(Previous::Context), rc)
            }
            CurrentCalls::Devices { set, get } => {
                // SAFETY: the runtime's calls for the current device;
                // `device` is below the runtime's count.
                let (p, rc) = unsafe { swap_current(*get, *set, self.device, -1) };
                (p.map(Previous::Device), rc)
            }
        };
        (
            Entered {
                api: &self.api,
                previous,
            },
            rc,
        )
    }
}

/// Make `target` current with `set` unless `get` says it is already:
/// what was current before, to put back (`None`: nothing to put back), and
/// `set`'s result.
///
/// # Safety
///
/// `get` and `set` must be the runtime's calls for `T`, and `target` valid
/// for `set`.
unsafe fn swap_current<T: Copy + PartialEq>(
    get: unsafe extern "C" fn(*mut T) -> CuResult,
    set: unsafe extern "C" fn(T) -> CuResult,
    target: T,
    unset: T,
) -> (Option<T>, CuResult) {
    let mut previous = unset;
    // SAFETY: writes one value through a valid pointer.
    let got = unsafe { get(&mut previous) };
    if got == 0 && previous == target {
        return (None, 0);
    }
    // SAFETY: the caller vouches for `target`.
    let rc = unsafe { set(target) };
    ((got == 0 && rc == 0).then_some(previous), rc)
}

impl Drop for Context {
    fn drop(&mut self) {
        if let CurrentCalls::Contexts { release, .. } = &self.api.current {
            // SAFETY: releases the retain made in `GpuDriver::device`;
            // nothing made in the context is left (each holds this `Arc`).
            unsafe { release(self.device) };
        }
    }
}

/// A device made current for a scope; see [`Context::enter`].
struct Entered<'a> {
    api: &'a Api,
    previous: Option<Previous>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        match (&self.previous, &self.api.current) {
            (Some(Previous::Context(c)), CurrentCalls::Contexts { set, .. }) => {
                // SAFETY: the context current before, still alive (its
                // owner made it current and has not returned), or null.
                unsafe { set(*c) };
            }
            (Some(Previous::Device(d)), CurrentCalls::Devices { set, .. }) => {
                // SAFETY: the device current before, a valid number.
                unsafe { set(*d) };
            }
            _ => {}
        }
    }
}

/// One GPU, on its primary context, behind the [`Device`] trait.
pub struct GpuDevice {
    ctx: Arc<Context>,
    name: String,
}

impl GpuDevice {
    fn api(&self) -> &Api {
        &self.ctx.api
    }

    fn names(&self) -> &'static Names {
        self.ctx.api.names()
    }

    /// A failed call on this device.
    fn check(&self, call: &'static str, rc: CuResult) -> Result<(), Error> {
        check(&self.name, self.api().runtime, call, rc)
    }

    /// Make this device current on the calling thread until the guard goes.
    fn current(&self) -> Result<Entered<'_>, Error> {
        let (entered, rc) = self.ctx.enter();
        let call = match &self.names().current {
            CurrentNames::Contexts { set, .. } | CurrentNames::Devices { set, .. } => set,
        };
        self.check(call, rc).map(|()| entered)
    }

    /// Run `f` with this device current on the calling thread (for calls
    /// of other libraries that act on the current device, such as cuFile),
    /// putting back what was current before.
    pub fn with_current<T>(&self, f: impl FnOnce() -> T) -> Result<T, Error> {
        let _current = self.current()?;
        Ok(f())
    }

    /// Copy `memory` back to the host, waiting (for tests and checks).
    pub fn read_back(&self, memory: &GpuMemory) -> Result<Vec<u8>, Error> {
        let _current = self.current()?;
        let mut out = vec![0u8; memory.len];
        if memory.len > 0 {
            // SAFETY: `out` holds `len` bytes; the allocation holds as many.
            self.check(self.names().copy_dtoh, unsafe {
                (self.api().copy_dtoh)(out.as_mut_ptr().cast(), memory.ptr, memory.len)
            })?;
        }
        Ok(out)
    }

    /// A new event recorded on `stream`, a stream handle of this context.
    fn record_on(&self, stream: Stream) -> Result<GpuEvent, Error> {
        let _current = self.current()?;
        let mut raw: Event = std::ptr::null_mut();
        // SAFETY: writes one event handle; the context is current.
        self.check(self.names().event_create, unsafe {
            (self.api().event_create)(&mut raw, EVENT_DISABLE_TIMING)
        })?;
        let event = GpuEvent {
            ctx: self.ctx.clone(),
            raw,
        };
        // SAFETY: an event of this context and a stream of it (the
        // callers' contracts).
        self.check(self.names().event_record, unsafe {
            (self.api().event_record)(event.raw, stream)
        })?;
        Ok(event)
    }

    fn free_bytes(&self) -> Option<u64> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: writes two sizes; the context is current.
        let rc = unsafe { (self.api().mem_get_info)(&mut free, &mut total) };
        (rc == 0).then_some(free as u64)
    }
}

/// Device memory from `cuMemAlloc`, or borrowed from its owner.
pub struct GpuMemory {
    ctx: Arc<Context>,
    ptr: DevPtr,
    len: usize,
    /// Allocated here, and so freed here.
    owned: bool,
}

impl DeviceMemory for GpuMemory {
    fn len(&self) -> usize {
        self.len
    }

    fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for GpuMemory {
    fn drop(&mut self) {
        if self.owned && self.ptr != 0 {
            // SAFETY: allocated by cuMemAlloc in this context; the pipeline
            // frees it only after its copies completed.
            unsafe {
                let _current = self.ctx.enter();
                (self.ctx.api.mem_free)(self.ptr);
            }
        }
    }
}

/// Page-locked host memory: from `cuMemHostAlloc`, or someone else's
/// memory page-locked with `cuMemHostRegister`.
pub struct GpuPinned {
    ctx: Arc<Context>,
    ptr: *mut u8,
    len: usize,
    /// How it was made, and so how it goes.
    origin: Origin,
}

/// Where page-locked memory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// `cuMemHostAlloc`: freed with `cuMemFreeHost`.
    Allocated,
    /// `cuMemHostRegister`: unregistered with `cuMemHostUnregister`, never
    /// freed (its owner frees it).
    Registered,
}

// SAFETY: plain host memory, uniquely owned (allocated here, or registered
// on the word of `register`'s caller that nothing else uses the bytes
// copies read).
unsafe impl Send for GpuPinned {}

impl PinnedMemory for GpuPinned {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: `len` bytes allocated by cuMemHostAlloc, or registered
        // and kept mapped by `register`'s caller; uniquely borrowed;
        // in-flight copies (and, for registered memory, other users) are
        // excluded by the caller (`copy_to_device`'s and `register`'s
        // contracts).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn range_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset <= self.len && len <= self.len - offset);
        if len == 0 {
            return &mut [];
        }
        // SAFETY: the range lies within the `len` bytes allocated by
        // cuMemHostAlloc (or registered and kept mapped), uniquely
        // borrowed; copies in flight read other ranges only
        // (`copy_to_device`'s contract), so no reference spans them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for GpuPinned {
    fn drop(&mut self) {
        if self.ptr.is_null() || self.len == 0 {
            // Nothing was allocated or registered.
            return;
        }
        let _current = self.ctx.enter();
        match self.origin {
            // SAFETY: allocated by cuMemHostAlloc in this context; no copy
            // reads it any more.
            Origin::Allocated => unsafe {
                (self.ctx.api.host_free)(self.ptr.cast());
            },
            // SAFETY: registered by cuMemHostRegister in this context; no
            // copy reads it any more. Its owner frees it, never this.
            Origin::Registered => unsafe {
                (self.ctx.api.host_unregister)(self.ptr.cast());
            },
        }
    }
}

/// A non-blocking stream. Dropping it waits for its work.
pub struct GpuStream {
    ctx: Arc<Context>,
    raw: Stream,
}

// SAFETY: a stream handle may be used from any thread of its context.
unsafe impl Send for GpuStream {}

impl Drop for GpuStream {
    fn drop(&mut self) {
        // SAFETY: a stream of this context; synchronized before it goes.
        unsafe {
            let _current = self.ctx.enter();
            (self.ctx.api.stream_synchronize)(self.raw);
            (self.ctx.api.stream_destroy)(self.raw);
        }
    }
}

/// An event without timing.
pub struct GpuEvent {
    ctx: Arc<Context>,
    raw: Event,
}

// SAFETY: an event handle may be used from any thread of its context.
unsafe impl Send for GpuEvent {}
// SAFETY: querying and waiting on an event are thread-safe driver calls.
unsafe impl Sync for GpuEvent {}

impl Drop for GpuEvent {
    fn drop(&mut self) {
        // SAFETY: an event of this context; destroying a pending event is
        // allowed (its resources go once it completes).
        unsafe {
            let _current = self.ctx.enter();
            (self.ctx.api.event_destroy)(self.raw);
        }
    }
}

/// `cuMemHostAlloc` flag: portable across contexts.
const HOST_ALLOC_PORTABLE: c_uint = 0x1;
/// `cuMemHostRegister` flag (`CU_MEMHOSTREGISTER_PORTABLE`,
/// `hipHostRegisterPortable`): page-locked for every context.
const HOST_REGISTER_PORTABLE: c_uint = 0x1;
/// `cuStreamCreate` flag: no implicit synchronization with stream 0.
const STREAM_NON_BLOCKING: c_uint = 0x1;
/// `cuEventCreate` flag: no timing, the cheapest event.
const EVENT_DISABLE_TIMING: c_uint = 0x2;

// SAFETY: streams run their copies in order and events complete after the
// work queued before them (both runtimes' guarantees); `query` reports done
// only on success from the event query, `wait` and `synchronize` return
// after the event or stream synchronize call, which returns once the work
// has finished or failed (they call it even when the device cannot be made
// current); a failed asynchronous copy call queues nothing; borrowed memory
// is never freed.
unsafe impl Device for GpuDevice {
    type Memory = GpuMemory;
    type Pinned = GpuPinned;
    type Stream = GpuStream;
    type Event = GpuEvent;

    fn name(&self) -> &str {
        &self.name
    }

    fn alloc(&self, len: usize) -> Result<GpuMemory, Error> {
        let _current = self.current()?;
        let mut ptr: DevPtr = 0;
        if len > 0 {
            // SAFETY: writes one device pointer; the context is current.
            let rc = unsafe { (self.api().mem_alloc)(&mut ptr, len) };
            if rc == OUT_OF_MEMORY {
                return Err(Error::OutOfMemory {
                    device: self.name.clone(),
                    kind: "device",
                    requested: len as u64,
                    free: self.free_bytes(),
                });
            }
            self.check(self.names().mem_alloc, rc)?;
        }
        Ok(GpuMemory {
            ctx: self.ctx.clone(),
            ptr,
            len,
            owned: true,
        })
    }

    unsafe fn borrow(&self, ptr: u64, len: usize) -> Result<GpuMemory, Error> {
        if ptr == 0 && len > 0 {
            return Err(Error::Setting {
                name: "destination",
                reason: format!("a null device pointer for {len} bytes"),
            });
        }
        Ok(GpuMemory {
            ctx: self.ctx.clone(),
            ptr,
            len,
            owned: false,
        })
    }

    fn alloc_pinned(&self, len: usize) -> Result<GpuPinned, Error> {
        let _current = self.current()?;
        let mut ptr: *mut c_void = std::ptr::null_mut();
        if len > 0 {
            // SAFETY: writes one host pointer; the context is current.
            let rc = unsafe { (self.api().host_alloc)(&mut ptr, len, HOST_ALLOC_PORTABLE) };
            if rc == OUT_OF_MEMORY {
                return Err(Error::OutOfMemory {
                    device: self.name.clone(),
                    kind: "pinned host",
                    requested: len as u64,
                    free: None,
                });
            }
            self.check(self.names().host_alloc, rc)?;
        }
        Ok(GpuPinned {
            ctx: self.ctx.clone(),
            ptr: ptr.cast(),
            len,
            origin: Origin::Allocated,
        })
    }

    unsafe fn register(&self, ptr: *mut u8, len: usize) -> Result<GpuPinned, Error> {
        crate::device::check_registrable(&self.name, ptr, len)?;
        if len > 0 {
            let _current = self.current()?;
            // SAFETY: `len` bytes of mapped host memory at `ptr`, page
            // aligned (the caller's contract, checked above as far as it
            // can be); the context is current. Portable: pinned for every
            // context, as the staging from `alloc_pinned` is.
            let rc = unsafe { (self.api().host_register)(ptr.cast(), len, HOST_REGISTER_PORTABLE) };
            if rc == OUT_OF_MEMORY {
                return Err(Error::OutOfMemory {
                    device: self.name.clone(),
                    kind: "pinned host",
                    requested: len as u64,
                    free: None,
                });
            }
            self.check(self.names().host_register, rc)?;
        }
        Ok(GpuPinned {
            ctx: self.ctx.clone(),
            ptr,
            len,
            origin: Origin::Registered,
        })
    }

    fn stream(&self) -> Result<GpuStream, Error> {
        let _current = self.current()?;
        let mut raw: Stream = std::ptr::null_mut();
        // SAFETY: writes one stream handle; the context is current.
        self.check(self.names().stream_create, unsafe {
            (self.api().stream_create)(&mut raw, STREAM_NON_BLOCKING)
        })?;
        Ok(GpuStream {
            ctx: self.ctx.clone(),
            raw,
        })
    }

    unsafe fn copy_to_device(
        &self,
        stream: &GpuStream,
        dst: &GpuMemory,
        dst_offset: usize,
        src: &GpuPinned,
        src_offset: usize,
        len: usize,
    ) -> Result<(), Error> {
        crate::device::check_range(&self.name, "destination", dst_offset, len, dst.len)?;
        crate::device::check_range(&self.name, "source", src_offset, len, src.len)?;
        if len == 0 {
            return Ok(());
        }
        let _current = self.current()?;
        // SAFETY: both ranges lie within their allocations (checked above);
        // the caller keeps them alive and untouched until an event after
        // this copy completes.
        self.check(self.names().copy_htod_async, unsafe {
            (self.api().copy_htod_async)(
                dst.ptr + dst_offset as u64,
                src.ptr.add(src_offset).cast_const().cast(),
                len,
                stream.raw,
            )
        })
    }

    unsafe fn wait_external(&self, stream: &GpuStream, external: u64) -> Result<(), Error> {
        // An event recorded on the external stream, which `stream` waits
        // for on the device; destroying it at once is allowed (its
        // resources go once it completes). One guard keeps the device
        // current over both calls.
        let _current = self.current()?;
        let marker = self.record_on(external as Stream)?;
        // SAFETY: a stream and an event of this context.
        self.check(self.names().stream_wait_event, unsafe {
            (self.api().stream_wait_event)(stream.raw, marker.raw, 0)
        })
    }

    fn record(&self, stream: &GpuStream) -> Result<GpuEvent, Error> {
        self.record_on(stream.raw)
    }

    fn query(&self, event: &GpuEvent) -> Result<bool, Error> {
        let _current = self.current()?;
        // SAFETY: an event of this context.
        match unsafe { (self.api().event_query)(event.raw) } {
            0 => Ok(true),
            NOT_READY => Ok(false),
            rc => self.check(self.names().event_query, rc).map(|()| false),
        }
    }

    fn wait(&self, event: &GpuEvent) -> Result<(), Error> {
        // Waits even when the context cannot be made current: the caller
        // frees memory once this returns.
        let entered = self.current();
        // SAFETY: an event of this context.
        let rc = unsafe { (self.api().event_synchronize)(event.raw) };
        drop(entered);
        self.check(self.names().event_synchronize, rc)
    }

    fn synchronize(&self, stream: &GpuStream) -> Result<(), Error> {
        // As `wait`: never returns before the stream's work finished.
        let entered = self.current();
        // SAFETY: a stream of this context.
        let rc = unsafe { (self.api().stream_synchronize)(stream.raw) };
        drop(entered);
        self.check(self.names().stream_synchronize, rc)
    }
}

/// A failed call on `device`.
fn check(device: &str, runtime: Runtime, call: &'static str, rc: CuResult) -> Result<(), Error> {
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
fn check_init(runtime: Runtime, call: &'static str, rc: CuResult) -> Result<(), Error> {
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
