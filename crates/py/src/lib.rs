//! The Python facade: glue between Python and the `weightlift` crate, built
//! by maturin into the `weightlift._weightlift` extension module (abi3, so
//! one wheel serves every CPython from 3.9). The `weightlift` package
//! (`python/weightlift`) builds the public API (`safe_open`, `load_file`,
//! `load`, `load_into`) on the classes here:
//!
//! - `_Session`: an opened checkpoint and its [`Session`]: keys, metadata,
//!   tensors by name, rows of a tensor, passes, and loads onto a device;
//! - `_Pass`: one pass over the selected tensors in host memory, in
//!   completion order;
//! - `_DeviceLoad`: one pass onto a device, into memory Python allocates
//!   (see `src/dests.rs`), in completion order;
//! - `Buffer`: a tensor's bytes, handed to torch or numpy by DLPack without
//!   copying; it keeps the memory alive as long as any consumer uses it.
//!
//! Every decision about loading is the `weightlift` crate's; this crate
//! holds the GIL, signals, exceptions and DLPack. Every Python object it
//! returns is built fallibly (`src/objects.rs`), so a failed allocation is
//! a `MemoryError`, never a panic. Every wait releases the
//! GIL and checks for signals every 50 ms, so Ctrl-C interrupts a load
//! promptly; the load is then cancelled and its memory freed.

mod dests;
mod dlpack;
mod errors;
mod forked;
mod objects;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;
use weightlift::device::{AnyLoad, Carve, Loaded, OnDevice, Onto, Placement};
use weightlift::group::GroupLoad;
use weightlift::{
    Checkpoint, Error as LoadError, Host, HostTensor, LoadOptions, Pass, Selection, Session,
    TensorId, Wait,
};
use weightlift_io::Backend;

use dests::{Owner, PyDestinations};
use dlpack::Keep;
use forked::{Forked, InProcess};

/// Why a call did not return a value.
enum Fail {
    Closed,
    /// Used in a process forked from the one that opened it.
    Forked(Forked),
    Load(LoadError),
    /// Python code called on the way raised.
    Py(PyErr),
}

impl From<Forked> for Fail {
    fn from(f: Forked) -> Self {
        Fail::Forked(f)
    }
}

impl From<LoadError> for Fail {
    fn from(e: LoadError) -> Self {
        // An exception Python raised on the way (an allocator's) is raised
        // again as it was.
        match into_py_err(e) {
            Ok(e) => Fail::Py(e),
            Err(e) => Fail::Load(e),
        }
    }
}

/// The Python exception inside `e`, if Python raised it.
fn into_py_err(e: LoadError) -> Result<PyErr, LoadError> {
    match e {
        LoadError::Tensor {
            tensor,
            file,
            source,
        } => into_py_err(*source).map_err(|source| LoadError::Tensor {
            tensor,
            file,
            source: Box::new(source),
        }),
        LoadError::Destinations(b) => b
            .downcast::<PyErr>()
            .map(|e| *e)
            .map_err(LoadError::Destinations),
        e => Err(e),
    }
}

/// Lock, ignoring poisoning: the data behind these locks stays consistent
/// across a panic (which would be a bug, reported on its own).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Run `f` with the GIL released, giving it a wait callback that checks
/// for signals. A signal's exception (KeyboardInterrupt) wins over the
/// cancellation it caused.
fn with_signals<T: Send>(
    py: Python<'_>,
    ckpt: &Checkpoint,
    f: impl FnOnce(&mut Wait<'_>) -> Result<T, Fail> + Send,
) -> PyResult<T> {
    let mut interrupted: Option<PyErr> = None;
    let result = py.detach(|| {
        let mut wait = || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => true,
                Err(e) => {
                    interrupted = Some(e);
                    false
                }
            })
        };
        f(&mut wait)
    });
    if let Some(e) = interrupted {
        return Err(e);
    }
    result.map_err(|f| match f {
        Fail::Closed => errors::raise(
            py,
            "ClosedError",
            format!(
                "{}: the checkpoint was closed (use it inside its `with` block)",
                source_name(ckpt)
            ),
        ),
        Fail::Forked(f) => forked_error(py, ckpt, f),
        Fail::Load(e) => errors::from_load_in(py, e, &source_name(ckpt)),
        Fail::Py(e) => e,
    })
}

