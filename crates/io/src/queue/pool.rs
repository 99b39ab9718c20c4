//! A pool of threads, each performing one blocking read at a time: `pread`
//! (buffered or direct), or a copy out of a mapping of the file.

use std::collections::HashMap;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{Cqe, Op, Queue, QueueFile, neg_errno};
use crate::Error;
use crate::RangeRead;
use crate::region::Region;

/// What a worker does with an op: transfer and return the bytes moved, or
/// a negated `errno`.
pub(crate) trait Exec: Send + Sync + 'static {
    fn exec(&self, op: &Op) -> i64;
    fn name(&self) -> &'static str;
    /// The full error of a failed op, kept by [`Exec::exec`].
    fn take_error(&self, _tag: u64) -> Option<io::Error> {
        None
    }
}

/// Ranged reads of remote files: the one place an extent is fetched
/// instead of read from a descriptor. The file's own `read_at` retries
/// and bounds its waits; a failure is kept whole (URL, status) for the
/// reader, and the op reports `EIO`.
pub(crate) struct Fetch {
    pub files: Vec<Arc<dyn RangeRead>>,
    pub errors: Mutex<HashMap<u64, io::Error>>,
}

impl Exec for Fetch {
    fn exec(&self, op: &Op) -> i64 {
        let f = &self.files[op.file as usize];
        // SAFETY: the pusher guarantees `dst` is valid for `len` bytes and
        // untouched by anyone else until this op completes.
        let dst = unsafe { std::slice::from_raw_parts_mut(op.dst, op.len as usize) };
        match f.read_at(dst, op.offset) {
            Ok(n) => n as i64,
            Err(e) => {
                self.errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(op.tag, e);
                -i64::from(libc::EIO)
            }
        }
    }

    fn name(&self) -> &'static str {
        "ranged fetch"
    }

    fn take_error(&self, tag: u64) -> Option<io::Error> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tag)
    }
}

/// Reads with `pread(2)`.
pub(crate) struct Pread {
    pub files: Vec<QueueFile>,
}

impl Exec for Pread {
    fn exec(&self, op: &Op) -> i64 {
        let f = self.files[op.file as usize];
        let Ok(offset) = libc::off_t::try_from(op.offset) else {
            return -i64::from(libc::EINVAL);
        };
        // SAFETY: the pusher guarantees `dst` is valid for `len` bytes and
        // untouched by anyone else until this op completes; `fd` stays open
        // for the pool's lifetime (the reader owns the files).
        let n = unsafe { libc::pread(f.fd, op.dst.cast(), op.len as usize, offset) };
        if n < 0 { neg_errno() } else { n as i64 }
    }

    fn name(&self) -> &'static str {
        "pread"
    }
}

/// Copies out of read-only shared mappings of the files, with
/// `process_vm_readv` on this process: a copy that reports a page the file
/// no longer backs (it was truncated) as `EFAULT` instead of raising
/// `SIGBUS` as a plain `memcpy` would.
pub(crate) struct MappedCopy {
    pub files: Vec<QueueFile>,
    pub maps: Vec<Region>,
}

impl Exec for MappedCopy {
    fn exec(&self, op: &Op) -> i64 {
        let f = self.files[op.file as usize];
        let map = &self.maps[op.file as usize];
        // Bytes the file had at open, from the offset: the end of the file
        // reads short, as a read would.
        let left = f.size.saturating_sub(op.offset);
        let len = (op.len as u64).min(left) as usize;
        if len == 0 {
            return 0;
        }
        let local = libc::iovec {
            iov_base: op.dst.cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            // `offset + len <= size == map.len()`, so this stays in the mapping.
            iov_base: map.as_ptr().wrapping_add(op.offset as usize).cast(),
            iov_len: len,
        };
        // SAFETY: both iovecs describe memory of this process: `dst` is
        // valid for `len` bytes (the pusher's guarantee) and `remote` lies
        // inside a live mapping. The kernel checks every page and reports
        // faults as errors rather than signals.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        if n >= 0 {
            return n as i64;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EFAULT) {
            // The mapping no longer has a page there: the file shrank.
            // Report the end of the file; the reader names the truncation.
            return 0;
        }
        neg_errno()
    }

    fn name(&self) -> &'static str {
        "mapped copy"
    }
}

