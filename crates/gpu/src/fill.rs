//! Filling staging memory with several threads. One core copies far slower
//! than a PCIe 5 link moves bytes (roughly 10 GB/s against 50), so a piece
//! of a megabyte or more is split over a small pool of threads that lives
//! as long as the pipeline.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::Error;

/// The smallest part worth handing to another thread.
const PART_BYTES: usize = 1 << 20;

/// A part of a copy, run by a worker while the caller waits for it.
struct Job {
    src: *const u8,
    dst: *mut u8,
    len: usize,
    done: Arc<Latch>,
}

// SAFETY: the pointers are valid for `len` bytes until `done` is counted
// down, and the caller that made them blocks until then (`Filler::copy`).
unsafe impl Send for Job {}

impl Job {
    fn run(self) {
        // SAFETY: valid and disjoint (parts of one `&[u8]` and one
        // `&mut [u8]`) until the latch is counted down, below.
        unsafe { std::ptr::copy_nonoverlapping(self.src, self.dst, self.len) };
        self.done.count_down();
    }
}

/// Parts still running.
struct Latch {
    left: Mutex<usize>,
    zero: Condvar,
}

impl Latch {
    fn count_down(&self) {
        let mut left = self.left.lock().unwrap_or_else(PoisonError::into_inner);
        *left -= 1;
        if *left == 0 {
            self.zero.notify_all();
        }
    }

    fn wait(&self) {
        let mut left = self.left.lock().unwrap_or_else(PoisonError::into_inner);
        while *left > 0 {
            left = self.zero.wait(left).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Copies into staging memory, large ones split over `threads` threads
/// (the caller's included).
pub(crate) struct Filler {
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Filler {
    /// A filler using up to `threads` threads; the workers (`threads - 1`)
    /// start now. If the system refuses some, the ones started are used;
    /// if it refuses the first one asked for, that is the error.
    pub(crate) fn new(threads: usize) -> Result<Self, Error> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut workers: Vec<JoinHandle<()>> = Vec::with_capacity(threads.saturating_sub(1));
        for _ in 1..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name("weightlift-fill".into())
                .spawn(move || work(&rx));
            match spawned {
                Ok(worker) => workers.push(worker),
                // Fewer threads fill as well, only slower.
                Err(_) if !workers.is_empty() => break,
                Err(source) => {
                    return Err(Error::Spawn {
                        what: "fill thread",
                        source,
                    });
                }
            }
        }
        Ok(Filler {
            jobs: (!workers.is_empty()).then_some(tx),
            workers,
        })
    }

    /// Copy `src` into `dst` (as long), returning once every part is done.
    pub(crate) fn copy(&self, dst: &mut [u8], src: &[u8]) {
        assert_eq!(dst.len(), src.len(), "a copy between unequal lengths");
        let parts = (self.workers.len() + 1).min(src.len() / PART_BYTES);
        let Some(jobs) = self.jobs.as_ref().filter(|_| parts > 1) else {
            dst.copy_from_slice(src);
            return;
        };
        let part = src.len().div_ceil(parts);
        let mut pieces = dst.chunks_mut(part).zip(src.chunks(part));
        let (first_dst, first_src) = pieces.next().expect("at least one part");
        let done = Arc::new(Latch {
            left: Mutex::new(parts - 1),
            zero: Condvar::new(),
        });
        for (d, s) in pieces {
            let job = Job {
                src: s.as_ptr(),
                dst: d.as_mut_ptr(),
                len: s.len(),
                done: done.clone(),
            };
            // A worker gone (it cannot panic, but still): copy here.
            if let Err(e) = jobs.send(job) {
                e.0.run();
            }
        }
        first_dst.copy_from_slice(first_src);
        // The parts borrow `dst` and `src`: this returns only once they ran.
        done.wait();
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job.run(),
            Err(_) => return,
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_lands_whatever_the_split() {
        let src: Vec<u8> = (0..(5 << 20) + 13)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        for threads in [1, 2, 3, 8] {
            let filler = Filler::new(threads).unwrap();
            for len in [
                0,
                1,
                PART_BYTES - 1,
                PART_BYTES,
                2 * PART_BYTES + 5,
                src.len(),
            ] {
                let mut dst = vec![0u8; len];
                filler.copy(&mut dst, &src[..len]);
                assert!(dst == src[..len], "{threads} threads, {len} bytes");
            }
        }
    }
}
