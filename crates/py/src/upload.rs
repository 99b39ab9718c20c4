//! Loading onto a device: each tensor's host bytes, as the session reads
//! them, go through weightlift-gpu's pipeline into memory that Python
//! allocated (torch's caching allocator, so that torch accounts for it and
//! frees it tensor by tensor, or `load_into`'s own tensors).
//!
//! Python hands over, per tensor, a callback's answer: the object owning
//! the destination, its device address and its length. The object is kept
//! here until its copies have completed, and the pipeline (which waits for
//! every copy before it goes) is always dropped before the objects.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::Duration;

use pyo3::prelude::*;
use weightlift::{HostTensor, Pass, Session, Wait};
use weightlift_format::{Checkpoint, TensorId};
use weightlift_gpu::{
    CuFile, CuFileReader, Device, DirectJob, DirectLoad, DirectReader, Error as GpuError,
    GpuDevice, GpuDriver, HostDevice, HostFileReader, Runtime, UploadOptions, Uploader,
};

use crate::{Fail, lock};

/// An upload pipeline onto some device, taking destinations as addresses.
pub(crate) trait Target: Send {
    /// Queue `bytes` into device memory at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + bytes.len()` must be memory of this device that stays
    /// allocated, and that nothing else uses, until the tensor is handed
    /// back or the target is dropped.
    unsafe fn upload_into(
        &mut self,
        id: usize,
        name: &str,
        bytes: &[u8],
        ptr: u64,
    ) -> Result<(), GpuError>;

    /// Launch what is staged.
    fn flush(&mut self) -> Result<(), GpuError>;

    /// The ids whose copies completed.
    fn poll(&mut self) -> Result<Vec<usize>, GpuError>;

    /// Wait for every copy; the ids not handed back yet.
    fn finish(&mut self) -> Result<Vec<usize>, GpuError>;

    /// Order later copies after the work queued on `stream`.
    ///
    /// # Safety
    ///
    /// As [`Uploader::wait_for_stream`].
    unsafe fn wait_for_stream(&mut self, stream: Option<u64>);

    /// Launches so far.
    fn launches(&self) -> u64;

    /// Its staging, described.
    fn describe(&self) -> String;
}

impl<D: Device> Target for Uploader<Arc<D>> {
    unsafe fn upload_into(
        &mut self,
        id: usize,
        name: &str,
        bytes: &[u8],
        ptr: u64,
    ) -> Result<(), GpuError> {
        // SAFETY: the caller's contract is `borrow`'s.
        let memory =
            unsafe { self.device().borrow(ptr, bytes.len()) }.map_err(|e| GpuError::Upload {
                tensor: name.to_string(),
                source: Box::new(e),
            })?;
        Uploader::upload_into(self, id, name, bytes, memory)
    }

    fn flush(&mut self) -> Result<(), GpuError> {
        Uploader::flush(self)
    }

    fn poll(&mut self) -> Result<Vec<usize>, GpuError> {
        Ok(Uploader::poll(self)?.into_iter().map(|u| u.id).collect())
    }

    fn finish(&mut self) -> Result<Vec<usize>, GpuError> {
        Ok(Uploader::finish(self)?.into_iter().map(|u| u.id).collect())
    }

    unsafe fn wait_for_stream(&mut self, stream: Option<u64>) {
        // SAFETY: the caller's contract is the same.
        unsafe { Uploader::wait_for_stream(self, stream) }
    }

    fn launches(&self) -> u64 {
        Uploader::launches(self)
    }

    fn describe(&self) -> String {
        describe(self.options())
    }
}

/// The GPU runtime, loaded once per process.
pub(crate) fn driver(runtime: Runtime) -> Result<&'static GpuDriver, GpuError> {
    static CUDA: OnceLock<Result<GpuDriver, GpuError>> = OnceLock::new();
    static HIP: OnceLock<Result<GpuDriver, GpuError>> = OnceLock::new();
    let (cell, load): (_, fn() -> Result<GpuDriver, GpuError>) = match runtime {
        Runtime::Hip => (&HIP, GpuDriver::hip),
        _ => (&CUDA, GpuDriver::cuda),
    };
    cell.get_or_init(load)
        .as_ref()
        .map_err(|e| again(e, runtime.api()))
}

