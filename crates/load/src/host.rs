//! Loading a checkpoint's tensors into host memory, handed out as each
//! completes.
//!
//! ```
//! use std::sync::Arc;
//! use weightlift::{host, Checkpoint, LoadOptions, Selection};
//! use weightlift_format::{encode_header, Dtype, TensorSpec};
//!
//! // A small file: two tensors, 6 and 8 bytes.
//! let enc = encode_header(&[TensorSpec::new("a", Dtype::U8, [6]), TensorSpec::new("b", Dtype::F32, [2])], None)?;
//! let mut file = enc.bytes;
//! file.extend(1..=14u8);
//! let path = std::env::temp_dir().join(format!("wl-host-doc-{}.safetensors", std::process::id()));
//! std::fs::write(&path, &file)?;
//!
//! let ckpt = Arc::new(Checkpoint::open(&path)?);
//! let load = host::load(ckpt.clone(), &Selection::All, &LoadOptions::default())?;
//! let mut tensors: Vec<_> = load.collect::<Result<_, _>>()?;
//! tensors.sort_by_key(|t| t.id());
//! assert_eq!(tensors[0].bytes(), &[1, 2, 3, 4, 5, 6]);
//! assert_eq!(tensors[1].bytes(), &[7, 8, 9, 10, 11, 12, 13, 14]);
//! std::fs::remove_file(&path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use weightlift_format::{Checkpoint, TensorId};
use weightlift_plan::{ReadPlan, Selection};

use weightlift_io::{AlignedBuf, Backend, Engine, InPlace, ReadFile, Region};

use crate::{Error, LoadOptions};

/// A tensor's bytes in host memory.
///
/// It keeps the memory it views alive: tensors stay valid however long
/// they are kept, independently of the load that made them. Tensors of one
/// file share that file's memory, which is freed when the last of them is
/// dropped.
#[derive(Debug, Clone)]
pub struct HostTensor {
    id: TensorId,
    memory: Arc<Region>,
    offset: usize,
    len: usize,
}

impl HostTensor {
    /// Tensor `id`'s `len` bytes at `offset` of `memory`.
    ///
    /// # Panics
    ///
    /// If `offset + len` lies beyond `memory`.
    ///
    /// # Safety
    ///
    /// Those bytes must hold the tensor when this is called, and nothing
    /// may write them while a slice from [`HostTensor::bytes`] of the
    /// result (or of a clone of it) lives. (Whoever gets the memory from
    /// [`HostTensor::memory`] and writes through it, as a Python consumer
    /// of a DLPack export may, takes that on.)
    pub unsafe fn new(id: TensorId, memory: Arc<Region>, offset: usize, len: usize) -> Self {
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|end| end <= memory.len())
        );
        Self {
            id,
            memory,
            offset,
            len,
        }
    }

    /// The tensor in its checkpoint.
    pub fn id(&self) -> TensorId {
        self.id
    }

    /// Its bytes. After an `MMAP` load they are the file's pages: see
    /// [`load`] for what a file truncated or rewritten meanwhile does to
    /// them.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `new`'s contract: the bytes hold the tensor and nothing
        // writes them while `self` lives (the loaders hand a tensor out only
        // after every read into its bytes completed, and no read writes them
        // again: each extent owns its own bytes); `memory` is kept alive by
        // `self`, and `new` checked the range lies inside it.
        unsafe { self.memory.slice(self.offset, self.len) }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory it views and its offset there, for handing the bytes to
    /// another owner (a Python buffer) without copying.
    pub fn memory(&self) -> (&Arc<Region>, usize) {
        (&self.memory, self.offset)
    }
}

/// A load in progress: an iterator over tensors in completion order.
///
/// Dropping it cancels what is left and waits until no read is in flight.
#[derive(Debug)]
pub struct HostLoad {
    rx: Receiver<Result<HostTensor, Error>>,
    cancel: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    backend: Backend,
    describe: String,
    tensors: usize,
    bytes: u64,
    delivered: usize,
    failed: bool,
}

impl HostLoad {
    /// The backend reading the files.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The backend and its settings, in one line (also logged at debug level).
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// How many tensors the load hands out in all.
    pub fn tensor_count(&self) -> usize {
        self.tensors
    }

    /// Bytes read from storage (the selected tensors, rounded out to
    /// aligned reads).
    pub fn read_bytes(&self) -> u64 {
        self.bytes
    }