/// The checkpoint's source, for messages: its index, or its first file.
fn source_name(ckpt: &Checkpoint) -> String {
    ckpt.index_path()
        .or_else(|| ckpt.shards().first().map(|s| s.path()))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The error for a handle of `ckpt` used in a process forked from the one
/// that opened it.
fn forked_error(py: Python<'_>, ckpt: &Checkpoint, Forked { parent, child }: Forked) -> PyErr {
    errors::raise(
        py,
        "WeightliftError",
        format!(
            "{}: this handle was opened in process {parent}, and this is process {child}, \
             forked from it: its reading threads do not survive fork(); open the \
             checkpoint again in this process",
            source_name(ckpt)
        ),
    )
}

/// A whole number for setting `name`, or a `SettingError` saying what was
/// given instead (a bool, a float, a string).
fn whole(py: Python<'_>, name: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    let Some(v) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let is_int =
        v.is_instance_of::<pyo3::types::PyInt>() && !v.is_instance_of::<pyo3::types::PyBool>();
    match is_int.then(|| v.extract::<usize>()) {
        Some(Ok(n)) => Ok(Some(n)),
        _ => Err(errors::raise(
            py,
            "SettingError",
            format!("{name} must be a whole number of the right range, not {v}"),
        )),
    }
}

/// Makes the destinations of each load onto a device: Python's allocator.
type MakeDestinations = Box<dyn FnMut() -> PyDestinations + Send>;

/// The source of a handle onto a device.
type Device = OnDevice<PyDestinations, MakeDestinations>;

/// A handle's session: tensors in host memory, or on a device.
enum Sessions {
    Host(Box<Session<Host>>),
    Device(Box<Session<Device>>),
}

/// `$body` with `$s` bound to the session, whichever kind it is.
macro_rules! each_session {
    ($sessions:expr, $s:ident => $body:expr) => {
        match $sessions {
            Sessions::Host($s) => $body,
            Sessions::Device($s) => $body,
        }
    };
}

impl Sessions {
    /// The session in host memory; the error a device handle gives.
    fn host(&mut self) -> Result<&mut Session<Host>, Fail> {
        match self {
            Sessions::Host(s) => Ok(s),
            Sessions::Device(_) => Err(Fail::Load(LoadError::UnknownDevice {
                name: "cpu".into(),
                reason: "this handle loads onto a device",
            })),
        }
    }

    /// The session on a device; the error a host handle gives.
    fn device(&mut self) -> Result<&mut Session<Device>, Fail> {
        match self {
            Sessions::Device(s) => Ok(s),
            Sessions::Host(_) => Err(Fail::Load(LoadError::UnknownDevice {
                name: "cpu".into(),
                reason: "this handle loads into host memory",
            })),
        }
    }
}

/// An opened checkpoint.
#[pyclass(name = "_Session", module = "weightlift._weightlift", frozen)]
struct PySession {
    ckpt: Arc<Checkpoint>,
    options: LoadOptions,
    /// The device a device handle loads onto, and its allocator.
    device: Option<(String, Py<PyAny>)>,
    inner: InProcess<Mutex<Option<Sessions>>>,
    /// For a handle in host memory, the device `load_into` writes to (by
    /// name), with its staging, kept for the next load onto it (pinned
    /// memory is costly). A device handle's is in its session.
    onto: InProcess<Mutex<Option<(String, Onto)>>>,
    /// The latest load onto a device, described; `None` before one.
    described: Mutex<Option<String>>,
}

#[pymethods]
impl PySession {
    /// Open the checkpoint at `sources`: one path (a file, a directory or an
    /// index) or several `.safetensors` files. `backends` is a
    /// comma-separated list of backend and policy names; every setting
    /// left None comes from its `WEIGHTLIFT_*` variable, else its default.
    /// With `device` (`cuda:N`, `hip:N`) and `alloc` (as for `upload`),
    /// the handle loads onto that device. With `map` false, host tensors
    /// are never views of a mapped file. `cache_dir` keeps local copies of
    /// a remote checkpoint's shards (else `WEIGHTLIFT_CACHE_DIR`).
    #[new]
    #[pyo3(signature = (sources, backends=None, buffer_size=None, pinned_bytes=None, fill_threads=None, device=None, alloc=None, map=true, cache_dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        sources: Vec<PathBuf>,
        backends: Option<String>,
        buffer_size: Option<&Bound<'_, PyAny>>,
        pinned_bytes: Option<&Bound<'_, PyAny>>,
        fill_threads: Option<&Bound<'_, PyAny>>,
        device: Option<String>,
        alloc: Option<Py<PyAny>>,
        map: bool,
        cache_dir: Option<PathBuf>,
    ) -> PyResult<Self> {
        let load_err = |e: LoadError| errors::from_load(py, e);
        let mut options = LoadOptions::from_env().map_err(load_err)?;
        if let Some(list) = backends {
            options.engine.backends =
                Some(Backend::parse_list(&list).map_err(|e| load_err(e.into()))?);
        }
        if let Some(n) = whole(py, "buffer_size", buffer_size)? {
            options = options.with_buffer_size(n).map_err(load_err)?;
        }
        if let Some(n) = whole(py, "pinned_bytes", pinned_bytes)? {
            options.staging.pinned_bytes = n;
        }
        if let Some(n) = whole(py, "fill_threads", fill_threads)? {
            options.staging.fill_threads = n;
        }
        options.engine.map = map;
        if cache_dir.is_some() {
            options.cache_dir = cache_dir;
        }
        options.check().map_err(load_err)?;
        // Local paths, or s3:// and http(s):// locations (whose objects
        // go into the options, for every load of this handle).
        let opened = py.detach(|| weightlift::open_checkpoint(&sources, &mut options));
        let ckpt = Arc::new(opened.map_err(load_err)?);
        let device = device.zip(alloc);
        let this = Self {
            ckpt,
            options,
            device,
            inner: InProcess::new(Mutex::new(None)),
            onto: InProcess::new(Mutex::new(None)),
            described: Mutex::new(None),
        };
        let session = this.session(py, &Selection::All)?;
        *lock(this.inner.get().expect("made in this process")) = Some(session);
        Ok(this)
    }

    /// Restrict the selection to `keys` (before anything is loaded): a
    /// name, a collection of names, or a predicate called with each name.
    fn select(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<()> {
        // Before a new session is made (on a device, that opens it).
        self.in_process(py)?;
        let names: Vec<String> = if let Ok(name) = keys.extract::<String>() {
            vec![name]
        } else if keys.is_callable() {
            let mut names = Vec::new();
            for t in self.ckpt.tensors() {
                if keys.call1((objects::str(py, &t.name)?,))?.is_truthy()? {
                    names.push(t.name.clone());
                }
            }
            names
        } else {
            let items = keys.try_iter().map_err(|_| {
                errors::raise(
                    py,
                    "SettingError",
                    format!(
                        "keys must be a name, a collection of names or a predicate, not {}",
                        keys.get_type().name().map_or("?".into(), |n| n.to_string())
                    ),
                )
            })?;
            let mut names = Vec::new();
            for item in items {
                let item = item?;
                names.push(item.extract::<String>().map_err(|_| {
                    errors::raise(
                        py,
                        "SettingError",
                        format!("keys must hold tensor names (str), not {item:?}"),
                    )
                })?);
            }
            names
        };
        let session = self.session(py, &Selection::names(names))?;
        self.run(py, move |s, _| {
            *s = session;
            Ok(())
        })
    }

    /// Every tensor name of the checkpoint, selected or not, in file order.
    fn all_keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        objects::strs(py, self.ckpt.tensors().iter().map(|t| t.name.as_str()))
    }

    /// The selected names, sorted.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.names(py, sorted)
    }

    /// The selected names in file order (shard, then offset).
    fn offset_keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.names(py, selected)
    }

    /// The shards' `__metadata__`, merged; None when no shard has any.
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        // Checked for a closed handle as every call is; the metadata itself
        // is the checkpoint's, which outlives the session.
        self.run(py, |_, _| Ok(()))?;
        objects::option(py, self.ckpt.metadata(), |m| {
            objects::str_dict(py, m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        })
    }

    /// `(dtype, shape, file, start, end, data_start)` of a selected tensor:
    /// `start..end` are absolute offsets in `file`.
    fn info<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let id = self.run(py, move |s, _| selected_id(s, name))?;
        let t = self.ckpt.tensor(id);
        let shard = self.ckpt.shard(t.file);
        objects::tuple(
            py,
            [
                objects::str(py, t.dtype.as_str())?,
                objects::ints(py, &t.shape)?,
                objects::path(py, shard.path())?,
                objects::int(py, t.range.start)?,
                objects::int(py, t.range.end)?,
                objects::int(py, shard.data_start())?,
            ],
        )
    }

    /// A digest of the checkpoint's files and headers: ranks of a group
    /// whose digests differ opened different checkpoints.
    fn fingerprint<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.in_process(py)?;
        objects::int(py, weightlift::group::fingerprint(&self.ckpt))
    }

    /// This rank's part of a group load. `wants`: for every rank of the
    /// group, in rank order, its requests as `(name, dim)` (`dim` None for
    /// the whole tensor, else the rank's part of a `tensor_split` along
    /// it); the same on every rank, as is `round_bytes`.
    fn group(
        &self,
        py: Python<'_>,
        wants: Vec<Vec<(String, Option<usize>)>>,
        rank: usize,
        round_bytes: u64,
    ) -> PyResult<PyGroupLoad> {
        self.in_process(py)?;
        let ckpt = self.ckpt.clone();
        let mut requests = Vec::with_capacity(wants.len());
        for list in &wants {
            let mut rank_wants = Vec::with_capacity(list.len());
            for (name, dim) in list {
                let Some(id) = ckpt.id(name) else {
                    return Err(errors::from_load_in(
                        py,
                        LoadError::Select(weightlift_plan::Error::UnknownTensor {
                            name: name.clone(),
                        }),
                        &source_name(&ckpt),
                    ));
                };
                rank_wants.push(match dim {
                    None => weightlift_dist::Request::whole(id),
                    Some(d) => weightlift_dist::Request::split(id, *d),
                });
            }
            requests.push(rank_wants);
        }
        let options = self.options.clone();
        let made =
            py.detach(|| GroupLoad::new(ckpt.clone(), &requests, rank, round_bytes, &options));
        let load = made.map_err(|e| errors::from_load_in(py, e, &source_name(&ckpt)))?;
        Ok(PyGroupLoad {
            ckpt,
            load: InProcess::new(load),
        })
    }

    /// Bytes of the selected tensors.
    #[getter]
    fn total_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let n = self.run(py, |s, _| Ok(each_session!(s, s => s.selected_bytes())))?;
        objects::int(py, n)
    }

    /// Bytes a reused device buffer of `size` bytes needs to hold every
    /// selected tensor at once (each aligned; those larger than the buffer,
    /// which get memory of their own, left out).
    fn buffer_needed<'py>(&self, py: Python<'py>, size: u64) -> PyResult<Bound<'py, PyAny>> {
        let n = self.run(py, |s, _| {
            let selected = each_session!(s, s => s.selected());
            Ok(Carve::needed(
                size,
                selected.iter().map(|&id| self.ckpt.tensor(id).len()),
            ))
        })?;
        objects::int(py, n)
    }

    /// Staging memory for reads in flight, in bytes, and the device buffer
    /// of `copy=False`.
    #[getter]
    fn buffer_size<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        objects::int(py, self.options.engine.ring_bytes as u64)
    }

    /// The backend of the latest load and its settings (for a device, its
    /// staging too); None before one.
    fn describe<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.in_process(py)?;
        let device = py.detach(|| lock(&self.described).clone());
        let described = match device {
            Some(d) => Some(d),
            None => self.run(py, |s, _| {
                Ok(each_session!(s, s => s.describe().map(str::to_owned)))
            })?,
        };
        objects::option(py, described, |d| objects::str(py, &d))
    }

    /// `(dtype, shape, Buffer)` of the selected tensor `name`, in host
    /// memory.
    fn get<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let t = self.run(py, move |s, wait| Ok(s.host()?.get(&name, wait)?))?;
        let [_, dtype, shape, buf] = self.described(py, t)?;
        objects::tuple(py, [dtype, shape, buf])
    }

    /// Rows `lo..hi` (along the first dimension) of the selected tensor
    /// `name`, read on their own: `(Buffer, rows)`, `rows` the number read.
    /// With `lo` None, or where rows are not whole bytes, the whole tensor
    /// is read and `rows` is None.
    #[pyo3(signature = (name, lo=None, hi=None))]
    fn get_rows<'py>(
        &self,
        py: Python<'py>,
        name: String,
        lo: Option<u64>,
        hi: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (buffer, read) = self.run(py, move |s, _| {
            let id = selected_id(s, name.clone())?;
            let info = self.ckpt.tensor(id);
            let rows = match (lo, hi) {
                (Some(lo), Some(hi)) => info.rows(lo..hi).map(|r| (r, hi - lo)),
                _ => None,
            };
            let (range, read) = match rows {
                Some((range, n)) => (range, Some(n)),
                None => (0..info.len(), None),
            };
            let t = each_session!(s, s => s.get_range(&name, range))?;
            Ok((
                Buffer {
                    keep: Keep::Host(t),
                },
                read,
            ))
        })?;
        objects::tuple(
            py,
            [
                objects::object(py, buffer)?,
                objects::option(py, read, |n| objects::int(py, n))?,
            ],
        )
    }

    /// A new pass over every selected tensor: `(name, dtype, shape,
    /// Buffer)` in host memory, or on a device handle `(name, owner)`, each
    /// copy ordered after the work queued on `stream` (torch's current
    /// stream).
    #[pyo3(signature = (stream=None))]
    fn stream(slf: Bound<'_, Self>, stream: Option<u64>) -> PyResult<PyPass> {
        let pass = slf
            .get()
            .run(slf.py(), |s, _| Ok(each_session!(s, s => s.pass())))?;
        Ok(PyPass {
            session: slf.unbind(),
            pass: InProcess::new(Mutex::new(pass)),
            stream,
        })
    }

    /// A pass over every selected tensor onto `device` (`cuda:N`, `hip:N`):
    /// an iterator of lists of `(name, owner)` in completion order. For each
    /// tensor, `alloc(name, dtype, shape, file)` returns `(owner, address,
    /// nbytes)`: an object owning `nbytes` bytes of the device's memory at
    /// `address`, kept until the copies into it completed, or None when it
    /// has no room until the tensors in flight are handed back. With
    /// `buffer = (owner, address, size)` (`copy=False`), tensors go to
    /// regions of that buffer first, handed back as `(offset, dtype,
    /// shape)` and reused once given back (`give_back(offset)`); those
    /// larger than it go to `alloc`. Every copy is ordered after the work queued on
    /// `stream` (torch's current stream).
    #[pyo3(signature = (device, alloc, stream=None, buffer=None))]
    fn upload(
        slf: Bound<'_, Self>,
        device: String,
        alloc: Py<PyAny>,
        stream: Option<u64>,
        buffer: Option<(Py<PyAny>, u64, u64)>,
    ) -> PyResult<PyDeviceLoad> {
        let py = slf.py();
        let this = slf.get();
        let ids = this.run(py, |s, _| Ok(each_session!(s, s => s.selected()).to_vec()))?;
        let buffer = buffer.map(|(owner, ptr, size)| dests::Buffer {
            owner,
            ptr,
            carve: Arc::new(Mutex::new(Carve::new(size))),
        });
        let carve = buffer.as_ref().map(|b| b.carve.clone());
        let dests = PyDestinations { alloc, buffer };
        let ckpt = this.ckpt.clone();
        let load = this.with_onto(py, &device, |onto, _| {
            // SAFETY: `stream` is torch's current stream on `device`, which
            // the package passes and which outlives the load.
            Ok(unsafe { onto.start(&ckpt, ids, dests, stream) }?)
        })?;
        let described = load.describe();
        py.detach(|| *lock(&this.described) = Some(described));
        Ok(PyDeviceLoad {
            session: slf.unbind(),
            device,
            state: InProcess::new(Mutex::new(Some(load))),
            carve,
        })
    }

    /// The selected tensor `name` onto a device handle's device, its copies
    /// ordered after the work queued on `stream` (torch's current stream).
    #[pyo3(signature = (name, stream=None))]
    fn get_into(&self, py: Python<'_>, name: String, stream: Option<u64>) -> PyResult<Py<PyAny>> {
        let loaded = self.run(py, |s, wait| {
            let s = s.device()?;
            // SAFETY: `stream` is torch's current stream on the device,
            // which the package passes and which outlives the call.
            unsafe { s.source_mut().wait_for_stream(stream) };
            let got = s.get(&name, wait);
            *lock(&self.described) = s.describe().map(str::to_owned);
            Ok(got?)
        })?;
        owner_object(py, &self.ckpt, loaded)
    }

    /// Cancel what is loading and free what was read ahead. Tensors already
    /// handed out stay valid.
    fn close(&self, py: Python<'_>) {
        // In a forked child there is nothing of this process's to close.
        let (Ok(inner), Ok(onto)) = (self.inner.get(), self.onto.get()) else {
            return;
        };
        let session = py.detach(|| lock(inner).take());
        py.detach(move || drop(session));
        let onto = py.detach(|| lock(onto).take());
        py.detach(move || drop(onto));
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        // A forked child's handle is as good as closed.
        let Ok(inner) = self.inner.get() else {
            return true;
        };
        py.detach(|| lock(inner).is_none())
    }
}

