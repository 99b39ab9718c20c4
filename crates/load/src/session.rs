//! Random access and repeated passes over a checkpoint's tensors: the
//! state behind a `safe_open` handle, in host memory ([`Host`]) or on a
//! device ([`crate::device::OnDevice`]).
//!
//! A [`Session`] answers two kinds of request over a fixed selection of
//! tensors:
//!
//! - [`Session::get`]: one tensor by name, any number of times, in any
//!   order. The first request reads just that tensor, on its own through
//!   the page cache (or with the backends named, when some were). When
//!   requests walk the names in sorted order (as `for k in f.keys():
//!   f.get_tensor(k)` does), the second one starts streaming every tensor
//!   not yet handed out (with [`host::load`], or a device load), and later
//!   requests are served from that stream.
//! - [`Session::next`] over a [`Pass`]: every selected tensor once, in
//!   completion order, from what was already read and from a stream.
//!
//! Each tensor is handed out once per request: two requests for one name
//! give two copies, never two views of the same bytes. Tensors read ahead
//! and not yet asked for are kept until asked for or until the session is
//! dropped.
//!
//! ```
//! use std::sync::Arc;
//! use weightlift::{Checkpoint, LoadOptions, Selection, Session};
//! use weightlift_format::{encode_header, Dtype, TensorSpec};
//!
//! let enc = encode_header(&[TensorSpec::new("a", Dtype::U8, [2]), TensorSpec::new("b", Dtype::U8, [3])], None)?;
//! let mut file = enc.bytes;
//! file.extend(1..=5u8);
//! let path = std::env::temp_dir().join(format!("wl-session-doc-{}.safetensors", std::process::id()));
//! std::fs::write(&path, &file)?;
//!
//! let ckpt = Arc::new(Checkpoint::open(&path)?);
//! let mut session = Session::new(ckpt, &Selection::All, LoadOptions::default())?;
//! assert_eq!(session.get("b", &mut || true)?.bytes(), &[3, 4, 5]);
//! let mut pass = session.pass();
//! let mut seen = 0;
//! while let Some(t) = session.next(&mut pass, &mut || true) {
//!     seen += t?.len();
//! }
//! assert_eq!(seen, 5);
//! std::fs::remove_file(&path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeSet, HashMap, HashSet};
use std::mem::size_of;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use weightlift_format::{Checkpoint, TensorId};
use weightlift_plan::Selection;

use weightlift_io::{Backend, OpenMode, ReadFile, Region, RemoteFiles};

use crate::host::{self, HostLoad, HostTensor, check_unchanged};
use crate::{Error, LoadOptions};

/// Where a session's tensors go, and how they are read: [`Host`] memory,
/// or a device ([`crate::device::OnDevice`]).
pub trait Source {
    /// A tensor as the session hands it out.
    type Tensor;
    /// A load of several tensors in progress.
    type Stream: Stream<Tensor = Self::Tensor>;

    /// Start loading `ids` (selected tensors, in file order).
    fn start(
        &mut self,
        ckpt: &Arc<Checkpoint>,
        ids: &[TensorId],
        options: &LoadOptions,
    ) -> Result<Self::Stream, Error>;

    /// Tensor `id` on its own: `read` reads it into host memory, where
    /// that is what the source needs.
    fn alone(
        &mut self,
        ckpt: &Arc<Checkpoint>,
        id: TensorId,
        read: &mut dyn FnMut() -> Result<HostTensor, Error>,
        wait: &mut Wait<'_>,
    ) -> Result<Self::Tensor, Error>;

    /// How single tensors are read, in one line.
    fn describe_alone(&self) -> String;

    /// A stream that handed out all it had; a source may keep what it
    /// holds (a device's staging) for the next.
    fn finish(&mut self, stream: Self::Stream) {
        drop(stream);
    }

    /// The tensor `t` is.
    fn id(t: &Self::Tensor) -> TensorId;
}

/// A load of several tensors, handing them out in completion order.
pub trait Stream {
    /// A tensor as the stream hands it out.
    type Tensor;

    /// The next tensor, waiting at most about `timeout`: `Poll::Pending`
    /// when none came in time, `None` once every tensor was handed out or
    /// the load failed.
    fn poll_next(&mut self, timeout: Duration) -> Poll<Option<Result<Self::Tensor, Error>>>;

    /// How it reads, in one line.
    fn describe(&self) -> String;
}

/// Tensors in host memory: streams are [`host::load`]s, and a single
/// tensor is read on its own through the page cache.
#[derive(Debug, Default)]
pub struct Host;

impl Source for Host {
    type Tensor = HostTensor;
    type Stream = HostLoad;

