//! Owned, aligned memory for direct I/O.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::Error;

/// A heap buffer whose address is a multiple of its alignment, zeroed when
/// made, freed when dropped.
///
/// Direct I/O needs buffers aligned to the file system's memory alignment
/// (512 or 4096 bytes); `Vec<u8>` promises only 1. The memory comes from
/// the global allocator, which zeroes it eagerly for alignments above 16:
/// every page is touched when the buffer is made. Make buffers once and
/// reuse them.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: `AlignedBuf` owns its allocation exclusively (like `Vec<u8>`);
// shared references give only `&[u8]`, mutation needs `&mut self`.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above: no interior mutability.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zeroed bytes aligned to `align` (a power of two).
    pub fn zeroed(len: usize, align: usize) -> Result<Self, Error> {
        let bad = || Error::Alloc { len, align };
        let layout = Layout::from_size_align(len, align).map_err(|_| bad())?;
        if len == 0 {
            // No allocation: a dangling pointer at the alignment, as `Vec` does.
            let ptr = NonNull::new(std::ptr::without_provenance_mut(align)).ok_or_else(bad)?;
            return Ok(Self { ptr, layout });
        }
        // SAFETY: `layout` has a non-zero size (checked above).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(bad)?;
        Ok(Self { ptr, layout })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The alignment the buffer was made with.
    pub fn align(&self) -> usize {
        self.layout.align()
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised (zeroed) bytes for as
        // long as `self` lives, or dangling and aligned with `len` 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.layout.size() != 0 {
            // SAFETY: allocated by `alloc_zeroed` with this same layout and
            // not freed before (drop runs once).
            unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_writable() {
        for align in [1, 8, 512, 4096, 1 << 21] {
            for len in [0, 1, 511, 4096, 3 << 20] {
                let mut b = AlignedBuf::zeroed(len, align).unwrap();
                assert_eq!(b.as_slice().as_ptr() as usize % align, 0, "{len} @ {align}");
                assert_eq!(b.len(), len);
                assert!(b.as_slice().iter().all(|&x| x == 0));
                if let Some(last) = b.as_mut_slice().last_mut() {
                    *last = 9;
                    assert_eq!(b.as_slice()[len - 1], 9);
                }
            }
        }
    }

    #[test]
    fn impossible_requests_are_errors() {
        assert!(matches!(
            AlignedBuf::zeroed(10, 3),
            Err(Error::Alloc { len: 10, align: 3 })
        ));
        assert!(AlignedBuf::zeroed(usize::MAX - 10, 4096).is_err());
    }
}
