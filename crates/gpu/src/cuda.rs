//! The CUDA driver, found at run time: nothing CUDA is needed to build or
//! to import weightlift, and a machine without it gets an error that says
//! what is missing, never a panic. CUDA bindings that assume a driver panic
//! or abort without one, so this module loads `libcuda` itself with
//! libloading and binds the few driver calls the upload pipeline needs.
//!
//! [`CudaDevice`] implements [`Device`] on a device's primary context (the
//! one torch uses): device memory from `cuMemAlloc`, staging memory from
//! `cuMemHostAlloc` (page-locked, so copies are truly asynchronous),
//! non-blocking streams, and events without timing.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::Arc;

use libloading::Library;

use crate::{Device, DeviceMemory, Error, PinnedMemory};

/// The names the driver library goes by, most specific first.
const LIBRARIES: &[&str] = &["libcuda.so.1", "libcuda.so"];

/// `CUresult`: 0 is success.
type CuResult = c_int;
/// `CUresult` of a query whose work has not finished.
const NOT_READY: CuResult = 600;
/// `CUresult` of an allocation that did not fit.
const OUT_OF_MEMORY: CuResult = 2;
type Ctx = *mut c_void;
type Stream = *mut c_void;
type Event = *mut c_void;
/// `CUdeviceptr`.
type DevPtr = u64;

/// The driver calls used, bound once (signatures from cuda.h).
struct Api {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    driver_version: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut c_int, c_int) -> CuResult,
    device_name: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult,
    primary_retain: unsafe extern "C" fn(*mut Ctx, c_int) -> CuResult,
    primary_release: unsafe extern "C" fn(c_int) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(Ctx) -> CuResult,
    ctx_get_current: unsafe extern "C" fn(*mut Ctx) -> CuResult,
    mem_get_info: unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult,
    mem_alloc: unsafe extern "C" fn(*mut DevPtr, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(DevPtr) -> CuResult,
    host_alloc: unsafe extern "C" fn(*mut *mut c_void, usize, c_uint) -> CuResult,
    host_free: unsafe extern "C" fn(*mut c_void) -> CuResult,
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
    fn load() -> Result<Self, Error> {
        let mut failures = Vec::new();
        let library = LIBRARIES.iter().find_map(|name| {
            // SAFETY: loading the driver runs its initializers, which have
            // no preconditions; nothing else of it is used yet.
            match unsafe { Library::new(name) } {
                Ok(lib) => Some(lib),
                Err(e) => {
                    failures.push(e.to_string());
                    None
                }
            }
        });
        let lib = library.ok_or_else(|| unavailable(failures.join("; ")))?;
        // SAFETY: each symbol is looked up by its name in the driver API and
        // given its signature from cuda.h (the `_v2` names are the ones the
        // 64-bit headers map the plain names to).
        unsafe {
            Ok(Api {
                init: symbol(&lib, b"cuInit\0")?,
                driver_version: symbol(&lib, b"cuDriverGetVersion\0")?,
                device_count: symbol(&lib, b"cuDeviceGetCount\0")?,
                device_get: symbol(&lib, b"cuDeviceGet\0")?,
                device_name: symbol(&lib, b"cuDeviceGetName\0")?,
                primary_retain: symbol(&lib, b"cuDevicePrimaryCtxRetain\0")?,
                primary_release: symbol(&lib, b"cuDevicePrimaryCtxRelease_v2\0")?,
                ctx_set_current: symbol(&lib, b"cuCtxSetCurrent\0")?,
                ctx_get_current: symbol(&lib, b"cuCtxGetCurrent\0")?,
                mem_get_info: symbol(&lib, b"cuMemGetInfo_v2\0")?,
                mem_alloc: symbol(&lib, b"cuMemAlloc_v2\0")?,
                mem_free: symbol(&lib, b"cuMemFree_v2\0")?,
                host_alloc: symbol(&lib, b"cuMemHostAlloc\0")?,
                host_free: symbol(&lib, b"cuMemFreeHost\0")?,
                stream_create: symbol(&lib, b"cuStreamCreate\0")?,
                stream_destroy: symbol(&lib, b"cuStreamDestroy_v2\0")?,
                stream_synchronize: symbol(&lib, b"cuStreamSynchronize\0")?,
                event_create: symbol(&lib, b"cuEventCreate\0")?,
                event_destroy: symbol(&lib, b"cuEventDestroy_v2\0")?,
                event_record: symbol(&lib, b"cuEventRecord\0")?,
                event_query: symbol(&lib, b"cuEventQuery\0")?,
                event_synchronize: symbol(&lib, b"cuEventSynchronize\0")?,
                stream_wait_event: symbol(&lib, b"cuStreamWaitEvent\0")?,
                copy_htod_async: symbol(&lib, b"cuMemcpyHtoDAsync_v2\0")?,
                copy_dtoh: symbol(&lib, b"cuMemcpyDtoH_v2\0")?,
                _library: lib,
            })
        }
    }
}

