//! Memory someone else allocated, registered as staging: copies from it
//! deliver its bytes, it is never freed by the device, and on the
//! host-memory device a write to it while a copy from it is in flight is
//! counted as a violation, so that a pipeline reusing its staging too early
//! fails its tests.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::time::Duration;

use weightlift_gpu::{Device, Error, HostDevice, PinnedMemory};

/// Page-aligned host memory, allocated and freed here, as an I/O engine's
/// staging ring is.
struct Pages {
    ptr: *mut u8,
    layout: Layout,
}

impl Pages {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: the layout's size is non-zero (every caller asks for some).
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocating {len} bytes");
        Pages { ptr, layout }
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    /// Write `bytes` at `offset`, through the pointer (as the owner of a
    /// registered ring does, behind the device's back).
    fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len());
        // SAFETY: within the allocation; the tests write only where no copy
        // reads, except the one that checks such a write is caught.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), bytes.len()) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn registered_memory_is_copied_and_never_freed() {
    let device = HostDevice::new();
    let pages = Pages::new(3 * 4096);
    let data = pattern(pages.len(), 7);
    pages.write(0, &data);
    {
        // SAFETY: `pages` outlives the registration, and nothing writes it
        // while the copy is in flight.
        let mut src = unsafe { device.register(pages.ptr, pages.len()) }.unwrap();
        assert_eq!(src.len(), pages.len());
        let dst = device.alloc(pages.len()).unwrap();
        let stream = device.stream().unwrap();
        // SAFETY: both stay alive and untouched until the event completes.
        unsafe { device.copy_to_device(&stream, &dst, 0, &src, 0, pages.len()) }.unwrap();
        // A second copy of a part, from the middle page into the start.
        // SAFETY: as above.
        unsafe { device.copy_to_device(&stream, &dst, 0, &src, 4096, 100) }.unwrap();
        device.wait(&device.record(&stream).unwrap()).unwrap();
        let mut expected = data.clone();
        expected.copy_within(4096..4196, 0);
        assert_eq!(dst.bytes(), &expected[..]);
        // Filling through the registration writes the owner's memory.
        src.range_mut(8000, 3).copy_from_slice(&[1, 2, 3]);
        assert_eq!(device.violations(), 0);
    }
    // Dropping the registration left the memory to its owner: still there,
    // with what was written through it.
    // SAFETY: within the allocation, which nothing else uses now.
    let now = unsafe { std::slice::from_raw_parts(pages.ptr, pages.len()) };
    assert_eq!(&now[8000..8003], &[1, 2, 3]);
    assert_eq!(now[..8000], data[..8000]);
    assert_eq!(device.violations(), 0);
    assert_eq!(device.used(), 0);
}

#[test]
fn a_source_rewritten_while_its_copy_is_in_flight_is_caught() {
    let device = HostDevice::new().with_copy_delay(Duration::from_millis(200));
    let pages = Pages::new(2 * 4096);
    pages.write(0, &pattern(pages.len(), 1));
    // SAFETY: `pages` outlives the registration; the write below breaks the
    // contract on purpose, while the stream's thread sleeps before copying.
    let src = unsafe { device.register(pages.ptr, pages.len()) }.unwrap();
    let dst = device.alloc(4096).unwrap();
    let stream = device.stream().unwrap();
    // SAFETY: as above.
    unsafe { device.copy_to_device(&stream, &dst, 0, &src, 4096, 4096) }.unwrap();
    // Another range is the owner's to write: no violation.
    pages.write(0, &[9; 4096]);
    // The range the copy reads: a violation, noticed when it runs.
    pages.write(5000, &[0xEE; 10]);
    device.synchronize(&stream).unwrap();
    assert_eq!(
        device.violations(),
        1,
        "the rewritten source went unnoticed"
    );
    drop(src);
    assert_eq!(device.violations(), 1);
}

#[test]
fn unaligned_or_null_memory_is_refused() {
    let device = HostDevice::new();
    let pages = Pages::new(2 * 4096);
    for (ptr, len) in [
        // SAFETY: one byte into the allocation.
        (unsafe { pages.ptr.add(1) }, 4096),
        (pages.ptr, 4095),
        (std::ptr::null_mut(), 4096),
    ] {
        // SAFETY: refused before anything is registered.
        match unsafe { device.register(ptr, len) } {
            Err(Error::Setting { name, .. }) => assert_eq!(name, "registered memory"),
            Err(e) => panic!("{ptr:p} + {len}: unexpected {e:?}"),
            Ok(_) => panic!("{ptr:p} + {len}: accepted"),
        }
    }
    // SAFETY: nothing is registered for an empty range.
    let empty = unsafe { device.register(std::ptr::null_mut(), 0) }.unwrap();
    assert!(empty.is_empty());
}