    fn start(
        &mut self,
        ckpt: &Arc<Checkpoint>,
        ids: &[TensorId],
        options: &LoadOptions,
    ) -> Result<HostLoad, Error> {
        let selection = Selection::Ids(ids.iter().copied().collect::<BTreeSet<_>>());
        host::load(ckpt.clone(), &selection, options)
    }

    fn alone(
        &mut self,
        _: &Arc<Checkpoint>,
        _: TensorId,
        read: &mut dyn FnMut() -> Result<HostTensor, Error>,
        _: &mut Wait<'_>,
    ) -> Result<HostTensor, Error> {
        read()
    }

    fn describe_alone(&self) -> String {
        format!(
            "{} (single tensors, read alone through the page cache)",
            Backend::PreadBuffered
        )
    }

    fn id(t: &HostTensor) -> TensorId {
        t.id()
    }
}

impl Stream for HostLoad {
    type Tensor = HostTensor;

    fn poll_next(&mut self, timeout: Duration) -> Poll<Option<Result<HostTensor, Error>>> {
        self.next_timeout(timeout)
    }

    fn describe(&self) -> String {
        HostLoad::describe(self).to_owned()
    }
}

/// How long one wait lasts before the caller's `wait` callback is asked
/// whether to go on.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Requests made in sorted-name order, from the first, after which the rest
/// of the selection is streamed.
const WALK_TO_STREAM: usize = 2;

/// A callback asked, while a request waits, whether to keep waiting.
/// Returning `false` cancels every load in progress and the request fails
/// with [`Error::Cancelled`].
pub type Wait<'a> = dyn FnMut() -> bool + 'a;

/// The loading state of one opened checkpoint. See the [module](self).
pub struct Session<S: Source = Host> {
    source: S,
    ckpt: Arc<Checkpoint>,
    options: LoadOptions,
    /// The selection, in file order.
    selected: Vec<TensorId>,
    /// The selection, in name order.
    sorted: Vec<TensorId>,
    /// Indexed by tensor id.
    is_selected: Vec<bool>,
    /// Read, not yet handed out.
    ready: HashMap<TensorId, S::Tensor>,
    streams: Vec<Streaming<S::Stream>>,
    /// Handed out by [`Session::get`].
    handed: HashSet<TensorId>,
    /// `Some(n)`: `get` was asked for exactly the first `n` sorted names, in order.
    walk: Option<usize>,
    /// Backends were named in the options: single tensors are read with
    /// them too, not alone through the page cache.
    forced: bool,
    /// Opened for single reads, on first use.
    files: Option<Vec<ReadFile>>,
    describe: Option<String>,
}

impl<S: Source> std::fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("tensors", &self.ckpt.len())
            .field("selected", &self.selected.len())
            .field("ready", &self.ready.len())
            .field("streams", &self.streams.len())
            .field("describe", &self.describe)
            .finish_non_exhaustive()
    }
}

/// A load in progress and the tensors it has yet to hand out.
struct Streaming<L> {
    load: L,
    owed: HashSet<TensorId>,
}

/// One pass over the selection: the tensors it has yet to yield.
#[derive(Debug)]
pub struct Pass {
    remaining: HashSet<TensorId>,
    failed: bool,
}

impl Pass {
    /// Tensors still to come.
    pub fn remaining(&self) -> usize {
        self.remaining.len()
    }
}

impl Session<Host> {
    /// A session over the tensors of `ckpt` that `selection` names, in host
    /// memory. Naming a tensor the checkpoint lacks is an error
    /// ([`Error::Select`]), and so is no memory for the session's tables of
    /// tensors ([`Error::OutOfMemory`]). Nothing is read yet.
    pub fn new(
        ckpt: Arc<Checkpoint>,
        selection: &Selection,
        options: LoadOptions,
    ) -> Result<Self, Error> {
        Session::with_source(ckpt, selection, options, Host)
    }
}

