//! GPUDirect Storage: cuFile (`libcufile`, found at run time) reads file
//! bytes straight into GPU memory. With the nvidia-fs kernel module the DMA
//! goes from the storage to the GPU; without it cuFile's compatibility mode
//! reads through its own host buffers, with the same calls.

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libloading::Library;

use crate::direct::{DirectReader, OpenedFile, unzip};
use crate::{CuFileError, DriverError, Error, GpuDevice, Runtime};

/// The names the library goes by, most specific first.
const LIBRARIES: &[&str] = &["libcufile.so.0", "libcufile.so"];

/// `CUfileError_t`: an operation error and, for CUDA failures, the driver's
/// result; returned by value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct CuFileStatus {
    err: c_int,
    cu_err: c_int,
}

/// `CUfileDescr_t` for a file descriptor.
#[repr(C)]
struct CuFileDescr {
    /// `CU_FILE_HANDLE_TYPE_OPAQUE_FD`.
    kind: c_int,
    handle: DescrHandle,
    fs_ops: *const c_void,
}

#[repr(C)]
union DescrHandle {
    fd: c_int,
    handle: *mut c_void,
}

impl CuFileStatus {
    /// The failure it reports, from `call`.
    fn error(self, call: &'static str) -> CuFileError {
        CuFileError {
            call,
            code: self.err,
            cuda: (self.err == CUDA_DRIVER_ERROR).then_some(DriverError {
                runtime: Runtime::Cuda,
                call,
                code: self.cu_err,
            }),
        }
    }
}

/// `CUFILEOP_BASE_ERR`: cuFile's own statuses lie above it; a read's
/// negative result at or below it is an `errno`.
const OP_BASE_ERR: i32 = 5000;
/// `CU_FILE_CUDA_DRIVER_ERROR`: `cu_err` holds the CUDA driver's result.
const CUDA_DRIVER_ERROR: c_int = OP_BASE_ERR + 11;
const HANDLE_TYPE_OPAQUE_FD: c_int = 1;
type Handle = *mut c_void;

/// The calls used (signatures from cufile.h).
struct Api {
    driver_open: unsafe extern "C" fn() -> CuFileStatus,
    driver_close: Option<unsafe extern "C" fn() -> CuFileStatus>,
    handle_register: unsafe extern "C" fn(*mut Handle, *mut CuFileDescr) -> CuFileStatus,
    handle_deregister: unsafe extern "C" fn(Handle),
    read: unsafe extern "C" fn(Handle, *mut c_void, usize, i64, i64) -> isize,
    // The calls above are plain pointers into it: it is unloaded when
    // this goes, after `CuFile`'s `drop` closed the driver, and every
    // reader holds the `CuFile`.
    _library: Library,
}

/// cuFile, loaded and its driver opened; closed when the last user goes.
pub struct CuFile {
    api: Api,
}

impl std::fmt::Debug for CuFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CuFile")
    }
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        api: "cuFile",
        reason,
    }
}

impl CuFile {
    /// Load `libcufile` and open its driver (compatibility mode where
    /// nvidia-fs is absent, as cuFile's configuration allows).
    pub fn open() -> Result<Arc<Self>, Error> {
        let mut failures = Vec::new();
        let lib = LIBRARIES.iter().find_map(|name| {
            // SAFETY: loading the library runs its initializers, which have
            // no preconditions; nothing else of it is used yet.
            match unsafe { Library::new(name) } {
                Ok(lib) => Some(lib),
                Err(e) => {
                    failures.push(e.to_string());
                    None
                }
            }
        });
        let lib = lib.ok_or_else(|| unavailable(failures.join("; ")))?;
        // Without the CUDA driver, cuFileDriverOpen does not fail: it spins
        // (seen with libcufile 1.17 on a machine with no GPU). Ask for the
        // driver first; where it is loaded already (any CUDA program) this
        // only takes a reference.
        // SAFETY: as above; the handle is dropped at once, and cuFile's own
        // loading of the driver keeps it mapped.
        if let Err(e) = unsafe { Library::new("libcuda.so.1") } {
            return Err(unavailable(format!(
                "libcufile was found, but cuFile needs the CUDA driver: {e}"
            )));
        }
        // SAFETY: each symbol is given its signature from cufile.h.
        let api = unsafe {
            Api {
                driver_open: symbol(&lib, "cuFileDriverOpen")?,
                driver_close: symbol(&lib, "cuFileDriverClose_v2")
                    .or_else(|_| symbol(&lib, "cuFileDriverClose"))
                    .ok(),
                handle_register: symbol(&lib, "cuFileHandleRegister")?,
                handle_deregister: symbol(&lib, "cuFileHandleDeregister")?,
                read: symbol(&lib, "cuFileRead")?,
                _library: lib,
            }
        };
        // SAFETY: no arguments; opens cuFile's driver for this process.
        let opened = unsafe { (api.driver_open)() };
        if opened.err != 0 {
            return Err(Error::CuFile {
                path: None,
                source: opened.error("cuFileDriverOpen"),
            });
        }
        Ok(Arc::new(CuFile { api }))
    }
}

