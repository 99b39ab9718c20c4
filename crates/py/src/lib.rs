//! The Python facade: a thin PyO3 layer over the Rust crates, built by
//! maturin into the `weightlift._weightlift` extension module (abi3, so one
//! wheel serves every CPython from 3.9). The `weightlift` package
//! (`python/weightlift`) builds the public API (`safe_open`, `load_file`,
//! `load`, `load_into`) on the classes here:
//!
//! - `_Session`: an opened checkpoint and its [`Session`]: keys, metadata,
//!   tensors by name, byte ranges of a tensor, and passes;
//! - `_Pass`: one pass over the selected tensors, in completion order;
//! - `Buffer`: a tensor's bytes, handed to torch or numpy by DLPack without
//!   copying; it keeps the memory alive as long as any consumer uses it;
//! - `_Upload`: one pass onto a device, into memory Python allocates, in
//!   completion order (see `src/upload.rs`).
//!
//! Every wait releases the GIL and checks for signals every 50 ms, so
//! Ctrl-C interrupts a load promptly; the load is then cancelled and its
//! memory freed. Only this crate knows Python.

mod dlpack;
mod errors;
mod upload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pyo3::prelude::*;
use weightlift::{Error as LoadError, HostTensor, LoadOptions, Pass, Session, Wait};
use weightlift_format::Checkpoint;
use weightlift_io::Backend;
use weightlift_plan::Selection;

use dlpack::Keep;
use upload::{Direct, Loading, Onto, Target, Upload};