/// The selected tensors in name order.
fn sorted(s: &Sessions) -> &[TensorId] {
    each_session!(s, s => s.sorted())
}

/// The selected tensors in file order.
fn selected(s: &Sessions) -> &[TensorId] {
    each_session!(s, s => s.selected())
}

/// The id of the selected tensor `name`, or the error naming it.
fn selected_id(s: &Sessions, name: String) -> Result<TensorId, Fail> {
    each_session!(s, s => s.id(&name)).ok_or(Fail::Load(LoadError::Select(
        weightlift_plan::Error::UnknownTensor { name },
    )))
}

/// A tensor onto a device, as its owner (a torch tensor).
fn owner_object(py: Python<'_>, ckpt: &Checkpoint, loaded: Loaded<Owner>) -> PyResult<Py<PyAny>> {
    match loaded.owner {
        Owner::Object(obj) => Ok(obj),
        Owner::At(_) => Err(errors::raise(
            py,
            "DeviceError",
            format!(
                "{}: a session's tensor never goes to the reused buffer",
                ckpt.tensor(loaded.id).name
            ),
        )),
    }
}

impl PySession {
    /// Whether this is the process that opened the handle; the error saying
    /// so if not. Checked before any lock of the handle is taken: in a
    /// forked child, a lock a vanished thread held stays held.
    fn in_process(&self, py: Python<'_>) -> PyResult<()> {
        self.inner
            .get()
            .map(|_| ())
            .map_err(|f| forked_error(py, &self.ckpt, f))
    }