impl Drop for CuFile {
    fn drop(&mut self) {
        if let Some(close) = self.api.driver_close {
            // SAFETY: the driver was opened in `open`; every handle holds
            // this object, so none is left.
            unsafe { close() };
        }
    }
}

/// [`crate::driver::lookup`] in cuFile's library, failing as cuFile being
/// unavailable.
///
/// # Safety
///
/// As [`crate::driver::lookup`].
unsafe fn symbol<T: Copy>(library: &Library, name: &str) -> Result<T, Error> {
    // SAFETY: the caller's contract is `lookup`'s.
    unsafe { crate::driver::lookup(library, LIBRARIES[0], name) }.map_err(unavailable)
}

/// Files registered with cuFile, read into one GPU's memory.
pub struct CuFileReader {
    cufile: Arc<CuFile>,
    device: Arc<GpuDevice>,
    paths: Vec<PathBuf>,
    sizes: Vec<u64>,
    handles: Vec<Handle>,
    /// The files registered: closed by `drop`, after their handles.
    files: Vec<File>,
}

// SAFETY: cuFile handles may be used from any thread (cuFileRead is
// thread-safe); the files are plain descriptors.
unsafe impl Send for CuFileReader {}
// SAFETY: as above.
unsafe impl Sync for CuFileReader {}

impl CuFileReader {
    /// Register `files` with cuFile, to read into `device`'s memory. The
    /// caller opens them, with `O_DIRECT` where the file system allows, as
    /// the direct path needs.
    pub fn open(
        cufile: Arc<CuFile>,
        device: Arc<GpuDevice>,
        files: Vec<OpenedFile>,
    ) -> Result<Self, Error> {
        // The reader owns the files from now on, so that a failure below
        // deregisters the handles made so far before the files close.
        let (paths, sizes, files) = unzip(files);
        let mut reader = CuFileReader {
            cufile,
            device,
            paths: paths.clone(),
            sizes,
            handles: Vec::with_capacity(files.len()),
            files,
        };
        for (path, file) in paths.iter().zip(&reader.files) {
            let mut descr = CuFileDescr {
                kind: HANDLE_TYPE_OPAQUE_FD,
                handle: DescrHandle {
                    fd: file.as_raw_fd(),
                },
                fs_ops: std::ptr::null(),
            };
            let mut handle: Handle = std::ptr::null_mut();
            // SAFETY: writes one handle; the descriptor is valid and open.
            let rc = unsafe { (reader.cufile.api.handle_register)(&mut handle, &mut descr) };
            if rc.err != 0 {
                return Err(Error::CuFile {
                    path: Some(path.clone()),
                    source: rc.error("cuFileHandleRegister"),
                });
            }
            reader.handles.push(handle);
        }
        Ok(reader)
    }
}

impl DirectReader for CuFileReader {
    fn path(&self, file: usize) -> &Path {
        &self.paths[file]
    }

    fn size(&self, file: usize) -> u64 {
        self.sizes[file]
    }

    unsafe fn read(
        &self,
        file: usize,
        dst: u64,
        len: usize,
        offset: u64,
    ) -> Result<io::Result<usize>, Error> {
        let read = self.cufile.api.read;
        let handle = self.handles[file];
        // `errno` is taken before the device is put back, which may set it.
        let (n, errno) = self.device.with_current(|| {
            // SAFETY: a registered handle; `dst..dst + len` is device memory
            // of `device` nothing else touches (the caller's contract), with
            // the device current for cuFile to resolve it.
            let n = unsafe { read(handle, dst as *mut c_void, len, offset as i64, 0) };
            (n, io::Error::last_os_error())
        })?;
        // -1 sets errno; below it, -n is a cuFile status when above
        // cuFile's base, and an errno otherwise.
        Ok(match n {
            n if n >= 0 => Ok(n as usize),
            -1 => Err(errno),
            n => match i32::try_from(n.unsigned_abs()) {
                Ok(code) if code <= OP_BASE_ERR => Err(io::Error::from_raw_os_error(code)),
                code => Err(io::Error::other(CuFileError {
                    call: "cuFileRead",
                    code: code.unwrap_or(i32::MAX),
                    cuda: None,
                })),
            },
        })
    }
}

impl Drop for CuFileReader {
    fn drop(&mut self) {
        // In this order, not the fields': each handle deregistered, then
        // its file closed, then (with the last reader) cuFile's driver.
        for h in self.handles.drain(..) {
            // SAFETY: registered in `open`; no read is in flight (reads
            // are synchronous, and the load that made them has joined).
            unsafe { (self.cufile.api.handle_deregister)(h) };
        }
        drop(std::mem::take(&mut self.files));
    }
}
