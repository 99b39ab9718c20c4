//! Linux AIO through the raw system calls (`io_setup`, `io_submit`,
//! `io_getevents`, `io_destroy`), without libaio.
//!
//! With `O_DIRECT` files the reads are truly asynchronous; on buffered
//! files the kernel performs them inside `io_submit`, which still works but
//! does not overlap.

use std::io;

use super::{Cqe, Op, Queue, QueueFile, retry_eintr};

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

/// An AIO context with room for `depth` reads in flight.
pub(crate) struct Aio {
    ctx: libc::c_ulong,
    files: Vec<QueueFile>,
    queued: Vec<Iocb>,
    events: Vec<IoEvent>,
    /// Ops `io_submit` refused, reported as completions.
    refused: Vec<Cqe>,
    in_kernel: usize,
}

impl Aio {
    /// Set up a context, or say why the kernel refuses (`ENOSYS` where AIO
    /// is compiled out, `EAGAIN` past `fs.aio-max-nr`, `EPERM` under seccomp).
    pub(crate) fn new(files: Vec<QueueFile>, depth: usize) -> io::Result<Self> {
        let mut ctx: libc::c_ulong = 0;
        let nr = libc::c_long::try_from(depth.max(1)).unwrap_or(libc::c_long::MAX);
        // SAFETY: `io_setup(nr, &ctx)` with `ctx` zeroed, as the call requires.
        retry_eintr(|| unsafe { libc::syscall(libc::SYS_io_setup, nr, &mut ctx) })?;
        Ok(Self {
            ctx,
            files,
            queued: Vec::new(),
            events: vec![IoEvent::default(); depth.max(1)],
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
                    self.ctx,
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
                    self.ctx,
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
        // `io_destroy` cancels what it can and blocks until every request of
        // the context has completed, so no buffer is written after this.
        // SAFETY: the context made in `new`, destroyed once.
        unsafe { libc::syscall(libc::SYS_io_destroy, self.ctx) };
    }
}