/// A failure to load a library, cached for the process, handed out again.
/// Loading fails only with plain data (the loader's words, a call and its
/// result), so it is rebuilt as it was; anything else keeps its words.
fn again(e: &GpuError, api: &'static str) -> GpuError {
    match e {
        GpuError::Unavailable { api, reason } => GpuError::Unavailable {
            api,
            reason: reason.clone(),
        },
        GpuError::Driver { device, source } => GpuError::Driver {
            device: device.clone(),
            source: *source,
        },
        GpuError::CuFile { path, source } => GpuError::CuFile {
            path: path.clone(),
            source: *source,
        },
        other => GpuError::Unavailable {
            api,
            reason: crate::errors::chain(other),
        },
    }
}

/// Device `ordinal` of `runtime`, opened once per process.
fn gpu_device(runtime: Runtime, ordinal: usize) -> Result<Arc<GpuDevice>, GpuError> {
    static DEVICES: Mutex<Vec<(Runtime, usize, Arc<GpuDevice>)>> = Mutex::new(Vec::new());
    let mut devices = lock(&DEVICES);
    if let Some((.., d)) = devices
        .iter()
        .find(|(r, n, _)| *r == runtime && *n == ordinal)
    {
        return Ok(d.clone());
    }
    let device = Arc::new(driver(runtime)?.device(ordinal)?);
    devices.push((runtime, ordinal, device.clone()));
    Ok(device)
}

/// Default staging budget in page-locked host memory.
const PINNED_BYTES: usize = 128 << 20;
/// Default staging slot: the largest single copy.
const SLOT_BYTES: usize = 16 << 20;

/// The staging settings a caller asked for (`None`: the environment
/// variable, else the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Staging {
    /// Bytes of pinned staging memory (`WEIGHTLIFT_PINNED_BYTES`, 128 MiB).
    pub(crate) pinned_bytes: Option<usize>,
    /// Threads filling it (`WEIGHTLIFT_FILL_THREADS`, half the cores, at
    /// most 8).
    pub(crate) fill_threads: Option<usize>,
}

/// `value`, else the variable `var` parsed, else `default`; it must lie
/// in `range`.
fn setting(
    value: Option<usize>,
    var: &'static str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
    what: &str,
) -> Result<usize, GpuError> {
    let (n, shown) = match value {
        Some(n) => (Some(n), n.to_string()),
        None => match std::env::var(var) {
            Err(_) => return Ok(default),
            Ok(v) => (v.trim().parse::<usize>().ok(), format!("{v:?}")),
        },
    };
    match n {
        Some(n) if range.contains(&n) => Ok(n),
        _ => Err(GpuError::Setting {
            name: var,
            reason: format!(
                "{shown} is not a number of {what} from {} to {}",
                range.start(),
                range.end()
            ),
        }),
    }
}

impl Staging {
    /// The pipeline's options: an argument wins over its variable.
    fn options(self) -> Result<UploadOptions, GpuError> {
        let budget = setting(
            self.pinned_bytes,
            "WEIGHTLIFT_PINNED_BYTES",
            PINNED_BYTES,
            4096..=usize::MAX,
            "bytes",
        )?;
        let fill_threads = setting(
            self.fill_threads,
            "WEIGHTLIFT_FILL_THREADS",
            UploadOptions::default().fill_threads,
            1..=256,
            "threads",
        )?;
        // At least four slots where the budget allows, so that filling,
        // copying and waiting overlap.
        let slot_size = SLOT_BYTES.min((budget / 4).max(4096)).min(budget);
        Ok(UploadOptions {
            slot_size,
            slots: budget / slot_size,
            fill_threads,
            ..UploadOptions::default()
        })
    }
}

