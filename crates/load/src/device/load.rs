//! Loads onto a device: reads land in page-locked staging, each landed
//! extent's pieces are copied asynchronously into their tensors'
//! destinations, and a slot goes back to the reads once its copies
//! completed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use weightlift_format::{Checkpoint, TensorId};
use weightlift_gpu::{Device, DeviceMemory};
use weightlift_io::{Engine, EngineOptions, Ring};
use weightlift_plan::{ReadPlan, Selection};

use super::staged::{Landed, Reads, paths};
use crate::host::check_unchanged;
use crate::session::Wait;
use crate::{Error, LoadOptions, StagingOptions};

/// How long one wait for reads lasts before the caller's `wait` callback is
/// asked whether to go on.
pub(crate) const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Poll with `poll` in slices of [`WAIT_SLICE`], asking `wait` after each
/// slice that brought nothing whether to go on; a no is
/// [`Error::Cancelled`].
pub(crate) fn wait_in_slices<T>(
    mut poll: impl FnMut(Duration) -> Poll<Result<T, Error>>,
    wait: &mut Wait<'_>,
) -> Result<T, Error> {
    loop {
        match poll(WAIT_SLICE) {
            Poll::Ready(result) => return result,
            Poll::Pending => {
                if !wait() {
                    return Err(Error::Cancelled);
                }
            }
        }
    }
}

/// How long to wait for reads while copies are in flight, before looking
/// at the copies again.
const POLL_SLICE: Duration = Duration::from_micros(200);

/// Memory for one tensor's bytes on the device, and what keeps it
/// allocated.
#[derive(Debug)]
pub struct Destination<O> {
    /// The device address of its first byte.
    pub ptr: u64,
    /// Its length in bytes: the tensor's.
    pub len: u64,
    /// What keeps it allocated (a Python tensor, a device allocation),
    /// handed back with the tensor once its bytes are there.
    pub owner: O,
}

/// Where tensors go: "give me a destination for this tensor, keep its owner
/// until I hand it back".
///
/// # Safety
///
/// For a [`Destination`] returned, `ptr..ptr + len` must be memory of the
/// load's device that stays allocated as long as `owner` lives, and that
/// nothing else reads or writes until the load hands the tensor back (or
/// is dropped).
pub unsafe trait Destinations {
    /// What keeps a destination allocated.
    type Owner: Send;

    /// A destination for every byte of tensor `id`, or `None` when there is
    /// no room for it until tensors in flight are handed back (a reused
    /// buffer, say): the load then hands back what it has and asks again.
    fn destination(
        &mut self,
        ckpt: &Checkpoint,
        id: TensorId,
    ) -> Result<Option<Destination<Self::Owner>>, Error>;
}

/// A destination for tensor `id` of `ckpt` from `dests`, checked to hold
/// exactly the tensor's bytes; `None` when there is no room for it yet.
/// Errors name the tensor.
pub(crate) fn ask<T: Destinations>(
    dests: &mut T,
    ckpt: &Checkpoint,
    id: TensorId,
) -> Result<Option<Destination<T::Owner>>, Error> {
    let len = ckpt.tensor(id).len();
    let named = |e: Error| e.about(ckpt, id);
    let Some(d) = dests.destination(ckpt, id).map_err(named)? else {
        return Ok(None);
    };
    if d.len != len {
        return Err(named(Error::Destination {
            expected: len,
            given: d.len,
        }));
    }
    Ok(Some(d))
}

/// Destinations the device allocates, one per tensor: each tensor is
/// handed back with its memory as owner.
#[derive(Debug)]
pub struct Allocate<D: Device>(pub D);

// SAFETY: the memory is the owner: allocated by the device for this tensor
// alone, it lives as long as the owner.
unsafe impl<D: Device> Destinations for Allocate<D> {
    type Owner = D::Memory;

