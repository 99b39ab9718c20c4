//! The upload pipeline: tensors' host bytes through a bounded ring of
//! staging slots into device memory, several copies in flight over several
//! streams, each tensor handed back only once its bytes are on the device.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::{Device, Error, PinnedMemory};

/// How the pipeline stages its copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOptions {
    /// Bytes per staging slot: the largest single copy.
    pub slot_size: usize,
    /// Staging slots at most (allocated as needed): `slots * slot_size`
    /// bounds the staging memory.
    pub slots: usize,
    /// Streams the copies are spread over (a tensor's copies share one).
    pub streams: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            slot_size: 16 << 20,
            slots: 8,
            streams: 2,
        }
    }
}

/// A tensor whose bytes are on the device.
#[derive(Debug)]
pub struct Uploaded<M> {
    /// The caller's number for it.
    pub id: usize,
    /// Its device memory.
    pub memory: M,
}

struct Pending<D: Device> {
    id: usize,
    name: Arc<str>,
    memory: D::Memory,
    /// Recorded after its last copy; `None` for an empty tensor.
    done: Option<Arc<D::Event>>,
}

impl<D: Device> Pending<D> {
    fn uploaded(self) -> Uploaded<D::Memory> {
        Uploaded {
            id: self.id,
            memory: self.memory,
        }
    }
}

/// Uploads tensors to a device through staging slots.
///
/// [`Uploader::upload`] copies a tensor's bytes into free slots and queues
/// their copies; it waits only when every slot is in flight, and then for
/// the oldest. [`Uploader::poll`] hands back the tensors whose copies have
/// completed, in completion order; [`Uploader::finish`] waits for the rest.
/// A slot is refilled only after the event recorded behind its copy has
/// completed, and a tensor's memory leaves the pipeline only after its last
/// copy has.
///
/// Dropping it, on an error path too, waits for every copy in flight before
/// the staging slots and device memory are freed.
pub struct Uploader<'d, D: Device> {
    device: &'d D,
    opts: UploadOptions,
    streams: Vec<D::Stream>,
    pending: VecDeque<Pending<D>>,
    /// Slots whose copies are in flight, oldest first, with the name of
    /// the tensor each carries.
    busy: VecDeque<Busy<D>>,
    free: Vec<D::Pinned>,
    /// What copies may still use but nothing waits on: a slot between its
    /// copy and the event behind it, and a failed upload's memory. Freed
    /// only after the streams are synchronized.
    stranded_slots: Vec<D::Pinned>,
    stranded_memory: Vec<D::Memory>,
    /// Slots allocated so far.
    slots: usize,
    next_stream: usize,
}

struct Busy<D: Device> {
    event: Arc<D::Event>,
    slot: D::Pinned,
    tensor: Arc<str>,
}

fn upload_error(name: &str, source: Error) -> Error {
    Error::Upload {
        tensor: name.to_string(),
        source: Box::new(source),
    }
}

impl<'d, D: Device> Uploader<'d, D> {
    /// A pipeline onto `device`. Slots are allocated as the uploads need
    /// them; the streams at once.
    pub fn new(device: &'d D, opts: UploadOptions) -> Result<Self, Error> {
        for (name, value) in [
            ("slot_size", opts.slot_size),
            ("slots", opts.slots),
            ("streams", opts.streams),
        ] {
            if value == 0 {
                return Err(Error::Setting {
                    name,
                    reason: "must be at least 1".into(),
                });
            }
        }
        let streams = (0..opts.streams)
            .map(|_| device.stream())
            .collect::<Result<_, _>>()?;
        Ok(Uploader {
            device,
            opts,
            streams,
            pending: VecDeque::new(),
            busy: VecDeque::new(),
            free: Vec::new(),
            stranded_slots: Vec::new(),
            stranded_memory: Vec::new(),
            slots: 0,
            next_stream: 0,
        })
    }

    /// Copy `bytes` into new device memory; `id` and `name` identify the
    /// tensor when it comes back and in errors. Returns once every copy is
    /// queued, not completed.
    pub fn upload(&mut self, id: usize, name: &str, bytes: &[u8]) -> Result<(), Error> {
        let memory = self
            .device
            .alloc(bytes.len())
            .map_err(|e| upload_error(name, e))?;
        let name: Arc<str> = Arc::from(name);
        self.pending.push_back(Pending {
            id,
            name: name.clone(),
            memory,
            done: None,
        });
        self.queue_copies(&name, bytes).map_err(|e| {
            // Some of its copies may be in flight: its memory stays until
            // the streams finish, and it is never handed back.
            let p = self.pending.pop_back().expect("pushed above");
            self.stranded_memory.push(p.memory);
            match e {
                // A copy of an earlier tensor failed: that one is named.
                e @ Error::Upload { .. } => e,
                e => upload_error(&name, e),
            }
        })
    }

