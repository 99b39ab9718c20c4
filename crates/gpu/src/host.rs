//! A device whose memory is host memory: each stream is a thread that runs
//! its copies in order, and events complete as the thread passes them. It
//! exists so that the upload pipeline (staging slots, events, ordering,
//! errors, dropping mid-flight) is tested where there is no GPU, and it can
//! widen the windows a GPU leaves narrow: a delay before every copy (per
//! stream), a memory limit, a copy that fails. It also counts every use of
//! memory while a copy on it is in flight (reading device memory, refilling
//! a staging slot, freeing either): a correct caller makes none
//! ([`HostDevice::violations`]), and the device leaks rather than frees
//! memory a copy may still touch, so a test of a broken caller fails
//! instead of corrupting memory. Registered memory ([`Device::register`])
//! is written by others, unseen: a copy from it fingerprints its source
//! when queued and the bytes it copied when it runs, and a difference (the
//! source was rewritten while the copy was in flight) counts too.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::device::{check_range, check_registrable};
use crate::{Device, DeviceMemory, Error, PinnedMemory};

/// Alignment of every allocation, as device allocators give.
const ALIGN: usize = 256;

/// The host-memory device. `HostDevice::default()` has no limits and no
/// delays; the builder methods add them for tests.
#[derive(Debug, Default)]
pub struct HostDevice {
    capacity: Option<u64>,
    /// Delay before each copy, by stream number (cycled).
    delays: Vec<Duration>,
    fail_copy: Option<u64>,
    refuse_copy: Option<u64>,
    used: Arc<AtomicU64>,
    copies: Arc<AtomicU64>,
    queued: AtomicU64,
    streams: AtomicU64,
    external_waits: AtomicU64,
    violations: Arc<AtomicU64>,
}

impl HostDevice {
    /// A device with no limit and no delay.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuse device allocations beyond `bytes` in all.
    pub fn with_capacity(mut self, bytes: u64) -> Self {
        self.capacity = Some(bytes);
        self
    }

    /// Sleep `delay` before each copy, so that copies are still in flight
    /// when the caller moves on.
    pub fn with_copy_delay(self, delay: Duration) -> Self {
        self.with_stream_delays(&[delay])
    }

    /// Sleep `delays[k % delays.len()]` before each copy on the `k`-th
    /// stream made, so that streams finish out of order.
    pub fn with_stream_delays(mut self, delays: &[Duration]) -> Self {
        self.delays = delays.to_vec();
        self
    }

    /// Fail the `n`-th copy queued (from 0, counted over every stream, in
    /// the order `copy_to_device` was called), and every later copy on its
    /// stream, as a GPU's sticky errors do.
    pub fn with_failing_copy(mut self, n: u64) -> Self {
        self.fail_copy = Some(n);
        self
    }

    /// Refuse to queue the `n`-th copy (from 0, counted over every stream,
    /// in call order): `copy_to_device` returns an error and queues nothing,
    /// as a GPU does for a bad argument or a context already failed.
    pub fn with_refused_copy(mut self, n: u64) -> Self {
        self.refuse_copy = Some(n);
        self
    }

    /// Device bytes allocated and not yet freed.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Copies run so far.
    pub fn copies(&self) -> u64 {
        self.copies.load(Ordering::SeqCst)
    }

    /// Calls of [`Device::wait_external`] (a no-op here: host memory has no
    /// streams outside this device).
    pub fn external_waits(&self) -> u64 {
        self.external_waits.load(Ordering::SeqCst)
    }

    /// Uses of memory while a copy on it was in flight: device memory
    /// read, a staging range handed out for writing while a copy reads it,
    /// either dropped, or registered memory whose bytes a copy read differ
    /// from those it held when the copy was queued. Each breaks
    /// [`Device::copy_to_device`]'s contract.
    pub fn violations(&self) -> u64 {
        self.violations.load(Ordering::SeqCst)
    }

    fn block(&self, len: usize) -> Option<Block> {
        Block::new(len, &self.violations)
    }
}

/// The byte ranges (offset, length) of a block that copies in flight use.
type Ranges = Arc<Mutex<Vec<(usize, usize)>>>;

/// A zeroed, aligned heap allocation (`len` may be 0), or borrowed memory.
/// It keeps the ranges copies in flight use.
struct Block {
    ptr: NonNull<u8>,
    len: usize,
    /// Allocated here, and so freed here.
    owned: bool,
    in_flight: Ranges,
    violations: Arc<AtomicU64>,
}