    /// Run `f` on the session with the GIL released, checking for signals
    /// while it waits.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Sessions, &mut Wait<'_>) -> Result<T, Fail> + Send,
    ) -> PyResult<T> {
        with_signals(py, &self.ckpt, |wait| {
            let mut guard = lock(self.inner.get()?);
            let session = guard.as_mut().ok_or(Fail::Closed)?;
            f(session, wait)
        })
    }

    /// A session over `selection`: in host memory, or onto the handle's
    /// device.
    fn session(&self, py: Python<'_>, selection: &Selection) -> PyResult<Sessions> {
        let (ckpt, options) = (self.ckpt.clone(), self.options.clone());
        let made = match &self.device {
            None => Session::new(ckpt, selection, options).map(|s| Sessions::Host(Box::new(s))),
            Some((name, alloc)) => {
                let alloc = alloc.clone_ref(py);
                let onto = py
                    .detach(|| Onto::open(name, options.clone()))
                    .map_err(|e| errors::from_load(py, e))?;
                let dests: MakeDestinations = Box::new(move || PyDestinations {
                    alloc: Python::attach(|py| alloc.clone_ref(py)),
                    buffer: None,
                });
                Session::with_source(ckpt, selection, options, OnDevice::new(onto, dests))
                    .map(|s| Sessions::Device(Box::new(s)))
            }
        };
        made.map_err(|e| errors::from_load(py, e))
    }

    /// Run `f` on the device `device` names (a device handle's own, or the
    /// one kept, or newly opened), with the GIL released; keep it for the
    /// next load.
    fn with_onto<T: Send>(
        &self,
        py: Python<'_>,
        device: &str,
        f: impl FnOnce(&mut Onto, &mut Wait<'_>) -> Result<T, Fail> + Send,
    ) -> PyResult<T> {
        with_signals(py, &self.ckpt, |wait| {
            let mut guard = lock(self.inner.get()?);
            match guard.as_mut().ok_or(Fail::Closed)? {
                Sessions::Device(s) if self.device.as_ref().is_some_and(|(d, _)| d == device) => {
                    return f(s.source_mut().onto(), wait);
                }
                _ => drop(guard),
            }
            let kept = lock(self.onto.get()?).take();
            let mut onto = match kept {
                Some((name, onto)) if name == device => onto,
                _ => Onto::open(device, self.options.clone())?,
            };
            let result = f(&mut onto, wait);
            *lock(self.onto.get()?) = Some((device.to_owned(), onto));
            result
        })
    }

    /// A list of the names of the tensors `pick` takes from the session, in
    /// its order. The ids are copied out under the session's lock (taken
    /// with the GIL released), then the list is built with the GIL held.
    fn names<'py>(
        &self,
        py: Python<'py>,
        pick: fn(&Sessions) -> &[TensorId],
    ) -> PyResult<Bound<'py, PyAny>> {
        let ids = self.run(py, |s, _| {
            let ids = pick(s);
            let mut copy = Vec::new();
            if copy.try_reserve_exact(ids.len()).is_err() {
                return Err(Fail::Py(PyMemoryError::new_err(format!(
                    "no memory for the ids of {} tensors",
                    ids.len()
                ))));
            }
            copy.extend_from_slice(ids);
            Ok(copy)
        })?;
        objects::strs(py, ids.iter().map(|&id| self.ckpt.tensor(id).name.as_str()))
    }

    /// `[name, dtype, shape, Buffer]` of a loaded tensor, as Python objects.
    fn described<'py>(&self, py: Python<'py>, t: HostTensor) -> PyResult<[Bound<'py, PyAny>; 4]> {
        let info = self.ckpt.tensor(t.id());
        let align = (info.dtype.bits() as usize / 8).clamp(1, 8);
        let keep = Keep::aligned(t, align).map_err(PyErr::from)?;
        Ok([
            objects::str(py, &info.name)?,
            objects::str(py, info.dtype.as_str())?,
            objects::ints(py, &info.shape)?,
            objects::object(py, Buffer { keep })?,
        ])
    }
}