impl<S: Source> Session<S> {
    /// A session over the tensors of `ckpt` that `selection` names, handed
    /// out by `source`.
    pub fn with_source(
        ckpt: Arc<Checkpoint>,
        selection: &Selection,
        options: LoadOptions,
        source: S,
    ) -> Result<Self, Error> {
        // The tables grow with the tensors, so they are asked for fallibly.
        let n = ckpt.len();
        let out_of_memory = || Error::OutOfMemory {
            file: ckpt
                .index_path()
                .or_else(|| ckpt.shards().first().map(|s| s.path()))
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            tensors: n,
            bytes: (n * (size_of::<bool>() + 2 * size_of::<TensorId>())) as u64,
        };
        let mut is_selected = Vec::new();
        is_selected
            .try_reserve_exact(n)
            .map_err(|_| out_of_memory())?;
        is_selected.resize(n, false);
        match selection {
            Selection::All => is_selected.iter_mut().for_each(|s| *s = true),
            Selection::Names(names) => {
                for name in names {
                    let id = ckpt.id(name).ok_or_else(|| {
                        Error::Select(weightlift_plan::Error::UnknownTensor { name: name.clone() })
                    })?;
                    is_selected[id.index()] = true;
                }
            }
            Selection::Ids(ids) => {
                for &id in ids {
                    let slot = is_selected.get_mut(id.index()).ok_or(Error::Select(
                        weightlift_plan::Error::UnknownId {
                            id,
                            count: ckpt.len() as u32,
                        },
                    ))?;
                    *slot = true;
                }
            }
        }
        let count = is_selected.iter().filter(|&&s| s).count();
        let mut selected = Vec::new();
        selected
            .try_reserve_exact(count)
            .map_err(|_| out_of_memory())?;
        selected.extend(
            (0..n)
                .filter(|&i| is_selected[i])
                .map(|i| TensorId(i as u32)),
        );
        let forced = options.engine.backends.is_some();
        let mut sorted = Vec::new();
        sorted
            .try_reserve_exact(count)
            .map_err(|_| out_of_memory())?;
        sorted.extend_from_slice(&selected);
        // Names are distinct, so an unstable sort (which allocates nothing)
        // gives the one order.
        sorted.sort_unstable_by(|a, b| ckpt.tensor(*a).name.cmp(&ckpt.tensor(*b).name));
        Ok(Self {
            source,
            ckpt,
            options,
            selected,
            sorted,
            is_selected,
            ready: HashMap::new(),
            streams: Vec::new(),
            handed: HashSet::new(),
            walk: Some(0),
            forced,
            files: None,
            describe: None,
        })
    }

    /// The checkpoint.
    pub fn checkpoint(&self) -> &Arc<Checkpoint> {
        &self.ckpt
    }

    /// The source tensors go to.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The source tensors go to, to change (where the next copies are
    /// ordered after, say).
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// The selected tensors, in file order (shard, then offset).
    pub fn selected(&self) -> &[TensorId] {
        &self.selected
    }

    /// The selected tensors, in name order.
    pub fn sorted(&self) -> &[TensorId] {
        &self.sorted
    }

    /// The selected tensor of this name, if there is one.
    pub fn id(&self, name: &str) -> Option<TensorId> {
        self.ckpt.id(name).filter(|id| self.is_selected[id.index()])
    }

    /// Bytes of the selected tensors.
    pub fn selected_bytes(&self) -> u64 {
        self.selected
            .iter()
            .map(|&id| self.ckpt.tensor(id).len())
            .sum()
    }

    /// The backend of the latest stream and its settings, once one started.
    pub fn describe(&self) -> Option<&str> {
        self.describe.as_deref()
    }

    /// The selected tensor `name`, waiting for it as `wait` allows.
    pub fn get(&mut self, name: &str, wait: &mut Wait<'_>) -> Result<S::Tensor, Error> {
        let id = self.id(name).ok_or_else(|| {
            Error::Select(weightlift_plan::Error::UnknownTensor {
                name: name.to_owned(),
            })
        })?;
        let t = self.take(id, wait)?;
        self.handed.insert(id);
        Ok(t)
    }

    fn take(&mut self, id: TensorId, wait: &mut Wait<'_>) -> Result<S::Tensor, Error> {
        if let Some(t) = self.ready.remove(&id) {
            return Ok(t);
        }
        self.walk = match self.walk {
            Some(n) if self.sorted.get(n) == Some(&id) => Some(n + 1),
            _ => None,
        };
        let owed = self.streams.iter().any(|s| s.owed.contains(&id));
        if !owed && self.walk.is_some_and(|n| n >= WALK_TO_STREAM) {
            let rest: Vec<TensorId> = self
                .selected
                .iter()
                .copied()
                .filter(|t| *t == id || (!self.handed.contains(t) && !self.is_pending(*t)))
                .collect();
            self.start(rest)?;
        } else if !owed && self.forced {
            self.start(vec![id])?;
        } else if !owed {
            if self.describe.is_none() {
                self.describe = Some(self.source.describe_alone());
            }
            let (ckpt, files) = (&self.ckpt, &mut self.files);
            let remote = self.options.engine.remote.as_ref();
            let mut read = || read_alone(ckpt, files, remote, id, 0..ckpt.tensor(id).len());
            return self.source.alone(&self.ckpt, id, &mut read, wait);
        }
        let s = self
            .streams
            .iter()
            .position(|s| s.owed.contains(&id))
            .expect("a stream owes it");
        loop {
            let Poll::Ready(pumped) = self.pump(s, Some(&mut *wait)) else {
                unreachable!("a wait was given");
            };
            match pumped? {
                Some(t) if S::id(&t) == id => return Ok(t),
                Some(t) => {
                    self.ready.insert(S::id(&t), t);
                }
                // A stream ends only once it handed out all it owed, or
                // with an error; anything else is a load that stopped short.
                None => {
                    return Err(Error::Incomplete {
                        expected: 1,
                        delivered: 0,
                    });
                }
            }
        }
    }