// SAFETY: a Block is a uniquely owned heap allocation, like a Box<[u8]>.
unsafe impl Send for Block {}
// SAFETY: shared references only read the pointer and length; the bytes are
// accessed through the contracts of `Device::copy_to_device` and the
// accessors below.
unsafe impl Sync for Block {}

impl Block {
    fn new(len: usize, violations: &Arc<AtomicU64>) -> Option<Self> {
        let layout = Layout::from_size_align(len.max(1), ALIGN).ok()?;
        // SAFETY: the layout's size is non-zero.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(Block {
            ptr,
            len,
            owned: true,
            in_flight: Ranges::default(),
            violations: violations.clone(),
        })
    }

    /// Count a use of `offset..offset + len` while a copy uses any of it;
    /// whether there was none.
    fn check_idle_range(&self, offset: usize, len: usize) -> bool {
        let busy = lock(&self.in_flight)
            .iter()
            .any(|&(o, l)| o < offset + len.max(1) && offset < o + l.max(1));
        if busy {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
        !busy
    }

    /// Count a use of the whole block while a copy is in flight; whether
    /// there was none.
    fn check_idle(&self) -> bool {
        self.check_idle_range(0, usize::MAX / 2)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if !self.check_idle() {
            // A copy may still touch it: leak it rather than free it.
            return;
        }
        if !self.owned {
            return;
        }
        let layout =
            Layout::from_size_align(self.len.max(1), ALIGN).expect("checked when allocated");
        // SAFETY: allocated in `Block::new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// Device memory of a [`HostDevice`].
pub struct HostMemory {
    block: Block,
    /// The device's count of bytes allocated; `None` for borrowed memory.
    used: Option<Arc<AtomicU64>>,
}

impl HostMemory {
    /// Its bytes. Memory handed out by [`crate::Uploader`] has all its
    /// copies completed; otherwise see [`Device::copy_to_device`].
    pub fn bytes(&self) -> &[u8] {
        self.block.check_idle();
        // SAFETY: the block holds `len` initialized (zeroed, then copied)
        // bytes; no copy writes them while this borrow is used, by the
        // contract of `copy_to_device`.
        unsafe { std::slice::from_raw_parts(self.block.ptr.as_ptr(), self.block.len) }
    }
}

impl DeviceMemory for HostMemory {
    fn len(&self) -> usize {
        self.block.len
    }

    fn device_ptr(&self) -> u64 {
        self.block.ptr.as_ptr() as u64
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        if let Some(used) = &self.used {
            used.fetch_sub(self.block.len as u64, Ordering::SeqCst);
        }
    }
}

/// Staging memory of a [`HostDevice`]: allocated, or registered (borrowed
/// from its owner, never freed here).
pub struct HostPinned {
    block: Block,
    /// Registered: others write it without asking, so copies from it
    /// fingerprint their source to notice a write while they are in flight.
    registered: bool,
}

/// A fast, non-cryptographic hash of `bytes` (FxHash's rotate, xor and
/// multiply, a word at a time): enough to notice bytes that changed.
fn fingerprint(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mix = |h: u64, v: u64| (h.rotate_left(5) ^ v).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    let mut h = (&mut words).fold(bytes.len() as u64, |h, w| {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        mix(h, u64::from_le_bytes(word))
    });
    for &b in words.remainder() {
        h = mix(h, u64::from(b));
    }
    h
}

impl PinnedMemory for HostPinned {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.block.check_idle();
        // SAFETY: the block holds `len` initialized bytes and `&mut self`
        // excludes other borrows; in-flight copies are the caller's to
        // exclude (`copy_to_device`'s contract).
        unsafe { std::slice::from_raw_parts_mut(self.block.ptr.as_ptr(), self.block.len) }
    }

    fn range_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset <= self.block.len && len <= self.block.len - offset);
        self.block.check_idle_range(offset, len);
        // SAFETY: the range lies within the block's initialized bytes and
        // `&mut self` excludes other borrows; copies reading it are the
        // caller's to exclude (`copy_to_device`'s contract).
        unsafe { std::slice::from_raw_parts_mut(self.block.ptr.as_ptr().add(offset), len) }
    }

    fn len(&self) -> usize {
        self.block.len
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Pending,
    Done,
    Failed(String),
}

/// An event of a [`HostDevice`] stream.
pub struct HostEvent {
    state: Arc<(Mutex<State>, Condvar)>,
}

