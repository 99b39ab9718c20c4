//! The engine: executes a [`ReadPlan`] with one backend, many reads in
//! flight, completions in any order, into a ring of staging slots handed to
//! a [`Sink`], or straight into their final place.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use weightlift_plan::{Extent, Geometry, ReadPlan};

use crate::backend::{Chosen, Residence, choose, queue_files};
use crate::error::Rejected;
use crate::queue::aio::Aio;
use crate::queue::pool::{MappedCopy, Pool, Pread};
use crate::queue::uring::Uring;
use crate::queue::{Cqe, Op, Queue};
use crate::region::Region;
use crate::{Backend, Error, ReadFile};

/// Settings of the engine. Every field has a default measured on real
/// storage (see docs/ARCHITECTURE.md); `Default` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Backends to try, in order. `None`: the default for where the files
    /// are ([`Residence`]).
    pub backends: Option<Vec<Backend>>,
    /// Reads in flight at most.
    pub queue_depth: usize,
    /// Largest read, and the size of a staging slot (a multiple of 4096).
    pub slot_size: usize,
    /// Staging memory for [`Engine::run`], in bytes (at least one slot).
    pub ring_bytes: usize,
    /// Threads for the `PREAD`, `PREAD_BUFFERED` and `MMAP` backends, and
    /// for populating mappings.
    pub threads: usize,
    /// Test hook: make one read fail.
    pub fault: Option<InjectedFault>,
}

impl EngineOptions {
    /// Default reads in flight. With 16 MiB reads, 16 in flight (256 MiB)
    /// was the fastest cold setting measured on a virtual disk; 1 MiB reads
    /// at depth 4 were three times slower.
    pub const DEFAULT_QUEUE_DEPTH: usize = 16;
    /// Default read and slot size: large reads, which storage serves at
    /// full bandwidth with few requests.
    pub const DEFAULT_SLOT_SIZE: usize = 16 << 20;
    /// Default staging memory: one slot per read in flight.
    pub const DEFAULT_RING_BYTES: usize = Self::DEFAULT_QUEUE_DEPTH * Self::DEFAULT_SLOT_SIZE;

    /// Check every setting: a queue depth from 1 to 4096, a slot size
    /// that is a multiple of 4096 up to 1 GiB, a ring holding at least one
    /// slot, at least one thread.
    pub fn check(&self) -> Result<(), Error> {
        check_options(self)
    }

    /// Bound staging memory to `bytes` (InstantTensor's `buffer_size`):
    /// the ring gets `bytes`, and reads shrink to fit it when it holds less
    /// than one slot (to a multiple of 4096; less than 4096 is refused).
    pub fn with_buffer_size(mut self, bytes: usize) -> Result<Self, Error> {
        if bytes < 4096 {
            return Err(Error::Setting {
                name: "buffer_size",
                value: bytes as u64,
                reason: "must be at least 4096 bytes (one aligned read)",
            });
        }
        self.ring_bytes = bytes;
        self.slot_size = self.slot_size.min(bytes / 4096 * 4096);
        check_options(&self)?;
        Ok(self)
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            backends: None,
            queue_depth: Self::DEFAULT_QUEUE_DEPTH,
            slot_size: Self::DEFAULT_SLOT_SIZE,
            ring_bytes: Self::DEFAULT_RING_BYTES,
            threads: std::thread::available_parallelism().map_or(4, |n| n.get().clamp(2, 16)),
            fault: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{EngineOptions, Error};

    #[test]
    fn a_small_buffer_size_shrinks_reads_to_fit() {
        let o = EngineOptions::default().with_buffer_size(5 << 20).unwrap();
        assert_eq!((o.ring_bytes, o.slot_size), (5 << 20, 5 << 20));
        let o = EngineOptions::default().with_buffer_size(10_000).unwrap();
        assert_eq!((o.ring_bytes, o.slot_size), (10_000, 8192));
        let o = EngineOptions::default().with_buffer_size(1 << 30).unwrap();
        assert_eq!(o.slot_size, EngineOptions::DEFAULT_SLOT_SIZE);
        assert!(matches!(
            EngineOptions::default().with_buffer_size(4095),
            Err(Error::Setting {
                name: "buffer_size",
                ..
            })
        ));
    }
}

/// A read error to inject, for testing error paths: the `nth` read
/// (counting from 0) submitted for file `file` completes, then reports
/// `errno` instead of its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectedFault {
    /// Index of the file in the engine's list.
    pub file: usize,
    /// Which of its reads.
    pub nth: usize,
    /// The error number to report (`libc::EIO`, say).
    pub errno: i32,
}

