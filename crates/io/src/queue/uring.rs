//! io_uring: reads submitted in batches through a shared ring, with fixed
//! files, and a registered buffer where the kernel and `RLIMIT_MEMLOCK`
//! allow (saving the per-read page pinning).

use std::io;

use io_uring::{IoUring, opcode, types};

use super::{Cqe, Op, Queue, QueueFile};

/// A ring with room for `depth` reads in flight.
///
/// Dropping a ring with reads still in the kernel cancels them
/// asynchronously: the kernel may write their buffers after the drop. The
/// reader therefore drains every read first, and leaks the buffers when it
/// cannot (see `engine::Reader`).
pub(crate) struct Uring {
    ring: IoUring,
    files: Vec<QueueFile>,
    fixed_files: bool,
    registered: bool,
    queued: usize,
}

impl Uring {
    /// Set up a ring and register `files`. `EPERM` here means io_uring is
    /// disabled (`kernel.io_uring_disabled`) or forbidden by seccomp;
    /// `ENOSYS` means the kernel lacks it.
    pub(crate) fn new(files: Vec<QueueFile>, depth: usize) -> io::Result<Self> {
        let entries = depth.clamp(1, 4096).next_power_of_two() as u32;
        let ring = IoUring::new(entries)?;
        let fds: Vec<_> = files.iter().map(|f| f.fd).collect();
        // Fixed files save a descriptor lookup per read; a kernel or limit
        // that refuses them leaves plain descriptors, which work the same.
        let fixed_files = !fds.is_empty() && ring.submitter().register_files(&fds).is_ok();
        Ok(Self {
            ring,
            files,
            fixed_files,
            registered: false,
            queued: 0,
        })
    }

    /// Register `buf..buf+len` so that reads into it skip pinning pages.
    /// Returns whether the kernel accepted (it refuses beyond
    /// `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`, or past 1 GiB).
    ///
    /// # Safety
    ///
    /// The memory must stay valid until the ring is dropped.
    pub(crate) unsafe fn register_buffer(&mut self, buf: *mut u8, len: usize) -> bool {
        let iov = libc::iovec {
            iov_base: buf.cast(),
            iov_len: len,
        };
        // SAFETY: the caller keeps the memory valid for the ring's life.
        self.registered = unsafe { self.ring.submitter().register_buffers(&[iov]) }.is_ok();
        self.registered
    }

    fn push_entry(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: the entry's buffer meets the pusher's guarantee (see
        // `Queue::push`); the ring copies the entry itself.
        if unsafe { self.ring.submission().push(entry) }.is_err() {
            // Full: hand the queued entries to the kernel and retry once.
            self.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        self.queued += 1;
        Ok(())
    }
}

impl Queue for Uring {
    unsafe fn push(&mut self, op: Op) -> io::Result<()> {
        let f = self.files[op.file as usize];
        let entry = match (self.fixed_files, op.registered && self.registered) {
            (true, true) => opcode::ReadFixed::new(types::Fixed(op.file), op.dst, op.len, 0)
                .offset(op.offset)
                .build(),
            (false, true) => opcode::ReadFixed::new(types::Fd(f.fd), op.dst, op.len, 0)
                .offset(op.offset)
                .build(),
            (true, false) => opcode::Read::new(types::Fixed(op.file), op.dst, op.len)
                .offset(op.offset)
                .build(),
            (false, false) => opcode::Read::new(types::Fd(f.fd), op.dst, op.len)
                .offset(op.offset)
                .build(),
        };
        self.push_entry(&entry.user_data(op.tag))
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.queued == 0 {
            return Ok(());
        }
        self.enter(0)
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Cqe>) -> io::Result<()> {
        let mut got = 0;
        loop {
            for c in self.ring.completion() {
                out.push(Cqe {
                    tag: c.user_data(),
                    res: i64::from(c.result()),
                });
                got += 1;
            }
            if got >= min {
                return self.submit();
            }
            self.enter(min - got)?;
        }
    }

    fn describe(&self) -> String {
        format!(
            "io_uring, {} entries, {}, {}",
            self.ring.params().sq_entries(),
            if self.fixed_files {
                "fixed files"
            } else {
                "plain descriptors"
            },
            if self.registered {
                "registered buffer"
            } else {
                "unregistered buffers"
            }
        )
    }
}

impl Uring {
    /// `io_uring_enter`: submit what is queued, wait for `want` completions.
    fn enter(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(n) => {
                    self.queued = self.queued.saturating_sub(n);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The completion queue is full: the caller reaps, then
                // calls again.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}