/// A copy's pointers, moved to the stream's thread, and the in-flight
/// counts of the blocks they point into.
struct CopyOp {
    dst: *mut u8,
    src: *const u8,
    len: usize,
    /// The blocks' in-flight ranges, and this copy's range in each.
    uses: [(Ranges, (usize, usize)); 2],
    /// Whether this copy is the one to fail.
    fail: bool,
    /// The source's fingerprint when queued, for registered memory.
    src_hash: Option<u64>,
}

impl CopyOp {
    fn finished(&self) {
        for (ranges, range) in &self.uses {
            let mut r = lock(ranges);
            if let Some(i) = r.iter().position(|x| x == range) {
                r.swap_remove(i);
            }
        }
    }
}

// SAFETY: the pointers stay valid until the copy's event completes, by the
// contract of `copy_to_device`; the thread touches them only until then.
unsafe impl Send for CopyOp {}

enum Op {
    Copy(CopyOp),
    Record(Arc<(Mutex<State>, Condvar)>),
}

/// A stream of a [`HostDevice`]: a thread running its copies in order.
/// Dropping it waits for what was queued.
pub struct HostStream {
    ops: Option<Sender<Op>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for HostStream {
    fn drop(&mut self) {
        drop(self.ops.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HostDevice {
    fn stopped(&self) -> Error {
        Error::Copy {
            device: self.name().to_string(),
            reason: "the stream's thread has stopped".into(),
        }
    }
}

// SAFETY: a stream's thread runs its operations in order, so an event is
// marked done or failed only after every copy queued before it ran or was
// skipped; `synchronize` waits on such an event; `copy_to_device` queues
// nothing when it returns an error.
unsafe impl Device for HostDevice {
    type Memory = HostMemory;
    type Pinned = HostPinned;
    type Stream = HostStream;
    type Event = HostEvent;

    fn name(&self) -> &str {
        "host"
    }

    fn alloc(&self, len: usize) -> Result<HostMemory, Error> {
        let oom = |free| Error::OutOfMemory {
            device: self.name().to_string(),
            kind: "device",
            requested: len as u64,
            free,
        };
        let reserved = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                let after = used.checked_add(len as u64)?;
                self.capacity.is_none_or(|c| after <= c).then_some(after)
            });
        if let Err(used) = reserved {
            return Err(oom(self.capacity.map(|c| c.saturating_sub(used))));
        }
        let used = self.used.clone();
        match self.block(len) {
            Some(block) => Ok(HostMemory {
                block,
                used: Some(used),
            }),
            None => {
                used.fetch_sub(len as u64, Ordering::SeqCst);
                Err(oom(None))
            }
        }
    }

    unsafe fn borrow(&self, ptr: u64, len: usize) -> Result<HostMemory, Error> {
        let ptr = match NonNull::new(ptr as *mut u8) {
            Some(p) => p,
            None if len == 0 => NonNull::dangling(),
            None => {
                return Err(Error::Setting {
                    name: "destination",
                    reason: format!("a null pointer for {len} bytes"),
                });
            }
        };
        Ok(HostMemory {
            block: Block {
                ptr,
                len,
                owned: false,
                in_flight: Ranges::default(),
                violations: self.violations.clone(),
            },
            used: None,
        })
    }

    fn alloc_pinned(&self, len: usize) -> Result<HostPinned, Error> {
        self.block(len)
            .map(|block| HostPinned {
                block,
                registered: false,
            })
            .ok_or_else(|| Error::OutOfMemory {
                device: self.name().to_string(),
                kind: "pinned host",
                requested: len as u64,
                free: None,
            })
    }

    unsafe fn register(&self, ptr: *mut u8, len: usize) -> Result<HostPinned, Error> {
        check_registrable(self.name(), ptr, len)?;
        // Host memory needs no locking: the block only borrows it.
        let ptr = NonNull::new(ptr).unwrap_or(NonNull::dangling());
        Ok(HostPinned {
            block: Block {
                ptr,
                len,
                owned: false,
                in_flight: Ranges::default(),
                violations: self.violations.clone(),
            },
            registered: true,
        })
    }

    fn stream(&self) -> Result<HostStream, Error> {
        let (tx, rx) = channel::<Op>();
        let k = self.streams.fetch_add(1, Ordering::SeqCst) as usize;
        let delay = match self.delays.len() {
            0 => Duration::ZERO,
            n => self.delays[k % n],
        };
        let copies = self.copies.clone();
        let violations = self.violations.clone();
        let thread = std::thread::Builder::new()
            .name("weightlift-host-stream".into())
            .spawn(move || {
                let mut failed: Option<String> = None;
                for op in rx {
                    match op {
                        Op::Copy(c) => {
                            copies.fetch_add(1, Ordering::SeqCst);
                            if c.fail {
                                failed = Some("a copy failed (injected)".into());
                            }
                            if failed.is_none() {
                                std::thread::sleep(delay);
                                // SAFETY: valid and unaliased until the next
                                // event completes (`copy_to_device`'s
                                // contract; a block with a copy in flight is
                                // leaked, not freed); ranges were checked
                                // when queued.
                                unsafe { std::ptr::copy_nonoverlapping(c.src, c.dst, c.len) }
                                if let Some(queued) = c.src_hash {
                                    // SAFETY: the bytes just written, which
                                    // nothing else touches until the next
                                    // event completes.
                                    let copied =
                                        unsafe { std::slice::from_raw_parts(c.dst, c.len) };
                                    if fingerprint(copied) != queued {
                                        // The source was written while the
                                        // copy was in flight.
                                        violations.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                            }
                            c.finished();
                        }
                        Op::Record(ev) => {
                            let (state, cv) = &*ev;
                            *lock(state) = match &failed {
                                None => State::Done,
                                Some(why) => State::Failed(why.clone()),
                            };
                            cv.notify_all();
                        }
                    }
                }
            })
            .map_err(|source| Error::Spawn {
                what: "host stream thread",
                source,
            })?;
        Ok(HostStream {
            ops: Some(tx),
            thread: Some(thread),
        })
    }

    unsafe fn copy_to_device(
        &self,
        stream: &HostStream,
        dst: &HostMemory,
        dst_offset: usize,
        src: &HostPinned,
        src_offset: usize,
        len: usize,
    ) -> Result<(), Error> {
        check_range(self.name(), "destination", dst_offset, len, dst.len())?;
        check_range(self.name(), "source", src_offset, len, src.len())?;
        // SAFETY: both offsets were checked to lie within their blocks.
        let (d, s) = unsafe {
            (
                dst.block.ptr.as_ptr().add(dst_offset),
                src.block.ptr.as_ptr().add(src_offset).cast_const(),
            )
        };
        let sender = stream.ops.as_ref().ok_or_else(|| self.stopped())?;
        let n = self.queued.fetch_add(1, Ordering::SeqCst);
        if self.refuse_copy == Some(n) {
            return Err(Error::Copy {
                device: self.name().to_string(),
                reason: "a copy was refused (injected)".into(),
            });
        }
        // Registered memory is written by others without asking: remember
        // what the copy must read, to compare with what it did.
        let src_hash = src.registered.then(|| {
            // SAFETY: within the block (checked above); the caller keeps the
            // range unwritten from now until the copy completes
            // (`copy_to_device`'s contract), and nothing writes it through
            // this device.
            fingerprint(unsafe { std::slice::from_raw_parts(s, len) })
        });
        let uses = [
            (dst.block.in_flight.clone(), (dst_offset, len)),
            (src.block.in_flight.clone(), (src_offset, len)),
        ];
        for (ranges, range) in &uses {
            lock(ranges).push(*range);
        }
        let op = CopyOp {
            dst: d,
            src: s,
            len,
            uses,
            fail: self.fail_copy == Some(n),
            src_hash,
        };
        sender.send(Op::Copy(op)).map_err(|e| {
            // Not queued after all.
            if let Op::Copy(c) = e.0 {
                c.finished();
            }
            self.stopped()
        })
    }

    unsafe fn wait_external(&self, _stream: &HostStream, _external: u64) -> Result<(), Error> {
        // Host memory is written by nothing but this device's streams.
        self.external_waits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn record(&self, stream: &HostStream) -> Result<HostEvent, Error> {
        let state = Arc::new((Mutex::new(State::Pending), Condvar::new()));
        let sender = stream.ops.as_ref().ok_or_else(|| self.stopped())?;
        sender
            .send(Op::Record(state.clone()))
            .map_err(|_| self.stopped())?;
        Ok(HostEvent { state })
    }

    fn query(&self, event: &HostEvent) -> Result<bool, Error> {
        match &*lock(&event.state.0) {
            State::Pending => Ok(false),
            State::Done => Ok(true),
            State::Failed(why) => Err(Error::Copy {
                device: self.name().to_string(),
                reason: why.clone(),
            }),
        }
    }

    fn wait(&self, event: &HostEvent) -> Result<(), Error> {
        let (state, cv) = &*event.state;
        let mut s = lock(state);
        while *s == State::Pending {
            s = cv.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        drop(s);
        self.query(event).map(|_| ())
    }

    fn synchronize(&self, stream: &HostStream) -> Result<(), Error> {
        let event = self.record(stream)?;
        self.wait(&event)
    }
}
