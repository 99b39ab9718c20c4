//! Where tensors loaded onto a device go: memory Python allocates (torch's
//! caching allocator, or `load_into`'s own tensors), or regions of one
//! device buffer reused as the caller moves on (`copy=False`).

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use weightlift::device::{Carve, Destination, Destinations, Place};
use weightlift::{Checkpoint, Error, TensorId};

use crate::{lock, objects};

/// What keeps a destination allocated, handed back with its tensor.
pub(crate) enum Owner {
    /// A Python object owning the memory (a torch tensor).
    Object(Py<PyAny>),
    /// A region of the reused buffer, at this offset.
    At(u64),
}

/// The reused buffer of `copy=False`: a torch tensor of bytes on the
/// device, and where tensors go in it.
pub(crate) struct Buffer {
    /// Keeps the memory allocated as long as any load into it lives.
    #[allow(dead_code, reason = "held, never read: it keeps the buffer allocated")]
    pub(crate) owner: Py<PyAny>,
    pub(crate) ptr: u64,
    pub(crate) carve: Arc<Mutex<Carve>>,
}

/// Destinations from Python.
pub(crate) struct PyDestinations {
    /// `alloc(name, dtype, shape, file)` returns `(owner, address,
    /// nbytes)`: an object owning `nbytes` bytes of the device's memory at
    /// `address`, or None when it has no room until the tensors in flight
    /// are handed back.
    pub(crate) alloc: Py<PyAny>,
    /// With `copy=False`, the buffer tensors are placed in first; those
    /// larger than it (or empty) go to `alloc`.
    pub(crate) buffer: Option<Buffer>,
}

impl PyDestinations {
    fn allocate(
        &self,
        ckpt: &Checkpoint,
        id: TensorId,
    ) -> Result<Option<Destination<Owner>>, Error> {
        let info = ckpt.tensor(id);
        let file = ckpt.shard(info.file).path();
        Python::attach(|py| -> PyResult<Option<Destination<Owner>>> {
            let answer: Option<(Py<PyAny>, u64, u64)> = self
                .alloc
                .bind(py)
                .call1((
                    objects::str(py, &info.name)?,
                    objects::str(py, info.dtype.as_str())?,
                    objects::ints(py, &info.shape)?,
                    objects::path(py, file)?,
                ))?
                .extract()?;
            Ok(answer.map(|(owner, ptr, len)| Destination {
                ptr,
                len,
                owner: Owner::Object(owner),
            }))
        })
        .map_err(|e| Error::Destinations(Box::new(e)))
    }
}

// SAFETY: memory from `alloc` is Python's word: an object owning `nbytes`
// bytes of the device's memory at `address`, which the owner keeps
// allocated, handed out for this tensor alone. Regions of the buffer lie
// inside it (`Carve` places them within its size) and are handed out once
// each until the caller gives them back; the buffer's owner is kept here,
// and this value lives as long as the load.
unsafe impl Destinations for PyDestinations {
    type Owner = Owner;

    fn destination(
        &mut self,
        ckpt: &Checkpoint,
        id: TensorId,
    ) -> Result<Option<Destination<Owner>>, Error> {
        let Some(buffer) = &self.buffer else {
            return self.allocate(ckpt, id);
        };
        let len = ckpt.tensor(id).len();
        let place = lock(&buffer.carve).place(len);
        match place {
            Place::At(start) => Ok(Some(Destination {
                ptr: buffer.ptr + start,
                len,
                owner: Owner::At(start),
            })),
            Place::Own => self.allocate(ckpt, id),
            Place::Full => Ok(None),
        }
    }
}