/// The staging of `opts`, described.
fn describe(opts: &UploadOptions) -> String {
    format!(
        "staging {} pinned slots of {} KiB, {} fill thread{}, {} streams",
        opts.slots,
        opts.slot_size >> 10,
        opts.fill_threads,
        if opts.fill_threads == 1 { "" } else { "s" },
        opts.streams
    )
}

/// The GPU `spec` names (`cuda:N`, `hip:N`); `None` for any other name.
fn gpu_spec(spec: &str) -> Result<Option<(Runtime, usize)>, GpuError> {
    for (prefix, runtime) in [("cuda:", Runtime::Cuda), ("hip:", Runtime::Hip)] {
        if let Some(n) = spec.strip_prefix(prefix) {
            let ordinal = n.parse().map_err(|_| GpuError::Setting {
                name: "device",
                reason: format!("{spec:?}: not a device number"),
            })?;
            return Ok(Some((runtime, ordinal)));
        }
    }
    Ok(None)
}

/// A pipeline onto the device `spec` names: `cuda:N`, `hip:N`, or `host` (host
/// memory behind the same trait, standing in for a GPU in tests) with
/// options `host:delay_us=N,fail=N` (a delay before each copy; fail the
/// n-th copy).
pub(crate) fn open(spec: &str, staging: Staging) -> Result<Box<dyn Target>, GpuError> {
    let opts = staging.options()?;
    let bad = |why: String| GpuError::Setting {
        name: "device",
        reason: format!("{spec:?}: {why}"),
    };
    if let Some((runtime, ordinal)) = gpu_spec(spec)? {
        return Ok(Box::new(Uploader::new(
            gpu_device(runtime, ordinal)?,
            opts,
        )?));
    }
    let Some(settings) = spec.strip_prefix("host") else {
        return Err(bad("unknown device".into()));
    };
    let mut device = HostDevice::new();
    for item in settings.trim_start_matches(':').split(',') {
        if item.is_empty() {
            continue;
        }
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| bad(format!("{item:?} is not key=value")))?;
        let n: u64 = value
            .parse()
            .map_err(|_| bad(format!("{item:?}: not a number")))?;
        device = match key {
            "delay_us" => device.with_copy_delay(Duration::from_micros(n)),
            "fail" => device.with_failing_copy(n),
            _ => return Err(bad(format!("unknown setting {key:?}"))),
        };
    }
    Ok(Box::new(Uploader::new(Arc::new(device), opts)?))
}

/// Python's allocator and the objects owning the destinations whose bytes
/// are still on their way. Whatever writes those destinations (a pipeline,
/// reads) must be dropped, waiting for every write, before this is.
struct Destinations {
    alloc: Py<PyAny>,
    keep: HashMap<usize, Py<PyAny>>,
}

impl Destinations {
    fn new(alloc: Py<PyAny>) -> Self {
        Destinations {
            alloc,
            keep: HashMap::new(),
        }
    }

    /// The device address of a new destination for tensor `id`, its owner
    /// kept until `hand_back`; `None` when Python has no room for it until
    /// the tensors in flight are handed back (a ring of device memory, for
    /// `copy=False`).
    fn ask(&mut self, id: TensorId, ckpt: &Checkpoint) -> Result<Option<u64>, Fail> {
        let info = ckpt.tensor(id);
        let file = ckpt.shard(info.file).path();
        let answer = Python::attach(|py| -> PyResult<Option<(Py<PyAny>, u64, usize)>> {
            self.alloc
                .bind(py)
                .call1((
                    info.name.as_str(),
                    info.dtype.as_str(),
                    info.shape.clone(),
                    file,
                ))?
                .extract()
        })
        .map_err(Fail::Py)?;
        let Some((obj, ptr, nbytes)) = answer else {
            return Ok(None);
        };
        if nbytes as u64 != info.len() {
            return Err(Fail::Mismatch(format!(
                "tensor {:?} in {}: its destination holds {nbytes} bytes, the tensor {}",
                info.name,
                file.display(),
                info.len()
            )));
        }
        // Kept before anything writes it, until it is handed back or the
        // writer is gone.
        self.keep.insert(id.index(), obj);
        Ok(Some(ptr))
    }

