//! Reading file bytes straight into device memory, with no staging on the
//! host: GPUDirect Storage ([`crate::CuFileReader`]), or for tests a
//! host-memory stand-in ([`HostFileReader`]). [`DirectLoad`] runs the reads
//! of many tensors on a few threads, in chunks, and hands each tensor back
//! once all its bytes have landed.
//!
//! This is the one place this crate touches files: the reads are a
//! device's (cuFile's), so they belong with the device.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Error;

/// Reads from a set of files into a device's memory.
pub trait DirectReader: Send + Sync {
    /// The path of file `file`, for messages.
    fn path(&self, file: usize) -> &Path;

    /// Read up to `len` bytes at `offset` of file `file` into device memory
    /// at `dst`; the bytes read (0 at the end of the file).
    ///
    /// # Safety
    ///
    /// `dst..dst + len` must be memory of the reader's device, allocated,
    /// and untouched by anything else until this returns.
    unsafe fn read(&self, file: usize, dst: u64, len: usize, offset: u64) -> Result<usize, Error>;
}

/// Check that each of `paths` still has the size it had when its header
/// was read (`sizes`), and open it.
pub(crate) fn open_checked(
    paths: &[PathBuf],
    sizes: &[u64],
    open: impl Fn(&Path) -> std::io::Result<File>,
) -> Result<Vec<File>, Error> {
    paths
        .iter()
        .zip(sizes)
        .map(|(path, &size)| {
            let failed = |source: std::io::Error| Error::Read {
                path: path.clone(),
                offset: 0,
                source,
            };
            let file = open(path).map_err(failed)?;
            let now = file.metadata().map_err(failed)?.len();
            if now != size {
                return Err(Error::Changed {
                    path: path.clone(),
                    size: now,
                    expected: size,
                });
            }
            Ok(file)
        })
        .collect()
}

/// The stand-in for tests: "device memory" is host memory, read with
/// `pread`.
pub struct HostFileReader {
    paths: Vec<PathBuf>,
    files: Vec<File>,
}

impl HostFileReader {
    /// Open `paths`, each of which must still be `sizes[i]` bytes long.
    pub fn open(paths: &[PathBuf], sizes: &[u64]) -> Result<Self, Error> {
        Ok(HostFileReader {
            paths: paths.to_vec(),
            files: open_checked(paths, sizes, |p| File::open(p))?,
        })
    }
}

impl DirectReader for HostFileReader {
    fn path(&self, file: usize) -> &Path {
        &self.paths[file]
    }

    unsafe fn read(&self, file: usize, dst: u64, len: usize, offset: u64) -> Result<usize, Error> {
        // SAFETY: the caller's contract: `dst..dst + len` is memory nothing
        // else touches until this returns.
        let buf = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, len) };
        loop {
            match self.files[file].read_at(buf, offset) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Read {
                        path: self.paths[file].clone(),
                        offset,
                        source,
                    });
                }
                Ok(n) => return Ok(n),
            }
        }
    }
}

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

/// Reads of many tensors on a pool of threads.
///
/// Each tensor is cut into chunks of at most `chunk` bytes, read in any
/// order by `threads` threads; [`DirectLoad::next_done`] hands back the
/// tensors whose every byte has landed. Dropping it stops the threads
/// after the reads they are in and waits for them, so no read is in flight
/// into any destination once it is gone.
pub struct DirectLoad {
    jobs: Option<Sender<Chunk>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    /// Bytes still to land, by tensor.
    left: HashMap<usize, usize>,
    /// Tensors complete and not yet handed back (empty ones).
    ready: Vec<usize>,
    in_flight_bytes: usize,
    chunk: usize,
}

impl DirectLoad {
    /// A load through `reader` on `threads` threads (at least one) in
    /// chunks of `chunk` bytes (at least one). Fewer threads than asked
    /// for are used if the system refuses more; none is an error.
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
            left: HashMap::new(),
            ready: Vec::new(),
            in_flight_bytes: 0,
            chunk: chunk.max(1),
        })
    }

    /// Queue the reads of one tensor.
    ///
    /// # Safety
    ///
    /// `job.dst..job.dst + job.len` must be memory of the reader's device
    /// that stays allocated, and that nothing else uses, until the tensor
    /// is handed back or the load is dropped.
    pub unsafe fn submit(&mut self, job: DirectJob) -> Result<(), Error> {
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
                Err(RecvTimeoutError::Timeout) => return Ok(out),
                Err(RecvTimeoutError::Disconnected) => return Err(self.stopped()),
            }
        }
        while let Ok(d) = self.done.try_recv() {
            self.count(d, &mut out)?;
        }
        Ok(out)
    }

    fn count(&mut self, d: Done, out: &mut Vec<usize>) -> Result<(), (usize, Error)> {
        let (id, n) = d?;
        self.in_flight_bytes -= n;
        let left = self.left.get_mut(&id).expect("a tensor in flight");
        *left -= n;
        if *left == 0 {
            self.left.remove(&id);
            out.push(id);
        }
        Ok(())
    }

    fn stopped(&self) -> (usize, Error) {
        let id = self.left.keys().next().copied().unwrap_or_default();
        (
            id,
            Error::Setting {
                name: "threads",
                reason: "the reading threads stopped".into(),
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
        let result = read_exact(reader, &job, at, len)
            .map(|()| (job.id, len))
            .map_err(|e| (job.id, e));
        if result.is_err() {
            // Stop the rest: the load is failing.
            cancel.store(true, Ordering::Relaxed);
        }
        let _ = done.send(result);
    }
}

/// Read bytes `at..at + len` of `job`, retrying short reads.
fn read_exact(
    reader: &dyn DirectReader,
    job: &DirectJob,
    at: usize,
    len: usize,
) -> Result<(), Error> {
    let mut got = 0;
    while got < len {
        let offset = job.offset + (at + got) as u64;
        // SAFETY: within the job's destination (`submit`'s contract), which
        // no other chunk touches.
        let n = unsafe { reader.read(job.file, job.dst + (at + got) as u64, len - got, offset) }?;
        if n == 0 {
            return Err(Error::Truncated {
                path: reader.path(job.file).to_path_buf(),
                offset,
                missing: (len - got + (job.len - at - len)) as u64,
            });
        }
        got += n;
    }
    Ok(())
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