/// A loaded tensor as Python receives it: name, dtype, shape and bytes.
type Described = (String, &'static str, Vec<u64>, Buffer);

/// Tensors whose bytes reached a device: names and their destinations.
type Uploaded = Vec<(String, Py<PyAny>)>;

/// Why a call on a session did not return a value.
enum Fail {
    Closed,
    Load(LoadError),
    /// Copying onto a device failed.
    Gpu(weightlift_gpu::Error),
    /// A destination Python gave does not fit the tensor.
    Mismatch(String),
    /// Python gave no destination where one was needed.
    Device(String),
    /// Python code called on the way raised.
    Py(PyErr),
}

impl From<LoadError> for Fail {
    fn from(e: LoadError) -> Self {
        Fail::Load(e)
    }
}

/// The id of the selected tensor `name`, or the error naming it.
fn selected_id(s: &Session, name: String) -> Result<weightlift_format::TensorId, Fail> {
    s.id(&name).ok_or(Fail::Load(LoadError::Select(
        weightlift_plan::Error::UnknownTensor { name },
    )))
}

/// Lock, ignoring poisoning: the data behind these locks stays consistent
/// across a panic (which would be a bug, reported on its own).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An opened checkpoint.
#[pyclass(name = "_Session", module = "weightlift._weightlift", frozen)]
struct PySession {
    ckpt: Arc<Checkpoint>,
    options: LoadOptions,
    inner: Mutex<Option<Session>>,
    /// The latest device pipeline and its device and settings, kept for
    /// the next load with the same ones (its staging memory is costly to
    /// allocate).
    target: Mutex<Option<(String, Box<dyn Target>)>>,
    /// The staging of the latest load onto a device, described.
    staging: Mutex<Option<String>>,
}

#[pymethods]
impl PySession {
    /// Open the checkpoint at `sources`: one path (a file, a directory or an
    /// index) or several `.safetensors` files. `backends` is a
    /// comma-separated list of backend and policy names (None: the
    /// `WEIGHTLIFT_BACKEND` variable, else automatic).
    #[new]
    #[pyo3(signature = (sources, backends=None, buffer_size=None))]
    fn new(
        py: Python<'_>,
        sources: Vec<PathBuf>,
        backends: Option<String>,
        buffer_size: Option<usize>,
    ) -> PyResult<Self> {
        let mut options = LoadOptions::from_env().map_err(|e| errors::from_load(py, e))?;
        if let Some(list) = backends {
            options.engine.backends =
                Some(Backend::parse_list(&list).map_err(|e| errors::from_load(py, e.into()))?);
        }
        if let Some(n) = buffer_size {
            options = options
                .with_buffer_size(n)
                .map_err(|e| errors::from_load(py, e))?;
        }
        let opened = py.detach(|| match sources.as_slice() {
            [one] => Checkpoint::open(one),
            many => Checkpoint::open_files(many),
        });
        let ckpt = Arc::new(opened.map_err(|e| errors::from_format(py, e))?);
        let session = Session::new(ckpt.clone(), &Selection::All, options.clone())
            .map_err(|e| errors::from_load(py, e))?;
        Ok(Self {
            ckpt,
            options,
            inner: Mutex::new(Some(session)),
            target: Mutex::new(None),
            staging: Mutex::new(None),
        })
    }

    /// Restrict the selection to `names` (before anything is loaded).
    fn select(&self, py: Python<'_>, names: Vec<String>) -> PyResult<()> {
        let session = Session::new(
            self.ckpt.clone(),
            &Selection::names(names),
            self.options.clone(),
        )
        .map_err(|e| errors::from_load(py, e))?;
        self.run(py, move |s, _| {
            *s = session;
            Ok(())
        })
    }

    /// Every tensor name of the checkpoint, selected or not, in file order.
    fn all_keys(&self) -> Vec<String> {
        self.ckpt.tensors().iter().map(|t| t.name.clone()).collect()
    }

    /// The selected names, sorted.
    fn keys(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.run(py, |s, _| Ok(self.names(s.sorted())))
    }

    /// The selected names in file order (shard, then offset).
    fn offset_keys(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.run(py, |s, _| Ok(self.names(s.selected())))
    }

    /// The shards' `__metadata__`, merged; None when no shard has any.
    fn metadata(&self, py: Python<'_>) -> PyResult<Option<BTreeMap<String, String>>> {
        self.run(py, |_, _| Ok(self.ckpt.metadata().cloned()))
    }

    /// `(dtype, shape, file, start, end, data_start)` of a selected tensor:
    /// `start..end` are absolute offsets in `file`.
    #[allow(clippy::type_complexity)]
    fn info(
        &self,
        py: Python<'_>,
        name: String,
    ) -> PyResult<(&'static str, Vec<u64>, PathBuf, u64, u64, u64)> {
        let id = self.run(py, move |s, _| selected_id(s, name))?;
        let t = self.ckpt.tensor(id);
        let shard = self.ckpt.shard(t.file);
        Ok((
            t.dtype.as_str(),
            t.shape.clone(),
            shard.path().to_path_buf(),
            t.range.start,
            t.range.end,
            shard.data_start(),
        ))
    }

    /// Bytes of the selected tensors.
    #[getter]
    fn total_bytes(&self, py: Python<'_>) -> PyResult<u64> {
        self.run(py, |s, _| Ok(s.selected_bytes()))
    }

    /// The byte length of each selected tensor, in file order.
    fn sizes(&self, py: Python<'_>) -> PyResult<Vec<u64>> {
        self.run(py, |s, _| {
            Ok(s.selected()
                .iter()
                .map(|&id| self.ckpt.tensor(id).len())
                .collect())
        })
    }

    /// Staging memory for device copies, in bytes.
    #[getter]
    fn buffer_size(&self) -> usize {
        self.options.engine.ring_bytes
    }

    /// The backend of the latest load and its settings; None before one.
    fn describe(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.run(py, |s, _| Ok(s.describe().map(str::to_owned)))
    }

    /// The staging of the latest load onto a device; None before one.
    #[getter]
    fn staging(&self, py: Python<'_>) -> Option<String> {
        py.detach(|| lock(&self.staging).clone())
    }

    /// `(dtype, shape, Buffer)` of the selected tensor `name`.
    fn get(&self, py: Python<'_>, name: String) -> PyResult<(&'static str, Vec<u64>, Buffer)> {
        let t = self.run(py, move |s, wait| Ok(s.get(&name, wait)?))?;
        let (_, dtype, shape, buf) = self.described(t)?;
        Ok((dtype, shape, buf))
    }

    /// Bytes `start..end` (inside the tensor) of the selected tensor `name`.
    fn get_range(&self, py: Python<'_>, name: String, start: u64, end: u64) -> PyResult<Buffer> {
        let t = self.run(py, move |s, _| Ok(s.get_range(&name, start..end)?))?;
        Ok(Buffer {
            keep: Keep::Host(t),
        })
    }

    /// A new pass over every selected tensor.
    fn stream(slf: Bound<'_, Self>) -> PyResult<PyPass> {
        let pass = slf.get().run(slf.py(), |s, _| Ok(s.pass()))?;
        Ok(PyPass {
            session: slf.unbind(),
            pass: Mutex::new(pass),
        })
    }

    /// A pass over every selected tensor onto `device` (`cuda:N`, or
    /// `host`, a stand-in for tests): an iterator of lists of
    /// `(name, destination)` in completion order. For each tensor as it is
    /// read, `alloc(name, dtype, shape, file)` returns `(destination,
    /// address, nbytes)`: an object owning `nbytes` bytes of the device's
    /// memory at `address`, kept until the copies into it completed; or
    /// None when it has no room until the tensors in flight are handed back
    /// (the pass then hands them back and asks again). Every
    /// copy is ordered after the work queued on `stream` (torch's current
    /// stream) when it is launched.
    /// `pinned_bytes` and `fill_threads` set the staging (None: the
    /// `WEIGHTLIFT_*` variables, else the defaults).
    #[pyo3(signature = (device, alloc, stream=None, pinned_bytes=None, fill_threads=None))]
    fn upload(
        slf: Bound<'_, Self>,
        device: String,
        alloc: Py<PyAny>,
        stream: Option<u64>,
        pinned_bytes: Option<usize>,
        fill_threads: Option<usize>,
    ) -> PyResult<PyUpload> {
        let py = slf.py();
        let this = slf.get();
        let pass = this.run(py, |s, _| Ok(s.pass()))?;
        let staging = upload::Staging {
            pinned_bytes,
            fill_threads,
        };
        let (key, target) = this.take_target(py, &device, staging, stream)?;
        let loading = Loading::new(target, alloc);
        Ok(PyUpload {
            session: slf.unbind(),
            device: key,
            state: Mutex::new(Some(Onto::Upload(Upload::new(loading, pass)))),
        })
    }

    /// The selected tensor `name` onto `device`, into the destination
    /// `alloc` returns (as for `upload`), which is returned.
    #[pyo3(signature = (device, name, alloc, stream=None, pinned_bytes=None, fill_threads=None))]
    #[allow(clippy::too_many_arguments)]
    fn get_into(
        &self,
        py: Python<'_>,
        device: String,
        name: String,
        alloc: Py<PyAny>,
        stream: Option<u64>,
        pinned_bytes: Option<usize>,
        fill_threads: Option<usize>,
    ) -> PyResult<Py<PyAny>> {
        let staging = upload::Staging {
            pinned_bytes,
            fill_threads,
        };
        let (key, target) = self.take_target(py, &device, staging, stream)?;
        let mut loading = Loading::new(target, alloc);
        let ckpt = self.ckpt.clone();
        let done = self.run(py, |s, wait| {
            let t = s.get(&name, wait)?;
            loading.stage_alone(t, &ckpt)?;
            loading.target.finish().map_err(Fail::Gpu)
        });
        let mut got = match done {
            Ok(ids) => loading.hand_back(ids, &self.ckpt),
            Err(e) => {
                // Waits for every copy before the destination goes.
                py.detach(|| drop(loading));
                return Err(e);
            }
        };
        self.put_target(py, key, loading);
        got.pop()
            .map(|(_, obj)| obj)
            .ok_or_else(|| errors::raise(py, "DeviceError", format!("{name}: not uploaded")))
    }

    /// A pass reading the selected tensors (or only `name`) straight from
    /// their files into device memory (`backend=CUFILE`): `cuda:N` through
    /// cuFile, `host` (the stand-in) with pread; otherwise as `upload`.
    /// `threads` read at once (None: half the cores, at most 8).
    #[pyo3(signature = (device, alloc, name=None, threads=None))]
    fn read_direct(
        slf: Bound<'_, Self>,
        device: String,
        alloc: Py<PyAny>,
        name: Option<String>,
        threads: Option<usize>,
    ) -> PyResult<PyUpload> {
        let py = slf.py();
        let this = slf.get();
        let ids = this.run(py, move |s, _| match name {
            None => Ok(s.selected().to_vec()),
            Some(name) => selected_id(s, name).map(|id| vec![id]),
        })?;
        let threads =
            threads.unwrap_or_else(|| weightlift_gpu::UploadOptions::default().fill_threads);
        let ckpt = this.ckpt.clone();
        let direct = py
            .detach(|| Direct::new(&device, &ckpt, ids, alloc, threads))
            .map_err(|e| errors::from_gpu(py, e, &this.ckpt))?;
        let described = Direct::describe(threads);
        py.detach(|| *lock(&this.staging) = Some(described));
        Ok(PyUpload {
            session: slf.unbind(),
            device,
            state: Mutex::new(Some(Onto::Direct(direct))),
        })
    }

    /// Cancel what is loading and free what was read ahead. Tensors already
    /// handed out stay valid.
    fn close(&self, py: Python<'_>) {
        let session = py.detach(|| lock(&self.inner).take());
        py.detach(move || drop(session));
        let target = py.detach(|| lock(&self.target).take());
        py.detach(move || drop(target));
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| lock(&self.inner).is_none())
    }
}