    /// The objects of the tensors `ids`, with their names.
    fn hand_back(&mut self, ids: Vec<usize>, ckpt: &Checkpoint) -> crate::Uploaded {
        ids.into_iter()
            .filter_map(|id| {
                let obj = self.keep.remove(&id)?;
                Some((ckpt.tensor(TensorId(id as u32)).name.clone(), obj))
            })
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.keep.is_empty()
    }
}

/// `Fail` for tensor `id` when Python gave no room for it with nothing in
/// flight to wait for.
fn no_room(id: TensorId, ckpt: &Checkpoint) -> Fail {
    let info = ckpt.tensor(id);
    Fail::Device(format!(
        "tensor {:?} in {}: no device memory was given for its {} bytes",
        info.name,
        ckpt.shard(info.file).path().display(),
        info.len()
    ))
}

/// Tensors on their way to a device through the pipeline. The pipeline is
/// declared first so that it is dropped (waiting for every copy) before
/// the destinations.
pub(crate) struct Loading {
    pub(crate) target: Box<dyn Target>,
    dests: Destinations,
}

impl Loading {
    pub(crate) fn new(target: Box<dyn Target>, alloc: Py<PyAny>) -> Self {
        Loading {
            target,
            dests: Destinations::new(alloc),
        }
    }

    /// Ask Python for `t`'s destination and queue its copies into it. `t`
    /// comes back when Python has no room for it yet.
    pub(crate) fn stage(
        &mut self,
        t: HostTensor,
        ckpt: &Checkpoint,
    ) -> Result<Option<HostTensor>, Fail> {
        let Some(ptr) = self.dests.ask(t.id(), ckpt)? else {
            return Ok(Some(t));
        };
        // SAFETY: the object owning the memory at `ptr` (Python's word)
        // stays in `dests` until the tensor is handed back, or until after
        // the pipeline, dropped first, waited for every copy.
        unsafe {
            self.target
                .upload_into(t.id().index(), &ckpt.tensor(t.id()).name, t.bytes(), ptr)
        }
        .map_err(Fail::Gpu)?;
        Ok(None)
    }

    /// Stage `t`, which must find room: nothing else is in flight.
    pub(crate) fn stage_alone(&mut self, t: HostTensor, ckpt: &Checkpoint) -> Result<(), Fail> {
        match self.stage(t, ckpt)? {
            None => Ok(()),
            Some(t) => Err(no_room(t.id(), ckpt)),
        }
    }

    /// The objects of the tensors `ids`, with their names.
    pub(crate) fn hand_back(&mut self, ids: Vec<usize>, ckpt: &Checkpoint) -> crate::Uploaded {
        self.dests.hand_back(ids, ckpt)
    }
}

/// One pass over the selection onto a device.
pub(crate) struct Upload {
    pub(crate) loading: Loading,
    pub(crate) pass: Pass,
    /// Launches seen at the latest poll.
    polled_at: u64,
    /// Read, waiting for room for its destination.
    deferred: Option<HostTensor>,
}

impl Upload {
    pub(crate) fn new(loading: Loading, pass: Pass) -> Self {
        Upload {
            loading,
            pass,
            polled_at: 0,
            deferred: None,
        }
    }

