//! What a device offers the upload pipeline: memory, page-locked staging
//! memory, streams that run copies in order, and events that say when the
//! copies queued before them have finished.

use crate::Error;

/// The methods of [`Device`], forwarded to `**self`.
macro_rules! forward_device {
    () => {
        fn name(&self) -> &str {
            (**self).name()
        }
        fn alloc(&self, len: usize) -> Result<Self::Memory, Error> {
            (**self).alloc(len)
        }
        unsafe fn borrow(&self, ptr: u64, len: usize) -> Result<Self::Memory, Error> {
            // SAFETY: the caller keeps the contract, which is the same.
            unsafe { (**self).borrow(ptr, len) }
        }
        fn alloc_pinned(&self, len: usize) -> Result<Self::Pinned, Error> {
            (**self).alloc_pinned(len)
        }
        unsafe fn register(&self, ptr: *mut u8, len: usize) -> Result<Self::Pinned, Error> {
            // SAFETY: the caller keeps the contract, which is the same.
            unsafe { (**self).register(ptr, len) }
        }
        fn stream(&self) -> Result<Self::Stream, Error> {
            (**self).stream()
        }
        unsafe fn copy_to_device(
            &self,
            stream: &Self::Stream,
            dst: &Self::Memory,
            dst_offset: usize,
            src: &Self::Pinned,
            src_offset: usize,
            len: usize,
        ) -> Result<(), Error> {
            // SAFETY: the caller keeps the contract, which is the same.
            unsafe { (**self).copy_to_device(stream, dst, dst_offset, src, src_offset, len) }
        }
        unsafe fn wait_external(&self, stream: &Self::Stream, external: u64) -> Result<(), Error> {
            // SAFETY: the caller keeps the contract, which is the same.
            unsafe { (**self).wait_external(stream, external) }
        }
        fn record(&self, stream: &Self::Stream) -> Result<Self::Event, Error> {
            (**self).record(stream)
        }
        fn query(&self, event: &Self::Event) -> Result<bool, Error> {
            (**self).query(event)
        }
        fn wait(&self, event: &Self::Event) -> Result<(), Error> {
            (**self).wait(event)
        }
        fn synchronize(&self, stream: &Self::Stream) -> Result<(), Error> {
            (**self).synchronize(stream)
        }
    };
}

/// Memory on a device, freed when dropped.
pub trait DeviceMemory: Send {
    /// Its length in bytes.
    fn len(&self) -> usize;

    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device address of its first byte.
    fn device_ptr(&self) -> u64;
}

/// Host memory a device can copy from asynchronously (page-locked on a GPU):
/// allocated by the device and freed when dropped, or someone else's,
/// registered with [`Device::register`] and unregistered when dropped.
pub trait PinnedMemory: Send {
    /// Its bytes, to fill before a copy.
    fn as_mut_slice(&mut self) -> &mut [u8];

    /// Bytes `offset..offset + len`, to fill while copies from other
    /// ranges may be in flight. Panics if the range is outside.
    fn range_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        &mut self.as_mut_slice()[offset..offset + len]
    }

    /// Its length in bytes.
    fn len(&self) -> usize;

    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A device that copies host memory into its own asynchronously.
///
/// Streams run their copies in the order they were queued; an event
/// recorded on a stream completes once every copy queued on that stream
/// before it has. The upload pipeline ([`crate::Uploader`]) is built on
/// these alone, so the host-memory device ([`crate::HostDevice`]) tests it
/// without a GPU.
///
/// # Safety
///
/// The pipeline frees and refills memory on the word of these methods, so
/// an implementation must keep it:
/// - [`Device::query`] returns `Ok(true)`, and [`Device::wait`] returns,
///   only once every copy queued on the event's stream before it has
///   finished reading its source and writing its destination (an `Err`
///   says one of them failed; they have finished all the same, except for
///   `query`'s `Err`, which says nothing of completion);
/// - [`Device::synchronize`] returns only once every copy queued on the
///   stream has finished, whatever it returns;
/// - [`Device::copy_to_device`] returning `Err` queued nothing;
/// - memory from [`Device::borrow`] or [`Device::register`] is never freed
///   by it.
pub unsafe trait Device: Send + Sync {
    /// Device memory.
    type Memory: DeviceMemory;
    /// Staging memory on the host.
    type Pinned: PinnedMemory;
    /// An in-order queue of copies.
    type Stream: Send;
    /// A point in a stream.
    type Event: Send + Sync;

    /// The device's name in messages (`cuda:0`, `host`).
    fn name(&self) -> &str;

    /// Allocate `len` bytes of device memory.
    fn alloc(&self, len: usize) -> Result<Self::Memory, Error>;

    /// Memory allocated by someone else (torch's caching allocator, a
    /// caller's tensor), to copy into. Dropping it frees nothing.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` must be memory of this device that stays allocated
    /// as long as the returned value is alive, and that nothing else uses
    /// while copies into it may be in flight.
    unsafe fn borrow(&self, ptr: u64, len: usize) -> Result<Self::Memory, Error>;