    fn destination(
        &mut self,
        ckpt: &Checkpoint,
        id: TensorId,
    ) -> Result<Option<Destination<D::Memory>>, Error> {
        let len = ckpt.tensor(id).len();
        let bytes = usize::try_from(len).map_err(|_| Error::NoRoom { len })?;
        let memory = self.0.alloc(bytes)?;
        Ok(Some(Destination {
            ptr: memory.device_ptr(),
            len,
            owner: memory,
        }))
    }
}

/// The next tensors on the device, when polled: `Poll::Pending` when none
/// completed in time, `None` once every tensor was handed out.
pub type Polled<O> = Poll<Result<Option<Vec<Loaded<O>>>, Error>>;

/// A tensor on the device: its bytes are all there.
#[derive(Debug)]
pub struct Loaded<O> {
    /// The tensor.
    pub id: TensorId,
    /// What keeps its memory allocated.
    pub owner: O,
}

/// What a device load stages through: the device, its streams, and a ring
/// of page-locked slots the reads land in, registered with the device
/// once. Kept between loads (page-locking is costly).
///
/// Dropping it waits for every copy on its streams before the slots are
/// unregistered and freed.
pub struct Staging<D: Device> {
    device: D,
    options: StagingOptions,
    streams: Vec<D::Stream>,
    /// The ring registered with the device: the copies' source. `None`
    /// only while dropping.
    pinned: Option<D::Pinned>,
    ring: Arc<Ring>,
    /// A stream of the caller's that every launch waits for.
    external: Option<u64>,
    next_stream: usize,
}

impl<D: Device> Staging<D> {
    /// Staging onto `device`: `options.slots()` slots of
    /// `options.slot_size()` bytes, page-locked, and `options.streams`
    /// streams.
    pub fn new(device: D, options: StagingOptions) -> Result<Self, Error> {
        options.check()?;
        let ring = Arc::new(Ring::new(options.slot_size(), options.slots())?);
        let region = ring.region();
        // SAFETY: the ring's memory is a page-aligned mapping of a multiple
        // of 4096 bytes (slot sizes are), kept alive by `ring` until after
        // `pinned` is dropped (`Drop` below). Its slots are written only by
        // reads into slots no copy reads: a slot is handed to the reads
        // again only once the event after its copies completed.
        let pinned = unsafe { device.register(region.as_ptr(), region.len()) }?;
        let streams = (0..options.streams)
            .map(|_| device.stream())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Staging {
            device,
            options,
            streams,
            pinned: Some(pinned),
            ring,
            external: None,
            next_stream: 0,
        })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The settings.
    pub fn options(&self) -> &StagingOptions {
        &self.options
    }

    /// Make every later launch of copies wait for the work queued, by then,
    /// on `stream` (`None`: wait for nothing): torch's current stream, say,
    /// so that a block its allocator just recycled, or a target a kernel is
    /// still writing, is never written under that work.
    ///
    /// # Safety
    ///
    /// `stream` must stay a valid handle for [`Device::wait_external`] until
    /// it is replaced or the staging is dropped.
    pub unsafe fn wait_for_stream(&mut self, stream: Option<u64>) {
        self.external = stream;
    }

    /// The staging, described.
    pub fn describe(&self) -> String {
        format!(
            "staging {} pinned slots of {} KiB, {} fill thread{}, {} stream{}",
            self.options.slots(),
            self.options.slot_size() >> 10,
            self.options.fill_threads,
            if self.options.fill_threads == 1 {
                ""
            } else {
                "s"
            },
            self.options.streams,
            if self.options.streams == 1 { "" } else { "s" },
        )
    }