/// One pass over the selected tensors: an iterator of
/// `(name, dtype, shape, Buffer)` in host memory, or `(name, owner)` on a
/// device, in completion order.
#[pyclass(name = "_Pass", module = "weightlift._weightlift", frozen)]
struct PyPass {
    session: Py<PySession>,
    pass: InProcess<Mutex<Pass>>,
    /// torch's current stream, on a device.
    stream: Option<u64>,
}

/// A tensor of a pass, in host memory or on a device.
enum Passed {
    Host(HostTensor),
    Device(Loaded<Owner>),
}

#[pymethods]
impl PyPass {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let session = self.session.get();
        let (pass, stream) = (&self.pass, self.stream);
        let t = session.run(py, |s, wait| {
            // The session's lock is held; the pass's is only ever taken
            // inside it, so the two cannot deadlock.
            let mut pass = lock(pass.get()?);
            Ok(match s {
                Sessions::Host(s) => s.next(&mut pass, wait).transpose()?.map(Passed::Host),
                Sessions::Device(s) => {
                    // SAFETY: `stream` is torch's current stream on the
                    // device, which the package passes and which outlives
                    // the pass.
                    unsafe { s.source_mut().wait_for_stream(stream) };
                    let next = s.next(&mut pass, wait).transpose();
                    if let Some(d) = s.describe() {
                        *lock(&session.described) = Some(d.to_owned());
                    }
                    next?.map(Passed::Device)
                }
            })
        })?;
        let Some(t) = t else { return Ok(None) };
        let item = match t {
            Passed::Host(t) => objects::tuple(py, session.described(py, t)?)?,
            Passed::Device(l) => {
                let name = objects::str(py, &session.ckpt.tensor(l.id).name)?;
                let owner = owner_object(py, &session.ckpt, l)?.into_bound(py);
                objects::tuple(py, [name, owner])?
            }
        };
        Ok(Some(item.unbind()))
    }

    /// Tensors still to come.
    fn __length_hint__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        // Never wait for a lock while holding the GIL: its holder may be
        // waiting for the GIL to check for signals.
        let n = match self.pass.get() {
            Ok(pass) => py.detach(|| lock(pass).remaining()),
            Err(_) => 0,
        };
        objects::int(py, n as u64)
    }
}