    /// Queue the copies of the last pending tensor's `bytes`.
    fn queue_copies(&mut self, tensor: &Arc<str>, bytes: &[u8]) -> Result<(), Error> {
        let stream = &self.streams[self.next_stream];
        self.next_stream = (self.next_stream + 1) % self.streams.len();
        let pending = self.pending.back_mut().expect("just pushed");
        for (k, chunk) in bytes.chunks(self.opts.slot_size).enumerate() {
            let mut slot = take_slot(
                self.device,
                &mut self.free,
                &mut self.busy,
                &mut self.slots,
                &self.opts,
            )?;
            slot.as_mut_slice()[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: from here the slot is owned by `self`
            // (`stranded_slots`, then `busy`) and the memory stays in `pending` (or `stranded`)
            // until the event recorded next has completed: slots are
            // refilled only after `wait` on it, memory leaves only after
            // `query` or `wait` said it completed, and dropping `self`
            // synchronizes every stream before anything is freed.
            let queued = unsafe {
                self.device.copy_to_device(
                    stream,
                    &pending.memory,
                    k * self.opts.slot_size,
                    &slot,
                    0,
                    chunk.len(),
                )
            };
            if let Err(e) = queued {
                // Nothing was queued from this slot (the trait's contract).
                self.free.push(slot);
                return Err(e);
            }
            // Owned by `self` while the device is called, should it unwind.
            self.stranded_slots.push(slot);
            let recorded = self.device.record(stream);
            if recorded.is_err() {
                // No event behind the copy: wait for the whole stream,
                // after which the slot is free again.
                let _ = self.device.synchronize(stream);
            }
            let slot = self.stranded_slots.pop().expect("pushed above");
            match recorded {
                Ok(event) => {
                    let event = Arc::new(event);
                    self.busy.push_back(Busy {
                        event: event.clone(),
                        slot,
                        tensor: tensor.clone(),
                    });
                    pending.done = Some(event);
                }
                Err(e) => {
                    self.free.push(slot);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The tensors whose copies have all completed, in completion order.
    /// A failed copy is reported (naming its tensor) by a call that has
    /// nothing completed to hand back first.
    pub fn poll(&mut self) -> Result<Vec<Uploaded<D::Memory>>, Error> {
        let mut out = Vec::new();
        let mut failed = None;
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            let done = match &p.done {
                None => true,
                Some(ev) => match self.device.query(ev) {
                    Ok(done) => done,
                    Err(e) => {
                        // It stays pending: reported below if nothing
                        // completed, or by the next call.
                        failed.get_or_insert_with(|| upload_error(&p.name, e));
                        false
                    }
                },
            };
            if done {
                out.push(self.pending.remove(i).expect("in range").uploaded());
            } else {
                i += 1;
            }
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Wait for every upload and hand back the rest, in upload order.
    pub fn finish(mut self) -> Result<Vec<Uploaded<D::Memory>>, Error> {
        let mut out = Vec::with_capacity(self.pending.len());
        while let Some(p) = self.pending.front() {
            if let Some(ev) = &p.done {
                self.device.wait(ev).map_err(|e| upload_error(&p.name, e))?;
            }
            out.push(self.pending.pop_front().expect("not empty").uploaded());
        }
        Ok(out)
    }

    /// Tensors uploaded and not yet handed back.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Staging bytes allocated so far (at most `slots * slot_size`).
    pub fn staging_bytes(&self) -> usize {
        self.slots * self.opts.slot_size
    }
}

impl<D: Device> Drop for Uploader<'_, D> {
    fn drop(&mut self) {
        // Copies in flight read the slots and write the memory this is
        // about to free: let them finish. `synchronize` returns only once
        // they have, whatever it reports.
        for stream in &self.streams {
            let _ = self.device.synchronize(stream);
        }
    }
}

/// A slot to fill: a free one, a new one while fewer than `opts.slots`
/// exist, or else the oldest in flight once its copy has completed. If
/// that copy failed, the error names the tensor it carried.
fn take_slot<D: Device>(
    device: &D,
    free: &mut Vec<D::Pinned>,
    busy: &mut VecDeque<Busy<D>>,
    slots: &mut usize,
    opts: &UploadOptions,
) -> Result<D::Pinned, Error> {
    if let Some(slot) = free.pop() {
        return Ok(slot);
    }
    if *slots < opts.slots {
        let slot = device.alloc_pinned(opts.slot_size)?;
        *slots += 1;
        return Ok(slot);
    }
    let Some(oldest) = busy.front() else {
        return Err(Error::Setting {
            name: "slots",
            reason: "every staging slot is held and none is in flight".into(),
        });
    };
    // Wait before taking the slot out, so that it stays owned by the
    // pipeline, and freed only after the streams finish, should `wait`
    // unwind.
    let waited = device.wait(&oldest.event);
    let Busy { slot, tensor, .. } = busy.pop_front().expect("looked at above");
    // Completed, failed or not: the copy has finished with the slot.
    match waited {
        Ok(()) => Ok(slot),
        Err(e) => {
            free.push(slot);
            Err(upload_error(&tensor, e))
        }
    }
}
