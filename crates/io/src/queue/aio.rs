//! Linux AIO through the raw system calls (`io_setup`, `io_submit`,
//! `io_getevents`, `io_destroy`), without libaio.
//!
//! With `O_DIRECT` files the reads are truly asynchronous; on buffered
//! files the kernel performs them inside `io_submit`, which still works but
//! does not overlap.
//!
//! Contexts are reused. `io_destroy` returns only once the kernel has
//! retired the context, which takes RCU grace periods: 30 to 47 ms each on
//! the development machine, a hundred times a read of 256 KiB. A queue
//! therefore takes an idle context set up earlier in this process when one
//! is large enough, and gives it back when dropped with nothing in flight;
//! only contexts beyond `KEEP_IDLE` are destroyed.

use std::io;
#[cfg(feature = "test-hooks")]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, PoisonError};

use super::{Cqe, Op, Queue, QueueFile, retry_eintr};
use crate::EngineOptions;

/// `struct iocb` of `linux/aio_abi.h` (little-endian layout: the key
/// before the read/write flags).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Iocb {
    aio_data: u64,
    #[cfg(target_endian = "little")]
    aio_key: u32,
    aio_rw_flags: i32,
    #[cfg(target_endian = "big")]
    aio_key: u32,
    aio_lio_opcode: u16,
    aio_reqprio: i16,
    aio_fildes: u32,
    aio_buf: u64,
    aio_nbytes: u64,
    aio_offset: i64,
    aio_reserved2: u64,
    aio_flags: u32,
    aio_resfd: u32,
}

/// `struct io_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

const IOCB_CMD_PREAD: u16 = 0;

/// Idle contexts kept for reuse at most. Each holds its events (the kernel
/// reserves at least eight per possible CPU) against the system-wide
/// `fs.aio-max-nr`, so only a few are kept; a queue that finds that limit
/// reached destroys the idle ones and tries again.
const KEEP_IDLE: usize = 4;

/// Events a context is set up for at least: the engine's default depth, so
/// that the context a backend probe sets up serves the reads that follow.
const MIN_EVENTS: usize = EngineOptions::DEFAULT_QUEUE_DEPTH;

/// Contexts of this process not in use by any queue.
static IDLE: Mutex<Vec<Context>> = Mutex::new(Vec::new());

/// Contexts set up and destroyed in this process (a test hook).
#[cfg(feature = "test-hooks")]
static SET_UP: AtomicUsize = AtomicUsize::new(0);
#[cfg(feature = "test-hooks")]
static DESTROYED: AtomicUsize = AtomicUsize::new(0);

/// AIO contexts set up (`io_setup`) in this process so far. Only with the
/// `test-hooks` feature.
#[cfg(feature = "test-hooks")]
pub fn aio_contexts_set_up() -> usize {
    SET_UP.load(Ordering::Relaxed)
}

/// AIO contexts destroyed (`io_destroy`) in this process so far. Only with
/// the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
pub fn aio_contexts_destroyed() -> usize {
    DESTROYED.load(Ordering::Relaxed)
}

/// A kernel AIO context, and the process it belongs to: a child made by
/// `fork` does not inherit its parent's contexts. Held by one queue or by
/// the idle list at a time, and released or destroyed once, by its holder.
#[derive(Debug, Clone, Copy)]
struct Context {
    id: libc::c_ulong,
    events: usize,
    pid: libc::pid_t,
}