    /// Bytes `range` of the selected tensor `name` (offsets inside the
    /// tensor), read on their own into fresh memory: the part of a tensor
    /// that a slice needs.
    pub fn get_range(&mut self, name: &str, range: Range<u64>) -> Result<HostTensor, Error> {
        let id = self.id(name).ok_or_else(|| {
            Error::Select(weightlift_plan::Error::UnknownTensor {
                name: name.to_owned(),
            })
        })?;
        let len = self.ckpt.tensor(id).len();
        if range.start > range.end || range.end > len {
            return Err(Error::Range {
                start: range.start,
                end: range.end,
                len,
            }
            .about(&self.ckpt, id));
        }
        let remote = self.options.engine.remote.as_ref();
        read_alone(&self.ckpt, &mut self.files, remote, id, range)
    }

    /// A new pass over every selected tensor.
    pub fn pass(&self) -> Pass {
        Pass {
            remaining: self.selected.iter().copied().collect(),
            failed: false,
        }
    }

    /// The next tensor of `pass`, in completion order; `None` when it has
    /// yielded every tensor, or after it failed.
    pub fn next(
        &mut self,
        pass: &mut Pass,
        wait: &mut Wait<'_>,
    ) -> Option<Result<S::Tensor, Error>> {
        match self.next_inner(pass, Some(wait)) {
            Poll::Ready(result) => result,
            Poll::Pending => unreachable!("a wait was given"),
        }
    }

    /// As [`Session::next`], without waiting: `Poll::Pending` when the next
    /// tensor has not been read yet (reads go on in the background).
    pub fn try_next(&mut self, pass: &mut Pass) -> Poll<Option<Result<S::Tensor, Error>>> {
        self.next_inner(pass, None)
    }

    fn next_inner(
        &mut self,
        pass: &mut Pass,
        wait: Option<&mut Wait<'_>>,
    ) -> Poll<Option<Result<S::Tensor, Error>>> {
        let result = self.next_step(pass, wait);
        if matches!(result, Poll::Ready(Some(Err(_)))) {
            pass.failed = true;
        }
        result
    }