impl PySession {
    /// Run `f` on the session with the GIL released, checking for signals
    /// while it waits. A signal's exception (KeyboardInterrupt) wins over
    /// the cancellation it caused.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Session, &mut Wait<'_>) -> Result<T, Fail> + Send,
    ) -> PyResult<T> {
        let mut interrupted: Option<PyErr> = None;
        let result = py.detach(|| {
            let mut guard = lock(&self.inner);
            let session = guard.as_mut().ok_or(Fail::Closed)?;
            let mut wait = || {
                Python::attach(|py| match py.check_signals() {
                    Ok(()) => true,
                    Err(e) => {
                        interrupted = Some(e);
                        false
                    }
                })
            };
            f(session, &mut wait)
        });
        if let Some(e) = interrupted {
            return Err(e);
        }
        result.map_err(|f| match f {
            Fail::Closed => errors::raise(
                py,
                "ClosedError",
                "the checkpoint was closed (use it inside its `with` block)".into(),
            ),
            Fail::Load(e) => errors::from_load(py, e),
            Fail::Gpu(e) => errors::from_gpu(py, e, &self.ckpt),
            Fail::Mismatch(m) => errors::raise(py, "MismatchError", m),
            Fail::Device(m) => errors::raise(py, "DeviceError", m),
            Fail::Py(e) => e,
        })
    }

    /// The kept pipeline onto `device` with `staging`, or a new one;
    /// ordered after `stream`. Returns it with the key to keep it under.
    fn take_target(
        &self,
        py: Python<'_>,
        device: &str,
        staging: upload::Staging,
        stream: Option<u64>,
    ) -> PyResult<(String, Box<dyn Target>)> {
        let key = format!("{device} {staging:?}");
        let kept = py.detach(|| lock(&self.target).take());
        let mut target = match kept {
            Some((k, t)) if k == key => t,
            other => {
                py.detach(move || drop(other));
                py.detach(|| upload::open(device, staging))
                    .map_err(|e| errors::from_gpu(py, e, &self.ckpt))?
            }
        };
        let described = target.describe();
        py.detach(|| *lock(&self.staging) = Some(described));
        // SAFETY: `stream` is torch's current stream on `device`, which the
        // package passes and which outlives the load; `None` for the host.
        unsafe { target.wait_for_stream(stream) };
        Ok((key, target))
    }

    /// Keep the pipeline of a load that succeeded for the next one.
    fn put_target(&self, py: Python<'_>, device: String, loading: Loading) {
        let Loading { mut target, .. } = loading;
        // SAFETY: waiting for no stream; the next load names its own.
        unsafe { target.wait_for_stream(None) };
        let old = py.detach(|| lock(&self.target).replace((device, target)));
        py.detach(move || drop(old));
    }

    fn names(&self, ids: &[weightlift_format::TensorId]) -> Vec<String> {
        ids.iter()
            .map(|&id| self.ckpt.tensor(id).name.clone())
            .collect()
    }

    /// `(name, dtype, shape, Buffer)` of a loaded tensor.
    fn described(&self, t: HostTensor) -> PyResult<Described> {
        let info = self.ckpt.tensor(t.id());
        let align = (info.dtype.bits() as usize / 8).clamp(1, 8);
        let keep = Keep::aligned(t, align).map_err(PyErr::from)?;
        Ok((
            info.name.clone(),
            info.dtype.as_str(),
            info.shape.clone(),
            Buffer { keep },
        ))
    }
}

