//! Loading onto a device.
//!
//! - [`DeviceLoad`]: reads land in page-locked staging ([`Staging`]),
//!   and each landed extent is copied asynchronously into its tensors'
//!   destinations on the device; host memory stays within the staging.
//! - [`DirectDeviceLoad`]: reads straight from the files into device
//!   memory (GPUDirect Storage, or in tests its host-memory stand-in),
//!   through [`DirectLoad`]: each tensor cut into chunks of
//!   [`DIRECT_CHUNK`] bytes read on a pool of threads through a
//!   `weightlift_gpu::DirectReader`, every chunk under `weightlift-io`'s
//!   read rule (`weightlift_io::ReadProgress`: interrupted and short reads
//!   go on, and a file that ends before its size at open is
//!   `weightlift_io::Error::Truncated`), each failure naming its file and
//!   tensor; dropping either stops the reads and joins them before any
//!   destination is let go.
//! - [`Destinations`]: where each tensor goes ([`Allocate`]: memory the
//!   device allocates; the Python wheel: tensors torch allocates, a
//!   module's own tensors, or regions of one reused buffer placed by
//!   [`Carve`]).
//! - [`Onto`]: a device opened by name (`cuda:N`, `hip:N`), the staging
//!   kept between loads onto it, and the choice between staging and
//!   reading straight into device memory.

mod carve;
mod direct;
mod load;
mod spec;
mod staged;

use std::sync::Arc;

pub use carve::{Carve, Place};
pub use direct::{
    DIRECT_CHUNK, DirectDeviceLoad, DirectJob, DirectLoad, direct_files, reader_files,
};
use load::describe_staging;
pub use load::{Allocate, Destination, Destinations, DeviceLoad, Loaded, Polled, Staging};
pub use spec::{GpuSpec, cufile, describe_driver, driver};
use weightlift_format::{Checkpoint, TensorId};
use weightlift_gpu::{CuFileReader, Device, DirectReader, GpuDevice};
#[cfg(feature = "test-hooks")]
use weightlift_gpu::{HostDevice, HostFileReader};
use weightlift_io::{Backend, ReadFile};
use weightlift_plan::Selection;

use crate::session::Wait;
use crate::{Error, LoadOptions};

/// Where a caller asks tensors to go, by the names torch uses: `cpu` (or
/// `cpu:0`), `cuda` (the current GPU), `cuda:N`. AMD GPUs go by `cuda` too,
/// as torch's ROCm builds name them; which runtime serves them is the
/// caller's to say ([`GpuSpec`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Host memory.
    Host,
    /// A GPU: this one, or the current one.
    Gpu(Option<usize>),
}

impl std::str::FromStr for Placement {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        let unknown = |reason| Error::UnknownDevice {
            name: name.to_owned(),
            reason,
        };
        let (kind, index) = match name.split_once(':') {
            Some((kind, index)) => (kind, Some(index)),
            None => (name, None),
        };
        let index = index
            .map(|i| i.parse::<usize>())
            .transpose()
            .map_err(|_| unknown("the device number is not a whole number"))?;
        match (kind, index) {
            ("cpu", None | Some(0)) => Ok(Placement::Host),
            ("cuda", index) => Ok(Placement::Gpu(index)),
            ("hip" | "rocm", _) => Err(unknown(
                "ROCm devices go by torch's 'cuda' name: use 'cuda:N'",
            )),
            _ => Err(unknown("use 'cpu', 'cuda', 'cuda:N', N or a torch.device")),
        }
    }
}

/// A device opened by name.
#[derive(Clone)]
pub enum Target {
    /// A GPU, through its runtime.
    Gpu {
        /// Its name.
        spec: GpuSpec,
        /// The device.
        device: Arc<GpuDevice>,
    },
    /// Host memory standing in for a GPU (`host`, or
    /// `host:delay_us=N,fail=N`), for tests.
    #[cfg(feature = "test-hooks")]
    Host(Arc<HostDevice>),
}

impl Target {
    /// Open the device `name` names: `cuda:N` or `hip:N` (with the
    /// `test-hooks` feature, also `host`, `host:delay_us=N,fail=N`: a delay
    /// before each copy, the n-th copy failing).
    pub fn open(name: &str) -> Result<Self, Error> {
        #[cfg(feature = "test-hooks")]
        if let Some(settings) = name.strip_prefix("host") {
            return host_standin(name, settings).map(|d| Target::Host(Arc::new(d)));
        }
        let spec: GpuSpec = name.parse()?;
        Ok(Target::Gpu {
            spec,
            device: spec.open()?,
        })
    }