/// One pass over the selected tensors onto a device: an iterator of lists
/// of `(name, owner)`, in completion order.
#[pyclass(name = "_DeviceLoad", module = "weightlift._weightlift", frozen)]
struct PyDeviceLoad {
    session: Py<PySession>,
    /// The device, to keep its staging when the pass ends.
    device: String,
    /// `None` once finished or failed.
    state: InProcess<Mutex<Option<AnyLoad<PyDestinations>>>>,
    /// The reused buffer's placement, with `copy=False`.
    carve: Option<Arc<Mutex<Carve>>>,
}

#[pymethods]
impl PyDeviceLoad {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let session = self.session.get();
        let state = &self.state;
        let ckpt = &session.ckpt;
        let stepped = with_signals(py, ckpt, |wait| {
            let mut guard = lock(state.get()?);
            let Some(load) = guard.as_mut() else {
                return Ok(None);
            };
            match load.next(wait) {
                Ok(Some(batch)) => Ok(Some(batch)),
                Ok(None) => {
                    let load = guard.take().expect("present");
                    drop(guard);
                    // Keep the staging for the next load onto the device.
                    let mut inner = lock(session.inner.get()?);
                    if let Some(Sessions::Device(s)) = inner.as_mut()
                        && session
                            .device
                            .as_ref()
                            .is_some_and(|(d, _)| *d == self.device)
                    {
                        s.source_mut().onto().finish(load);
                        return Ok(None);
                    }
                    drop(inner);
                    let mut onto = lock(session.onto.get()?);
                    match onto.as_mut() {
                        Some((name, onto)) if *name == self.device => onto.finish(load),
                        _ => drop(load),
                    }
                    Ok(None)
                }
                Err(e) => {
                    // Dropping the load waits for every copy before the
                    // destinations go.
                    drop(guard.take());
                    Err(e.into())
                }
            }
        })?;
        let Some(batch) = stepped else {
            return Ok(None);
        };
        let landed = objects::list(
            py,
            batch.into_iter().map(|l| {
                let t = ckpt.tensor(l.id);
                let owner = match l.owner {
                    Owner::Object(obj) => obj.into_bound(py),
                    Owner::At(start) => objects::tuple(
                        py,
                        [
                            objects::int(py, start)?,
                            objects::str(py, t.dtype.as_str())?,
                            objects::ints(py, &t.shape)?,
                        ],
                    )?,
                };
                objects::tuple(py, [objects::str(py, &t.name)?, owner])
            }),
        )?;
        Ok(Some(landed.unbind()))
    }

    /// The caller moved past the tensor at `start` of the reused buffer: its
    /// region may be reused.
    fn give_back(&self, py: Python<'_>, start: u64) {
        if self.state.get().is_err() {
            return; // a forked child: nothing of its own to give back
        }
        if let Some(carve) = &self.carve {
            py.detach(|| lock(carve).give_back(start));
        }
    }

    /// Stop: wait for the copies in flight and let go of the destinations.
    fn close(&self, py: Python<'_>) {
        let Ok(state) = self.state.get() else { return };
        let state = py.detach(|| lock(state).take());
        py.detach(move || drop(state));
    }
}