/// The thread pool.
pub(crate) struct Pool {
    exec: Arc<dyn Exec>,
    tx: Option<Sender<Op>>,
    rx: Receiver<Cqe>,
    workers: Vec<JoinHandle<()>>,
    queued: Vec<Op>,
    name: &'static str,
}

impl Pool {
    /// Start `threads` workers (at least one). When some start and the next
    /// cannot, the pool works with those (fewer threads read slower, not
    /// wrong); when none starts, that is the error.
    pub(crate) fn new(exec: impl Exec, threads: usize) -> Result<Self, Error> {
        let name = exec.name();
        let exec: Arc<dyn Exec> = Arc::new(exec);
        let (tx, jobs) = mpsc::channel::<Op>();
        let jobs = Arc::new(Mutex::new(jobs));
        let (done_tx, rx) = mpsc::channel();
        let workers = start_workers(name, threads.max(1), |i| {
            let (exec, jobs, done) = (exec.clone(), jobs.clone(), done_tx.clone());
            std::thread::Builder::new()
                .name(format!("wl-read-{i}"))
                .spawn(move || worker(&*exec, &jobs, &done))
        })?;
        Ok(Self {
            exec,
            tx: Some(tx),
            rx,
            workers,
            queued: Vec::new(),
            name,
        })
    }
}

/// Start up to `wanted` threads with `spawn(i)`: all of them, or as many as
/// started before one failed, or, when the first fails, an error.
fn start_workers(
    name: &str,
    wanted: usize,
    mut spawn: impl FnMut(usize) -> io::Result<JoinHandle<()>>,
) -> Result<Vec<JoinHandle<()>>, Error> {
    let mut workers = Vec::with_capacity(wanted);
    for i in 0..wanted {
        match spawn(i) {
            Ok(h) => workers.push(h),
            Err(source) if i == 0 => {
                return Err(Error::Spawn {
                    what: "reading",
                    source,
                });
            }
            Err(e) => {
                log::warn!(
                    target: "weightlift",
                    "{name}: started {i} of {wanted} threads, the next failed ({e}); reading with {i}"
                );
                break;
            }
        }
    }
    Ok(workers)
}

fn worker(exec: &dyn Exec, jobs: &Mutex<Receiver<Op>>, done: &Sender<Cqe>) {
    loop {
        // A poisoned lock means another worker panicked; the data (a
        // receiver) is still sound to use.
        let next = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(op) = next else { return };
        let res = exec.exec(&op);
        if done.send(Cqe { tag: op.tag, res }).is_err() {
            return;
        }
    }
}

impl Queue for Pool {
    unsafe fn push(&mut self, op: Op) -> io::Result<()> {
        self.queued.push(op);
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("pool closed"))?;
        for op in self.queued.drain(..) {
            tx.send(op)
                .map_err(|_| io::Error::other("read threads exited"))?;
        }
        Ok(())
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Cqe>) -> io::Result<()> {
        self.submit()?;
        for _ in 0..min {
            let c = self
                .rx
                .recv()
                .map_err(|_| io::Error::other("read threads exited"))?;
            out.push(c);
        }
        out.extend(self.rx.try_iter());
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} on {} threads", self.name, self.workers.len())
    }

    fn take_error(&mut self, tag: u64) -> Option<io::Error> {
        self.exec.take_error(tag)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the channel ends each worker after the ops already sent;
        // joining waits for them, so no op outlives the pool.
        self.tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing_at(n: usize) -> impl FnMut(usize) -> io::Result<JoinHandle<()>> {
        move |i| {
            if i == n {
                Err(io::Error::from_raw_os_error(libc::EAGAIN))
            } else {
                Ok(std::thread::spawn(|| {}))
            }
        }
    }

    #[test]
    fn no_thread_started_is_a_spawn_error() {
        match start_workers("test", 4, failing_at(0)) {
            Err(Error::Spawn { what, source }) => {
                assert_eq!(what, "reading");
                assert_eq!(source.raw_os_error(), Some(libc::EAGAIN));
            }
            other => panic!("expected a spawn error, got {other:?}"),
        }
    }

    #[test]
    fn some_threads_started_are_enough() {
        let workers = start_workers("test", 4, failing_at(2)).unwrap();
        assert_eq!(workers.len(), 2);
        for w in workers {
            w.join().unwrap();
        }
        let workers = start_workers("test", 3, failing_at(9)).unwrap();
        assert_eq!(workers.len(), 3);
        for w in workers {
            w.join().unwrap();
        }
    }
}
