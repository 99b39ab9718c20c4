//! The threads that read straight into device memory: each tensor cut into
//! chunks, each chunk read through a [`DirectReader`] under `weightlift-io`'s
//! one read rule ([`ReadProgress`]), each tensor handed back once all its
//! bytes have landed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use weightlift_gpu::DirectReader;
use weightlift_io::{ReadProgress, Verdict};

use crate::Error;

/// One tensor to read: `len` bytes at `offset` of file `file` into device
/// memory at `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectJob {
    /// The caller's number for the tensor.
    pub id: usize,
    /// Which file of the reader.
    pub file: usize,
    /// Where in the file.
    pub offset: u64,
    /// How many bytes.
    pub len: usize,
    /// The device address to read to.
    pub dst: u64,
}

/// A part of a job, run by one thread.
struct Chunk {
    job: DirectJob,
    /// Offset of the part inside the tensor.
    at: usize,
    len: usize,
}

type Done = Result<(usize, usize), (usize, Error)>;

/// Reads of many tensors straight into device memory, on a pool of threads.
///
/// Each tensor is cut into chunks of at most `chunk` bytes, read in any
/// order by `threads` threads, each chunk under the one read rule of
/// `weightlift-io` ([`ReadProgress`], resuming a short read where it
/// ended): `EINTR` and `EAGAIN` are tried again, a short read reads the
/// rest, and a file that ends before the size it had at open is
/// [`weightlift_io::Error::Truncated`]. [`DirectLoad::next_done`] hands
/// back the tensors whose every byte has landed. Dropping it stops the
/// threads after the reads they are in and waits for them, so no read is
/// in flight into any destination once it is gone.
pub struct DirectLoad {
    jobs: Option<Sender<Chunk>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    reader: Arc<dyn DirectReader>,
    /// Bytes still to land, by tensor.
    left: HashMap<usize, usize>,
    /// Tensors complete and not yet handed back (empty ones).
    ready: Vec<usize>,
    in_flight_bytes: usize,
    chunk: usize,
    /// Tensors queued, and handed back, so far.
    queued: usize,
    handed: usize,
}

impl DirectLoad {
    /// A load through `reader` on `threads` threads (at least one) in
    /// chunks of `chunk` bytes (at least one). Fewer threads than asked
    /// for are used if the system refuses more; none is [`Error::Spawn`].
    pub fn new(reader: Arc<dyn DirectReader>, threads: usize, chunk: usize) -> Result<Self, Error> {
        let (jobs, rx) = channel::<Chunk>();
        let (done_tx, done) = channel::<Done>();
        let rx = Arc::new(Mutex::new(rx));
        let cancel = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(threads.max(1));
        for _ in 0..threads.max(1) {
            let (rx, tx, reader, cancel) =
                (rx.clone(), done_tx.clone(), reader.clone(), cancel.clone());
            let spawned = std::thread::Builder::new()
                .name("weightlift-direct".into())
                .spawn(move || work(&rx, &tx, &*reader, &cancel));
            match spawned {
                Ok(worker) => workers.push(worker),
                // One thread reads it all, only slower.
                Err(_) if !workers.is_empty() => break,
                Err(source) => {
                    return Err(Error::Spawn {
                        what: "direct read thread",
                        source,
                    });
                }
            }
        }
        Ok(DirectLoad {
            jobs: Some(jobs),
            done,
            workers,
            cancel,
            reader,
            left: HashMap::new(),
            ready: Vec::new(),
            in_flight_bytes: 0,
            chunk: chunk.max(1),
            queued: 0,
            handed: 0,
        })
    }

    /// Queue the reads of one tensor. A tensor that does not lie inside its
    /// file as it was opened is [`Error::PastEnd`], and nothing is queued.
    ///
    /// # Safety
    ///
    /// `job.dst..job.dst + job.len` must be memory of the reader's device
    /// that stays allocated, and that nothing else uses, until the tensor
    /// is handed back or the load is dropped.
    pub unsafe fn submit(&mut self, job: DirectJob) -> Result<(), Error> {
        let size = self.reader.size(job.file);
        let end = job.offset.checked_add(job.len as u64);
        if end.is_none_or(|end| end > size) {
            return Err(Error::PastEnd {
                file: self.reader.path(job.file).to_path_buf(),
                offset: job.offset,
                len: job.len as u64,
                size,
            });
        }
        if self.left.contains_key(&job.id) || self.ready.contains(&job.id) {
            return Err(Error::Queued {
                file: self.reader.path(job.file).to_path_buf(),
                offset: job.offset,
            });
        }
        self.queued += 1;
        if job.len == 0 {
            self.ready.push(job.id);
            return Ok(());
        }
        // Taken only by `drop`; `new` started at least one thread.
        let Some(jobs) = &self.jobs else {
            return Err(self.stopped().1);
        };
        self.left.insert(job.id, job.len);
        self.in_flight_bytes += job.len;
        let mut at = 0;
        while at < job.len {
            let len = self.chunk.min(job.len - at);
            // The workers hold the receiver until this load drops it.
            let _ = jobs.send(Chunk { job, at, len });
            at += len;
        }
        Ok(())
    }