    /// Copy `bytes` into `dst` through the staging slots and wait until
    /// they are there: one tensor on its own, read into host memory. It
    /// must not run while a load uses the staging (a load owns it then).
    pub fn upload(&mut self, bytes: &[u8], dst: &D::Memory) -> Result<(), weightlift_gpu::Error> {
        let slot_size = self.options.slot_size();
        let slots = self.options.slots();
        let base = self.ring.region().as_ptr();
        let pinned = self.pinned.as_ref().expect("registered");
        let stream = &self.streams[0];
        // The event after the latest copy out of each slot.
        let mut last: Vec<Option<D::Event>> = (0..slots).map(|_| None).collect();
        let result = (|| {
            for (k, chunk) in bytes.chunks(slot_size).enumerate() {
                let slot = k % slots;
                if let Some(e) = last[slot].take() {
                    self.device.wait(&e)?;
                }
                // SAFETY: the slot lies in the ring (`slot < slots`, `chunk`
                // at most a slot); no read writes the ring (no load owns the
                // staging) and no copy reads this slot (its last copy was
                // waited for above).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        chunk.as_ptr(),
                        base.add(slot * slot_size),
                        chunk.len(),
                    );
                }
                if let Some(external) = self.external {
                    // SAFETY: `wait_for_stream`'s caller vouched for it.
                    unsafe { self.device.wait_external(stream, external) }?;
                }
                // SAFETY: the slot is not written again, and `dst` (the
                // caller's) not let go, before this returns, which is after
                // the stream was synchronized below.
                unsafe {
                    self.device.copy_to_device(
                        stream,
                        dst,
                        k * slot_size,
                        pinned,
                        slot * slot_size,
                        chunk.len(),
                    )
                }?;
                last[slot] = Some(self.device.record(stream)?);
            }
            Ok(())
        })();
        // Whatever happened, nothing may still read a slot or write `dst`.
        let synced = self.device.synchronize(stream);
        result.and(synced)
    }

    /// Wait for every copy on every stream; whether all succeeded.
    fn synchronize(&self) -> Result<(), weightlift_gpu::Error> {
        let mut result = Ok(());
        for s in &self.streams {
            // `synchronize` returns only once the stream's copies finished,
            // whatever it reports.
            if let Err(e) = self.device.synchronize(s) {
                result = result.and(Err(e));
            }
        }
        result
    }
}

impl<D: Device> Drop for Staging<D> {
    fn drop(&mut self) {
        // Copies in flight read the registered slots: let them finish, then
        // unregister, then (with `ring`, when its last holder goes) unmap.
        let _ = self.synchronize();
        drop(self.pinned.take());
    }
}

/// Staging with these settings, described: "staging 8 pinned slots of
/// 16384 KiB, 4 fill threads, 2 streams".
pub(crate) fn describe_staging(o: &StagingOptions) -> String {
    format!(
        "staging {} pinned slots of {} KiB, {} fill thread{}, {} stream{}",
        o.slots(),
        o.slot_size() >> 10,
        o.fill_threads,
        if o.fill_threads == 1 { "" } else { "s" },
        o.streams,
        if o.streams == 1 { "" } else { "s" },
    )
}

/// A copy launch: the event after its copies, the slot they read, the
/// tensors whose pieces they carry.
struct Launch<E> {
    event: E,
    slot: usize,
    tensors: Vec<TensorId>,
}

/// An extent that landed in a slot, which it holds until every piece was
/// copied out.
struct Held {
    /// The extent's index in the plan.
    index: usize,
    slot: usize,
    /// Bytes that landed.
    len: usize,
    /// Its first piece not launched yet (waiting for room for its tensor).
    next: usize,
    /// Launches from it whose copies have not completed.
    launches: u32,
}

/// A tensor with a destination whose bytes are not all there yet.
struct Landing<M, O> {
    memory: M,
    owner: O,
    /// Pieces whose copies have not completed.
    pieces_left: u32,
}

/// Tensors loading onto a device, handed out in completion order by
/// [`DeviceLoad::next`].
///
/// Host memory stays within the staging ring, whatever the size of the
/// files: reads land in its slots (direct reads straight from storage;
/// from the page cache or tmpfs, threads copy out of a mapping), and the
/// device copies from there. Dropping it stops the reads, waits for every
/// copy in flight, then lets go of the destinations.
pub struct DeviceLoad<D: Device, T: Destinations> {
    /// `None` once handed back by [`DeviceLoad::into_staging`].
    staging: Option<Staging<D>>,
    reads: Option<Reads>,
    ckpt: Arc<Checkpoint>,
    plan: Arc<ReadPlan>,
    dests: T,
    describe: String,
    /// Indexed by tensor id: pieces per tensor, for those in the plan.
    pieces: Vec<u32>,
    landing: std::collections::HashMap<TensorId, Landing<D::Memory, T::Owner>>,
    launches: VecDeque<Launch<D::Event>>,
    /// Extents landed and holding their slots, in the order they landed.
    held: VecDeque<Held>,
    /// The tensors of the plan (in file order) before this one have been
    /// given destinations.
    given: usize,
    /// Extents landed so far.
    landed: usize,
    ready: Vec<Loaded<T::Owner>>,
    /// Tensors handed out so far, and in all.
    handed: usize,
    total: usize,
    failed: bool,
}