/// One rank's part of a group load: its outputs, and round by round what
/// it sends and where what it receives goes (see `weightlift::group`).
#[pyclass(name = "_GroupLoad", module = "weightlift._weightlift", frozen)]
struct PyGroupLoad {
    ckpt: Arc<Checkpoint>,
    load: InProcess<GroupLoad>,
}

impl PyGroupLoad {
    fn get(&self, py: Python<'_>) -> PyResult<&GroupLoad> {
        self.load.get().map_err(|f| forked_error(py, &self.ckpt, f))
    }
}

#[pymethods]
impl PyGroupLoad {
    /// This rank's outputs, in request order: `(name, dtype, shape, bytes)`.
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let load = self.get(py)?;
        let ckpt = &self.ckpt;
        objects::list(
            py,
            load.outputs().iter().map(|o| {
                let t = ckpt.tensor(o.tensor);
                objects::tuple(
                    py,
                    [
                        objects::str(py, &t.name)?,
                        objects::str(py, t.dtype.as_str())?,
                        objects::ints(py, &o.shape)?,
                        objects::int(py, o.len)?,
                    ],
                )
            }),
        )
    }

    /// Number of rounds.
    #[getter]
    fn rounds(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.get(py)?.rounds())
    }

    /// The backend reading, described.
    fn describe<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        objects::str(py, &self.get(py)?.describe())
    }

    /// Per rank of the group: `(read, sent, received, local)` bytes.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = self.get(py)?.schedule();
        objects::list(
            py,
            (0..s.group_size()).map(|r| {
                objects::tuple(
                    py,
                    [
                        objects::int(py, s.read_bytes()[r])?,
                        objects::int(py, s.sent_bytes()[r])?,
                        objects::int(py, s.received_bytes()[r])?,
                        objects::int(py, s.local_bytes()[r])?,
                    ],
                )
            }),
        )
    }

    /// Round `k`: read this rank's extents and pack what it sends. Returns
    /// `(send, send_splits, recv_splits, unpack, complete)`: the send
    /// buffer (a `Buffer`), bytes for and from each rank, where received
    /// bytes go as `(output, at, len, recv_at)`, and the outputs complete
    /// after it.
    fn round<'py>(&self, py: Python<'py>, k: usize) -> PyResult<Bound<'py, PyAny>> {
        let load = self.get(py)?;
        if k >= load.rounds() {
            return Err(errors::raise(
                py,
                "SettingError",
                format!("no round {k} of {}", load.rounds()),
            ));
        }
        let x = py
            .detach(|| load.round(k, None))
            .map_err(|e| errors::from_load_in(py, e, &source_name(&self.ckpt)))?;
        objects::tuple(
            py,
            [
                objects::object(
                    py,
                    Buffer {
                        keep: Keep::Owned(x.send),
                    },
                )?,
                objects::ints(py, &x.send_splits)?,
                objects::ints(py, &x.recv_splits)?,
                objects::list(
                    py,
                    x.unpack.iter().map(|u| {
                        objects::tuple(
                            py,
                            [
                                objects::int(py, u.output as u64)?,
                                objects::int(py, u.at)?,
                                objects::int(py, u.len)?,
                                objects::int(py, u.recv_at)?,
                            ],
                        )
                    }),
                )?,
                objects::list(py, x.complete.iter().map(|&o| objects::int(py, o as u64)))?,
            ],
        )
    }
}