    fn next_step(
        &mut self,
        pass: &mut Pass,
        mut wait: Option<&mut Wait<'_>>,
    ) -> Poll<Option<Result<S::Tensor, Error>>> {
        loop {
            if pass.failed || pass.remaining.is_empty() {
                return Poll::Ready(None);
            }
            let hit = self
                .ready
                .keys()
                .copied()
                .find(|id| pass.remaining.contains(id));
            if let Some(id) = hit {
                pass.remaining.remove(&id);
                return Poll::Ready(self.ready.remove(&id).map(Ok));
            }
            // Every stream's tensors are wanted by someone: pump whichever
            // has work, keeping what this pass does not need.
            if let Some(s) = self.streams.iter().position(|s| !s.owed.is_empty()) {
                match self.pump(s, wait.as_deref_mut()) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Some(t))) => {
                        let id = S::id(&t);
                        if pass.remaining.remove(&id) {
                            return Poll::Ready(Some(Ok(t)));
                        }
                        self.ready.insert(id, t);
                    }
                    Poll::Ready(Ok(None)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                }
                continue;
            }
            let ids: Vec<TensorId> = self
                .selected
                .iter()
                .copied()
                .filter(|id| pass.remaining.contains(id))
                .collect();
            if let Err(e) = self.start(ids) {
                return Poll::Ready(Some(Err(e)));
            }
        }
    }

    fn is_pending(&self, id: TensorId) -> bool {
        self.ready.contains_key(&id) || self.streams.iter().any(|s| s.owed.contains(&id))
    }

    fn start(&mut self, ids: Vec<TensorId>) -> Result<(), Error> {
        let owed: HashSet<TensorId> = ids.iter().copied().collect();
        let load = self
            .source
            .start(&self.ckpt, &ids, &self.options)
            .map_err(|e| self.name_first(e, &ids))?;
        self.describe = Some(load.describe());
        self.streams.push(Streaming { load, owed });
        Ok(())
    }

    /// A failure about a whole file (it changed, it cannot be opened) names
    /// the first tensor of `ids` in that file: the one the caller waits for.
    fn name_first(&self, e: Error, ids: &[TensorId]) -> Error {
        if e.tensor().is_some() {
            return e;
        }
        let Some(file) = e.file() else { return e };
        let first = ids
            .iter()
            .copied()
            .find(|&id| self.ckpt.shard(self.ckpt.tensor(id).file).path() == file);
        match first {
            Some(id) => e.about(&self.ckpt, id),
            None => e,
        }
    }

    /// The next tensor of stream `s`; `None` when it ended (it is then
    /// removed). A failed stream is removed, its tensors no longer owed.
    /// The next tensor of stream `s`, waiting in slices while `wait` says
    /// to go on; without `wait`, `Poll::Pending` at once when none is read.
    fn pump(
        &mut self,
        s: usize,
        mut wait: Option<&mut Wait<'_>>,
    ) -> Poll<Result<Option<S::Tensor>, Error>> {
        let slice = if wait.is_some() {
            WAIT_SLICE
        } else {
            Duration::ZERO
        };
        Poll::Ready(loop {
            match self.streams[s].load.poll_next(slice) {
                Poll::Pending => match wait.as_deref_mut() {
                    None => return Poll::Pending,
                    Some(wait) => {
                        if !wait() {
                            // Dropping the loads cancels them and waits until
                            // no read is in flight.
                            self.streams.clear();
                            break Err(Error::Cancelled);
                        }
                    }
                },
                Poll::Ready(Some(Ok(t))) => {
                    self.streams[s].owed.remove(&S::id(&t));
                    if self.streams[s].owed.is_empty() {
                        let done = self.streams.swap_remove(s);
                        self.source.finish(done.load);
                    }
                    break Ok(Some(t));
                }
                Poll::Ready(Some(Err(e))) => {
                    self.streams.swap_remove(s);
                    break Err(e);
                }
                Poll::Ready(None) => {
                    self.streams.swap_remove(s);
                    break Ok(None);
                }
            }
        })
    }
}

/// Read bytes `range` of tensor `id` on their own, through the page cache,
/// into fresh memory, with `files` (opened and checked on first use); or
/// by one ranged read of its remote file.
fn read_alone(
    ckpt: &Arc<Checkpoint>,
    files: &mut Option<Vec<ReadFile>>,
    remote: Option<&RemoteFiles>,
    id: TensorId,
    range: Range<u64>,
) -> Result<HostTensor, Error> {
    let t = ckpt.tensor(id);
    let len = (range.end - range.start) as usize;
    let start = t.range.start + range.start;
    let named = |e: Error| e.about(ckpt, id);
    let remote = remote.and_then(|r| r.get(ckpt.shard(t.file).path()));
    if remote.is_none() && files.is_none() {
        let opened = ckpt
            .shards()
            .iter()
            .map(|s| ReadFile::open(s.path(), OpenMode::Buffered))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| named(e.into()))?;
        check_unchanged(ckpt, &opened).map_err(named)?;
        *files = Some(opened);
    }
    let region = Region::anonymous(len).map_err(|source| {
        named(Error::Io(weightlift_io::Error::Map {
            file: None,
            len,
            source,
        }))
    })?;
    if len > 0 {
        // SAFETY: the region was just created and is not shared yet, so
        // this is the only reference to its bytes.
        let dst = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), len) };
        let (n, path, size) = match remote {
            Some(file) => {
                let n = file.read_at(dst, start).map_err(|source| {
                    named(Error::Io(weightlift_io::Error::Read {
                        file: file.path().to_path_buf(),
                        offset: start,
                        len,
                        source,
                    }))
                })?;
                (n, file.path(), file.size())
            }
            None => {
                let file = &files.as_ref().expect("opened above")[t.file.index()];
                let n = file.read_at(dst, start).map_err(|e| named(e.into()))?;
                file.check_unchanged(start).map_err(|e| named(e.into()))?;
                (n, file.path(), file.size())
            }
        };
        if n < len {
            return Err(named(Error::Io(weightlift_io::Error::Truncated {
                file: path.to_path_buf(),
                at: start + n as u64,
                size,
            })));
        }
    }
    // SAFETY: the region holds the bytes just read, and nothing else
    // has it.
    Ok(unsafe { HostTensor::new(id, Arc::new(region), 0, len) })
}
