//! The reader: the one retry and end-of-file rule ([`ReadProgress`])
//! applied to every backend's raw completions, and draining what is in
//! flight before memory is let go.

use std::sync::Arc;

use weightlift_plan::Extent;

#[cfg(feature = "test-hooks")]
use super::InjectedFault;
use crate::queue::{Cqe, Op, Queue};
use crate::region::Region;
use crate::{
    Backend, Error, PlanMismatch, RangeRead, ReadFailure, ReadFile, ReadProgress, Verdict,
};

/// The files a reader reads: local ones, or remote ones read by ranges.
#[derive(Clone, Copy)]
pub(super) enum Files<'a> {
    Local(&'a [ReadFile]),
    Remote(&'a [Arc<dyn RangeRead>]),
}

impl Files<'_> {
    #[cfg(feature = "test-hooks")]
    fn len(&self) -> usize {
        match self {
            Files::Local(f) => f.len(),
            Files::Remote(f) => f.len(),
        }
    }

    fn size(&self, i: usize) -> u64 {
        match self {
            Files::Local(f) => f[i].size(),
            Files::Remote(f) => f[i].size(),
        }
    }

    fn path(&self, i: usize) -> &std::path::Path {
        match self {
            Files::Local(f) => f[i].path(),
            Files::Remote(f) => f[i].path(),
        }
    }

    /// A local file's stamp is checked after reads; a remote file checks
    /// its version on every range itself.
    fn check_unchanged(&self, i: usize, offset: u64) -> Result<(), Error> {
        match self {
            Files::Local(f) => f[i].check_unchanged(offset),
            Files::Remote(_) => Ok(()),
        }
    }
}

/// A read in flight.
#[derive(Debug, Clone, Copy)]
struct Pending {
    file: u32,
    dst: *mut u8,
    registered: bool,
    /// What is read so far, and what is left.
    progress: ReadProgress,
    index: usize,
    /// An error to report instead of the first result (a test hook).
    #[cfg(feature = "test-hooks")]
    inject: Option<i32>,
}

/// Runs reads on a queue and turns raw completions into finished reads, by
/// the one rule of [`ReadProgress`]: resubmits after `EINTR`, `EAGAIN` and
/// short reads (a direct read resumes from its last aligned point), accepts
/// a short read only at the end of the file as it was at open, and reports
/// a file that ends early as truncated.
///
/// Dropping a reader waits for every read in flight. If the queue cannot be
/// waited on any more (which only a kernel fault could cause), the reader
/// leaks the queue and the memory it reads into rather than free what the
/// kernel may still write.
pub(super) struct Reader<'a> {
    queue: Option<Box<dyn Queue>>,
    backend: Backend,
    files: Files<'a>,
    step: u64,
    pub(super) depth: usize,
    pending: Vec<Option<Pending>>,
    free: Vec<usize>,
    pub(super) in_flight: usize,
    cqes: Vec<Cqe>,
    /// Files of the reads finished in this batch, each once, with the
    /// offset of its first: checked before the batch is handed out.
    finished: Vec<(u32, u64)>,
    keep: Vec<Arc<Region>>,
    #[cfg(feature = "test-hooks")]
    fault: Option<InjectedFault>,
    /// Reads started per file, to find the one to fail (a test hook).
    #[cfg(feature = "test-hooks")]
    submitted_per_file: Vec<usize>,
}

impl<'a> Reader<'a> {
    /// A reader of `files` on `queue`, which it owns from now on. `step`:
    /// the alignment direct reads resume from after a short read (1 for
    /// buffered reads); `keep`: the memory reads land in, kept alive until
    /// every read is done.
    pub(super) fn new(
        queue: Box<dyn Queue>,
        backend: Backend,
        files: Files<'a>,
        step: u64,
        depth: usize,
        keep: Vec<Arc<Region>>,
    ) -> Self {
        Self {
            queue: Some(queue),
            backend,
            files,
            step,
            depth,
            pending: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            cqes: Vec::new(),
            finished: Vec::new(),
            keep,
            #[cfg(feature = "test-hooks")]
            fault: None,
            #[cfg(feature = "test-hooks")]
            submitted_per_file: vec![0; files.len()],
        }
    }