    /// The next tensors whose bytes are on the device (ids), in completion
    /// order; `None` once every tensor was handed back.
    pub(crate) fn step(
        &mut self,
        s: &mut Session,
        wait: &mut Wait<'_>,
        ckpt: &Checkpoint,
    ) -> Result<Option<Vec<usize>>, Fail> {
        loop {
            if let Some(t) = self.deferred.take() {
                if self.loading.dests.is_empty() {
                    // Nothing in flight holds the room it needs.
                    self.loading.stage_alone(t, ckpt)?;
                } else if let Some(t) = self.loading.stage(t, ckpt)? {
                    // Hand back what is in flight (Python frees its room as
                    // the caller moves past it), then try again.
                    self.deferred = Some(t);
                    let done = self.loading.target.finish().map_err(Fail::Gpu)?;
                    return Ok(Some(done));
                }
            }
            let target = &mut self.loading.target;
            // Poll only when something new was launched: polling looks at
            // every tensor in flight.
            if target.launches() != self.polled_at {
                self.polled_at = target.launches();
                let done = target.poll().map_err(Fail::Gpu)?;
                if !done.is_empty() {
                    return Ok(Some(done));
                }
            }
            let next = match s.try_next(&mut self.pass) {
                Poll::Ready(next) => next,
                Poll::Pending => {
                    // Reads are behind: launch what is staged and hand back
                    // what completed before waiting for them.
                    target.flush().map_err(Fail::Gpu)?;
                    let done = target.poll().map_err(Fail::Gpu)?;
                    if !done.is_empty() {
                        return Ok(Some(done));
                    }
                    s.next(&mut self.pass, wait)
                }
            };
            match next {
                Some(Ok(t)) => self.deferred = self.loading.stage(t, ckpt)?,
                Some(Err(e)) => return Err(Fail::Load(e)),
                None => {
                    let done = target.finish().map_err(Fail::Gpu)?;
                    return Ok((!done.is_empty()).then_some(done));
                }
            }
        }
    }
}

/// Chunks of one read straight into device memory.
const DIRECT_CHUNK: usize = 16 << 20;

/// cuFile, loaded and opened once per process.
fn cufile() -> Result<Arc<CuFile>, GpuError> {
    static CUFILE: OnceLock<Result<Arc<CuFile>, GpuError>> = OnceLock::new();
    match CUFILE.get_or_init(CuFile::open) {
        Ok(cufile) => Ok(cufile.clone()),
        Err(e) => Err(again(e, "cuFile")),
    }
}

/// A reader straight from `ckpt`'s files into the memory of the device
/// `spec` names (`cuda:N` through cuFile; `host`, the stand-in, with
/// pread).
fn direct_reader(spec: &str, ckpt: &Checkpoint) -> Result<Arc<dyn DirectReader>, GpuError> {
    let paths: Vec<PathBuf> = ckpt
        .shards()
        .iter()
        .map(|s| s.path().to_path_buf())
        .collect();
    let sizes: Vec<u64> = ckpt.shards().iter().map(|s| s.size()).collect();
    match gpu_spec(spec)? {
        Some((Runtime::Cuda, ordinal)) => {
            let device = gpu_device(Runtime::Cuda, ordinal)?;
            return Ok(Arc::new(CuFileReader::open(
                cufile()?,
                device,
                &paths,
                &sizes,
            )?));
        }
        Some(_) => {
            return Err(GpuError::Unavailable {
                api: "cuFile",
                reason: "GPUDirect Storage is NVIDIA's: AMD GPUs load through the pipeline".into(),
            });
        }
        None => {}
    }
    if spec.starts_with("host") {
        return Ok(Arc::new(HostFileReader::open(&paths, &sizes)?));
    }
    Err(GpuError::Setting {
        name: "device",
        reason: format!("{spec:?}: unknown device"),
    })
}

/// Tensors read straight from their files into device memory Python
/// allocated (`backend=CUFILE`). The load (whose drop waits for every
/// read) is declared before the objects owning the destinations.
pub(crate) struct Direct {
    load: DirectLoad,
    dests: Destinations,
    /// The tensors to read, in file order, and the next to queue.
    ids: Vec<TensorId>,
    next: usize,
    /// Bytes in flight at most.
    limit: usize,
}

