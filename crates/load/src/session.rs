//! Random access and repeated passes over a checkpoint's tensors in host
//! memory: the state behind a `safe_open` handle.
//!
//! A [`Session`] answers two kinds of request over a fixed selection of
//! tensors:
//!
//! - [`Session::get`]: one tensor by name, any number of times, in any
//!   order. The first request reads just that tensor, on its own through
//!   the page cache (or with the backends named, when some were). When requests walk
//!   the names in sorted order (as `for k in f.keys(): f.get_tensor(k)`
//!   does), the second one starts streaming every tensor not yet handed
//!   out with [`host::load`], and later requests are
//!   served from that stream.
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
use std::ops::Range;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use weightlift_format::{Checkpoint, TensorId};
use weightlift_plan::Selection;

use weightlift_io::{Backend, OpenMode, ReadFile, Region};

use crate::host::{self, HostLoad, HostTensor, check_unchanged};
use crate::{Error, LoadOptions};

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
#[derive(Debug)]
pub struct Session {
    ckpt: Arc<Checkpoint>,
    options: LoadOptions,
    /// The selection, in file order.
    selected: Vec<TensorId>,
    /// The selection, in name order.
    sorted: Vec<TensorId>,
    /// Indexed by tensor id.
    is_selected: Vec<bool>,
    /// Read, not yet handed out.
    ready: HashMap<TensorId, HostTensor>,
    streams: Vec<Stream>,
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

/// A load in progress and the tensors it has yet to hand out.
#[derive(Debug)]
struct Stream {
    load: HostLoad,
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

impl Session {
    /// A session over the tensors of `ckpt` that `selection` names. Naming
    /// a tensor the checkpoint lacks is an error ([`Error::Select`]).
    /// Nothing is read yet.
    pub fn new(
        ckpt: Arc<Checkpoint>,
        selection: &Selection,
        options: LoadOptions,
    ) -> Result<Self, Error> {
        let mut is_selected = vec![false; ckpt.len()];
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
        let selected: Vec<TensorId> = (0..ckpt.len())
            .filter(|&i| is_selected[i])
            .map(|i| TensorId(i as u32))
            .collect();
        let forced = options.engine.backends.is_some();
        let mut sorted = selected.clone();
        sorted.sort_by(|a, b| ckpt.tensor(*a).name.cmp(&ckpt.tensor(*b).name));
        Ok(Self {
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
    pub fn get(&mut self, name: &str, wait: &mut Wait<'_>) -> Result<HostTensor, Error> {
        let id = self.id(name).ok_or_else(|| {
            Error::Select(weightlift_plan::Error::UnknownTensor {
                name: name.to_owned(),
            })
        })?;
        let t = self.take(id, wait)?;
        self.handed.insert(id);
        Ok(t)
    }

    fn take(&mut self, id: TensorId, wait: &mut Wait<'_>) -> Result<HostTensor, Error> {
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
                self.describe = Some(format!(
                    "{} (single tensors, read alone through the page cache)",
                    Backend::PreadBuffered
                ));
            }
            return self.read_alone(id, 0..self.ckpt.tensor(id).len());
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
                Some(t) if t.id() == id => return Ok(t),
                Some(t) => {
                    self.ready.insert(t.id(), t);
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
        self.read_alone(id, range)
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
    ) -> Option<Result<HostTensor, Error>> {
        match self.next_inner(pass, Some(wait)) {
            Poll::Ready(result) => result,
            Poll::Pending => unreachable!("a wait was given"),
        }
    }

    /// As [`Session::next`], without waiting: `Poll::Pending` when the next
    /// tensor has not been read yet (reads go on in the background).
    pub fn try_next(&mut self, pass: &mut Pass) -> Poll<Option<Result<HostTensor, Error>>> {
        self.next_inner(pass, None)
    }

    fn next_inner(
        &mut self,
        pass: &mut Pass,
        wait: Option<&mut Wait<'_>>,
    ) -> Poll<Option<Result<HostTensor, Error>>> {
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
    ) -> Poll<Option<Result<HostTensor, Error>>> {
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
                        if pass.remaining.remove(&t.id()) {
                            return Poll::Ready(Some(Ok(t)));
                        }
                        self.ready.insert(t.id(), t);
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
        let selection = Selection::Ids(ids.iter().copied().collect::<BTreeSet<_>>());
        let load = host::load(self.ckpt.clone(), &selection, &self.options)
            .map_err(|e| self.name_first(e, &ids))?;
        self.describe = Some(load.describe().to_owned());
        self.streams.push(Stream { load, owed });
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
    ) -> Poll<Result<Option<HostTensor>, Error>> {
        let slice = if wait.is_some() {
            WAIT_SLICE
        } else {
            Duration::ZERO
        };
        Poll::Ready(loop {
            match self.streams[s].load.next_timeout(slice) {
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
                    self.streams[s].owed.remove(&t.id());
                    if self.streams[s].owed.is_empty() {
                        self.streams.swap_remove(s);
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

    /// Read bytes `range` of one tensor on their own, through the page
    /// cache, into fresh memory.
    fn read_alone(&mut self, id: TensorId, range: Range<u64>) -> Result<HostTensor, Error> {
        let t = self.ckpt.tensor(id);
        let len = (range.end - range.start) as usize;
        let start = t.range.start + range.start;
        let ckpt = self.ckpt.clone();
        let named = |e: Error| e.about(&ckpt, id);
        if self.files.is_none() {
            let files = self
                .ckpt
                .shards()
                .iter()
                .map(|s| ReadFile::open(s.path(), OpenMode::Buffered))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| named(e.into()))?;
            check_unchanged(&self.ckpt, &files).map_err(named)?;
            self.files = Some(files);
        }
        let file = &self.files.as_ref().expect("opened above")[t.file.index()];
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
            let n = file.read_at(dst, start).map_err(|e| named(e.into()))?;
            if n < len {
                return Err(named(Error::Io(weightlift_io::Error::Truncated {
                    file: file.path().to_path_buf(),
                    at: start + n as u64,
                    size: file.size(),
                })));
            }
        }
        // SAFETY: the region holds the bytes just read, and nothing else
        // has it.
        Ok(unsafe { HostTensor::new(id, Arc::new(region), 0, len) })
    }
}