/// What a consumer does with a staging slot it was handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Done with it: the engine may reuse it.
    Now,
    /// Still using it (an asynchronous copy is reading it); it comes back
    /// through [`Sink::reclaim`].
    Later,
}

/// The consumer of staged reads.
pub trait Sink {
    /// Extent `index` of the plan has landed in staging slot `slot`: `data`
    /// holds its bytes (shorter than the extent only at the end of its
    /// file). Copy the pieces out, then say whether the slot is free.
    fn deliver(&mut self, index: usize, data: &[u8], slot: usize) -> Result<Release, Error>;

    /// Add to `freed` the slots kept with [`Release::Later`] that are free
    /// now; when `block`, wait until there is at least one.
    fn reclaim(&mut self, block: bool, freed: &mut Vec<usize>) -> Result<(), Error> {
        let _ = (block, freed);
        Ok(())
    }

    /// Wait until no kept slot is in use any more. Called when the run ends,
    /// on success and on error, before the ring may be reused or freed.
    fn settle(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// Staging memory: `slots` slots of `slot_size` bytes, page aligned.
#[derive(Debug)]
pub struct Ring {
    region: Arc<Region>,
    slot_size: usize,
    slots: usize,
}

impl Ring {
    /// Allocate `slots` slots of `slot_size` bytes each.
    pub fn new(slot_size: usize, slots: usize) -> Result<Self, Error> {
        let len = slot_size.checked_mul(slots).ok_or(Error::Setting {
            name: "ring_bytes",
            value: u64::MAX,
            reason: "overflows",
        })?;
        if slot_size == 0 || slots == 0 {
            return Err(Error::Setting {
                name: "ring_bytes",
                value: len as u64,
                reason: "needs at least one slot of at least one byte",
            });
        }
        let region = Region::anonymous(len).map_err(|source| Error::Map {
            file: None,
            len,
            source,
        })?;
        // Slots are reused over and over: fault them in once, cheaply.
        region.advise_huge();
        Ok(Self {
            region: Arc::new(region),
            slot_size,
            slots,
        })
    }

    /// The memory of every slot, one after another (to pin or register).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    fn slot_ptr(&self, slot: usize) -> *mut u8 {
        self.region.as_ptr().wrapping_add(slot * self.slot_size)
    }
}

/// Destinations for reading a plan in place: each file's extents packed one
/// after another into one region per file, so that the tensors read can
/// be viewed where they landed.
#[derive(Debug)]
pub struct InPlace {
    regions: Vec<Arc<Region>>,
    /// Per extent of the plan: (region, offset in it).
    at: Vec<(u32, usize)>,
}

impl InPlace {
    /// Lay out `plan` for `files` files: one region per file, holding that
    /// file's extents back to back (so neighbouring extents stay contiguous
    /// and each extent starts at a multiple of the plan's alignment).
    /// Regions are mapped lazily: pages cost only when a read lands.
    pub fn packed(plan: &ReadPlan, files: usize) -> Result<Self, Error> {
        let mut sizes = vec![0usize; files];
        let mut at = Vec::with_capacity(plan.extents().len());
        for e in plan.extents() {
            let f = e.file.index();
            let size = sizes.get_mut(f).ok_or(Error::Plan {
                reason: "extent of a file the engine does not have",
                value: f as u64,
            })?;
            let len = usize::try_from(e.len).map_err(|_| Error::Plan {
                reason: "extent too long",
                value: e.len,
            })?;
            at.push((f as u32, *size));
            *size = size.checked_add(len).ok_or(Error::Plan {
                reason: "file too large for memory",
                value: e.len,
            })?;
        }
        let regions = sizes
            .into_iter()
            .map(|len| {
                Region::anonymous(len)
                    .map(Arc::new)
                    .map_err(|source| Error::Map {
                        file: None,
                        len,
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { regions, at })
    }

    /// The region of each file.
    pub fn regions(&self) -> &[Arc<Region>] {
        &self.regions
    }

    /// Where extent `index` lands: its file's region and the offset in it.
    pub fn position(&self, index: usize) -> (&Arc<Region>, usize) {
        let (r, off) = self.at[index];
        (&self.regions[r as usize], off)
    }
}

/// A backend chosen for a set of files, the files opened for it, and the
/// settings to read them with.
#[derive(Debug)]
pub struct Engine {
    chosen: Chosen,
    options: EngineOptions,
    alignment: u64,
}

impl Engine {
    /// Choose a backend for `paths` (see [`crate::choose`]) and open them.
    /// `staged`: reads go to staging slots ([`Engine::run`]) rather than in
    /// place or to views of a mapping.
    pub fn open(paths: &[PathBuf], options: &EngineOptions, staged: bool) -> Result<Self, Error> {
        check_options(options)?;
        let chosen = choose(paths, options.backends.as_deref(), staged)?;
        // Direct reads need the strictest alignment of any file, for file
        // offsets and for memory; 4096 otherwise keeps reads page-sized.
        let alignment = if chosen.backend.is_direct() {
            chosen
                .files
                .iter()
                .map(|f| f.alignment().offset.max(f.alignment().memory as u64))
                .max()
                .unwrap_or(4096)
        } else {
            4096
        };
        if !(options.slot_size as u64).is_multiple_of(alignment) {
            return Err(Error::Setting {
                name: "slot_size",
                value: options.slot_size as u64,
                reason: "must be a multiple of the direct-I/O alignment",
            });
        }
        Ok(Self {
            chosen,
            options: options.clone(),
            alignment,
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.chosen.backend
    }

    /// Candidates rejected before it, with why.
    pub fn rejected(&self) -> &[Rejected] {
        &self.chosen.rejected
    }

    /// Where the files were found to be, when the default order was used.
    pub fn residence(&self) -> Option<Residence> {
        self.chosen.residence
    }

    /// The settings.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The files, opened for the backend.
    pub fn files(&self) -> &[ReadFile] {
        &self.chosen.files
    }

    /// The geometry plans for this engine must have: its alignment, reads
    /// no longer than a slot.
    pub fn geometry(&self) -> Geometry {
        Geometry::new(self.alignment, self.options.slot_size as u64)
            .expect("slot size checked to be a non-zero multiple of the alignment")
    }

    /// One line describing the choice and its settings, for logs.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "backend {} (queue depth {}, {} KiB reads, alignment {})",
            self.chosen.backend,
            self.options.queue_depth,
            self.options.slot_size >> 10,
            self.alignment
        );
        if let Some(r) = self.chosen.residence {
            s += &format!(", files {r:?}");
        }
        for r in &self.chosen.rejected {
            s += &format!("; rejected {r}");
        }
        s
    }

    /// Allocate a staging ring sized by the options: `ring_bytes` in slots
    /// of `slot_size`, at least one.
    pub fn ring(&self) -> Result<Ring, Error> {
        let slots = (self.options.ring_bytes / self.options.slot_size).max(1);
        Ring::new(self.options.slot_size, slots)
    }

    fn reader(
        &self,
        keep: Vec<Arc<Region>>,
        registered: Option<&Region>,
    ) -> Result<Reader<'_>, Error> {
        let backend = self.chosen.backend;
        let files = &self.chosen.files;
        let qfiles = queue_files(files);
        let depth = self.options.queue_depth;
        let setup = |source: io::Error| Error::Queue {
            backend,
            op: "setup",
            source,
        };
        let queue: Box<dyn Queue> = match backend {
            Backend::Uring | Backend::UringBuffered => {
                let mut q = Uring::new(qfiles, depth).map_err(setup)?;
                if let Some(r) = registered {
                    // SAFETY: the region outlives the ring: the reader holds
                    // an `Arc` of it (`keep`) and drops the queue first.
                    unsafe { q.register_buffer(r.as_ptr(), r.len()) };
                }
                Box::new(q)
            }
            Backend::Aio | Backend::AioBuffered => {
                Box::new(Aio::new(qfiles, depth).map_err(setup)?)
            }
            Backend::Pread | Backend::PreadBuffered => {
                let threads = self.options.threads.min(depth);
                Box::new(Pool::new(Pread { files: qfiles }, threads).map_err(setup)?)
            }
            Backend::Mmap => {
                let maps = files
                    .iter()
                    .map(|f| {
                        let len = f.size() as usize; // checked by the probe
                        Region::map_file(f.as_file(), len, false).map_err(|source| Error::Map {
                            file: Some(f.path().to_path_buf()),
                            len,
                            source,
                        })
                    })
                    .collect::<Result<_, _>>()?;
                let threads = self.options.threads.min(depth);
                Box::new(
                    Pool::new(
                        MappedCopy {
                            files: qfiles,
                            maps,
                        },
                        threads,
                    )
                    .map_err(setup)?,
                )
            }
            Backend::Cufile => {
                return Err(Error::NoBackend {
                    rejected: vec![Rejected {
                        backend,
                        reason: crate::backend::CUFILE_REASON.into(),
                    }],
                });
            }
        };
        log::debug!(target: "weightlift", "reading with {}", queue.describe());
        Ok(Reader {
            queue: Some(queue),
            backend,
            files,
            step: if backend.is_direct() {
                self.alignment
            } else {
                1
            },
            depth,
            pending: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            cqes: Vec::new(),
            keep,
            fault: self.options.fault,
            submitted_per_file: vec![0; files.len()],
        })
    }

    fn check_plan(&self, plan: &ReadPlan) -> Result<(), Error> {
        let g = plan.geometry();
        if !g.alignment().is_multiple_of(self.alignment) {
            return Err(Error::Plan {
                reason: "plan alignment is not a multiple of the engine's",
                value: g.alignment(),
            });
        }
        if let Some(e) = plan
            .extents()
            .iter()
            .find(|e| e.file.index() >= self.chosen.files.len())
        {
            return Err(Error::Plan {
                reason: "extent of a file the engine does not have",
                value: e.file.index() as u64,
            });
        }
        Ok(())
    }

    /// Read every extent of `plan` into the slots of `ring` and hand each,
    /// as it lands, to `sink`. At most `queue_depth` reads are in flight and
    /// a slot is reused only after the sink released it.
    ///
    /// On any error (or when `cancel` is set), every read in flight is
    /// completed and the sink settled before this returns.
    pub fn run(
        &self,
        plan: &ReadPlan,
        ring: &Ring,
        sink: &mut dyn Sink,
        cancel: Option<&AtomicBool>,
    ) -> Result<(), Error> {
        self.check_plan(plan)?;
        if let Some(e) = plan
            .extents()
            .iter()
            .find(|e| e.len > ring.slot_size as u64)
        {
            return Err(Error::Plan {
                reason: "extent longer than a staging slot",
                value: e.len,
            });
        }
        let result = self.run_staged(plan, ring, sink, cancel);
        // Whatever happened, no slot may still be in use by the sink.
        let settled = sink.settle();
        result.and(settled)
    }

    fn run_staged(
        &self,
        plan: &ReadPlan,
        ring: &Ring,
        sink: &mut dyn Sink,
        cancel: Option<&AtomicBool>,
    ) -> Result<(), Error> {
        let mut reader = self.reader(vec![ring.region.clone()], Some(&ring.region))?;
        let extents = plan.extents();
        let mut free: Vec<usize> = (0..ring.slots).rev().collect();
        let mut slot_of = vec![usize::MAX; extents.len()];
        let mut next = 0;
        let mut done = Vec::new();
        loop {
            check_cancel(cancel)?;
            while next < extents.len() && reader.in_flight < reader.depth {
                let Some(slot) = free.pop() else { break };
                slot_of[next] = slot;
                // SAFETY: the slot is free (not in flight, released by the
                // sink) and lies in the ring, which the reader keeps alive.
                unsafe { reader.start(&extents[next], next, ring.slot_ptr(slot), true)? };
                next += 1;
            }
            if reader.in_flight == 0 {
                if next == extents.len() {
                    return Ok(());
                }
                // Every slot is held by the sink.
                sink.reclaim(true, &mut free)?;
                continue;
            }
            done.clear();
            reader.next(&mut done)?;
            for &(index, n) in &done {
                let slot = slot_of[index];
                // SAFETY: the read into this slot has completed and the
                // slot is not written again until the sink releases it.
                let data = unsafe { ring.region.slice(slot * ring.slot_size, n) };
                if sink.deliver(index, data, slot)? == Release::Now {
                    free.push(slot);
                }
            }
            sink.reclaim(false, &mut free)?;
        }
    }

    /// Read every extent of `plan` straight to its place in `dst` (laid out
    /// for this plan by [`InPlace::packed`]), calling `on_done(index)` as
    /// each extent lands (in completion order, on this thread).
    ///
    /// On any error (from a read or from `on_done`) or when `cancel` is set,
    /// every read in flight completes before this returns.
    pub fn run_in_place(
        &self,
        plan: &ReadPlan,
        dst: &InPlace,
        mut on_done: impl FnMut(usize) -> Result<(), Error>,
        cancel: Option<&AtomicBool>,
    ) -> Result<(), Error> {
        self.check_plan(plan)?;
        if dst.at.len() != plan.extents().len() || dst.regions.len() > self.chosen.files.len() {
            return Err(Error::Plan {
                reason: "destinations laid out for another plan",
                value: dst.at.len() as u64,
            });
        }
        let mut reader = self.reader(dst.regions.clone(), None)?;
        let extents = plan.extents();
        let mut next = 0;
        let mut done = Vec::new();
        loop {
            check_cancel(cancel)?;
            while next < extents.len() && reader.in_flight < reader.depth {
                let (region, off) = dst.position(next);
                if off as u64 + extents[next].len > region.len() as u64 {
                    return Err(Error::Plan {
                        reason: "destination too small for extent",
                        value: next as u64,
                    });
                }
                // SAFETY: each extent has its own bytes of the region
                // (packed layout, checked in bounds above), written by this
                // read only; the reader keeps the region alive.
                unsafe { reader.start(&extents[next], next, region.as_ptr().add(off), false)? };
                next += 1;
            }
            if reader.in_flight == 0 {
                return Ok(());
            }
            done.clear();
            reader.next(&mut done)?;
            for &(index, _) in &done {
                on_done(index)?;
            }
        }
    }
}

fn check_cancel(cancel: Option<&AtomicBool>) -> Result<(), Error> {
    match cancel {
        Some(c) if c.load(Ordering::Relaxed) => Err(Error::Cancelled),
        _ => Ok(()),
    }
}

fn check_options(o: &EngineOptions) -> Result<(), Error> {
    let bad = |name, value: usize, reason| {
        Err(Error::Setting {
            name,
            value: value as u64,
            reason,
        })
    };
    if o.queue_depth == 0 || o.queue_depth > 4096 {
        return bad("queue_depth", o.queue_depth, "must be 1 to 4096");
    }
    if o.slot_size == 0 || !o.slot_size.is_multiple_of(4096) || o.slot_size > (1 << 30) {
        return bad(
            "slot_size",
            o.slot_size,
            "must be a multiple of 4096, at most 1 GiB",
        );
    }
    if o.ring_bytes < o.slot_size {
        return bad("ring_bytes", o.ring_bytes, "must hold at least one slot");
    }
    if o.threads == 0 {
        return bad("threads", 0, "must be at least 1");
    }
    Ok(())
}

/// Reads give up after this many tries without progress (`EINTR`, `EAGAIN`,
/// short reads that end before an aligned point).
const MAX_STALLS: u32 = 100;

/// A read in flight.
#[derive(Debug, Clone, Copy)]
struct Pending {
    file: u32,
    offset: u64,
    len: usize,
    dst: *mut u8,
    registered: bool,
    /// Bytes confirmed so far.
    done: usize,
    stalls: u32,
    index: usize,
    inject: Option<i32>,
}

/// Runs reads on a queue and turns raw completions into finished reads:
/// resubmits after `EINTR`, `EAGAIN` and short reads (a direct read resumes
/// from its last aligned point), accepts a short read only at the end of
/// the file, and reports a file that ends early as truncated.
///
/// Dropping a reader waits for every read in flight. If the queue cannot be
/// waited on any more (which only a kernel fault could cause), the reader
/// leaks the queue and the memory it reads into rather than free what the
/// kernel may still write.
struct Reader<'a> {
    queue: Option<Box<dyn Queue>>,
    backend: Backend,
    files: &'a [ReadFile],
    step: u64,
    depth: usize,
    pending: Vec<Option<Pending>>,
    free: Vec<usize>,
    in_flight: usize,
    cqes: Vec<Cqe>,
    keep: Vec<Arc<Region>>,
    fault: Option<InjectedFault>,
    submitted_per_file: Vec<usize>,
}

impl Reader<'_> {
    /// Start reading `extent` (index `index` in its plan) into `dst`.
    ///
    /// # Safety
    ///
    /// `dst` must be valid for `extent.len` bytes and kept valid (by an
    /// `Arc` in `keep`) and untouched until the read finishes.
    unsafe fn start(
        &mut self,
        extent: &Extent,
        index: usize,
        dst: *mut u8,
        registered: bool,
    ) -> Result<(), Error> {
        let len = usize::try_from(extent.len).map_err(|_| Error::Plan {
            reason: "extent too long",
            value: extent.len,
        })?;
        let file = extent.file.index();
        let count = &mut self.submitted_per_file[file];
        let inject = self
            .fault
            .filter(|f| f.file == file && f.nth == *count)
            .map(|f| f.errno);
        *count += 1;
        let p = Pending {
            file: file as u32,
            offset: extent.offset,
            len,
            dst,
            registered,
            done: 0,
            stalls: 0,
            index,
            inject,
        };
        let tag = match self.free.pop() {
            Some(t) => {
                self.pending[t] = Some(p);
                t
            }
            None => {
                self.pending.push(Some(p));
                self.pending.len() - 1
            }
        };
        // SAFETY: the caller's guarantee covers the whole extent.
        let pushed = unsafe { self.push(tag) };
        if let Err(e) = pushed {
            self.pending[tag] = None;
            self.free.push(tag);
            return Err(self.fail(e));
        }
        Ok(())
    }