/// One pass over the selected tensors: an iterator of
/// `(name, dtype, shape, Buffer)` in completion order.
#[pyclass(name = "_Pass", module = "weightlift._weightlift", frozen)]
struct PyPass {
    session: Py<PySession>,
    pass: Mutex<Pass>,
}

#[pymethods]
impl PyPass {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Described>> {
        let session = self.session.get();
        let pass = &self.pass;
        let t = session.run(py, |s, wait| {
            // The session's lock is held; the pass's is only ever taken
            // inside it, so the two cannot deadlock.
            let mut pass = lock(pass);
            s.next(&mut pass, wait).transpose().map_err(Fail::Load)
        })?;
        t.map(|t| session.described(t)).transpose()
    }

    /// Tensors still to come.
    fn __length_hint__(&self, py: Python<'_>) -> usize {
        // Never wait for a lock while holding the GIL: its holder may be
        // waiting for the GIL to check for signals.
        py.detach(|| lock(&self.pass).remaining())
    }
}

/// One pass over the selected tensors onto a device: an iterator of lists
/// of `(name, destination)`, in completion order.
#[pyclass(name = "_Upload", module = "weightlift._weightlift", frozen)]
struct PyUpload {
    session: Py<PySession>,
    /// The key the pipeline is kept under when the pass ends.
    device: String,
    /// `None` once finished or failed.
    state: Mutex<Option<Onto>>,
}