/// Look up `name` in `library`, copied out as a plain function pointer.
///
/// # Safety
///
/// `T` must be the symbol's true type, and the pointer must not be called
/// after `library` is unloaded (an [`Api`] keeps both together).
unsafe fn symbol<T: Copy>(library: &Library, name: &[u8]) -> Result<T, Error> {
    // SAFETY: the caller vouches for the type.
    unsafe { library.get::<T>(name) }.map(|s| *s).map_err(|e| {
        unavailable(format!(
            "{} lacks {}: {e}",
            LIBRARIES[0],
            String::from_utf8_lossy(&name[..name.len() - 1])
        ))
    })
}

/// The CUDA driver library, loaded and initialized.
pub struct CudaDriver {
    api: Arc<Api>,
    version: i32,
    devices: Vec<String>,
}

impl std::fmt::Debug for CudaDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDriver")
            .field("version", &self.version())
            .field("devices", &self.devices)
            .finish()
    }
}

impl CudaDriver {
    /// Load `libcuda`, initialize it and list its devices.
    pub fn load() -> Result<Self, Error> {
        let api = Api::load()?;
        // SAFETY: cuInit takes flags, which must be 0.
        check_init("cuInit", unsafe { (api.init)(0) })?;
        let mut v: c_int = 0;
        // SAFETY: writes one int through a valid pointer.
        check_init("cuDriverGetVersion", unsafe {
            (api.driver_version)(&mut v)
        })?;
        let mut n: c_int = 0;
        // SAFETY: as above; the driver is initialized.
        check_init("cuDeviceGetCount", unsafe { (api.device_count)(&mut n) })?;
        let mut devices = Vec::new();
        for ordinal in 0..n {
            let mut device: c_int = 0;
            // SAFETY: writes one handle; the ordinal is below the count.
            check_init("cuDeviceGet", unsafe {
                (api.device_get)(&mut device, ordinal)
            })?;
            let mut buf = [0 as c_char; 256];
            // SAFETY: writes at most `buf.len()` bytes, NUL-terminated.
            check_init("cuDeviceGetName", unsafe {
                (api.device_name)(buf.as_mut_ptr(), buf.len() as c_int, device)
            })?;
            // SAFETY: the driver NUL-terminated it within the buffer.
            let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
            devices.push(text.to_string_lossy().into_owned());
        }
        Ok(CudaDriver {
            api: Arc::new(api),
            version: v,
            devices,
        })
    }

    /// The driver's CUDA version, as (major, minor).
    pub fn version(&self) -> (i32, i32) {
        (self.version / 1000, self.version % 1000 / 10)
    }

