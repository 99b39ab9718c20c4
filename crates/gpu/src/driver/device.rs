//! [`GpuDevice`], the [`Device`] trait on one GPU, and the memory, streams
//! and events made on it.

use std::ffi::{c_uint, c_void};
use std::sync::Arc;

use super::context::{Context, Entered};
use super::loading::{Api, CurrentNames, DevPtr, Event, Names, Stream};
use super::results::{CuResult, NOT_READY, OUT_OF_MEMORY, check};
use crate::{Device, DeviceMemory, Error, PinnedMemory};

/// One GPU, on its primary context, behind the [`Device`] trait.
pub struct GpuDevice {
    pub(super) ctx: Arc<Context>,
    pub(super) name: String,
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

    /// The result `rc` of `call`, which page-locked `len` bytes of host
    /// memory: out of memory says so, as the device's own allocations do.
    fn check_pinned(&self, call: &'static str, len: usize, rc: CuResult) -> Result<(), Error> {
        if rc == OUT_OF_MEMORY {
            return Err(Error::OutOfMemory {
                device: self.name.clone(),
                kind: "pinned host",
                requested: len as u64,
                free: None,
            });
        }
        self.check(call, rc)
    }

    /// Block until the work queued so far on `external`, a stream of this
    /// device made elsewhere (torch's current one; `0` is the legacy
    /// default stream), has finished: for writes that do not go through a
    /// stream (cuFile's) into memory that work may still use.
    ///
    /// # Safety
    ///
    /// `external` must be a live stream handle of this device's context.
    pub unsafe fn wait_for_external(&self, external: u64) -> Result<(), Error> {
        let _current = self.current()?;
        let marker = self.record_on(external as Stream)?;
        // SAFETY: an event of this context, just recorded.
        let rc = unsafe { (self.api().event_synchronize)(marker.raw) };
        self.check(self.names().event_synchronize, rc)
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
            self.check_pinned(self.names().host_alloc, len, rc)?;
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
            self.check_pinned(self.names().host_register, len, rc)?;
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