impl<D: Device, T: Destinations> DeviceLoad<D, T> {
    /// Start loading the tensors of `ckpt` that `selection` names through
    /// `staging` into destinations from `dests`. The backend is chosen for
    /// staged reads ([`Engine::open`]) with `options.engine`'s candidates;
    /// the read size and the reads in flight follow the staging.
    pub fn start(
        staging: Staging<D>,
        ckpt: Arc<Checkpoint>,
        selection: &Selection,
        dests: T,
        options: &LoadOptions,
    ) -> Result<Self, Error> {
        let s = &staging.options;
        let engine_options = EngineOptions {
            slot_size: s.slot_size(),
            ring_bytes: s.slot_size() * s.slots(),
            queue_depth: options.engine.queue_depth.min(s.slots()),
            threads: s.fill_threads,
            ..options.engine.clone()
        };
        let engine = Engine::open(&paths(&ckpt), &engine_options, true)?;
        check_unchanged(&ckpt, engine.files())?;
        let plan = Arc::new(weightlift_plan::plan(&ckpt, selection, &engine.geometry())?);
        let mut pieces = vec![0u32; ckpt.len()];
        for p in plan.all_pieces() {
            pieces[p.tensor.index()] += 1;
        }
        let describe = format!("{}; {}", engine.describe(), staging.describe());
        log::debug!(target: "weightlift", "{describe}");
        let total = plan.tensors().len();
        let reads = Reads::start(engine, plan.clone(), staging.ring.clone())?;
        let mut load = DeviceLoad {
            staging: Some(staging),
            reads: Some(reads),
            ckpt,
            plan,
            dests,
            describe,
            pieces,
            landing: std::collections::HashMap::new(),
            launches: VecDeque::new(),
            held: VecDeque::new(),
            given: 0,
            landed: 0,
            ready: Vec::new(),
            handed: 0,
            total,
            failed: false,
        };
        // Tensors with no bytes have no pieces: done before anything is read.
        let empty: Vec<TensorId> = load
            .plan
            .tensors()
            .iter()
            .copied()
            .filter(|&id| load.ckpt.tensor(id).is_empty())
            .collect();
        for id in empty {
            if !load.destine(id)? {
                return Err(Error::NoRoom { len: 0 }.about(&load.ckpt, id));
            }
            load.complete_piece(id);
        }
        Ok(load)
    }

    /// The backend, its settings and the staging, in one line.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// How many tensors the load hands out in all.
    pub fn tensor_count(&self) -> usize {
        self.total
    }

    /// The next tensors whose bytes are all on the device, in completion
    /// order; `None` once every tensor was handed out, or after a failure.
    /// While it waits for reads it asks `wait`, every 50 ms, whether to go
    /// on; a no gives [`Error::Cancelled`].
    pub fn next(&mut self, wait: &mut Wait<'_>) -> Result<Option<Vec<Loaded<T::Owner>>>, Error> {
        wait_in_slices(|slice| self.poll_next(slice), wait)
    }

    /// As [`DeviceLoad::next`], waiting for reads at most about `timeout`:
    /// `Poll::Pending` when no tensor completed by then (the load goes on).
    pub fn poll_next(&mut self, timeout: Duration) -> Polled<T::Owner> {
        if self.failed {
            return Poll::Ready(Ok(None));
        }
        let result = self.step(Instant::now() + timeout);
        if let Poll::Ready(Err(_)) = result {
            self.failed = true;
        }
        result
    }

