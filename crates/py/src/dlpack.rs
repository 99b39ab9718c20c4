//! Handing host bytes to torch and numpy without copying: a DLPack
//! (`DLManagedTensor`, the unversioned ABI every consumer accepts) of
//! `uint8`, one dimension, whose deleter drops what keeps the bytes alive.
//!
//! The bytes always go out as `uint8`: the Python side views them as the
//! tensor's dtype and shape, which works for dtypes DLPack cannot name
//! (the float8 kinds, float4).

use std::ffi::{CStr, c_void};
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use pyo3::ffi;
use pyo3::prelude::*;
use weightlift::HostTensor;
use weightlift_io::Region;

/// What keeps a buffer's bytes alive.
#[derive(Debug, Clone)]
pub(crate) enum Keep {
    /// A loaded tensor: its memory stays mapped while this lives.
    Host(HostTensor),
    /// A copy, made where the loaded bytes were not aligned for their dtype
    /// or a consumer asked for one. A region, not a `Vec`: consumers write
    /// through the pointer, which Rust must never see as shared data.
    Owned(Arc<Region>),
}

impl Keep {
    /// Keep `t`, copying it to 8-byte-aligned memory when its address is
    /// not a multiple of `align` (a tensor at an odd offset in its file):
    /// numpy and torch kernels may assume aligned elements.
    pub(crate) fn aligned(t: HostTensor, align: usize) -> io::Result<Self> {
        if align <= 1 || (t.bytes().as_ptr() as usize).is_multiple_of(align) {
            Ok(Keep::Host(t))
        } else {
            Keep::Host(t).copied()
        }
    }

    /// The same bytes in new, page-aligned memory.
    pub(crate) fn copied(&self) -> io::Result<Self> {
        let (ptr, len) = self.ptr_len();
        let region = Region::anonymous(len)?;
        if len > 0 {
            // SAFETY: `ptr` is valid for `len` bytes while `self` lives; the
            // new region holds `len` bytes and is not shared yet.
            unsafe { std::ptr::copy_nonoverlapping(ptr, region.as_ptr(), len) };
        }
        Ok(Keep::Owned(Arc::new(region)))
    }

    fn ptr_len(&self) -> (*mut u8, usize) {
        let (ptr, len) = match self {
            Keep::Host(t) => (t.bytes().as_ptr(), t.len()),
            Keep::Owned(region) => (region.as_ptr().cast_const(), region.len()),
        };
        // An empty tensor still needs a valid, aligned, non-null address.
        let ptr = if len == 0 {
            NonNull::<u64>::dangling().as_ptr().cast::<u8>()
        } else {
            ptr.cast_mut()
        };
        (ptr, len)
    }

    pub(crate) fn len(&self) -> usize {
        self.ptr_len().1
    }
}

#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// `kDLCPU`.
const DL_CPU: i32 = 1;
/// `kDLUInt`.
const DL_UINT: u8 = 1;

/// The managed tensor and everything it points to, in one allocation.
struct Managed {
    tensor: DLManagedTensor,
    shape: [i64; 1],
    /// Never read: held so that the bytes outlive the consumer's use.
    _keep: Keep,
}

const NAME: &CStr = c"dltensor";

unsafe extern "C" fn delete_managed(m: *mut DLManagedTensor) {
    if m.is_null() {
        return;
    }
    // SAFETY: every DLManagedTensor we hand out was made by `capsule` from a
    // `Box<Managed>` whose address is in `manager_ctx`; the consumer calls
    // the deleter once.
    unsafe { drop(Box::from_raw((*m).manager_ctx.cast::<Managed>())) };
}

unsafe extern "C" fn capsule_destructor(capsule: *mut ffi::PyObject) {
    // A consumer renames the capsule ("used_dltensor") and takes ownership;
    // a capsule still named "dltensor" was never consumed, so free it here.
    // SAFETY: `capsule` is the capsule being destroyed, as CPython passes it.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, NAME.as_ptr()) == 1 {
            let m = ffi::PyCapsule_GetPointer(capsule, NAME.as_ptr());
            delete_managed(m.cast::<DLManagedTensor>());
        } else {
            // IsValid does not raise, GetPointer is not called: nothing to clear.
        }
    }
}

/// A DLPack capsule of `keep`'s bytes.
pub(crate) fn capsule(py: Python<'_>, keep: Keep) -> PyResult<Bound<'_, PyAny>> {
    let (ptr, len) = keep.ptr_len();
    let mut managed = Box::new(Managed {
        tensor: DLManagedTensor {
            dl_tensor: DLTensor {
                data: ptr.cast::<c_void>(),
                device: DLDevice {
                    device_type: DL_CPU,
                    device_id: 0,
                },
                ndim: 1,
                dtype: DLDataType {
                    code: DL_UINT,
                    bits: 8,
                    lanes: 1,
                },
                shape: std::ptr::null_mut(),
                strides: std::ptr::null_mut(),
                byte_offset: 0,
            },
            manager_ctx: std::ptr::null_mut(),
            deleter: Some(delete_managed),
        },
        // A length in memory fits isize, so it fits i64.
        shape: [len as i64],
        _keep: keep,
    });
    managed.tensor.dl_tensor.shape = managed.shape.as_mut_ptr();
    let raw = Box::into_raw(managed);
    // SAFETY: `raw` is a live, uniquely owned allocation; the tensor is its
    // first field, so both addresses are stable until the deleter runs.
    let tensor = unsafe {
        (*raw).tensor.manager_ctx = raw.cast::<c_void>();
        std::ptr::addr_of_mut!((*raw).tensor)
    };
    // SAFETY: a valid pointer and a static name; on success the capsule
    // owns `raw` (freed by the consumer's deleter call or by our destructor).
    let cap = unsafe {
        ffi::PyCapsule_New(
            tensor.cast::<c_void>(),
            NAME.as_ptr(),
            Some(capsule_destructor),
        )
    };
    if cap.is_null() {
        // SAFETY: the capsule was not made, so nothing else owns `raw`.
        unsafe { drop(Box::from_raw(raw)) };
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `cap` is a new, owned reference.
    Ok(unsafe { Bound::from_owned_ptr(py, cap) })
}
