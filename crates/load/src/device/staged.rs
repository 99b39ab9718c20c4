//! The reading side of a device load: the I/O engine runs on a thread of
//! its own into the staging ring, and each extent that lands is handed
//! over a channel to the load, which copies it to the device and hands the
//! slot back once the copy completed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use weightlift_io::{Engine, Release, Ring, Sink};
use weightlift_plan::ReadPlan;

use crate::Error;

/// What the reading thread reports.
#[derive(Debug)]
pub(crate) enum Landed {
    /// Extent `index` of the plan is in staging slot `slot` (`len` bytes;
    /// fewer than the extent only at the end of its file). The slot is the
    /// load's until it gives it back.
    Extent {
        index: usize,
        slot: usize,
        len: usize,
    },
    /// Every extent landed, or reading failed (every read finished, either
    /// way).
    Finished(Result<(), weightlift_io::Error>),
}

/// The engine's consumer on the reading thread: it hands each landed slot
/// over and takes slots back as the load gives them.
struct Handover {
    out: Sender<Landed>,
    back: Receiver<usize>,
    /// Slots handed over and not given back.
    held: usize,
}

impl Sink for Handover {
    fn deliver(
        &mut self,
        index: usize,
        data: &[u8],
        slot: usize,
    ) -> Result<Release, weightlift_io::Error> {
        let landed = Landed::Extent {
            index,
            slot,
            len: data.len(),
        };
        self.out
            .send(landed)
            .map_err(|_| weightlift_io::Error::Cancelled)?;
        self.held += 1;
        Ok(Release::Later)
    }

    fn reclaim(&mut self, block: bool, freed: &mut Vec<usize>) -> Result<(), weightlift_io::Error> {
        if block && self.held > 0 {
            // Every slot is with the load: wait for one. A load that is gone
            // waited for its copies first (see `Reads::stop`).
            let slot = self
                .back
                .recv()
                .map_err(|_| weightlift_io::Error::Cancelled)?;
            self.held -= 1;
            freed.push(slot);
        }
        loop {
            match self.back.try_recv() {
                Ok(slot) => {
                    self.held -= 1;
                    freed.push(slot);
                }
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(weightlift_io::Error::Cancelled),
            }
        }
    }

    fn settle(&mut self) -> Result<(), weightlift_io::Error> {
        // Slots still with the load are the load's to look after: it never
        // hands the ring to another run before it stopped these reads and
        // synchronized every copy (`DeviceLoad::stop`). Waiting for them
        // here would keep the load from hearing that reading ended, and so
        // from the error that would end it.
        Ok(())
    }
}

/// Reads of one plan into a ring, on a thread of their own.
pub(crate) struct Reads {
    landed: Receiver<Landed>,
    back: Option<Sender<usize>>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    finished: bool,
}

impl Reads {
    /// Start reading `plan` with `engine` into `ring`.
    pub(crate) fn start(
        engine: Engine,
        plan: Arc<ReadPlan>,
        ring: Arc<Ring>,
    ) -> Result<Self, Error> {
        let (out, landed) = mpsc::channel();
        let (back_tx, back) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let thread = {
            let cancel = cancel.clone();
            std::thread::Builder::new()
                .name("wl-stage".into())
                .spawn(move || {
                    let mut sink = Handover {
                        out: out.clone(),
                        back,
                        held: 0,
                    };
                    let result = engine.run(&plan, &ring, &mut sink, Some(&cancel));
                    let _ = out.send(Landed::Finished(result));
                })
                .map_err(|source| Error::Spawn {
                    what: "reading into staging",
                    source,
                })?
        };
        Ok(Reads {
            landed,
            back: Some(back_tx),
            cancel,
            thread: Some(thread),
            finished: false,
        })
    }

    /// The next report, waiting at most `timeout`; `None` when none came in
    /// time or the reads finished and were reported.
    pub(crate) fn next(&mut self, timeout: Duration) -> Option<Landed> {
        if self.finished {
            return None;
        }
        let got = if timeout.is_zero() {
            self.landed.try_recv().map_err(|e| match e {
                TryRecvError::Empty => None,
                TryRecvError::Disconnected => Some(()),
            })
        } else {
            self.landed.recv_timeout(timeout).map_err(|e| match e {
                RecvTimeoutError::Timeout => None,
                RecvTimeoutError::Disconnected => Some(()),
            })
        };
        match got {
            Ok(landed) => {
                self.finished = matches!(landed, Landed::Finished(_));
                Some(landed)
            }
            Err(None) => None,
            // The thread ended without a word: it panicked.
            Err(Some(())) => {
                self.finished = true;
                Some(Landed::Finished(Err(weightlift_io::Error::Cancelled)))
            }
        }
    }

    /// Whether every extent landed or reading failed, and that was reported.
    pub(crate) fn finished(&self) -> bool {
        self.finished
    }

    /// Give slot `slot` back: no copy reads it any more.
    pub(crate) fn give_back(&self, slot: usize) {
        if let Some(back) = &self.back {
            // The thread may have ended (after an error): nothing to do then.
            let _ = back.send(slot);
        }
    }

    /// Stop reading and wait for the thread, which waits for every read in
    /// flight. A slot handed over and not given back is never read into
    /// again: the engine takes back only the slots given back, and stops
    /// once the channel is gone. (The ring's memory itself is the
    /// staging's, which outlives every copy.)
    pub(crate) fn stop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        // Slots not given back can now be taken as free: the sink's waits
        // end.
        drop(self.back.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reads {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The files of a checkpoint, for the engine.
pub(crate) fn paths(ckpt: &weightlift_format::Checkpoint) -> Vec<PathBuf> {
    ckpt.shards()
        .iter()
        .map(|s| s.path().to_path_buf())
        .collect()
}