    /// Bytes queued and not yet landed.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// Tensors queued and not yet handed back.
    pub fn in_flight(&self) -> usize {
        self.left.len() + self.ready.len()
    }

    /// The tensors whose bytes have all landed, waiting up to `timeout` for
    /// one when none has; empty when none did in time. A failed read is
    /// the error, with its tensor's id; drop the load then.
    pub fn next_done(&mut self, timeout: Duration) -> Result<Vec<usize>, (usize, Error)> {
        let mut out = std::mem::take(&mut self.ready);
        if out.is_empty() && !self.left.is_empty() {
            match self.done.recv_timeout(timeout) {
                Ok(d) => self.count(d, &mut out)?,
                // A worker that panicked took its chunk with it: the tensor
                // would never complete.
                Err(RecvTimeoutError::Timeout) if self.workers.iter().any(|w| w.is_finished()) => {
                    return Err(self.stopped());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(self.stopped()),
            }
        }
        while let Ok(d) = self.done.try_recv() {
            self.count(d, &mut out)?;
        }
        self.handed += out.len();
        Ok(out)
    }

    fn count(&mut self, d: Done, out: &mut Vec<usize>) -> Result<(), (usize, Error)> {
        let (id, n) = d?;
        // Every chunk read belongs to a tensor in flight (`submit` queues a
        // tensor once); one that does not is a worker gone wrong.
        let Some(left) = self.left.get_mut(&id) else {
            return Err(self.stopped());
        };
        self.in_flight_bytes -= n;
        *left -= n;
        if *left == 0 {
            self.left.remove(&id);
            out.push(id);
        }
        Ok(())
    }

    /// The reading threads are gone (each ended unexpectedly): a tensor
    /// still in flight, and the load's shortfall.
    fn stopped(&self) -> (usize, Error) {
        let id = self.left.keys().next().copied().unwrap_or_default();
        (
            id,
            Error::Incomplete {
                expected: self.queued,
                delivered: self.handed,
            },
        )
    }
}

fn work(
    rx: &Mutex<Receiver<Chunk>>,
    done: &Sender<Done>,
    reader: &dyn DirectReader,
    cancel: &AtomicBool,
) {
    loop {
        let chunk = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(Chunk { job, at, len }) = chunk else {
            return;
        };
        if cancel.load(Ordering::Relaxed) {
            continue;
        }
        let result = read_chunk(reader, &job, at, len)
            .map(|()| (job.id, len))
            .map_err(|e| (job.id, e));
        if result.is_err() {
            // Stop the rest: the load is failing.
            cancel.store(true, Ordering::Relaxed);
        }
        let _ = done.send(result);
    }
}

/// Read bytes `at..at + len` of `job`, by the one read rule: retried after
/// `EINTR` and `EAGAIN`, resumed after a short read, and an error if the
/// file ends before the size it had at open.
fn read_chunk(
    reader: &dyn DirectReader,
    job: &DirectJob,
    at: usize,
    len: usize,
) -> Result<(), Error> {
    let size = reader.size(job.file);
    let offset = job.offset + at as u64;
    let mut progress = ReadProgress::new(offset, len, size);
    let mut rest = progress.rest();
    loop {
        let dst = job.dst + (at + rest.at) as u64;
        // SAFETY: `rest` lies inside this chunk, so `dst..dst + rest.len`
        // lies inside the job's destination (`submit`'s contract), where no
        // other chunk writes.
        let result = unsafe { reader.read(job.file, dst, rest.len, rest.offset) }?;
        match progress.feed(result) {
            Verdict::Finished(n) if n >= len => return Ok(()),
            // `submit` checked the job lies inside the file as it was at
            // open, so this is only a reader that returned too little.
            Verdict::Finished(n) => {
                return Err(Error::PastEnd {
                    file: reader.path(job.file).to_path_buf(),
                    offset: offset + n as u64,
                    len: (len - n) as u64,
                    size,
                });
            }
            Verdict::Resume(next) => rest = next,
            Verdict::Failed(f) => return Err(f.into_error(reader.path(job.file)).into()),
        }
    }
}

impl Drop for DirectLoad {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        drop(self.jobs.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
