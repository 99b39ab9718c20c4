//! The upload pipeline: tensors' host bytes through a bounded ring of
//! staging slots into device memory, several copies in flight over several
//! streams, each tensor handed back only once its bytes are on the device.
//!
//! Tensors are packed into the slot being filled, back to back (a tensor
//! larger than what is left continues in the next slot), and a slot's
//! copies are queued together when it is full, at [`Uploader::flush`] and
//! at [`Uploader::finish`]: one event per such launch, whatever the number
//! of tensors, so that a checkpoint of many small tensors costs one copy
//! per tensor and little else.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::fill::Filler;
use crate::{Device, DeviceMemory, Error, PinnedMemory};

/// How the pipeline stages its copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOptions {
    /// Bytes per staging slot: the largest single copy.
    pub slot_size: usize,
    /// Staging slots at most (allocated as needed): `slots * slot_size`
    /// bounds the staging memory.
    pub slots: usize,
    /// Streams the copies are spread over (each slot's copies share one).
    pub streams: usize,
    /// Threads filling the staging slots, the caller's included: pieces of
    /// a megabyte or more are split over them.
    pub fill_threads: usize,
}

impl Default for UploadOptions {
    /// 8 slots of 16 MiB on 2 streams, filled by half the cores (at most 8).
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        UploadOptions {
            slot_size: 16 << 20,
            slots: 8,
            streams: 2,
            fill_threads: (cores / 2).clamp(1, 8),
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

/// An event recorded after a launch, and whether it is known to have
/// completed (so that it is asked once, not once per tensor).
struct Mark<E> {
    event: E,
    done: AtomicBool,
}

impl<E> Mark<E> {
    fn is_done(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }
}

struct Pending<D: Device> {
    /// Its place in upload order.
    seq: u64,
    id: usize,
    name: Arc<str>,
    memory: D::Memory,
    /// Bytes whose copies are queued; the rest are staged.
    launched: usize,
    /// The events after the launches that carried its copies.
    marks: Vec<Arc<Mark<D::Event>>>,
}

impl<D: Device> Pending<D> {
    fn uploaded(self) -> Uploaded<D::Memory> {
        Uploaded {
            id: self.id,
            memory: self.memory,
        }
    }
}

/// A copy filled into the slot being filled, not yet queued.
struct Staged {
    seq: u64,
    dst_offset: usize,
    src_offset: usize,
    len: usize,
}

/// The slot being filled.
struct Filling<D: Device> {
    slot: D::Pinned,
    stream: usize,
    /// Bytes filled so far; the rest is free.
    filled: usize,
    staged: Vec<Staged>,
    /// The event after its latest launch.
    last: Option<Arc<Mark<D::Event>>>,
}

/// A full slot whose copies are in flight.
struct Busy<D: Device> {
    mark: Arc<Mark<D::Event>>,
    slot: D::Pinned,
}

/// Uploads tensors to a device through staging slots.
///
/// [`Uploader::upload`] (or [`Uploader::upload_into`], for memory the
/// caller allocated) copies a tensor's bytes into the slot being filled;
/// a slot's copies are queued when it is full, at [`Uploader::flush`] and
/// at [`Uploader::finish`]. It waits only when every slot is in flight, and
/// then for the oldest. [`Uploader::poll`] hands back the tensors whose
/// copies have completed, in completion order; [`Uploader::finish`] waits
/// for the rest. A slot is refilled only after the event recorded behind
/// its copies has completed, and a tensor's memory leaves the pipeline only
/// after its last copy has.
///
/// An error names one tensor; the tensors whose copies it stopped (those
/// launched together with the failed copy, or staged behind it) are
/// abandoned with it and never handed back, so [`Uploader::in_flight`],
/// not a count of tensors uploaded, says what may still come.
///
/// Dropping it, on an error path too, waits for every copy in flight before
/// the staging slots and device memory are freed.
pub struct Uploader<D: Device> {
    device: D,
    opts: UploadOptions,
    streams: Vec<D::Stream>,
    /// A stream of the caller's that every launch waits for.
    external: Option<u64>,
    /// Tensors not yet handed back, in upload order.
    pending: VecDeque<Pending<D>>,
    filling: Option<Filling<D>>,
    /// Full slots in flight, oldest first.
    busy: VecDeque<Busy<D>>,
    free: Vec<D::Pinned>,
    /// Memory of failed uploads, which copies may still write: freed only
    /// after the streams are synchronized.
    stranded: Vec<D::Memory>,
    /// Slots allocated so far.
    slots: usize,
    next_stream: usize,
    next_seq: u64,
    launches: u64,
    filler: Filler,
}

fn upload_error(name: &str, source: Error) -> Error {
    Error::Upload {
        tensor: name.to_string(),
        source: Box::new(source),
    }
}

impl<D: Device> Uploader<D> {
    /// A pipeline onto `device` (a device, a reference to one or an `Arc`).
    /// Slots are allocated as the uploads need them; the streams at once.
    pub fn new(device: D, opts: UploadOptions) -> Result<Self, Error> {
        for (name, value) in [
            ("slot_size", opts.slot_size),
            ("slots", opts.slots),
            ("streams", opts.streams),
            ("fill_threads", opts.fill_threads),
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
        let filler = Filler::new(opts.fill_threads)?;
        Ok(Uploader {
            device,
            opts,
            streams,
            external: None,
            pending: VecDeque::new(),
            filling: None,
            busy: VecDeque::new(),
            free: Vec::new(),
            stranded: Vec::new(),
            slots: 0,
            next_stream: 0,
            next_seq: 0,
            launches: 0,
            filler,
        })
    }

    /// The device it uploads to.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Its options.
    pub fn options(&self) -> &UploadOptions {
        &self.opts
    }

    /// Make every later launch of copies wait for the work queued, by then,
    /// on `stream` (`None`: wait for nothing). This orders the copies after
    /// whatever the caller's stream was doing with the destination memory,
    /// such as torch's allocator handing out a block its stream just freed.
    ///
    /// # Safety
    ///
    /// `stream` must stay a valid handle for [`Device::wait_external`]
    /// until it is replaced or the uploader is dropped.
    pub unsafe fn wait_for_stream(&mut self, stream: Option<u64>) {
        self.external = stream;
    }

    /// Copy `bytes` into new device memory; `id` and `name` identify the
    /// tensor when it comes back and in errors. Returns once the bytes are
    /// staged, not copied.
    pub fn upload(&mut self, id: usize, name: &str, bytes: &[u8]) -> Result<(), Error> {
        let memory = self
            .device
            .alloc(bytes.len())
            .map_err(|e| upload_error(name, e))?;
        self.upload_into(id, name, bytes, memory)
    }

    /// Copy `bytes` into `memory`, which must be as long; as
    /// [`Uploader::upload`] otherwise. `memory` comes back with the tensor.
    pub fn upload_into(
        &mut self,
        id: usize,
        name: &str,
        bytes: &[u8],
        memory: D::Memory,
    ) -> Result<(), Error> {
        if memory.len() != bytes.len() {
            return Err(upload_error(
                name,
                Error::Setting {
                    name: "destination",
                    reason: format!(
                        "{} bytes of device memory for a tensor of {} bytes",
                        memory.len(),
                        bytes.len()
                    ),
                },
            ));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let name: Arc<str> = Arc::from(name);
        self.pending.push_back(Pending {
            seq,
            id,
            name: name.clone(),
            memory,
            launched: 0,
            marks: Vec::new(),
        });
        self.stage(seq, bytes).map_err(|e| {
            self.abandon(seq);
            match e {
                // A copy of an earlier tensor failed: that one is named.
                e @ Error::Upload { .. } => e,
                e => upload_error(&name, e),
            }
        })
    }

    /// Fill `bytes` into slots as copies of tensor `seq`, launching each
    /// slot as it fills.
    fn stage(&mut self, seq: u64, bytes: &[u8]) -> Result<(), Error> {
        let mut done = 0;
        while done < bytes.len() {
            let full = self
                .filling
                .as_ref()
                .is_none_or(|f| f.filled == self.opts.slot_size);
            if full {
                self.retire()?;
                let slot = self.take_slot()?;
                let stream = self.next_stream;
                self.next_stream = (stream + 1) % self.streams.len();
                self.filling = Some(Filling {
                    slot,
                    stream,
                    filled: 0,
                    staged: Vec::new(),
                    last: None,
                });
            }
            let f = self.filling.as_mut().expect("a slot is being filled");
            let n = (bytes.len() - done).min(self.opts.slot_size - f.filled);
            // Copies launched from the slot's earlier bytes may be in
            // flight; this range is not theirs.
            self.filler
                .copy(f.slot.range_mut(f.filled, n), &bytes[done..done + n]);
            f.staged.push(Staged {
                seq,
                dst_offset: done,
                src_offset: f.filled,
                len: n,
            });
            f.filled += n;
            done += n;
            if f.filled == self.opts.slot_size {
                self.launch()?;
            }
        }
        Ok(())
    }

    /// Forget tensor `seq` after a failure: its staged copies are dropped,
    /// and its memory (which launched copies may still write) stays until
    /// the streams are synchronized.
    fn abandon(&mut self, seq: u64) {
        if let Some(f) = self.filling.as_mut() {
            f.staged.retain(|c| c.seq != seq);
        }
        if let Ok(i) = self.pending.binary_search_by_key(&seq, |p| p.seq) {
            let p = self.pending.remove(i).expect("found");
            self.stranded.push(p.memory);
        }
    }

    /// Queue the copies staged in the slot being filled, then record an
    /// event behind them. A failure abandons every tensor with a copy not
    /// queued and names the first of them.
    fn launch(&mut self) -> Result<(), Error> {
        let Some(f) = self.filling.as_mut() else {
            return Ok(());
        };
        if f.staged.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut f.staged);
        self.launches += 1;
        let stream = &self.streams[f.stream];
        let mut failure: Option<(usize, Error)> = None;
        if let Some(external) = self.external {
            // SAFETY: `wait_for_stream`'s caller vouched for the handle.
            if let Err(e) = unsafe { self.device.wait_external(stream, external) } {
                failure = Some((0, e));
            }
        }
        let mut queued = 0;
        if failure.is_none() {
            for (k, c) in staged.iter().enumerate() {
                let i = self
                    .pending
                    .binary_search_by_key(&c.seq, |p| p.seq)
                    .expect("a staged copy's tensor is pending");
                // SAFETY: the slot stays in `self.filling` (then `busy`) and
                // the memory in `pending` (or `stranded`) until the event
                // recorded below has completed: slots are refilled only
                // after `wait` on it (or beyond `filled`, which no copy
                // reads), memory leaves only once `query` or `wait` said it
                // completed, and dropping `self` synchronizes every stream
                // before anything is freed.
                let r = unsafe {
                    self.device.copy_to_device(
                        stream,
                        &self.pending[i].memory,
                        c.dst_offset,
                        &f.slot,
                        c.src_offset,
                        c.len,
                    )
                };
                match r {
                    Ok(()) => queued = k + 1,
                    Err(e) => {
                        failure = Some((k, e));
                        break;
                    }
                }
            }
        }
        if queued > 0 {
            match self.device.record(stream) {
                Ok(event) => {
                    let mark = Arc::new(Mark {
                        event,
                        done: AtomicBool::new(false),
                    });
                    for c in &staged[..queued] {
                        let i = self
                            .pending
                            .binary_search_by_key(&c.seq, |p| p.seq)
                            .expect("pending");
                        let p = &mut self.pending[i];
                        p.launched += c.len;
                        if !p.marks.last().is_some_and(|m| Arc::ptr_eq(m, &mark)) {
                            p.marks.push(mark.clone());
                        }
                    }
                    f.last = Some(mark);
                }
                Err(e) => {
                    // No event behind the copies: wait for them here, then
                    // give up on every tensor of the launch.
                    let _ = self.device.synchronize(stream);
                    failure = Some((0, e));
                }
            }
        }
        let Some((k, e)) = failure else {
            return Ok(());
        };
        let named = self
            .pending
            .binary_search_by_key(&staged[k].seq, |p| p.seq)
            .map(|i| self.pending[i].name.clone())
            .expect("pending");
        for c in &staged[k..] {
            self.abandon(c.seq);
        }
        Err(upload_error(&named, e))
    }

    /// Launch the slot being filled and move it to the busy ones.
    fn retire(&mut self) -> Result<(), Error> {
        if self.filling.is_none() {
            return Ok(());
        }
        self.launch()?;
        let f = self.filling.take().expect("checked above");
        match f.last {
            Some(mark) => self.busy.push_back(Busy { mark, slot: f.slot }),
            None => self.free.push(f.slot),
        }
        Ok(())
    }

    /// A slot to fill: a free one, a new one while fewer than `opts.slots`
    /// exist, or else the oldest in flight once its copies have completed.
    fn take_slot(&mut self) -> Result<D::Pinned, Error> {
        if let Some(slot) = self.free.pop() {
            return Ok(slot);
        }
        if self.slots < self.opts.slots {
            let slot = self.device.alloc_pinned(self.opts.slot_size)?;
            self.slots += 1;
            return Ok(slot);
        }
        let Some(oldest) = self.busy.front() else {
            return Err(Error::Setting {
                name: "slots",
                reason: "every staging slot is held and none is in flight".into(),
            });
        };
        // Wait before taking the slot out, so that it stays owned by the
        // pipeline, and freed only after the streams finish, should `wait`
        // unwind.
        let waited = if oldest.mark.is_done() {
            Ok(())
        } else {
            self.device.wait(&oldest.mark.event)
        };
        let Busy { slot, mark } = self.busy.pop_front().expect("looked at above");
        // Completed, failed or not: the copies have finished with the slot.
        match waited {
            Ok(()) => {
                mark.done.store(true, Ordering::Relaxed);
                Ok(slot)
            }
            Err(e) => {
                self.free.push(slot);
                Err(self.blame(e))
            }
        }
    }

    /// `e`, a failed event's error, named after the first tensor still
    /// pending whose copies failed.
    fn blame(&self, e: Error) -> Error {
        for p in &self.pending {
            for m in &p.marks {
                if !m.is_done() && self.device.query(&m.event).is_err() {
                    return upload_error(&p.name, e);
                }
            }
        }
        e
    }

    /// Queue the copies staged so far without waiting for the slot to
    /// fill: call it when no more bytes are coming for a while, so that
    /// the tensors staged can complete.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.launch()
    }

    /// The tensors whose copies have all completed, in completion order.
    /// Copies still staged are not launched (see [`Uploader::flush`]). A
    /// failed copy is reported (naming a tensor it carried) by a call that
    /// has nothing completed to hand back first.
    pub fn poll(&mut self) -> Result<Vec<Uploaded<D::Memory>>, Error> {
        let mut out = Vec::new();
        let mut failed = None;
        // Events found still running in this call, asked once each.
        let mut running: Vec<*const Mark<D::Event>> = Vec::new();
        let mut keep = VecDeque::with_capacity(self.pending.len());
        for p in std::mem::take(&mut self.pending) {
            let mut done = p.launched == p.memory.len();
            for m in &p.marks {
                if !done {
                    break;
                }
                if m.is_done() {
                    continue;
                }
                if running.contains(&Arc::as_ptr(m)) {
                    done = false;
                    continue;
                }
                match self.device.query(&m.event) {
                    Ok(true) => m.done.store(true, Ordering::Relaxed),
                    Ok(false) => {
                        running.push(Arc::as_ptr(m));
                        done = false;
                    }
                    Err(e) => {
                        // It stays pending: reported below if nothing
                        // completed, or by the next call.
                        failed.get_or_insert_with(|| upload_error(&p.name, e));
                        running.push(Arc::as_ptr(m));
                        done = false;
                    }
                }
            }
            if done {
                out.push(p.uploaded());
            } else {
                keep.push_back(p);
            }
        }
        self.pending = keep;
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Launch what is staged, wait for every upload and hand back the rest,
    /// in upload order. The pipeline stays usable. On a failure nothing is
    /// handed back: the tensors that completed stay for [`Uploader::poll`].
    pub fn finish(&mut self) -> Result<Vec<Uploaded<D::Memory>>, Error> {
        self.launch()?;
        for p in &self.pending {
            for m in &p.marks {
                if !m.is_done() {
                    self.device
                        .wait(&m.event)
                        .map_err(|e| upload_error(&p.name, e))?;
                    m.done.store(true, Ordering::Relaxed);
                }
            }
        }
        Ok(self.pending.drain(..).map(Pending::uploaded).collect())
    }

    /// Launches so far: a caller can poll only when one happened, rather
    /// than after every tensor.
    pub fn launches(&self) -> u64 {
        self.launches
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

impl<D: Device> Drop for Uploader<D> {
    fn drop(&mut self) {
        // Copies in flight read the slots and write the memory this is
        // about to free: let them finish. `synchronize` returns only once
        // they have, whatever it reports.
        for stream in &self.streams {
            let _ = self.device.synchronize(stream);
        }
        // Only now may what the copies used go, and it goes here, in this
        // order, rather than by the order the fields are declared in: the
        // destinations (tensors not handed back, and those stranded by a
        // failure), then the slots (with the events behind their copies),
        // then the streams. The device and the fill threads, which hold
        // nothing a copy uses, go after.
        drop(std::mem::take(&mut self.pending));
        drop(std::mem::take(&mut self.stranded));
        drop(self.filling.take());
        drop(std::mem::take(&mut self.busy));
        drop(std::mem::take(&mut self.free));
        drop(std::mem::take(&mut self.streams));
    }
}