/// A tensor's bytes in host memory, exported by DLPack (`uint8`, one
/// dimension) without copying.
#[pyclass(module = "weightlift._weightlift", frozen)]
struct Buffer {
    keep: Keep,
}

#[pymethods]
impl Buffer {
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<Bound<'py, PyAny>>,
        max_version: Option<Bound<'py, PyAny>>,
        dl_device: Option<Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        // Host memory: no stream to order against, one device, and a copy
        // is never needed; the unversioned capsule is what every consumer
        // accepts.
        let _ = (stream, max_version, dl_device);
        if copy == Some(true) {
            let copied = self.keep.copied().map_err(PyErr::from)?;
            return dlpack::capsule(py, copied);
        }
        dlpack::capsule(py, self.keep.clone())
    }

    fn __dlpack_device__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        objects::tuple(py, [objects::int(py, 1)?, objects::int(py, 0)?])
    }

    fn __len__(&self) -> usize {
        self.keep.len()
    }
}

/// The names of every backend, in the default order of preference.
#[pyfunction]
fn backend_names(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    objects::strs(py, Backend::ALL.iter().map(|b| b.name()))
}

/// Where `name` asks tensors to go: `("cpu", None)`, or `("cuda", index)`
/// with `index` None for the current GPU; `DeviceError` for a name that is
/// neither.
#[pyfunction]
fn placement<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let (kind, index) = match name.parse::<Placement>() {
        Ok(Placement::Host) => ("cpu", None),
        Ok(Placement::Gpu(index)) => ("cuda", index),
        Err(e) => return Err(errors::from_load(py, e)),
    };
    objects::tuple(
        py,
        [
            objects::str(py, kind)?,
            objects::option(py, index, |i| objects::int(py, i as u64))?,
        ],
    )
}

/// The GPU runtime (`"cuda"` or `"hip"`) this process can load, described
/// ("CUDA driver 12.8, 1 device: NVIDIA H100 80GB HBM3"); `DeviceError`
/// saying what is missing when there is none.
#[pyfunction]
fn gpu_driver<'py>(py: Python<'py>, runtime: &str) -> PyResult<Bound<'py, PyAny>> {
    let runtime = match runtime {
        "cuda" => weightlift_gpu::Runtime::Cuda,
        "hip" => weightlift_gpu::Runtime::Hip,
        other => {
            return Err(errors::raise(
                py,
                "DeviceError",
                format!("unknown GPU runtime {other:?}: use 'cuda' or 'hip'"),
            ));
        }
    };
    let described = py
        .detach(|| weightlift::device::describe_driver(runtime))
        .map_err(|e| errors::raise(py, "DeviceError", errors::chain(&e)))?;
    objects::str(py, &described)
}

/// Whether any two of `spans` (`(address, length)`, lengths of 0 aside)
/// overlap: targets sharing memory (tied weights) cannot be written
/// straight from staging.
#[pyfunction]
fn overlapping(mut spans: Vec<(u64, u64)>) -> bool {
    spans.retain(|&(_, n)| n > 0);
    spans.sort_unstable();
    spans
        .windows(2)
        .any(|w| w[0].0.saturating_add(w[0].1) > w[1].0)
}

#[pymodule]
fn _weightlift(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySession>()?;
    m.add_class::<PyPass>()?;
    m.add_class::<PyDeviceLoad>()?;
    m.add_class::<PyGroupLoad>()?;
    m.add_class::<Buffer>()?;
    m.add_function(wrap_pyfunction!(backend_names, m)?)?;
    m.add_function(wrap_pyfunction!(placement, m)?)?;
    m.add_function(wrap_pyfunction!(gpu_driver, m)?)?;
    m.add_function(wrap_pyfunction!(overlapping, m)?)?;
    m.add(
        "__version__",
        objects::str(m.py(), env!("CARGO_PKG_VERSION"))?,
    )?;
    Ok(())
}