    /// Wait for every tensor.
    pub fn wait_all(self) -> Result<Vec<HostTensor>, Error> {
        self.collect()
    }

    /// The next tensor, waiting at most `timeout`: `Poll::Pending` when
    /// none completed in time, `Poll::Ready(None)` when every tensor was
    /// handed out or the load failed. Lets a caller that must stay
    /// responsive (to a signal, say) wait in slices.
    pub fn next_timeout(&mut self, timeout: Duration) -> Poll<Option<Result<HostTensor, Error>>> {
        if self.failed || self.delivered == self.tensors {
            return Poll::Ready(None);
        }
        let item = match self.rx.recv_timeout(timeout) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => return Poll::Pending,
            Err(RecvTimeoutError::Disconnected) => Err(self.incomplete()),
        };
        Poll::Ready(Some(self.count(item)))
    }

    fn incomplete(&self) -> Error {
        Error::Incomplete {
            expected: self.tensors,
            delivered: self.delivered,
        }
    }

    fn count(&mut self, item: Result<HostTensor, Error>) -> Result<HostTensor, Error> {
        match &item {
            Ok(_) => self.delivered += 1,
            Err(_) => self.failed = true,
        }
        item
    }
}

impl Iterator for HostLoad {
    type Item = Result<HostTensor, Error>;

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.tensors - self.delivered))
    }

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.delivered == self.tensors {
            return None;
        }
        let item = self.rx.recv().unwrap_or_else(|_| Err(self.incomplete()));
        Some(self.count(item))
    }
}