#[pymethods]
impl PyUpload {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Uploaded>> {
        let session = self.session.get();
        let state = &self.state;
        let ckpt = session.ckpt.clone();
        let stepped = session.run(py, |s, wait| {
            // The session's lock is held; the state's is only ever taken
            // inside it.
            let mut guard = lock(state);
            let Some(onto) = guard.as_mut() else {
                return Ok(Err(None));
            };
            match onto.step(s, wait, &ckpt) {
                Ok(Some(batch)) => Ok(Ok(batch)),
                Ok(None) => Ok(Err(guard.take())),
                Err(e) => {
                    // The pipeline (or the reads) waits for every copy as it
                    // goes, before the destinations.
                    drop(guard.take());
                    Err(e)
                }
            }
        })?;
        match stepped {
            Ok(batch) => Ok(Some(batch)),
            Err(finished) => {
                if let Some(Onto::Upload(upload)) = finished {
                    session.put_target(py, self.device.clone(), upload.loading);
                }
                Ok(None)
            }
        }
    }

    /// Stop: wait for the copies in flight and let go of the destinations.
    fn close(&self, py: Python<'_>) {
        let state = py.detach(|| lock(&self.state).take());
        py.detach(move || drop(state));
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

    fn __dlpack_device__(&self) -> (i32, i32) {
        (1, 0)
    }

    fn __len__(&self) -> usize {
        self.keep.len()
    }
}

/// The names of every backend, in the default order of preference.
#[pyfunction]
fn backend_names() -> Vec<&'static str> {
    Backend::ALL.iter().map(|b| b.name()).collect()
}

/// The GPU runtime (`"cuda"` or `"hip"`) this process can load, described
/// ("CUDA driver 12.8, 1 device: NVIDIA H100 80GB HBM3"); `DeviceError`
/// saying what is missing when there is none.
#[pyfunction]
fn gpu_driver(py: Python<'_>, runtime: &str) -> PyResult<String> {
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
    match py.detach(|| upload::driver(runtime)) {
        Ok(d) => {
            let (major, minor) = d.version();
            let n = d.devices().len();
            Ok(format!(
                "{} {major}.{minor}, {n} device{}: {}",
                runtime.api(),
                if n == 1 { "" } else { "s" },
                d.devices().join(", ")
            ))
        }
        Err(e) => Err(errors::raise(py, "DeviceError", errors::chain(&e))),
    }
}

#[pymodule]
fn _weightlift(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySession>()?;
    m.add_class::<PyPass>()?;
    m.add_class::<PyUpload>()?;
    m.add_class::<Buffer>()?;
    m.add_function(wrap_pyfunction!(backend_names, m)?)?;
    m.add_function(wrap_pyfunction!(gpu_driver, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
