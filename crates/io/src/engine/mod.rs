//! The engine: executes a [`ReadPlan`] with one backend, many reads in
//! flight, completions in any order, into a ring of staging slots handed to
//! a [`Sink`], or straight into their final place.

mod options;
mod reader;
mod sink;
mod staging;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use weightlift_plan::{Geometry, ReadPlan};

use crate::backend::{Chosen, Residence, choose, queue_files};
use crate::error::Rejected;
use crate::queue::Queue;
use crate::queue::aio::Aio;
use crate::queue::pool::{Fetch, MappedCopy, Pool, Pread};
use crate::queue::uring::Uring;
use crate::region::Region;
use crate::{Backend, Error, PlanMismatch, RangeRead, ReadFile, RemoteFiles};

pub use options::EngineOptions;
#[cfg(feature = "test-hooks")]
pub use options::InjectedFault;
use options::check_options;
use reader::{Files, Reader};
pub use sink::{Release, Sink};
pub use staging::{InPlace, Ring};

/// A backend chosen for a set of files, the files opened for it, and the
/// settings to read them with.
#[derive(Debug)]
pub struct Engine {
    chosen: Chosen,
    /// With [`Backend::Remote`], the files (`chosen.files` is empty).
    remote: Vec<Arc<dyn RangeRead>>,
    options: EngineOptions,
    alignment: u64,
}

impl Engine {
    /// Choose a backend for `paths` (see [`crate::choose`]) and open them.
    /// `staged`: reads go to staging slots ([`Engine::run`]) rather than in
    /// place or to views of a mapping.
    pub fn open(paths: &[PathBuf], options: &EngineOptions, staged: bool) -> Result<Self, Error> {
        check_options(options)?;
        if let Some(remote) = &options.remote
            && paths.iter().any(|p| remote.get(p).is_some())
        {
            return Self::open_remote(paths, remote, options);
        }
        let chosen = choose(paths, options.backends.as_deref(), staged, options.map)?;
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
            remote: Vec::new(),
            options: options.clone(),
            alignment,
        })
    }

    /// Read remote files: every path must be one of `remote`.
    fn open_remote(
        paths: &[PathBuf],
        remote: &RemoteFiles,
        options: &EngineOptions,
    ) -> Result<Self, Error> {
        let files = paths
            .iter()
            .map(|p| remote.get(p).cloned())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::NoBackend {
                rejected: vec![Rejected {
                    backend: Backend::Remote,
                    reason: "the files are some remote and some local; one load reads one kind"
                        .into(),
                }],
            })?;
        let alignment = 4096;
        // Remote reads have settings of their own: their ranges and
        // requests in flight are what the engine reads with from here on
        // (its geometry, its ring's slots, its threads).
        let mut options = options.clone();
        options.slot_size = options
            .remote_range
            .min(options.ring_bytes / 4096 * 4096)
            .max(4096);
        options.queue_depth = options.remote_in_flight;
        check_options(&options)?;
        Ok(Self {
            chosen: Chosen {
                backend: Backend::Remote,
                files: Vec::new(),
                rejected: Vec::new(),
                residence: None,
            },
            remote: files,
            options,
            alignment,
        })
    }

    /// The remote files, when the backend is [`Backend::Remote`] (then
    /// [`Engine::files`] is empty).
    pub fn remote_files(&self) -> &[Arc<dyn RangeRead>] {
        &self.remote
    }

    fn file_count(&self) -> usize {
        match self.chosen.backend {
            Backend::Remote => self.remote.len(),
            _ => self.chosen.files.len(),
        }
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
                Box::new(Pool::new(Pread { files: qfiles }, threads)?)
            }
            Backend::Mmap => {
                let maps = files
                    .iter()
                    .map(|f| {
                        let len = f.size() as usize; // checked by the probe
                        // SAFETY: this process never reads the mapping through
                        // a slice or a pointer: `MappedCopy` copies out of it
                        // with `process_vm_readv`, where the kernel touches the
                        // pages and a page lost to truncation fails the copy
                        // with `EFAULT` (reported as the end of the file, then
                        // `Truncated`) instead of raising `SIGBUS`. Bytes
                        // rewritten meanwhile arrive as a read would give them,
                        // in staging slots this engine owns.
                        let map = unsafe { Region::map_file(f.as_file(), len, false) };
                        map.map_err(|source| Error::Map {
                            file: Some(f.path().to_path_buf()),
                            len,
                            source,
                        })
                    })
                    .collect::<Result<_, _>>()?;
                let threads = self.options.threads.min(depth);
                Box::new(Pool::new(
                    MappedCopy {
                        files: qfiles,
                        maps,
                    },
                    threads,
                )?)
            }
            Backend::Remote => {
                // Each thread holds one request (one connection) at a time.
                let fetch = Fetch {
                    files: self.remote.clone(),
                    errors: Default::default(),
                };
                Box::new(Pool::new(fetch, depth)?)
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
        let step = if backend.is_direct() {
            self.alignment
        } else {
            1
        };
        let table = match backend {
            Backend::Remote => Files::Remote(&self.remote),
            _ => Files::Local(files),
        };
        let reader = Reader::new(queue, backend, table, step, depth, keep);
        #[cfg(feature = "test-hooks")]
        let reader = reader.with_fault(self.options.fault);
        Ok(reader)
    }

    fn check_plan(&self, plan: &ReadPlan) -> Result<(), Error> {
        let g = plan.geometry();
        if !g.alignment().is_multiple_of(self.alignment) {
            return Err(Error::Plan(PlanMismatch::Alignment {
                plan: g.alignment(),
                engine: self.alignment,
            }));
        }
        if let Some(e) = plan
            .extents()
            .iter()
            .find(|e| e.file.index() >= self.file_count())
        {
            return Err(Error::Plan(PlanMismatch::UnknownFile {
                index: e.file.index(),
                files: self.file_count(),
            }));
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
            return Err(Error::Plan(PlanMismatch::ExtentOverSlot {
                len: e.len,
                slot_size: ring.slot_size,
            }));
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
        if dst.at.len() != plan.extents().len() || dst.regions.len() > self.file_count() {
            return Err(Error::Plan(PlanMismatch::OtherLayout {
                extents: plan.extents().len(),
                laid_out: dst.at.len(),
                regions: dst.regions.len(),
                files: self.file_count(),
            }));
        }
        let mut reader = self.reader(dst.regions.clone(), None)?;
        let extents = plan.extents();
        let mut next = 0;
        let mut done = Vec::new();
        loop {
            check_cancel(cancel)?;
            while next < extents.len() && reader.in_flight < reader.depth {
                let (region, off) = dst.position(next);
                let room = region.len().saturating_sub(off) as u64;
                if extents[next].len > room {
                    return Err(Error::Plan(PlanMismatch::DestinationTooSmall {
                        extent: next,
                        len: extents[next].len,
                        room,
                    }));
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