    /// Make the read `fault` names report its error (a test hook).
    #[cfg(feature = "test-hooks")]
    pub(super) fn with_fault(mut self, fault: Option<InjectedFault>) -> Self {
        self.fault = fault;
        self
    }

    /// The error to report for the next read started in `file`, if the
    /// fault names it.
    #[cfg(feature = "test-hooks")]
    fn injected(&mut self, file: usize) -> Option<i32> {
        let count = &mut self.submitted_per_file[file];
        let inject = self
            .fault
            .filter(|f| f.file == file && f.nth == *count)
            .map(|f| f.errno);
        *count += 1;
        inject
    }

    /// Start reading `extent` (index `index` in its plan) into `dst`.
    ///
    /// # Safety
    ///
    /// `dst` must be valid for `extent.len` bytes and kept valid (by an
    /// `Arc` in `keep`) and untouched until the read finishes.
    pub(super) unsafe fn start(
        &mut self,
        extent: &Extent,
        index: usize,
        dst: *mut u8,
        registered: bool,
    ) -> Result<(), Error> {
        let len = usize::try_from(extent.len)
            .map_err(|_| Error::Plan(PlanMismatch::TooLong { len: extent.len }))?;
        let file = extent.file.index();
        let size = self.files.size(file);
        let p = Pending {
            file: file as u32,
            dst,
            registered,
            progress: ReadProgress::new(extent.offset, len, size).resume_aligned(self.step),
            index,
            #[cfg(feature = "test-hooks")]
            inject: self.injected(file),
        };
        let tag = match self.free.pop() {
            Some(t) => {
                self.pending[t] = Some(p);
                t
            }
            None => {
                self.pending.push(Some(p));
                self.pending.len() - 1
            }
        };
        // SAFETY: the caller's guarantee covers the whole extent.
        let pushed = unsafe { self.push(tag) };
        if let Err(e) = pushed {
            self.pending[tag] = None;
            self.free.push(tag);
            return Err(self.fail(e));
        }
        Ok(())
    }

    /// Push (again) the unread rest of pending read `tag`.
    ///
    /// # Safety
    ///
    /// As for [`Reader::start`].
    unsafe fn push(&mut self, tag: usize) -> Result<(), Error> {
        let p = self.pending[tag].expect("pushing a pending read");
        let rest = p.progress.rest();
        let op = Op {
            file: p.file,
            offset: rest.offset,
            // SAFETY: the rest lies inside the read (`at + len` is its
            // length), so this stays inside the destination.
            dst: unsafe { p.dst.add(rest.at) },
            len: u32::try_from(rest.len).unwrap_or(!0xFFF),
            registered: p.registered,
            tag: tag as u64,
        };
        let queue = self.queue.as_mut().expect("queue present until drop");
        // SAFETY: the caller's guarantee for the destination.
        unsafe { queue.push(op) }.map_err(|source| Error::Queue {
            backend: self.backend,
            op: "submit",
            source,
        })?;
        self.in_flight += 1;
        Ok(())
    }