    /// Staging onto this device.
    fn staging(&self, options: crate::StagingOptions) -> Result<AnyStaging, Error> {
        Ok(match self {
            Target::Gpu { device, .. } => AnyStaging::Gpu(Staging::new(device.clone(), options)?),
            #[cfg(feature = "test-hooks")]
            Target::Host(device) => AnyStaging::Host(Staging::new(device.clone(), options)?),
        })
    }

    /// Waits until the work queued so far on `stream` of this device has
    /// finished, on the host: `None` where there is nothing to wait for.
    ///
    /// # Safety
    ///
    /// `stream` must stay a live stream handle of this device as long as
    /// the result is called.
    unsafe fn order_after(
        &self,
        stream: Option<u64>,
    ) -> Option<impl FnMut() -> Result<(), Error> + Send + 'static> {
        match (self, stream) {
            (Target::Gpu { device, .. }, Some(stream)) => {
                let device = device.clone();
                // SAFETY: the caller's contract for `stream`.
                Some(move || unsafe { device.wait_for_external(stream) }.map_err(Error::Device))
            }
            _ => None,
        }
    }

    /// A reader straight from `ckpt`'s files into this device's memory, and
    /// the files it reads (to check before each hand-out).
    fn direct_reader(
        &self,
        ckpt: &Checkpoint,
    ) -> Result<(Arc<dyn DirectReader>, Vec<ReadFile>), Error> {
        match self {
            Target::Gpu { spec, device } => {
                if spec.runtime != weightlift_gpu::Runtime::Cuda {
                    return Err(Error::Device(weightlift_gpu::Error::Unavailable {
                        api: "cuFile",
                        reason: "GPUDirect Storage is NVIDIA's: AMD GPUs load through staging"
                            .into(),
                    }));
                }
                let cufile = cufile()?;
                let files = direct_files(ckpt, true)?;
                let reader = CuFileReader::open(cufile, device.clone(), reader_files(&files)?)?;
                Ok((Arc::new(reader), files))
            }
            #[cfg(feature = "test-hooks")]
            Target::Host(_) => {
                let files = direct_files(ckpt, false)?;
                let reader = HostFileReader::new(reader_files(&files)?);
                Ok((Arc::new(reader), files))
            }
        }
    }
}

/// The host-memory stand-in `name` describes.
#[cfg(feature = "test-hooks")]
fn host_standin(name: &str, settings: &str) -> Result<HostDevice, Error> {
    use std::time::Duration;
    let bad = |reason| Error::UnknownDevice {
        name: name.to_owned(),
        reason,
    };
    let mut device = HostDevice::new();
    for item in settings.trim_start_matches(':').split(',') {
        if item.is_empty() {
            continue;
        }
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| bad("settings are key=value"))?;
        let n: u64 = value
            .parse()
            .map_err(|_| bad("a setting is not a number"))?;
        device = match key {
            "delay_us" => device.with_copy_delay(Duration::from_micros(n)),
            "fail" => device.with_failing_copy(n),
            _ => return Err(bad("settings are delay_us and fail")),
        };
    }
    Ok(device)
}

/// Staging onto one of the devices [`Target`] names.
pub enum AnyStaging {
    /// Onto a GPU.
    Gpu(Staging<Arc<GpuDevice>>),
    /// Onto host memory standing in for one.
    #[cfg(feature = "test-hooks")]
    Host(Staging<Arc<HostDevice>>),
}

macro_rules! each_staging {
    ($s:expr, $x:ident => $body:expr) => {
        match $s {
            AnyStaging::Gpu($x) => $body,
            #[cfg(feature = "test-hooks")]
            AnyStaging::Host($x) => $body,
        }
    };
}

impl AnyStaging {
    /// The staging, described.
    pub fn describe(&self) -> String {
        each_staging!(self, s => s.describe())
    }

    /// Its settings.
    pub fn options(&self) -> &crate::StagingOptions {
        each_staging!(self, s => s.options())
    }
}

/// A load onto one of the devices [`Target`] names.
pub enum AnyLoad<T: Destinations> {
    /// Through staging onto a GPU.
    Gpu(DeviceLoad<Arc<GpuDevice>, T>),
    /// Through staging onto host memory standing in for a GPU.
    #[cfg(feature = "test-hooks")]
    Host(DeviceLoad<Arc<HostDevice>, T>),
    /// Straight from the files into device memory.
    Direct(DirectDeviceLoad<T>),
}

