//! The CUDA driver, found at run time: nothing CUDA is needed to build or
//! to import weightlift, and a machine without it gets an error that says
//! what is missing, never a panic. Other CUDA bindings abort or panic when
//! `libcuda` is absent, so this probe runs before anything else touches the
//! driver.

use std::ffi::{CStr, c_char, c_int, c_uint};

use libloading::Library;

use crate::Error;

/// The names the driver library goes by, most specific first.
const LIBRARIES: &[&str] = &["libcuda.so.1", "libcuda.so"];

/// `CUresult`: 0 is success.
type CuResult = c_int;

/// The CUDA driver library, loaded and initialized.
#[derive(Debug)]
pub struct CudaDriver {
    // Kept loaded for as long as the driver is used.
    _library: Library,
    version: i32,
    devices: Vec<String>,
}

impl CudaDriver {
    /// Load `libcuda`, initialize it and list its devices.
    pub fn load() -> Result<Self, Error> {
        let mut failures = Vec::new();
        let library = LIBRARIES.iter().find_map(|name| {
            // SAFETY: loading the driver runs its initializers, which have
            // no preconditions; nothing else of it is used yet.
            match unsafe { Library::new(name) } {
                Ok(lib) => Some(lib),
                Err(e) => {
                    failures.push(e.to_string());
                    None
                }
            }
        });
        let library = library.ok_or_else(|| unavailable(failures.join("; ")))?;

        // SAFETY: each symbol is looked up by its documented name and given
        // its signature from cuda.h.
        let (init, version, count, get, name) = unsafe {
            (
                symbol::<unsafe extern "C" fn(c_uint) -> CuResult>(&library, b"cuInit\0")?,
                symbol::<unsafe extern "C" fn(*mut c_int) -> CuResult>(
                    &library,
                    b"cuDriverGetVersion\0",
                )?,
                symbol::<unsafe extern "C" fn(*mut c_int) -> CuResult>(
                    &library,
                    b"cuDeviceGetCount\0",
                )?,
                symbol::<unsafe extern "C" fn(*mut c_int, c_int) -> CuResult>(
                    &library,
                    b"cuDeviceGet\0",
                )?,
                symbol::<unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult>(
                    &library,
                    b"cuDeviceGetName\0",
                )?,
            )
        };
        // SAFETY: cuInit takes flags, which must be 0.
        check("cuInit", unsafe { init(0) })?;
        let mut v: c_int = 0;
        // SAFETY: writes one int through a valid pointer.
        check("cuDriverGetVersion", unsafe { version(&mut v) })?;
        let mut n: c_int = 0;
        // SAFETY: as above; the driver is initialized.
        check("cuDeviceGetCount", unsafe { count(&mut n) })?;
        let mut devices = Vec::new();
        for ordinal in 0..n {
            let mut device: c_int = 0;
            // SAFETY: writes one handle; the ordinal is below the count.
            check("cuDeviceGet", unsafe { get(&mut device, ordinal) })?;
            let mut buf = [0 as c_char; 256];
            // SAFETY: writes at most `buf.len()` bytes, NUL-terminated.
            check("cuDeviceGetName", unsafe {
                name(buf.as_mut_ptr(), buf.len() as c_int, device)
            })?;
            // SAFETY: the driver NUL-terminated it within the buffer.
            let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
            devices.push(text.to_string_lossy().into_owned());
        }
        Ok(CudaDriver {
            _library: library,
            version: v,
            devices,
        })
    }

    /// The driver's CUDA version, as (major, minor).
    pub fn version(&self) -> (i32, i32) {
        (self.version / 1000, self.version % 1000 / 10)
    }

    /// The names of the devices it sees, by ordinal.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }
}

/// Look up `name` in `library`, copied out as a plain function pointer
/// (the library outlives every use: it is kept in the driver).
///
/// # Safety
///
/// `T` must be the symbol's true type.
unsafe fn symbol<T: Copy>(library: &Library, name: &[u8]) -> Result<T, Error> {
    // SAFETY: the caller vouches for the type.
    unsafe { library.get::<T>(name) }.map(|s| *s).map_err(|e| {
        unavailable(format!(
            "{} lacks {}: {e}",
            LIBRARIES[0],
            String::from_utf8_lossy(&name[..name.len() - 1])
        ))
    })
}

fn check(call: &str, rc: CuResult) -> Result<(), Error> {
    if rc == 0 {
        return Ok(());
    }
    let what = match rc {
        3 => "not initialized",
        34 => "the stub library, not a driver: no driver is installed",
        46 => "the device is unavailable (exclusive use, or busy)",
        100 => "no CUDA device is visible",
        101 => "invalid device",
        304 => "the operating system refused (is the device node accessible?)",
        803 => "the driver and the kernel module do not match",
        999 => "unknown error",
        _ => "error",
    };
    Err(unavailable(format!(
        "{call} failed: {what} (CUresult {rc})"
    )))
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        api: "CUDA driver",
        reason,
    }
}