    /// The names of the devices it sees, by ordinal.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// Device `ordinal`, on its primary context.
    pub fn device(&self, ordinal: usize) -> Result<CudaDevice, Error> {
        let name = format!("cuda:{ordinal}");
        if ordinal >= self.devices.len() {
            return Err(Error::Setting {
                name: "device",
                reason: format!("{name}: the driver sees {} device(s)", self.devices.len()),
            });
        }
        let api = self.api.clone();
        let mut device: c_int = 0;
        // SAFETY: writes one handle; the ordinal is below the count.
        check(&name, "cuDeviceGet", unsafe {
            (api.device_get)(&mut device, ordinal as c_int)
        })?;
        let mut ctx: Ctx = std::ptr::null_mut();
        // SAFETY: writes one context handle for a valid device.
        check(&name, "cuDevicePrimaryCtxRetain", unsafe {
            (api.primary_retain)(&mut ctx, device)
        })?;
        Ok(CudaDevice {
            ctx: Arc::new(Context {
                api,
                device,
                raw: ctx,
            }),
            name,
        })
    }
}

/// A retained primary context, shared by everything made in it, so that it
/// outlives all of them.
struct Context {
    api: Arc<Api>,
    device: c_int,
    raw: Ctx,
}

// SAFETY: a context handle may be made current on any thread; the driver
// API is thread-safe.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

impl Context {
    /// Make it current on the calling thread (the driver's calls act on the
    /// current context) until the guard is dropped, which puts back the
    /// context that was current before: torch takes its current device
    /// from it, so a load onto `cuda:1` must not leave `cuda:1` current.
    fn enter(&self) -> (Entered<'_>, CuResult) {
        let mut previous: Ctx = std::ptr::null_mut();
        // SAFETY: writes one context handle.
        let got = unsafe { (self.api.ctx_get_current)(&mut previous) };
        if got == 0 && previous == self.raw {
            return (
                Entered {
                    api: &self.api,
                    previous: None,
                },
                0,
            );
        }
        // SAFETY: a retained primary context.
        let rc = unsafe { (self.api.ctx_set_current)(self.raw) };
        let previous = (got == 0 && rc == 0).then_some(previous);
        (
            Entered {
                api: &self.api,
                previous,
            },
            rc,
        )
    }
}

/// A context made current for a scope; see [`Context::enter`].
struct Entered<'a> {
    api: &'a Api,
    /// The context to put back (null: none was current).
    previous: Option<Ctx>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if let Some(previous) = self.previous {
            // SAFETY: the context current before, still alive (its owner
            // made it current and has not returned), or null.
            unsafe { (self.api.ctx_set_current)(previous) };
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: releases the retain made in `CudaDriver::device`; nothing
        // made in the context is left (each holds this `Arc`).
        unsafe { (self.api.primary_release)(self.device) };
    }
}

/// One GPU, on its primary context, behind the [`Device`] trait.
pub struct CudaDevice {
    ctx: Arc<Context>,
    name: String,
}

impl CudaDevice {
    fn api(&self) -> &Api {
        &self.ctx.api
    }