impl<T: Destinations> AnyLoad<T> {
    /// The next tensors on the device, in completion order; `None` once
    /// every tensor was handed out, or after a failure.
    pub fn next(&mut self, wait: &mut Wait<'_>) -> Result<Option<Vec<Loaded<T::Owner>>>, Error> {
        match self {
            AnyLoad::Gpu(l) => l.next(wait),
            #[cfg(feature = "test-hooks")]
            AnyLoad::Host(l) => l.next(wait),
            AnyLoad::Direct(l) => l.next(wait),
        }
    }

    /// As [`AnyLoad::next`], waiting at most about `timeout`:
    /// `Poll::Pending` when no tensor completed by then.
    pub fn poll_next(&mut self, timeout: std::time::Duration) -> Polled<T::Owner> {
        match self {
            AnyLoad::Gpu(l) => l.poll_next(timeout),
            #[cfg(feature = "test-hooks")]
            AnyLoad::Host(l) => l.poll_next(timeout),
            AnyLoad::Direct(l) => l.poll_next(timeout),
        }
    }

    /// How it reads, in one line.
    pub fn describe(&self) -> String {
        match self {
            AnyLoad::Gpu(l) => l.describe().to_owned(),
            #[cfg(feature = "test-hooks")]
            AnyLoad::Host(l) => l.describe().to_owned(),
            AnyLoad::Direct(l) => l.describe(),
        }
    }

    /// End it: its staging, for the next load (none for direct reads).
    fn into_staging(self) -> Option<AnyStaging> {
        match self {
            AnyLoad::Gpu(l) => Some(AnyStaging::Gpu(l.into_staging())),
            #[cfg(feature = "test-hooks")]
            AnyLoad::Host(l) => Some(AnyStaging::Host(l.into_staging())),
            AnyLoad::Direct(_) => None,
        }
    }
}

/// A device, opened by name, with the staging kept between loads onto it
/// and the decision of how each load reads:
///
/// - `CUFILE` named first in the options' backends, on a CUDA GPU:
///   straight from the files into device memory; where cuFile cannot be
///   used, through staging with the backends named after it, and an
///   [`Error::Device`] saying what is missing when none is.
/// - Otherwise through staging, with the backend chosen as for host loads
///   (for staged reads: a mapping is copied out of by the fill threads).
pub struct Onto {
    target: Target,
    options: LoadOptions,
    staging: Option<AnyStaging>,
    /// Whether cuFile was asked for and has not failed to open here.
    cufile: bool,
}

impl Onto {
    /// The device `name` names, with `options` for every load onto it.
    pub fn open(name: &str, options: LoadOptions) -> Result<Self, Error> {
        options.check()?;
        let cufile = options
            .engine
            .backends
            .as_ref()
            .is_some_and(|b| b.first() == Some(&Backend::Cufile))
            // Remote files come through staging: cuFile reads local files.
            && options.engine.remote.is_none();
        Ok(Onto {
            target: Target::open(name)?,
            options,
            staging: None,
            cufile,
        })
    }

    /// The device.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Start loading the tensors of `ckpt` that `ids` names into
    /// destinations from `dests`.
    ///
    /// # Safety
    ///
    /// `stream`, if given, must be a stream handle of this device (torch's
    /// current stream) that stays valid until the load ends: every copy
    /// waits for the work queued on it.
    pub unsafe fn start<T: Destinations>(
        &mut self,
        ckpt: &Arc<Checkpoint>,
        ids: Vec<TensorId>,
        dests: T,
        stream: Option<u64>,
    ) -> Result<AnyLoad<T>, Error> {
        if self.cufile {
            match self.target.direct_reader(ckpt) {
                Ok((reader, files)) => {
                    let threads = self.options.staging.fill_threads;
                    let load =
                        DirectDeviceLoad::start(reader, files, ckpt.clone(), ids, dests, threads)?;
                    // SAFETY: the caller's contract: `stream` outlives the
                    // load.
                    let load = match unsafe { self.target.order_after(stream) } {
                        Some(order) => load.after(order),
                        None => load,
                    };
                    return Ok(AnyLoad::Direct(load));
                }
                Err(e) if self.fallback().is_empty() => return Err(e),
                // The backends after it, through staging, from now on.
                Err(_) => self.cufile = false,
            }
        }
        let mut options = self.options.clone();
        if let Some(b) = options.engine.backends.as_mut() {
            b.retain(|&b| b != Backend::Cufile);
        }
        let mut staging = match self.staging.take() {
            Some(s) => s,
            None => self.target.staging(self.options.staging)?,
        };
        // SAFETY: the caller's contract for `stream`.
        unsafe { each_staging!(&mut staging, s => s.wait_for_stream(stream)) };
        let selection = Selection::Ids(ids.into_iter().collect());
        Ok(match staging {
            AnyStaging::Gpu(s) => AnyLoad::Gpu(DeviceLoad::start(
                s,
                ckpt.clone(),
                &selection,
                dests,
                &options,
            )?),
            #[cfg(feature = "test-hooks")]
            AnyStaging::Host(s) => AnyLoad::Host(DeviceLoad::start(
                s,
                ckpt.clone(),
                &selection,
                dests,
                &options,
            )?),
        })
    }