impl Drop for HostLoad {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Load the tensors of `ckpt` that `selection` names into host memory.
///
/// The backend is chosen as [`Engine::open`] does. Read backends land the
/// bytes in place: each file's extents are read straight into one lazily
/// mapped region (huge pages where the kernel allows), which the tensors
/// then view; there is no staging copy. `MMAP` maps each file privately
/// (copy-on-write: writing to a tensor never reaches the file) and faults
/// the selected ranges in with `MADV_POPULATE_READ`, so the tensors view
/// the page cache. As with any mapping, a file truncated after the load
/// makes its tensors' lost pages raise `SIGBUS` when touched, and bytes
/// another process writes into the file in place can show through (pages
/// this process has not written are the file's); read backends do not
/// have that hazard.
///
/// Before reading, every file is checked against what its header said
/// (size and header length); a file replaced after the checkpoint was
/// opened gives [`Error::Changed`]. A file replaced during the load keeps
/// being read as the file that was opened.
pub fn load(
    ckpt: Arc<Checkpoint>,
    selection: &Selection,
    options: &LoadOptions,
) -> Result<HostLoad, Error> {
    let paths: Vec<PathBuf> = ckpt
        .shards()
        .iter()
        .map(|s| s.path().to_path_buf())
        .collect();
    let engine = Engine::open(&paths, &options.engine, false)?;
    check_unchanged(&ckpt, engine.files())?;
    let plan = weightlift_plan::plan(&ckpt, selection, &engine.geometry())?;
    let describe = engine.describe();
    log_debug(&describe);
    let (tx, rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let backend = engine.backend();
    let tensors = plan.tensors().len();
    let bytes = plan.read_bytes();
    let counts = Arc::new(PieceCounts::new(&ckpt, &plan));
    // Tensors with no bytes are complete before anything is read.
    let empty = Arc::new(Region::anonymous(0).map_err(|source| {
        Error::Io(weightlift_io::Error::Map {
            file: None,
            len: 0,
            source,
        })
    })?);
    for &id in plan.tensors() {
        if ckpt.tensor(id).is_empty() {
            let _ = tx.send(Ok(HostTensor {
                id,
                memory: empty.clone(),
                offset: 0,
                len: 0,
            }));
        }
    }
    let job = Job {
        ckpt,
        engine,
        plan,
        counts,
        tx,
        cancel: cancel.clone(),
    };
    let workers = if backend == Backend::Mmap {
        start_mapped(job)?
    } else {
        start_in_place(job)?
    };
    Ok(HostLoad {
        rx,
        cancel,
        workers,
        backend,
        describe,
        tensors,
        bytes,
        delivered: 0,
        failed: false,
    })
}

/// `t`, or, when its bytes are also another tensor's (two names for one
/// record: tied weights in a ServerlessLLM checkpoint), a copy of them in
/// memory of its own, so that writing one tensor leaves the other as read,
/// as with separate tensors. The earlier name keeps the view.
fn unaliased(ckpt: &Checkpoint, t: HostTensor) -> Result<HostTensor, Error> {
    if ckpt.alias_of(t.id).is_none() {
        return Ok(t);
    }
    let region = Region::anonymous(t.len).map_err(|source| {
        Error::Io(weightlift_io::Error::Map {
            file: None,
            len: t.len,
            source,
        })
    })?;
    // SAFETY: `region` is a fresh writable mapping of `t.len` bytes that
    // nothing else refers to yet, and `t.bytes()` is `t.len` bytes of
    // other memory.
    unsafe { std::ptr::copy_nonoverlapping(t.bytes().as_ptr(), region.as_ptr(), t.len) };
    Ok(HostTensor {
        id: t.id,
        memory: Arc::new(region),
        offset: 0,
        len: t.len,
    })
}

fn log_debug(line: &str) {
    log::debug!(target: "weightlift", "{line}");
}

/// Confirm that each opened file is the version its header was read from:
/// the same stamp (where the checkpoint has one), size and header length.
pub(crate) fn check_unchanged(ckpt: &Checkpoint, files: &[ReadFile]) -> Result<(), Error> {
    for (shard, file) in ckpt.shards().iter().zip(files) {
        let changed = |what| Error::Changed {
            file: shard.path().to_path_buf(),
            what,
        };
        let size = file
            .as_file()
            .metadata()
            .map(|m| m.size())
            .unwrap_or(file.size());
        if file.size() != shard.size() || size != shard.size() {
            return Err(changed("size"));
        }
        if let Some(what) = shard.stamp().and_then(|s| s.change(file.stamp())) {
            return Err(changed(what));
        }
        // A file without a header (a ServerlessLLM partition) has no
        // length prefix to compare.
        let Some(header_len) = shard.header_len() else {
            continue;
        };
        let align = file
            .alignment()
            .memory
            .max(file.alignment().offset as usize)
            .max(8);
        let mut buf = AlignedBuf::zeroed(align, align)?;
        let n = file.read_at(buf.as_mut_slice(), 0)?;
        // The length prefix: the header's length, little-endian.
        let expected = header_len.to_le_bytes();
        if n < 8 || buf.as_slice()[..8] != expected {
            return Err(changed("header length"));
        }
    }
    Ok(())
}

/// Pieces still to land, per tensor of the checkpoint.
///
/// Names sharing one record ([`Checkpoint::alias_of`]) count as one group,
/// kept under its first name: the group lands when its last piece does,
/// on one thread, which hands out the copies of the later names before
/// the view of the first. Were they counted apart, two threads could land
/// them, and the first name's view reach the caller (who may write it)
/// while a later name's copy is still being made from the same bytes.
struct PieceCounts {
    left: Vec<AtomicU32>,
    planned: Vec<bool>,
}

impl PieceCounts {
    fn new(ckpt: &Checkpoint, plan: &ReadPlan) -> Self {
        let left: Vec<AtomicU32> = (0..ckpt.len()).map(|_| AtomicU32::new(0)).collect();
        for p in plan.all_pieces() {
            left[group_of(ckpt, p.tensor).index()].fetch_add(1, Ordering::Relaxed);
        }
        let mut planned = vec![false; ckpt.len()];
        for &id in plan.tensors() {
            planned[id.index()] = true;
        }
        Self { left, planned }
    }

    /// Count one piece of `id` as landed. When it was its group's last,
    /// the group's selected tensors, each to be handed out in this order
    /// (later names, copied, before the first name's view).
    fn land(&self, ckpt: &Checkpoint, id: TensorId) -> Vec<TensorId> {
        let first = group_of(ckpt, id);
        if self.left[first.index()].fetch_sub(1, Ordering::AcqRel) != 1 {
            return Vec::new();
        }
        let mut group = vec![first];
        let mut next = first.index() + 1;
        while next < ckpt.len() && ckpt.alias_of(TensorId(next as u32)).is_some() {
            group.push(TensorId(next as u32));
            next += 1;
        }
        group.retain(|t| self.planned[t.index()]);
        group.reverse();
        group
    }
}

/// The first of the names sharing `id`'s record (`id` itself when it has
/// no alias).
fn group_of(ckpt: &Checkpoint, mut id: TensorId) -> TensorId {
    while let Some(prev) = ckpt.alias_of(id) {
        id = prev;
    }
    id
}

/// Name the tensor whose bytes the error's read covered, where one is known.
pub(crate) fn name_tensor(ckpt: &Checkpoint, plan: &ReadPlan, e: Error) -> Error {
    let (file, offset) = match &e {
        Error::Io(weightlift_io::Error::Read { file, offset, .. }) => (file.clone(), *offset),
        Error::Io(weightlift_io::Error::Truncated { file, at, .. }) => (file.clone(), *at),
        Error::Io(weightlift_io::Error::Changed { file, offset, .. }) => (file.clone(), *offset),
        _ => return e,
    };
    let hit = plan.tensors().iter().map(|&id| ckpt.tensor(id)).find(|t| {
        !t.is_empty()
            && ckpt.shard(t.file).path() == file
            && t.range.start <= offset
            && offset < t.range.end
    });
    // An aligned read may start before the tensor it serves: take the first
    // tensor at or after the offset in that file.
    let hit = hit.or_else(|| {
        plan.tensors()
            .iter()
            .map(|&id| ckpt.tensor(id))
            .filter(|t| ckpt.shard(t.file).path() == file && t.range.start >= offset)
            .min_by_key(|t| t.range.start)
    });
    match hit.and_then(|t| ckpt.id(&t.name)) {
        Some(id) => e.about(ckpt, id),
        None => e,
    }
}

/// What the threads of one load share.
struct Job {
    ckpt: Arc<Checkpoint>,
    engine: Engine,
    plan: ReadPlan,
    counts: Arc<PieceCounts>,
    tx: Sender<Result<HostTensor, Error>>,
    cancel: Arc<AtomicBool>,
}

fn start_in_place(job: Job) -> Result<Vec<JoinHandle<()>>, Error> {
    let Job {
        ckpt,
        engine,
        plan,
        counts,
        tx,
        cancel,
    } = job;
    let dst = InPlace::packed(&plan, ckpt.shards().len())?;
    // Where each tensor starts: its first piece's place. A tensor's pieces
    // lie in consecutive extents of one run, which the packed layout keeps
    // contiguous; check it rather than trust it.
    let mut start = vec![(0u32, 0usize); ckpt.len()];
    for (i, (_, pieces)) in plan.iter().enumerate() {
        let (_, base) = dst.position(i);
        let region = plan.extents()[i].file.index() as u32;
        for p in pieces {
            let at = base + p.extent_offset as usize;
            if p.tensor_offset == 0 {
                start[p.tensor.index()] = (region, at);
            } else if start[p.tensor.index()] != (region, at - p.tensor_offset as usize) {
                return Err(Error::NotContiguous {
                    offset: p.tensor_offset,
                }
                .about(&ckpt, p.tensor));
            }
        }
    }
    let mut workers = Vec::new();
    // Fault the destination in ahead of the reads, on another thread: the
    // first touch of fresh memory costs about as much as the disk here, and
    // one `MADV_POPULATE_WRITE` per chunk is far cheaper than a fault per
    // page in the read path. Reads that overtake it fault their own pages.
    let prefault = {
        let (regions, cancel) = (dst.regions().to_vec(), cancel.clone());
        std::thread::Builder::new()
            .name("wl-prefault".into())
            .spawn(move || prefault(&regions, &cancel))
    };
    workers.extend(prefault.ok());
    let worker = std::thread::Builder::new()
        .name("wl-load".into())
        .spawn(move || {
            let regions = dst.regions().to_vec();
            let result = engine.run_in_place(
                &plan,
                &dst,
                |i| {
                    for p in plan.pieces(&plan.extents()[i]) {
                        for id in counts.land(&ckpt, p.tensor) {
                            let (r, offset) = start[id.index()];
                            let t = HostTensor {
                                id,
                                memory: regions[r as usize].clone(),
                                offset,
                                len: ckpt.tensor(id).len() as usize,
                            };
                            if tx.send(unaliased(&ckpt, t)).is_err() {
                                return Err(weightlift_io::Error::Cancelled);
                            }
                        }
                    }
                    Ok(())
                },
                Some(&cancel),
            );
            if let Err(e) = result {
                let _ = tx.send(Err(name_tensor(&ckpt, &plan, e.into())));
            }
        })
        .map_err(|source| Error::Spawn {
            what: "reading into place",
            source,
        })?;
    workers.push(worker);
    Ok(workers)
}

/// Populate `regions` for writing, 16 MiB at a time, in the order the reads
/// land, until done or cancelled. Failures are left to the reads, which
/// fault their own pages.
fn prefault(regions: &[Arc<Region>], cancel: &AtomicBool) {
    const CHUNK: usize = 16 << 20;
    for r in regions {
        let mut off = 0;
        while off < r.len() && !cancel.load(Ordering::Relaxed) {
            let n = (r.len() - off).min(CHUNK);
            if r.populate_write(off, n).is_err() {
                return;
            }
            off += n;
        }
    }
}

fn start_mapped(job: Job) -> Result<Vec<JoinHandle<()>>, Error> {
    let maps: Vec<Arc<Region>> = job
        .engine
        .files()
        .iter()
        .map(|f| {
            let len = f.size() as usize; // the probe checked it fits
            // SAFETY: the mapping is touched first by `MADV_POPULATE_READ`
            // (`Mapped::populate`), which reports a range the file lost as
            // `EFAULT`, not `SIGBUS`; then through the `HostTensor`s that
            // view it. Those rely on the file staying as it is while they
            // live, which nothing here can ensure: like `safetensors` and
            // any mapping of a file, an `MMAP` load accepts that a file
            // truncated later raises `SIGBUS` where a lost page is touched
            // and one rewritten in place shows through, and `load` says so.
            let map = unsafe { Region::map_file(f.as_file(), len, true) };
            map.map(Arc::new).map_err(|source| {
                Error::Io(weightlift_io::Error::Map {
                    file: Some(f.path().to_path_buf()),
                    len,
                    source,
                })
            })
        })
        .collect::<Result<_, _>>()?;
    let shared = Arc::new(Mapped {
        job,
        maps,
        next: AtomicUsize::new(0),
    });
    let threads = shared
        .job
        .engine
        .options()
        .threads
        .min(shared.job.plan.extents().len())
        .max(1);
    let mut workers = Vec::new();
    for i in 0..threads {
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("wl-map-{i}"))
            .spawn(move || shared.work());
        match spawned {
            Ok(h) => workers.push(h),
            Err(source) if workers.is_empty() => {
                return Err(Error::Spawn {
                    what: "populating mappings",
                    source,
                });
            }
            Err(_) => break,
        }
    }
    Ok(workers)
}

/// Shared state of the threads populating mappings.
struct Mapped {
    job: Job,
    maps: Vec<Arc<Region>>,
    next: AtomicUsize,
}

impl Mapped {
    fn work(&self) {
        let tx = &self.job.tx;
        let extents = self.job.plan.extents();
        loop {
            if self.job.cancel.load(Ordering::Relaxed) {
                return;
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(e) = extents.get(i) else { return };
            if let Err(err) = self.populate(i) {
                self.job.cancel.store(true, Ordering::Relaxed);
                let _ = tx.send(Err(name_tensor(&self.job.ckpt, &self.job.plan, err)));
                return;
            }
            for p in self.job.plan.pieces(e) {
                for id in self.job.counts.land(&self.job.ckpt, p.tensor) {
                    let t = self.job.ckpt.tensor(id);
                    let sent = tx.send(unaliased(
                        &self.job.ckpt,
                        HostTensor {
                            id,
                            memory: self.maps[t.file.index()].clone(),
                            offset: t.range.start as usize,
                            len: t.len() as usize,
                        },
                    ));
                    if sent.is_err() {
                        self.job.cancel.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    }

    /// Fault in extent `i`'s bytes; a file that lost them was truncated.
    fn populate(&self, i: usize) -> Result<(), Error> {
        let e = &self.job.plan.extents()[i];
        let f = e.file.index();
        let file = &self.job.engine.files()[f];
        let map = &self.maps[f];
        let start = e.offset.min(file.size());
        let end = (e.offset + e.len).min(file.size());
        match map.populate_read(start as usize, (end - start) as usize) {
            Ok(()) => Ok(file.check_unchanged(start)?),
            Err(source) => {
                let now = file.as_file().metadata().map(|m| m.size()).unwrap_or(0);
                Err(Error::Io(if now < end {
                    weightlift_io::Error::Truncated {
                        file: file.path().to_path_buf(),
                        at: now,
                        size: file.size(),
                    }
                } else {
                    weightlift_io::Error::Read {
                        file: file.path().to_path_buf(),
                        offset: start,
                        len: (end - start) as usize,
                        source,
                    }
                }))
            }
        }
    }
}