    /// Push (again) the unread rest of pending read `tag`.
    ///
    /// # Safety
    ///
    /// As for [`Reader::start`].
    unsafe fn push(&mut self, tag: usize) -> Result<(), Error> {
        let p = self.pending[tag].expect("pushing a pending read");
        let op = Op {
            file: p.file,
            offset: p.offset + p.done as u64,
            // SAFETY: `done < len`, so this stays inside the destination.
            dst: unsafe { p.dst.add(p.done) },
            len: u32::try_from(p.len - p.done).unwrap_or(!0xFFF),
            registered: p.registered,
            tag: tag as u64,
        };
        let queue = self.queue.as_mut().expect("queue present until drop");
        // SAFETY: the caller's guarantee for the destination.
        unsafe { queue.push(op) }.map_err(|source| Error::Queue {
            backend: self.backend,
            op: "submit",
            source,
        })?;
        self.in_flight += 1;
        Ok(())
    }

    /// Wait until at least one read finishes; append `(index, bytes)` for
    /// each finished one. On error, every read in flight has completed.
    fn next(&mut self, out: &mut Vec<(usize, usize)>) -> Result<(), Error> {
        while out.is_empty() && self.in_flight > 0 {
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            let waited = self
                .queue
                .as_mut()
                .expect("queue present")
                .wait(1, &mut cqes);
            if let Err(source) = waited {
                self.cqes = cqes;
                return Err(self.fail(Error::Queue {
                    backend: self.backend,
                    op: "wait",
                    source,
                }));
            }
            self.in_flight -= cqes.len();
            let mut first_error = None;
            for c in &cqes {
                match self.complete(*c) {
                    Ok(Some(done)) => out.push(done),
                    Ok(None) => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            self.cqes = cqes;
            if let Some(e) = first_error {
                return Err(self.fail(e));
            }
        }
        Ok(())
    }

    /// Account for one completion: `Some` when its read is finished.
    fn complete(&mut self, c: Cqe) -> Result<Option<(usize, usize)>, Error> {
        let tag = c.tag as usize;
        let mut p = self.pending[tag]
            .take()
            .expect("completion of a pending read");
        match self.account(&mut p, c.res) {
            Ok(false) => {
                self.pending[tag] = Some(p);
                // SAFETY: the destination is the one `start` was given for
                // this read, still kept valid by the caller.
                unsafe { self.push(tag) }?;
                Ok(None)
            }
            Ok(true) => {
                self.free.push(tag);
                Ok(Some((p.index, p.done)))
            }
            Err(e) => {
                self.free.push(tag);
                Err(e)
            }
        }
    }

    /// Apply result `res` to `p`: `true` when the read is finished, `false`
    /// when the rest must be read.
    fn account(&self, p: &mut Pending, res: i64) -> Result<bool, Error> {
        let file = &self.files[p.file as usize];
        let res = match p.inject.take() {
            Some(errno) => -i64::from(errno),
            None => res,
        };
        let at = p.offset + p.done as u64;
        // The bytes of this read that the file held when opened.
        let expected =
            usize::try_from(file.size().saturating_sub(p.offset)).map_or(p.len, |n| n.min(p.len));
        let left = p.len - p.done;
        let read_error = |errno: i64| Error::Read {
            file: file.path().to_path_buf(),
            offset: at,
            len: left,
            source: io::Error::from_raw_os_error(i32::try_from(-errno).unwrap_or(libc::EIO)),
        };
        let before = p.done;
        match res {
            r if r == -i64::from(libc::EINTR) || r == -i64::from(libc::EAGAIN) => {}
            r if r < 0 => return Err(read_error(r)),
            0 => {
                if p.done >= expected {
                    return Ok(true);
                }
                return Err(Error::Truncated {
                    file: file.path().to_path_buf(),
                    at,
                    size: file.size(),
                });
            }
            n => {
                p.done = (p.done + n as usize).min(p.len);
                if p.done >= expected {
                    return Ok(true);
                }
                if !(p.done as u64).is_multiple_of(self.step) {
                    // Short in the middle of the file: resume from the last
                    // aligned point, as direct reads require.
                    p.done -= (p.done as u64 % self.step) as usize;
                }
            }
        }
        if p.done > before {
            p.stalls = 0;
        } else {
            p.stalls += 1;
            if p.stalls > MAX_STALLS {
                let errno = if res < 0 { res } else { -i64::from(libc::EIO) };
                return Err(read_error(errno));
            }
        }
        Ok(false)
    }

    /// Drain every read in flight, then return `e`.
    fn fail(&mut self, e: Error) -> Error {
        self.drain();
        e
    }

    /// Wait for every read in flight, discarding results. Returns whether
    /// nothing is in flight any more.
    fn drain(&mut self) -> bool {
        let Some(queue) = self.queue.as_mut() else {
            return self.in_flight == 0;
        };
        while self.in_flight > 0 {
            self.cqes.clear();
            if queue.wait(self.in_flight, &mut self.cqes).is_err() {
                return false;
            }
            self.in_flight -= self.cqes.len().min(self.in_flight);
            for c in &self.cqes {
                if let Some(slot) = self.pending.get_mut(c.tag as usize) {
                    *slot = None;
                }
            }
        }
        true
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if self.drain() {
            self.queue = None;
        } else {
            // The kernel may still write into these buffers: never free them.
            std::mem::forget(self.queue.take());
            std::mem::forget(std::mem::take(&mut self.keep));
        }
    }
}
