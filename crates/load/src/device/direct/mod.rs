//! Loads straight from the files into device memory, with no host staging:
//! GPUDirect Storage (cuFile), or for tests its host-memory stand-in.
//! [`DirectLoad`] runs the reads on a pool of threads; [`DirectDeviceLoad`]
//! feeds it a checkpoint's tensors and their destinations.

mod pool;

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

pub use pool::{DirectJob, DirectLoad};
use weightlift_format::{Checkpoint, TensorId};
use weightlift_gpu::{DirectReader, OpenedFile};
use weightlift_io::{OpenMode, ReadFile};

use super::load::{Destinations, Loaded, Polled, ask, wait_in_slices};
use crate::Error;
use crate::host::check_unchanged;
use crate::session::Wait;

/// `ckpt`'s files, opened for a [`DirectReader`] (with `O_DIRECT` where
/// `direct` and the file system allow it) and checked to be the versions
/// the checkpoint's headers were read from.
pub fn direct_files(ckpt: &Checkpoint, direct: bool) -> Result<Vec<ReadFile>, Error> {
    let files = ckpt
        .shards()
        .iter()
        .map(|s| {
            let path = s.path();
            match direct {
                true => match ReadFile::open(path, OpenMode::Direct) {
                    Err(weightlift_io::Error::DirectUnsupported { .. }) => {
                        ReadFile::open(path, OpenMode::Buffered)
                    }
                    other => other,
                },
                false => ReadFile::open(path, OpenMode::Buffered),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_unchanged(ckpt, &files)?;
    Ok(files)
}

/// The files a [`DirectReader`] is given: new descriptors of `files`, the
/// same open files.
pub fn reader_files(files: &[ReadFile]) -> Result<Vec<OpenedFile>, Error> {
    files
        .iter()
        .map(|f| {
            let file = f.as_file().try_clone().map_err(|source| {
                Error::Io(weightlift_io::Error::Open {
                    file: f.path().to_path_buf(),
                    source,
                })
            })?;
            Ok(OpenedFile {
                path: f.path().to_path_buf(),
                file,
                size: f.size(),
            })
        })
        .collect()
}

/// Bytes of one read straight into device memory.
pub const DIRECT_CHUNK: usize = 16 << 20;

/// Reads straight into device memory on `threads` threads, described.
pub(crate) fn describe_direct(threads: usize) -> String {
    format!(
        "backend CUFILE (reads straight into device memory, {threads} thread{}, chunks of {} KiB)",
        if threads == 1 { "" } else { "s" },
        DIRECT_CHUNK >> 10
    )
}

/// Tensors read straight from their files into destinations on the device,
/// on a pool of threads, handed out in completion order.
///
/// Dropping it stops the reads and waits for those in flight before the
/// destinations are let go.
pub struct DirectDeviceLoad<T: Destinations> {
    /// `None` only while dropping.
    load: Option<DirectLoad>,
    ckpt: Arc<Checkpoint>,
    dests: T,
    /// Owners of destinations being read into, by tensor index.
    keep: HashMap<usize, T::Owner>,
    /// The tensors to read, in file order, and the next to queue.
    ids: Vec<TensorId>,
    next: usize,
    /// Bytes in flight at most.
    limit: usize,
    threads: usize,
    failed: bool,
    /// Waits for a caller's stream before reads go into new destinations.
    order: Option<Order>,
    /// The files as opened, checked against the checkpoint, to confirm
    /// each is unchanged before its tensors are handed out.
    versions: Vec<ReadFile>,
}

/// Blocks until a caller's stream finished the work queued on it so far.
type Order = Box<dyn FnMut() -> Result<(), Error> + Send>;

impl<T: Destinations> DirectDeviceLoad<T> {
    /// Read `ids` of `ckpt` through `reader` on `threads` threads. `files`
    /// are the files the reader reads, from [`direct_files`]: each is
    /// checked to be the version opened before its tensors are handed out.
    ///
    /// # Panics
    ///
    /// If `files` are not one per shard of `ckpt`.
    pub fn start(
        reader: Arc<dyn DirectReader>,
        files: Vec<ReadFile>,
        ckpt: Arc<Checkpoint>,
        ids: Vec<TensorId>,
        dests: T,
        threads: usize,
    ) -> Result<Self, Error> {
        let threads = threads.max(1);
        // Each tensor once, in file order; ids of another checkpoint are
        // refused before anything is read.
        let ids: Vec<TensorId> = ids
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if let Some(&id) = ids.iter().find(|id| id.index() >= ckpt.len()) {
            return Err(Error::Select(weightlift_plan::Error::UnknownId {
                id,
                count: ckpt.len() as u32,
            }));
        }
        assert_eq!(
            files.len(),
            ckpt.shards().len(),
            "the files of another checkpoint"
        );
        let versions = files;
        Ok(DirectDeviceLoad {
            load: Some(DirectLoad::new(reader, threads, DIRECT_CHUNK)?),
            ckpt,
            dests,
            keep: HashMap::new(),
            ids,
            next: 0,
            limit: threads * DIRECT_CHUNK * 2,
            threads,
            failed: false,
            order: None,
            versions,
        })
    }

    /// The way it reads, described.
    pub fn describe(&self) -> String {
        describe_direct(self.threads)
    }

    /// The next tensors whose bytes have all landed, in completion order;
    /// `None` once every tensor was handed out, or after a failure. While
    /// it waits it asks `wait`, every 50 ms, whether to go on; a no gives
    /// [`Error::Cancelled`].
    pub fn next(&mut self, wait: &mut Wait<'_>) -> Result<Option<Vec<Loaded<T::Owner>>>, Error> {
        wait_in_slices(|slice| self.poll_next(slice), wait)
    }

    /// As [`DirectDeviceLoad::next`], waiting at most about `timeout`:
    /// `Poll::Pending` when no tensor completed by then (the reads go on).
    pub fn poll_next(&mut self, timeout: Duration) -> Polled<T::Owner> {
        if self.failed {
            return Poll::Ready(Ok(None));
        }
        let result = self.step(timeout);
        if let Poll::Ready(Err(_)) = result {
            self.failed = true;
        }
        result
    }

    /// Order the reads into destinations given from now on after what
    /// `wait` waits for: cuFile writes on the host's schedule, not a
    /// stream's, so memory that a caller's queued work may still use (a
    /// block torch's allocator recycled, a target a kernel still reads) is
    /// written only once that work is done.
    pub fn after(mut self, wait: impl FnMut() -> Result<(), Error> + Send + 'static) -> Self {
        self.order = Some(Box::new(wait));
        self
    }

    fn step(&mut self, timeout: Duration) -> Polled<T::Owner> {
        let room = self.next < self.ids.len() && self.load().in_flight_bytes() < self.limit;
        if let (true, Some(order)) = (room, self.order.as_mut()) {
            order()?;
        }
        while self.next < self.ids.len() && self.load().in_flight_bytes() < self.limit {
            if !self.queue(self.ids[self.next])? {
                break;
            }
            self.next += 1;
        }
        if self.load().in_flight() == 0 {
            return Poll::Ready(match self.ids.get(self.next) {
                None => Ok(None),
                Some(&id) => {
                    let info = self.ckpt.tensor(id);
                    Err(Error::NoRoom { len: info.len() }.about(&self.ckpt, id))
                }
            });
        }
        match self.load.as_mut().expect("present").next_done(timeout) {
            Ok(done) if !done.is_empty() => {
                // Every byte of these landed before this check: a file
                // still the version opened means none is from another.
                for &i in &done {
                    let t = self.ckpt.tensor(TensorId(i as u32));
                    if let Err(e) = self.versions[t.file.index()].check_unchanged(t.range.start) {
                        return Poll::Ready(
                            Err(Error::Io(e).about(&self.ckpt, TensorId(i as u32))),
                        );
                    }
                }
                let batch = done
                    .into_iter()
                    .filter_map(|i| {
                        let owner = self.keep.remove(&i)?;
                        Some(Loaded {
                            id: TensorId(i as u32),
                            owner,
                        })
                    })
                    .collect();
                Poll::Ready(Ok(Some(batch)))
            }
            Ok(_) => Poll::Pending,
            Err((i, e)) => Poll::Ready(Err(e.about(&self.ckpt, TensorId(i as u32)))),
        }
    }

    fn load(&self) -> &DirectLoad {
        self.load.as_ref().expect("present until dropped")
    }

    /// Ask for tensor `id`'s destination and queue its reads; false when
    /// there is no room for it until tensors in flight come back.
    fn queue(&mut self, id: TensorId) -> Result<bool, Error> {
        let info = self.ckpt.tensor(id);
        let Some(d) = ask(&mut self.dests, &self.ckpt, id)? else {
            return Ok(false);
        };
        let ckpt = self.ckpt.clone();
        let named = |e: Error| e.about(&ckpt, id);
        let job = DirectJob {
            id: id.index(),
            file: info.file.index(),
            offset: info.range.start,
            len: usize::try_from(d.len).map_err(|_| named(Error::NoRoom { len: d.len }))?,
            dst: d.ptr,
        };
        // Kept before anything writes the memory, until it is handed back
        // or the reads are gone.
        self.keep.insert(id.index(), d.owner);
        // SAFETY: `Destinations`' contract: the memory stays allocated while
        // its owner lives, and nothing else uses it until the tensor is
        // handed back; the owner is in `keep` until then, and `Drop` joins
        // every read before `keep` goes.
        unsafe { self.load.as_mut().expect("present").submit(job) }.map_err(named)?;
        Ok(true)
    }
}

impl<T: Destinations> Drop for DirectDeviceLoad<T> {
    fn drop(&mut self) {
        // The reads write the destinations: stop and join them before the
        // owners in `keep` go.
        drop(self.load.take());
        self.keep.clear();
    }
}