impl Direct {
    /// Reads of `ids` onto the device `spec` names, on `threads` threads.
    pub(crate) fn new(
        spec: &str,
        ckpt: &Checkpoint,
        ids: Vec<TensorId>,
        alloc: Py<PyAny>,
        threads: usize,
    ) -> Result<Self, GpuError> {
        let reader = direct_reader(spec, ckpt)?;
        Ok(Direct {
            load: DirectLoad::new(reader, threads, DIRECT_CHUNK)?,
            dests: Destinations::new(alloc),
            ids,
            next: 0,
            limit: threads.max(1) * DIRECT_CHUNK * 2,
        })
    }

    /// The settings, described.
    pub(crate) fn describe(threads: usize) -> String {
        format!(
            "backend CUFILE (reads straight into device memory, {threads} thread{}, chunks of {} KiB)",
            if threads == 1 { "" } else { "s" },
            DIRECT_CHUNK >> 10
        )
    }

    /// The next tensors whose bytes have all landed (ids), in completion
    /// order; `None` once every tensor was handed back.
    pub(crate) fn step(
        &mut self,
        ckpt: &Checkpoint,
        wait: &mut Wait<'_>,
    ) -> Result<Option<Vec<usize>>, Fail> {
        loop {
            while self.next < self.ids.len() && self.load.in_flight_bytes() < self.limit {
                if !self.stage(self.ids[self.next], ckpt)? {
                    break;
                }
                self.next += 1;
            }
            if self.load.in_flight() == 0 {
                return match self.ids.get(self.next) {
                    None => Ok(None),
                    Some(&id) => Err(no_room(id, ckpt)),
                };
            }
            match self.load.next_done(Duration::from_millis(50)) {
                Ok(done) if !done.is_empty() => return Ok(Some(done)),
                Ok(_) => {
                    if !wait() {
                        return Err(Fail::Load(weightlift::Error::Cancelled));
                    }
                }
                Err((id, e)) => {
                    return Err(Fail::Gpu(GpuError::Upload {
                        tensor: ckpt.tensor(TensorId(id as u32)).name.clone(),
                        source: Box::new(e),
                    }));
                }
            }
        }
    }

    /// Ask Python for tensor `id`'s destination and queue its reads; false
    /// when Python has no room for it until tensors in flight come back.
    fn stage(&mut self, id: TensorId, ckpt: &Checkpoint) -> Result<bool, Fail> {
        let Some(ptr) = self.dests.ask(id, ckpt)? else {
            return Ok(false);
        };
        let info = ckpt.tensor(id);
        let job = DirectJob {
            id: id.index(),
            file: info.file.index(),
            offset: info.range.start,
            len: info.len() as usize,
            dst: ptr,
        };
        // SAFETY: the object owning the memory at `ptr` (Python's word)
        // stays in `dests` until the tensor is handed back, or until after
        // the load, dropped first, joined every read.
        unsafe { self.load.submit(job) }.map_err(Fail::Gpu)?;
        Ok(true)
    }

    /// The objects of the tensors `ids`, with their names.
    pub(crate) fn hand_back(&mut self, ids: Vec<usize>, ckpt: &Checkpoint) -> crate::Uploaded {
        self.dests.hand_back(ids, ckpt)
    }
}

/// One pass onto a device: through the pipeline, or straight from the
/// files.
pub(crate) enum Onto {
    Upload(Upload),
    Direct(Direct),
}

impl Onto {
    /// The next tensors on the device, with their destinations; `None`
    /// once every tensor was handed back.
    pub(crate) fn step(
        &mut self,
        s: &mut Session,
        wait: &mut Wait<'_>,
        ckpt: &Checkpoint,
    ) -> Result<Option<crate::Uploaded>, Fail> {
        Ok(match self {
            Onto::Upload(u) => u
                .step(s, wait, ckpt)?
                .map(|ids| u.loading.hand_back(ids, ckpt)),
            Onto::Direct(d) => d.step(ckpt, wait)?.map(|ids| d.hand_back(ids, ckpt)),
        })
    }
}