    /// Wait until at least one read finishes; append `(index, bytes)` for
    /// each finished one. On error, every read in flight has completed.
    pub(super) fn next(&mut self, out: &mut Vec<(usize, usize)>) -> Result<(), Error> {
        while out.is_empty() && self.in_flight > 0 {
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            let waited = self
                .queue
                .as_mut()
                .expect("queue present")
                .wait(1, &mut cqes);
            if let Err(source) = waited {
                self.cqes = cqes;
                return Err(self.fail(Error::Queue {
                    backend: self.backend,
                    op: "wait",
                    source,
                }));
            }
            self.in_flight -= cqes.len();
            let mut first_error = None;
            for c in &cqes {
                match self.complete(*c) {
                    Ok(Some(done)) => out.push(done),
                    Ok(None) => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            self.cqes = cqes;
            if let Some(e) = first_error {
                self.finished.clear();
                return Err(self.fail(e));
            }
            // Hand out only bytes of the version that was opened: any write
            // moves the file's stamp before its bytes can be read. One
            // check per file per batch.
            for i in 0..self.finished.len() {
                let (file, offset) = self.finished[i];
                if let Err(e) = self.files.check_unchanged(file as usize, offset) {
                    self.finished.clear();
                    return Err(self.fail(e));
                }
            }
            self.finished.clear();
        }
        Ok(())
    }

    /// Account for one completion: `Some` when its read is finished.
    fn complete(&mut self, c: Cqe) -> Result<Option<(usize, usize)>, Error> {
        let tag = c.tag as usize;
        let mut p = self.pending[tag]
            .take()
            .expect("completion of a pending read");
        // A queue may hold more than the errno (a remote read's URL and status).
        let detail = match (c.res < 0, self.queue.as_mut()) {
            (true, Some(q)) => q.take_error(c.tag),
            _ => None,
        };
        match self.account(&mut p, c.res, detail) {
            Ok(None) => {
                self.pending[tag] = Some(p);
                // SAFETY: the destination is the one `start` was given for
                // this read, still kept valid by the caller.
                unsafe { self.push(tag) }?;
                Ok(None)
            }
            Ok(Some(done)) => {
                self.free.push(tag);
                if !self.finished.iter().any(|&(f, _)| f == p.file) {
                    self.finished.push((p.file, p.progress.offset()));
                }
                Ok(Some((p.index, done)))
            }
            Err(e) => {
                self.free.push(tag);
                Err(e)
            }
        }
    }

    /// Apply result `res` (bytes, or a negated `errno`) to `p`: the bytes
    /// read when the read is finished, `None` when the rest must be read.
    fn account(
        &self,
        p: &mut Pending,
        res: i64,
        detail: Option<std::io::Error>,
    ) -> Result<Option<usize>, Error> {
        #[cfg(feature = "test-hooks")]
        let res = match p.inject.take() {
            Some(errno) => -i64::from(errno),
            None => res,
        };
        match p.progress.feed_raw(res) {
            Verdict::Finished(n) => Ok(Some(n)),
            Verdict::Resume(_) => Ok(None),
            Verdict::Failed(f) => {
                let f = match (f, detail) {
                    (ReadFailure::Read { offset, len, .. }, Some(source)) => ReadFailure::Read {
                        offset,
                        len,
                        source,
                    },
                    (f, _) => f,
                };
                Err(f.into_error(self.files.path(p.file as usize)))
            }
        }
    }

    /// Drain every read in flight, then return `e`.
    fn fail(&mut self, e: Error) -> Error {
        self.drain();
        e
    }

    /// Wait for every read in flight, discarding results. Returns whether
    /// nothing is in flight any more.
    fn drain(&mut self) -> bool {
        let Some(queue) = self.queue.as_mut() else {
            return self.in_flight == 0;
        };
        while self.in_flight > 0 {
            self.cqes.clear();
            if queue.wait(self.in_flight, &mut self.cqes).is_err() {
                return false;
            }
            self.in_flight -= self.cqes.len().min(self.in_flight);
            for c in &self.cqes {
                if let Some(slot) = self.pending.get_mut(c.tag as usize) {
                    *slot = None;
                }
            }
        }
        true
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if self.drain() {
            self.queue = None;
        } else {
            // The kernel may still write into these buffers: never free them.
            std::mem::forget(self.queue.take());
            std::mem::forget(std::mem::take(&mut self.keep));
        }
    }
}