    /// Make this device's context current on the calling thread until the
    /// guard goes.
    fn current(&self) -> Result<Entered<'_>, Error> {
        let (entered, rc) = self.ctx.enter();
        check(&self.name, "cuCtxSetCurrent", rc).map(|()| entered)
    }

    /// Copy `memory` back to the host, waiting (for tests and checks).
    pub fn read_back(&self, memory: &CudaMemory) -> Result<Vec<u8>, Error> {
        let _current = self.current()?;
        let mut out = vec![0u8; memory.len];
        if memory.len > 0 {
            // SAFETY: `out` holds `len` bytes; the allocation holds as many.
            check(&self.name, "cuMemcpyDtoH", unsafe {
                (self.api().copy_dtoh)(out.as_mut_ptr().cast(), memory.ptr, memory.len)
            })?;
        }
        Ok(out)
    }

    /// A new event recorded on `stream`, a stream handle of this context.
    fn record_on(&self, stream: Stream) -> Result<CudaEvent, Error> {
        let _current = self.current()?;
        let mut raw: Event = std::ptr::null_mut();
        // SAFETY: writes one event handle; the context is current.
        check(&self.name, "cuEventCreate", unsafe {
            (self.api().event_create)(&mut raw, EVENT_DISABLE_TIMING)
        })?;
        let event = CudaEvent {
            ctx: self.ctx.clone(),
            raw,
        };
        // SAFETY: an event of this context and a stream of it (the
        // callers' contracts).
        check(&self.name, "cuEventRecord", unsafe {
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
pub struct CudaMemory {
    ctx: Arc<Context>,
    ptr: DevPtr,
    len: usize,
    /// Allocated here, and so freed here.
    owned: bool,
}

impl DeviceMemory for CudaMemory {
    fn len(&self) -> usize {
        self.len
    }

    fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for CudaMemory {
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

/// Page-locked host memory from `cuMemHostAlloc`.
pub struct CudaPinned {
    ctx: Arc<Context>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain host memory, uniquely owned.
unsafe impl Send for CudaPinned {}

impl PinnedMemory for CudaPinned {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: `len` bytes allocated by cuMemHostAlloc, uniquely
        // borrowed; in-flight copies are excluded by the caller
        // (`copy_to_device`'s contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn range_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset <= self.len && len <= self.len - offset);
        if len == 0 {
            return &mut [];
        }
        // SAFETY: the range lies within the `len` bytes allocated by
        // cuMemHostAlloc, uniquely borrowed; copies in flight read other
        // ranges only (`copy_to_device`'s contract), so no reference spans
        // them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for CudaPinned {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated by cuMemHostAlloc; no copy reads it any more.
            unsafe {
                let _current = self.ctx.enter();
                (self.ctx.api.host_free)(self.ptr.cast());
            }
        }
    }
}

/// A non-blocking stream. Dropping it waits for its work.
pub struct CudaStream {
    ctx: Arc<Context>,
    raw: Stream,
}

// SAFETY: a stream handle may be used from any thread of its context.
unsafe impl Send for CudaStream {}

impl Drop for CudaStream {
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
pub struct CudaEvent {
    ctx: Arc<Context>,
    raw: Event,
}

// SAFETY: an event handle may be used from any thread of its context.
unsafe impl Send for CudaEvent {}
// SAFETY: querying and waiting on an event are thread-safe driver calls.
unsafe impl Sync for CudaEvent {}

impl Drop for CudaEvent {
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
/// `cuStreamCreate` flag: no implicit synchronization with stream 0.
const STREAM_NON_BLOCKING: c_uint = 0x1;
/// `cuEventCreate` flag: no timing, the cheapest event.
const EVENT_DISABLE_TIMING: c_uint = 0x2;

// SAFETY: streams run their copies in order and events complete after the
// work queued before them (the driver's guarantees); `query` reports done
// only on CUDA_SUCCESS from cuEventQuery, `wait` and `synchronize` return
// after cuEventSynchronize / cuStreamSynchronize, which return once the
// work has finished or failed; a failed cuMemcpyHtoDAsync queues nothing.
unsafe impl Device for CudaDevice {
    type Memory = CudaMemory;
    type Pinned = CudaPinned;
    type Stream = CudaStream;
    type Event = CudaEvent;

    fn name(&self) -> &str {
        &self.name
    }

    fn alloc(&self, len: usize) -> Result<CudaMemory, Error> {
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
            check(&self.name, "cuMemAlloc", rc)?;
        }
        Ok(CudaMemory {
            ctx: self.ctx.clone(),
            ptr,
            len,
            owned: true,
        })
    }

    unsafe fn borrow(&self, ptr: u64, len: usize) -> Result<CudaMemory, Error> {
        if ptr == 0 && len > 0 {
            return Err(Error::Setting {
                name: "destination",
                reason: format!("a null device pointer for {len} bytes"),
            });
        }
        Ok(CudaMemory {
            ctx: self.ctx.clone(),
            ptr,
            len,
            owned: false,
        })
    }

    fn alloc_pinned(&self, len: usize) -> Result<CudaPinned, Error> {
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
            check(&self.name, "cuMemHostAlloc", rc)?;
        }
        Ok(CudaPinned {
            ctx: self.ctx.clone(),
            ptr: ptr.cast(),
            len,
        })
    }

    fn stream(&self) -> Result<CudaStream, Error> {
        let _current = self.current()?;
        let mut raw: Stream = std::ptr::null_mut();
        // SAFETY: writes one stream handle; the context is current.
        check(&self.name, "cuStreamCreate", unsafe {
            (self.api().stream_create)(&mut raw, STREAM_NON_BLOCKING)
        })?;
        Ok(CudaStream {
            ctx: self.ctx.clone(),
            raw,
        })
    }

    unsafe fn copy_to_device(
        &self,
        stream: &CudaStream,
        dst: &CudaMemory,
        dst_offset: usize,
        src: &CudaPinned,
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
        check(&self.name, "cuMemcpyHtoDAsync", unsafe {
            (self.api().copy_htod_async)(
                dst.ptr + dst_offset as u64,
                src.ptr.add(src_offset).cast_const().cast(),
                len,
                stream.raw,
            )
        })
    }

    unsafe fn wait_external(&self, stream: &CudaStream, external: u64) -> Result<(), Error> {
        // An event recorded on the external stream, which `stream` waits
        // for on the device; destroying it at once is allowed (its
        // resources go once it completes).
        let marker = self.record_on(external as Stream)?;
        // SAFETY: a stream and an event of this context.
        check(&self.name, "cuStreamWaitEvent", unsafe {
            (self.api().stream_wait_event)(stream.raw, marker.raw, 0)
        })
    }

    fn record(&self, stream: &CudaStream) -> Result<CudaEvent, Error> {
        self.record_on(stream.raw)
    }

    fn query(&self, event: &CudaEvent) -> Result<bool, Error> {
        let _current = self.current()?;
        // SAFETY: an event of this context.
        match unsafe { (self.api().event_query)(event.raw) } {
            0 => Ok(true),
            NOT_READY => Ok(false),
            rc => check(&self.name, "cuEventQuery", rc).map(|()| false),
        }
    }

    fn wait(&self, event: &CudaEvent) -> Result<(), Error> {
        // Waits even when the context cannot be made current: the caller
        // frees memory once this returns.
        let entered = self.current();
        // SAFETY: an event of this context.
        let rc = unsafe { (self.api().event_synchronize)(event.raw) };
        drop(entered);
        check(&self.name, "cuEventSynchronize", rc)
    }

    fn synchronize(&self, stream: &CudaStream) -> Result<(), Error> {
        // As `wait`: never returns before the stream's work finished.
        let entered = self.current();
        // SAFETY: a stream of this context.
        let rc = unsafe { (self.api().stream_synchronize)(stream.raw) };
        drop(entered);
        check(&self.name, "cuStreamSynchronize", rc)
    }
}

/// A failed driver call on `device`.
fn check(device: &str, call: &str, rc: CuResult) -> Result<(), Error> {
    if rc == 0 {
        return Ok(());
    }
    Err(Error::Copy {
        device: device.to_string(),
        reason: format!("{call} failed: {} (CUresult {rc})", describe(rc)),
    })
}

/// A failed call while loading the driver: the driver is unavailable.
fn check_init(call: &str, rc: CuResult) -> Result<(), Error> {
    if rc == 0 {
        return Ok(());
    }
    Err(unavailable(format!(
        "{call} failed: {} (CUresult {rc})",
        describe(rc)
    )))
}

fn describe(rc: CuResult) -> &'static str {
    match rc {
        1 => "invalid value",
        2 => "out of memory",
        3 => "not initialized",
        34 => "the stub library, not a driver: no driver is installed",
        46 => "the device is unavailable (exclusive use, or busy)",
        100 => "no CUDA device is visible",
        101 => "invalid device",
        201 => "invalid context",
        304 => "the operating system refused (is the device node accessible?)",
        400 => "invalid handle",
        700 => "illegal address",
        719 => "launch failure: the context is unusable",
        803 => "the driver and the kernel module do not match",
        999 => "unknown error",
        _ => "error",
    }
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        api: "CUDA driver",
        reason,
    }
}
