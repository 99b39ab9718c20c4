//! Queues of positional reads: the one boundary where reads are handed to
//! the kernel (io_uring, Linux AIO) or to threads (pread, mapped copies).
//!
//! A queue knows nothing of retries: it reports each read's raw result
//! (bytes or `-errno`), and the engine's reader (`engine/reader.rs`) feeds
//! it to the read's [`ReadProgress`](crate::ReadProgress) and resubmits
//! what that says. The rules for `EINTR`, `EAGAIN`, short reads and the end
//! of the file are that type's alone, for every backend.

pub(crate) mod aio;
pub(crate) mod pool;
pub(crate) mod uring;

use std::io;
use std::os::fd::RawFd;

/// One read handed to a queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Op {
    /// Index of the file in the queue's file table.
    pub file: u32,
    /// Where to read from.
    pub offset: u64,
    /// Where to write.
    pub dst: *mut u8,
    /// How many bytes (at most `u32::MAX`; extents are far smaller).
    pub len: u32,
    /// Whether `dst` lies in the buffer registered with the queue.
    pub registered: bool,
    /// Returned with the completion.
    pub tag: u64,
}

// SAFETY: an `Op` is a description of a read; the memory behind `dst` is
// kept valid by the reader that pushed it until the op completes, whichever
// thread performs it.
unsafe impl Send for Op {}

/// A finished read: the bytes transferred, or a negated `errno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cqe {
    pub tag: u64,
    pub res: i64,
}

/// A file as queues see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueFile {
    pub fd: RawFd,
    /// The file's size when opened (mapped copies stop there).
    pub size: u64,
}

/// A queue of reads in flight.
pub(crate) trait Queue: Send {
    /// Queue `op`. It reaches the kernel or a thread on [`Queue::submit`]
    /// at the latest.
    ///
    /// # Safety
    ///
    /// `op.dst` must be valid for writes of `op.len` bytes, and nothing else
    /// may read or write those bytes or free them until a completion with
    /// `op.tag` has been returned by [`Queue::wait`].
    unsafe fn push(&mut self, op: Op) -> io::Result<()>;

    /// Hand every queued op over.
    fn submit(&mut self) -> io::Result<()>;

    /// Submit, then wait until at least `min` completions are available and
    /// append every available one to `out`. `min` must not exceed the ops in
    /// flight. An error means nothing was waited for.
    fn wait(&mut self, min: usize, out: &mut Vec<Cqe>) -> io::Result<()>;

    /// Describe how it is set up, for logs (registered buffers, fixed files).
    fn describe(&self) -> String;

    /// The full error behind a failed completion with `tag`, where the
    /// queue has more to say than an `errno` (a remote read's URL and HTTP
    /// status). Taken once.
    fn take_error(&mut self, _tag: u64) -> Option<io::Error> {
        None
    }
}

/// Convert a syscall's `-1`-and-`errno` result to a `Result`, retrying on
/// `EINTR`.
pub(crate) fn retry_eintr<T: PartialOrd + Default>(mut f: impl FnMut() -> T) -> io::Result<T> {
    loop {
        let rc = f();
        if rc >= T::default() {
            return Ok(rc);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The negated `errno` of the last failed call.
pub(crate) fn neg_errno() -> i64 {
    -i64::from(
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}