    fn step(&mut self, deadline: Instant) -> Polled<T::Owner> {
        loop {
            self.poll_launches()?;
            if !self.ready.is_empty() {
                let batch = std::mem::take(&mut self.ready);
                self.handed += batch.len();
                return Poll::Ready(Ok(Some(batch)));
            }
            let received = self.receive(Duration::ZERO)?;
            if self.advance()? || received {
                continue;
            }
            // Every extent landed (the reads report that they finished only
            // once every slot is back), or reading ended.
            let reads_done = self.landed == self.plan.extents().len()
                || self.reads.as_ref().is_none_or(Reads::finished);
            // Every slot is held: no read can land until copies complete or
            // room is made.
            let all_held = self.held.len() >= self.slots();
            if self.launches.is_empty() && self.held.is_empty() && reads_done {
                return Poll::Ready(Ok(None));
            }
            if self.launches.is_empty() && (reads_done || all_held) {
                // Waiting for room, and nothing in flight can make any.
                return Poll::Ready(Err(self.no_room()));
            }
            // Nothing is ready: wait, but not past the deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Poll::Pending;
            }
            if self.launches.is_empty() {
                self.receive(left.min(WAIT_SLICE))?;
            } else if reads_done || all_held {
                // Nothing to read meanwhile: wait for the oldest copies.
                let staging = self.staging();
                if let Err(e) = staging.device.wait(&self.launches[0].event) {
                    return Poll::Ready(Err(self.blame(0, e)));
                }
            } else {
                self.receive(POLL_SLICE)?;
            }
        }
    }

    fn staging(&self) -> &Staging<D> {
        self.staging
            .as_ref()
            .expect("staging present until handed back")
    }

    fn slots(&self) -> usize {
        self.staging().options.slots()
    }

    /// Take what the reads reported, waiting at most `timeout` for the
    /// first; whether anything came.
    fn receive(&mut self, timeout: Duration) -> Result<bool, Error> {
        let mut any = false;
        let mut next = self.reads.as_mut().and_then(|r| r.next(timeout));
        while let Some(landed) = next {
            any = true;
            match landed {
                Landed::Extent { index, slot, len } => {
                    self.landed += 1;
                    self.held.push_back(Held {
                        index,
                        slot,
                        len,
                        next: 0,
                        launches: 0,
                    });
                }
                Landed::Finished(Ok(())) => {}
                Landed::Finished(Err(e)) => return Err(self.name_read_error(e)),
            }
            next = self.reads.as_mut().and_then(|r| r.next(Duration::ZERO));
        }
        Ok(any)
    }

    /// Launch the copies of every landed piece whose tensor has a
    /// destination, asking for new ones as pieces need them (the first that
    /// gets none stops the asking until room is made); whether anything
    /// was launched.
    ///
    /// Destinations are given in file order ([`DeviceLoad::destine_through`]),
    /// the order the reads are issued in, so a tensor that has one never
    /// waits for a slot held by a tensor before it that has none: every
    /// tensor under way completes, is handed out, and makes room.
    fn advance(&mut self) -> Result<bool, Error> {
        let plan = self.plan.clone();
        let mut asking = true;
        let mut any = false;
        for h in 0..self.held.len() {
            let Held { index, next, .. } = self.held[h];
            let pieces = plan.pieces(&plan.extents()[index]);
            let mut end = next;
            while end < pieces.len() {
                let id = pieces[end].tensor;
                if self.landing.contains_key(&id) || (asking && self.destine_through(id)?) {
                    end += 1;
                } else {
                    asking = false;
                    break;
                }
            }
            if end > next {
                self.launch(h, next..end)?;
                any = true;
            }
        }
        Ok(any)
    }

    /// Give destinations, in file order, to every tensor of the plan up to
    /// `id` that has none yet; false when one gets none (no room yet).
    fn destine_through(&mut self, id: TensorId) -> Result<bool, Error> {
        let plan = self.plan.clone();
        let tensors = plan.tensors();
        let Ok(pos) = tensors.binary_search(&id) else {
            return Ok(true);
        };
        while self.given <= pos {
            let t = tensors[self.given];
            // Empty tensors had theirs at the start.
            if !self.ckpt.tensor(t).is_empty() && !self.destine(t)? {
                return Ok(false);
            }
            self.given += 1;
        }
        Ok(true)
    }

    /// Give tensor `id` a destination if it has none; false when there is no
    /// room for one yet.
    fn destine(&mut self, id: TensorId) -> Result<bool, Error> {
        if self.landing.contains_key(&id) {
            return Ok(true);
        }
        let Some(d) = ask(&mut self.dests, &self.ckpt, id)? else {
            return Ok(false);
        };
        let ckpt = self.ckpt.clone();
        let named = |e: Error| e.about(&ckpt, id);
        let len = usize::try_from(d.len).map_err(|_| named(Error::NoRoom { len: d.len }))?;
        let staging = self.staging.as_ref().expect("staging present");
        // SAFETY: `Destinations`' contract: the memory stays allocated while
        // its owner lives, and nothing else uses it until the tensor is
        // handed back. The owner is kept beside it in `landing` until then,
        // and dropping the load waits for every copy before either goes.
        let memory = unsafe { staging.device.borrow(d.ptr, len) }.map_err(|e| named(e.into()))?;
        self.landing.insert(
            id,
            Landing {
                memory,
                owner: d.owner,
                pieces_left: self.pieces[id.index()],
            },
        );
        Ok(true)
    }

    /// Queue the copies of pieces `range` of held extent `h` from its
    /// slot, then an event behind them.
    fn launch(&mut self, h: usize, range: std::ops::Range<usize>) -> Result<(), Error> {
        let plan = self.plan.clone();
        let Held {
            index, slot, len, ..
        } = self.held[h];
        let staging = self.staging.as_mut().expect("staging present");
        let k = staging.next_stream;
        staging.next_stream = (k + 1) % staging.streams.len();
        let stream = &staging.streams[k];
        let pinned = staging.pinned.as_ref().expect("registered");
        let base = slot * staging.options.slot_size();
        let pieces = &plan.pieces(&plan.extents()[index])[range.clone()];
        let first = pieces.first().map(|p| p.tensor);
        let blame = |e: weightlift_gpu::Error, id: Option<TensorId>| match id {
            Some(id) => Error::Device(e).about(&self.ckpt, id),
            None => Error::Device(e),
        };
        if let Some(external) = staging.external {
            // SAFETY: `wait_for_stream`'s caller vouched for the handle.
            unsafe { staging.device.wait_external(stream, external) }
                .map_err(|e| blame(e, first))?;
        }
        let mut tensors = Vec::with_capacity(pieces.len());
        for p in pieces {
            let (offset, n) = (p.extent_offset as usize, p.len as usize);
            if offset + n > len {
                // The file ended inside a tensor: the engine reports that as
                // truncation, so this is a plan that does not match the files.
                return Err(blame(
                    weightlift_gpu::Error::Setting {
                        name: "extent",
                        reason: format!("a piece ends at {} of {len} bytes read", offset + n),
                    },
                    Some(p.tensor),
                ));
            }
            let dst = &self.landing[&p.tensor].memory;
            // SAFETY: the slot stays with this load (not given back to the
            // reads) and the destination in `landing` until the event
            // recorded below completed; dropping the load synchronizes every
            // stream before either goes. The piece's range of the
            // destination is its own: pieces of one tensor never overlap.
            unsafe {
                staging.device.copy_to_device(
                    stream,
                    dst,
                    p.tensor_offset as usize,
                    pinned,
                    base + offset,
                    n,
                )
            }
            .map_err(|e| blame(e, Some(p.tensor)))?;
            tensors.push(p.tensor);
        }
        let event = staging.device.record(stream).map_err(|e| blame(e, first))?;
        self.launches.push_back(Launch {
            event,
            slot,
            tensors,
        });
        let held = &mut self.held[h];
        held.next = range.end;
        held.launches += 1;
        Ok(())
    }

    /// Hand back the slots of every launch whose copies completed, and
    /// count their pieces as landed.
    fn poll_launches(&mut self) -> Result<(), Error> {
        let mut i = 0;
        while i < self.launches.len() {
            let staging = self.staging();
            match staging.device.query(&self.launches[i].event) {
                Ok(true) => {
                    let launch = self.launches.remove(i).expect("in range");
                    self.copied_out(launch.slot);
                    for id in launch.tensors {
                        self.complete_piece(id);
                    }
                }
                Ok(false) => i += 1,
                Err(e) => return Err(self.blame(i, e)),
            }
        }
        Ok(())
    }

    /// A launch from `slot` completed: the slot goes back to the reads once
    /// every piece of its extent was copied out.
    fn copied_out(&mut self, slot: usize) {
        let plan = &self.plan;
        let Some(h) = self.held.iter().position(|h| h.slot == slot) else {
            return;
        };
        let held = &mut self.held[h];
        held.launches -= 1;
        let pieces = plan.pieces(&plan.extents()[held.index]).len();
        if held.launches == 0 && held.next == pieces {
            self.held.remove(h);
            if let Some(reads) = &self.reads {
                reads.give_back(slot);
            }
        }
    }

    /// One piece of `id` is on the device; the tensor is ready after its
    /// last.
    fn complete_piece(&mut self, id: TensorId) {
        let Some(l) = self.landing.get_mut(&id) else {
            return;
        };
        l.pieces_left = l.pieces_left.saturating_sub(1);
        if l.pieces_left == 0 {
            let l = self.landing.remove(&id).expect("present");
            // The borrowed memory goes; its owner is handed out.
            drop(l.memory);
            self.ready.push(Loaded { id, owner: l.owner });
        }
    }

    /// A failed copy, named by the first tensor of launch `i`.
    fn blame(&self, i: usize, e: weightlift_gpu::Error) -> Error {
        match self.launches.get(i).and_then(|l| l.tensors.first()) {
            Some(&id) => Error::Device(e).about(&self.ckpt, id),
            None => Error::Device(e),
        }
    }

    /// No room for the first tensor waiting for a destination.
    fn no_room(&self) -> Error {
        let waiting = self.held.iter().find_map(|h| {
            let pieces = self.plan.pieces(&self.plan.extents()[h.index]);
            pieces.get(h.next).map(|p| p.tensor)
        });
        match waiting {
            Some(id) => {
                let info = self.ckpt.tensor(id);
                Error::NoRoom { len: info.len() }.about(&self.ckpt, id)
            }
            None => Error::NoRoom { len: 0 },
        }
    }

    /// A read error, named by the tensor whose bytes it covered.
    fn name_read_error(&self, e: weightlift_io::Error) -> Error {
        crate::host::name_tensor(&self.ckpt, &self.plan, e.into())
    }

    /// Stop: the reads end, every copy in flight completes, and the
    /// destinations not handed out are let go.
    fn stop(&mut self) {
        if let Some(reads) = self.reads.as_mut() {
            reads.stop();
        }
        self.reads = None;
        if let Some(staging) = &self.staging {
            let _ = staging.synchronize();
        }
        self.launches.clear();
        self.held.clear();
        self.landing.clear();
    }

    /// End the load and take the staging back for the next one. Tensors not
    /// handed out yet are let go, after every copy into them completed.
    pub fn into_staging(mut self) -> Staging<D> {
        self.stop();
        self.staging
            .take()
            .expect("staging present until handed back")
    }

    /// Whether every tensor was handed out.
    pub fn is_done(&self) -> bool {
        self.handed == self.total
    }
}

impl<D: Device, T: Destinations> Drop for DeviceLoad<D, T> {
    fn drop(&mut self) {
        // Copies write the destinations and read the staging: `stop` waits
        // for them before the destinations (in `landing`) are let go, and
        // the staging, dropped after, waits again before it unregisters.
        self.stop();
    }
}