impl Context {
    /// An idle context with room for `depth` events, else a new one.
    fn acquire(depth: usize) -> io::Result<Self> {
        let want = depth.max(MIN_EVENTS);
        if let Some(c) = take_idle(want) {
            return Ok(c);
        }
        match Self::set_up(want) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                // `fs.aio-max-nr` reached: what this process keeps idle may
                // be what is missing.
                let idle = lock_idle()
                    .map(|mut l| std::mem::take(&mut *l))
                    .unwrap_or_default();
                if idle.is_empty() {
                    return Err(e);
                }
                idle.into_iter().for_each(Context::destroy);
                Self::set_up(want)
            }
            other => other,
        }
    }

    fn set_up(events: usize) -> io::Result<Self> {
        let mut id: libc::c_ulong = 0;
        let nr = libc::c_long::try_from(events).unwrap_or(libc::c_long::MAX);
        // SAFETY: `io_setup(nr, &id)` with `id` zeroed, as the call requires.
        retry_eintr(|| unsafe { libc::syscall(libc::SYS_io_setup, nr, &mut id) })?;
        #[cfg(feature = "test-hooks")]
        SET_UP.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            id,
            events,
            pid: current_pid(),
        })
    }

    /// Keep the context for the next queue, or destroy it when enough are
    /// kept. The caller has reaped every request it submitted.
    fn release(self) {
        if self.pid != current_pid() {
            // Set up by the parent of this process: not ours to keep or end.
            return;
        }
        if let Some(mut idle) = lock_idle()
            && idle.len() < KEEP_IDLE
        {
            idle.push(self);
            return;
        }
        self.destroy();
    }

    /// Destroy the context: the kernel cancels what it can and waits until
    /// every request has completed, so no buffer is written after this.
    fn destroy(self) {
        if self.pid != current_pid() {
            return;
        }
        // SAFETY: a context of this process, which its one holder gives up
        // here; an id is never used after it was destroyed.
        unsafe { libc::syscall(libc::SYS_io_destroy, self.id) };
        #[cfg(feature = "test-hooks")]
        DESTROYED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The smallest idle context with room for `events`, forgetting those a
/// parent process left behind.
fn take_idle(events: usize) -> Option<Context> {
    let pid = current_pid();
    let mut idle = lock_idle()?;
    idle.retain(|c| c.pid == pid);
    let (i, _) = idle
        .iter()
        .enumerate()
        .filter(|(_, c)| c.events >= events)
        .min_by_key(|(_, c)| c.events)?;
    Some(idle.swap_remove(i))
}

/// The process whose threads use the idle list (0 before any did).
static IDLE_PID: AtomicI32 = AtomicI32::new(0);

/// The idle list, locked; `None` in a child forked while a thread of its
/// parent (which the child does not have) may have held the lock: a child
/// never waits for it, and goes without reuse instead.
fn lock_idle() -> Option<std::sync::MutexGuard<'static, Vec<Context>>> {
    let pid = current_pid();
    let owner = match IDLE_PID.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => pid,
        Err(owner) => owner,
    };
    if owner == pid {
        // The list stays consistent whatever a panicking holder did.
        Some(IDLE.lock().unwrap_or_else(PoisonError::into_inner))
    } else {
        match IDLE.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

fn current_pid() -> libc::pid_t {
    // SAFETY: `getpid` has no preconditions.
    unsafe { libc::getpid() }
}

/// An AIO context with room for `depth` reads in flight.
pub(crate) struct Aio {
    ctx: Context,
    files: Vec<QueueFile>,
    queued: Vec<Iocb>,
    events: Vec<IoEvent>,
    /// Ops `io_submit` refused, reported as completions.
    refused: Vec<Cqe>,
    in_kernel: usize,
}

impl Aio {
    /// Take an idle context or set one up, or say why the kernel refuses
    /// (`ENOSYS` where AIO is compiled out, `EAGAIN` past `fs.aio-max-nr`,
    /// `EPERM` under seccomp).
    pub(crate) fn new(files: Vec<QueueFile>, depth: usize) -> io::Result<Self> {
        let ctx = Context::acquire(depth)?;
        Ok(Self {
            ctx,
            files,
            queued: Vec::new(),
            events: vec![IoEvent::default(); ctx.events],
            refused: Vec::new(),
            in_kernel: 0,
        })
    }
}

impl Queue for Aio {
    unsafe fn push(&mut self, op: Op) -> io::Result<()> {
        let f = self.files[op.file as usize];
        self.queued.push(Iocb {
            aio_data: op.tag,
            aio_lio_opcode: IOCB_CMD_PREAD,
            aio_fildes: f.fd as u32,
            aio_buf: op.dst as u64,
            aio_nbytes: u64::from(op.len),
            aio_offset: i64::try_from(op.offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
            ..Iocb::default()
        });
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        let mut ptrs: Vec<*mut Iocb> = self.queued.iter_mut().map(|c| c as *mut Iocb).collect();
        let mut from = 0;
        while from < ptrs.len() {
            let n = (ptrs.len() - from) as libc::c_long;
            // SAFETY: `ptrs[from..]` point at live `Iocb`s in `self.queued`,
            // which the kernel copies during the call; their buffers meet the
            // pusher's guarantee.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_io_submit,
                    self.ctx.id,
                    n,
                    ptrs.as_mut_ptr().add(from),
                )
            };
            if rc > 0 {
                from += rc as usize;
                self.in_kernel += rc as usize;
                continue;
            }
            // Nothing submitted without an error means the kernel is out of
            // room for now.
            let errno = if rc == 0 {
                libc::EAGAIN
            } else {
                io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO)
            };
            match errno {
                libc::EINTR => {}
                libc::EAGAIN => {
                    // Out of kernel resources for now: give back what was
                    // not submitted as completions the reader retries.
                    for p in &ptrs[from..] {
                        // SAFETY: `p` points into `self.queued`.
                        let tag = unsafe { (**p).aio_data };
                        self.refused.push(Cqe {
                            tag,
                            res: -i64::from(libc::EAGAIN),
                        });
                    }
                    break;
                }
                _ => {
                    // The kernel refused the first op (misaligned, bad
                    // offset): report it as that op's completion, go on.
                    // SAFETY: `ptrs[from]` points into `self.queued`.
                    let tag = unsafe { (*ptrs[from]).aio_data };
                    self.refused.push(Cqe {
                        tag,
                        res: -i64::from(errno),
                    });
                    from += 1;
                }
            }
        }
        ptrs.clear();
        self.queued.clear();
        Ok(())
    }

    fn wait(&mut self, min: usize, out: &mut Vec<Cqe>) -> io::Result<()> {
        self.submit()?;
        let from_refused = self.refused.len();
        out.append(&mut self.refused);
        let mut need = min.saturating_sub(from_refused).min(self.in_kernel);
        loop {
            let max = self.events.len().min(self.in_kernel);
            if max == 0 {
                return Ok(());
            }
            // SAFETY: `events` has room for `max` events; a null timeout
            // waits without limit for `need` of them.
            let rc = retry_eintr(|| unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.ctx.id,
                    need as libc::c_long,
                    max as libc::c_long,
                    self.events.as_mut_ptr(),
                    std::ptr::null_mut::<libc::timespec>(),
                )
            })? as usize;
            self.in_kernel -= rc;
            out.extend(self.events[..rc].iter().map(|e| Cqe {
                tag: e.data,
                res: e.res,
            }));
            need = need.saturating_sub(rc);
            if need == 0 {
                return Ok(());
            }
        }
    }

    fn describe(&self) -> String {
        format!("Linux AIO, {} events", self.events.len())
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        if self.in_kernel == 0 {
            // Every request submitted was reaped: the context is as new.
            self.ctx.release();
        } else {
            // Requests may still write their buffers: `io_destroy` waits
            // for every one of them.
            self.ctx.destroy();
        }
    }
}