    /// Allocate `len` bytes of staging memory on the host.
    fn alloc_pinned(&self, len: usize) -> Result<Self::Pinned, Error>;

    /// Page-lock `len` bytes of host memory at `ptr`, allocated by someone
    /// else (a staging ring of the I/O engine), so that copies from it run
    /// asynchronously at full speed. Dropping the result unregisters it and
    /// never frees the memory. A pointer or length that is not a multiple
    /// of 4096 (the smallest page size), or a null pointer for a non-empty
    /// range, is an error.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` must be host memory, page aligned (ptr and len
    /// multiples of the page size), that stays mapped as long as the
    /// returned value lives; while it lives its contents may be written by
    /// others only in ranges no queued copy reads (the
    /// [`Device::copy_to_device`] contract), and
    /// [`PinnedMemory::as_mut_slice`]/[`PinnedMemory::range_mut`] on the
    /// result must not be used while anything else may access those bytes.
    unsafe fn register(&self, ptr: *mut u8, len: usize) -> Result<Self::Pinned, Error>;

    /// A new stream.
    fn stream(&self) -> Result<Self::Stream, Error>;

    /// Queue a copy of `src[src_offset..src_offset + len]` into `dst` at
    /// `dst_offset` on `stream`. Ranges outside either buffer are an
    /// error, not a copy; an error queues nothing.
    ///
    /// # Safety
    ///
    /// Until an event recorded on `stream` after this call has completed
    /// ([`Device::query`] returned `Ok(true)` or [`Device::wait`] returned),
    /// `src` and `dst` must stay allocated, `src`'s range must not be
    /// written, and `dst`'s range must be neither read nor written. If that
    /// event reports an error, the same holds until it has completed.
    unsafe fn copy_to_device(
        &self,
        stream: &Self::Stream,
        dst: &Self::Memory,
        dst_offset: usize,
        src: &Self::Pinned,
        src_offset: usize,
        len: usize,
    ) -> Result<(), Error>;

    /// Make copies queued on `stream` from now on start only after the work
    /// queued so far on `external`, a stream made outside this crate (such
    /// as torch's current stream), has finished. It does not block.
    ///
    /// # Safety
    ///
    /// `external` must be a live stream handle of this device's context
    /// (`0` is the legacy default stream), or `0` for a device without
    /// external streams.
    unsafe fn wait_external(&self, stream: &Self::Stream, external: u64) -> Result<(), Error>;

    /// Record an event on `stream`, after everything queued so far.
    fn record(&self, stream: &Self::Stream) -> Result<Self::Event, Error>;

    /// Whether `event` has completed; an error if a copy before it failed.
    fn query(&self, event: &Self::Event) -> Result<bool, Error>;

    /// Block until `event` has completed; an error if a copy before it
    /// failed (the event has completed all the same).
    fn wait(&self, event: &Self::Event) -> Result<(), Error>;

    /// Block until every copy queued on `stream` has finished; an error if
    /// one failed (all have finished all the same).
    fn synchronize(&self, stream: &Self::Stream) -> Result<(), Error>;
}

/// Check that `offset..offset + len` lies within `size` bytes.
pub(crate) fn check_range(
    device: &str,
    what: &str,
    offset: usize,
    len: usize,
    size: usize,
) -> Result<(), Error> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::Copy {
            device: device.to_string(),
            reason: format!("{what} range {offset} + {len} is outside its {size} bytes"),
        }),
    }
}

/// The smallest page size of the platforms supported: registered memory
/// must be aligned to it at least.
pub(crate) const MIN_PAGE: usize = 4096;

/// Check that `ptr..ptr + len` can be registered: page aligned (to
/// [`MIN_PAGE`] at least), and not null unless empty.
pub(crate) fn check_registrable(device: &str, ptr: *mut u8, len: usize) -> Result<(), Error> {
    if len == 0 {
        return Ok(());
    }
    let why = if ptr.is_null() {
        format!("a null pointer for {len} bytes")
    } else if !ptr.addr().is_multiple_of(MIN_PAGE) || !len.is_multiple_of(MIN_PAGE) {
        format!(
            "{len} bytes at {ptr:p}: the address and the length must be multiples of the page size"
        )
    } else {
        return Ok(());
    };
    Err(Error::Setting {
        name: "registered memory",
        reason: format!("{device}: {why}"),
    })
}

/// A device reached through a reference is the device.
// SAFETY: every method forwards to `D`, which keeps the contract.
unsafe impl<D: Device + ?Sized> Device for &D {
    type Memory = D::Memory;
    type Pinned = D::Pinned;
    type Stream = D::Stream;
    type Event = D::Event;
    forward_device!();
}

/// A shared device is the device.
// SAFETY: every method forwards to `D`, which keeps the contract.
unsafe impl<D: Device + ?Sized> Device for std::sync::Arc<D> {
    type Memory = D::Memory;
    type Pinned = D::Pinned;
    type Stream = D::Stream;
    type Event = D::Event;
    forward_device!();
}