    /// The backends named after `CUFILE`.
    fn fallback(&self) -> Vec<Backend> {
        let backends = self.options.engine.backends.as_deref().unwrap_or(&[]);
        backends
            .iter()
            .copied()
            .filter(|&b| b != Backend::Cufile)
            .collect()
    }

    /// End `load` and keep its staging for the next load.
    pub fn finish<T: Destinations>(&mut self, load: AnyLoad<T>) {
        if let Some(mut staging) = load.into_staging() {
            // SAFETY: waiting for no stream; the next load names its own.
            unsafe { each_staging!(&mut staging, s => s.wait_for_stream(None)) };
            self.staging = Some(staging);
        }
    }

    /// Tensor `id` of `ckpt` alone into a destination from `dests`: straight
    /// from its file where this device reads with cuFile, otherwise read
    /// into host memory by `read` (given `wait`) and copied through the
    /// staging. Returns its owner once the bytes are on the device.
    ///
    /// # Safety
    ///
    /// As for [`Onto::start`].
    pub unsafe fn load_one<T: Destinations>(
        &mut self,
        ckpt: &Arc<Checkpoint>,
        id: TensorId,
        read: impl FnOnce(&mut Wait<'_>) -> Result<crate::HostTensor, Error>,
        mut dests: T,
        stream: Option<u64>,
        wait: &mut Wait<'_>,
    ) -> Result<T::Owner, Error> {
        if self.cufile {
            // SAFETY: the caller's contract for `stream`.
            let mut load = unsafe { self.start(ckpt, vec![id], dests, stream) }?;
            let mut got = None;
            let result = loop {
                match load.next(wait) {
                    Ok(Some(batch)) => got = got.or(batch.into_iter().next()),
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            self.finish(load);
            result?;
            let info = ckpt.tensor(id);
            return got
                .map(|l| l.owner)
                .ok_or_else(|| Error::NoRoom { len: info.len() }.about(ckpt, id));
        }
        let tensor = read(wait)?;
        // SAFETY: the caller's contract for `stream`.
        unsafe { self.upload_alone(ckpt, id, tensor.bytes(), &mut dests, stream) }
    }

    /// Tensor `id` of `ckpt`, read into host memory as `bytes`, copied into
    /// a destination from `dests` through the staging; returns its owner
    /// once the bytes are on the device.
    ///
    /// # Safety
    ///
    /// As for [`Onto::start`].
    pub unsafe fn upload_alone<T: Destinations>(
        &mut self,
        ckpt: &Checkpoint,
        id: TensorId,
        bytes: &[u8],
        dests: &mut T,
        stream: Option<u64>,
    ) -> Result<T::Owner, Error> {
        let named = |e: Error| e.about(ckpt, id);
        let Some(d) = load::ask(dests, ckpt, id)? else {
            return Err(named(Error::NoRoom {
                len: ckpt.tensor(id).len(),
            }));
        };
        let mut staging = match self.staging.take() {
            Some(s) => s,
            None => self.target.staging(self.options.staging).map_err(named)?,
        };
        let result = each_staging!(&mut staging, s => {
            // SAFETY: the caller's contract for `stream`.
            unsafe { s.wait_for_stream(stream) };
            // SAFETY: `Destinations`' contract: the memory stays allocated
            // while `d.owner` lives, which is past this call, and nothing
            // else uses it meanwhile.
            let uploaded = unsafe { s.device().borrow(d.ptr, bytes.len()) }
                .and_then(|dst| s.upload(bytes, &dst));
            // SAFETY: waiting for no stream; the next load names its own.
            unsafe { s.wait_for_stream(None) };
            uploaded
        });
        self.staging = Some(staging);
        result.map_err(|e| named(e.into()))?;
        Ok(d.owner)
    }

    /// How loads onto this device read, in one line: straight into device
    /// memory with cuFile, or the staging they go through (the backend is
    /// chosen per load: see [`AnyLoad::describe`]).
    pub fn describe(&self) -> String {
        if self.cufile {
            return direct::describe_direct(self.options.staging.fill_threads);
        }
        match &self.staging {
            Some(s) => s.describe(),
            None => describe_staging(&self.options.staging),
        }
    }

    /// Whether loads onto this device read straight into device memory
    /// (cuFile), with no host memory on the way.
    pub fn reads_direct(&self) -> bool {
        self.cufile
    }
}

/// A session's tensors on a device ([`crate::Session`] with this source):
/// streams are loads through [`Onto`] (its staging, or cuFile), and a
/// single tensor goes through [`Onto::load_one`]. `dests` makes the
/// destinations of each load.
pub struct OnDevice<T: Destinations, F: FnMut() -> T> {
    onto: Onto,
    dests: F,
    stream: Option<u64>,
}

impl<T: Destinations, F: FnMut() -> T> OnDevice<T, F> {
    /// Tensors onto `onto`'s device, into destinations from `dests`.
    pub fn new(onto: Onto, dests: F) -> Self {
        OnDevice {
            onto,
            dests,
            stream: None,
        }
    }

    /// The device.
    pub fn onto(&mut self) -> &mut Onto {
        &mut self.onto
    }

    /// Order the copies of loads started from now on after the work queued
    /// on `stream` (torch's current stream), `None` for nothing.
    ///
    /// # Safety
    ///
    /// As for [`Onto::start`]: `stream` must stay valid until every load
    /// started while it is set has ended.
    pub unsafe fn wait_for_stream(&mut self, stream: Option<u64>) {
        self.stream = stream;
    }
}

/// A device load as a session's stream: its batches, one tensor at a time.
pub struct DeviceStream<T: Destinations> {
    load: AnyLoad<T>,
    batch: std::collections::VecDeque<Loaded<T::Owner>>,
}

impl<T: Destinations> crate::session::Stream for DeviceStream<T> {
    type Tensor = Loaded<T::Owner>;

    fn poll_next(
        &mut self,
        timeout: std::time::Duration,
    ) -> std::task::Poll<Option<Result<Loaded<T::Owner>, Error>>> {
        use std::task::Poll;
        if let Some(t) = self.batch.pop_front() {
            return Poll::Ready(Some(Ok(t)));
        }
        match self.load.poll_next(timeout) {
            Poll::Ready(Ok(Some(batch))) => {
                self.batch.extend(batch);
                // A batch is never empty; should one be, ask again later.
                self.batch
                    .pop_front()
                    .map_or(Poll::Pending, |t| Poll::Ready(Some(Ok(t))))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn describe(&self) -> String {
        self.load.describe()
    }
}

impl<T: Destinations, F: FnMut() -> T> crate::session::Source for OnDevice<T, F> {
    type Tensor = Loaded<T::Owner>;
    type Stream = DeviceStream<T>;

    fn start(
        &mut self,
        ckpt: &Arc<Checkpoint>,
        ids: &[TensorId],
        _: &LoadOptions,
    ) -> Result<DeviceStream<T>, Error> {
        // SAFETY: `wait_for_stream`'s caller vouched for the stream.
        let load = unsafe {
            self.onto
                .start(ckpt, ids.to_vec(), (self.dests)(), self.stream)
        }?;
        Ok(DeviceStream {
            load,
            batch: std::collections::VecDeque::new(),
        })
    }

    fn alone(
        &mut self,
        ckpt: &Arc<Checkpoint>,
        id: TensorId,
        read: &mut dyn FnMut() -> Result<crate::HostTensor, Error>,
        wait: &mut Wait<'_>,
    ) -> Result<Loaded<T::Owner>, Error> {
        let dests = (self.dests)();
        // SAFETY: `wait_for_stream`'s caller vouched for the stream.
        let owner = unsafe {
            self.onto
                .load_one(ckpt, id, |_| read(), dests, self.stream, wait)
        }?;
        Ok(Loaded { id, owner })
    }

    fn describe_alone(&self) -> String {
        if self.onto.reads_direct() {
            return self.onto.describe();
        }
        format!(
            "{} (single tensors, read alone through the page cache); {}",
            Backend::PreadBuffered,
            self.onto.describe()
        )
    }

    fn finish(&mut self, stream: DeviceStream<T>) {
        self.onto.finish(stream.load);
    }

    fn id(t: &Loaded<T::Owner>) -> TensorId {
        t.id
    }
}
