//! The GPU runtime, found at run time: the CUDA driver (`libcuda`) or the
//! HIP runtime (`libamdhip64`, the copy torch already loaded when there is
//! one). Nothing GPU is needed to build or to import weightlift, and a
//! machine without it gets an error that says what is missing, never a
//! panic. Bindings that assume a driver panic or abort without one, so this
//! module loads the library itself with libloading and binds the few calls
//! the upload pipeline needs; the two APIs have the same shapes for them,
//! and differ in names and in how a device is made current (a primary
//! context for CUDA, a current device for HIP).
//!
//! [`GpuDevice`] implements [`crate::Device`] on one device (for CUDA, on its
//! primary context, the one torch uses): device memory, page-locked staging
//! memory (so copies are truly asynchronous), non-blocking streams, and
//! events without timing.

mod context;
mod device;
mod loading;
mod results;

use std::ffi::{CStr, c_char, c_int};
use std::sync::Arc;

pub use device::{GpuDevice, GpuEvent, GpuMemory, GpuPinned, GpuStream};
pub use loading::Runtime;
pub(crate) use loading::lookup;
pub(crate) use results::describe;

use crate::Error;
use context::Context;
use loading::{Api, Ctx, CurrentCalls, CurrentNames};
use results::{check, check_init};

/// A GPU runtime library, loaded and initialized.
pub struct GpuDriver {
    api: Arc<Api>,
    version: i32,
    devices: Vec<String>,
}

impl std::fmt::Debug for GpuDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDriver")
            .field("runtime", &self.api.runtime)
            .field("version", &self.version())
            .field("devices", &self.devices)
            .finish()
    }
}

impl GpuDriver {
    /// Load the CUDA driver (`libcuda`), initialize it and list its
    /// devices.
    pub fn cuda() -> Result<Self, Error> {
        Self::load(Runtime::Cuda)
    }

    /// Load the HIP runtime (`libamdhip64`, the copy already in the process
    /// first), initialize it and list its devices.
    pub fn hip() -> Result<Self, Error> {
        Self::load(Runtime::Hip)
    }

    fn load(runtime: Runtime) -> Result<Self, Error> {
        let api = Api::load(runtime)?;
        let n = api.names();
        // SAFETY: the init call takes flags, which must be 0.
        check_init(runtime, n.init, unsafe { (api.init)(0) })?;
        let mut v: c_int = 0;
        // SAFETY: writes one int through a valid pointer.
        check_init(runtime, n.driver_version, unsafe {
            (api.driver_version)(&mut v)
        })?;
        let mut count: c_int = 0;
        // SAFETY: as above; the runtime is initialized.
        check_init(runtime, n.device_count, unsafe {
            (api.device_count)(&mut count)
        })?;
        let mut devices = Vec::new();
        for ordinal in 0..count {
            let mut device: c_int = 0;
            // SAFETY: writes one handle; the ordinal is below the count.
            check_init(runtime, n.device_get, unsafe {
                (api.device_get)(&mut device, ordinal)
            })?;
            let mut buf = [0 as c_char; 256];
            // SAFETY: writes at most `buf.len()` bytes, NUL-terminated.
            check_init(runtime, n.device_name, unsafe {
                (api.device_name)(buf.as_mut_ptr(), buf.len() as c_int, device)
            })?;
            // SAFETY: the runtime NUL-terminated it within the buffer.
            let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
            devices.push(text.to_string_lossy().into_owned());
        }
        Ok(GpuDriver {
            api: Arc::new(api),
            version: v,
            devices,
        })
    }

    /// Which runtime it is.
    pub fn runtime(&self) -> Runtime {
        self.api.runtime
    }

    /// The runtime's version, as (major, minor).
    pub fn version(&self) -> (i32, i32) {
        match self.api.runtime {
            Runtime::Cuda => (self.version / 1000, self.version % 1000 / 10),
            Runtime::Hip => (self.version / 10_000_000, self.version / 100_000 % 100),
        }
    }

    /// The names of the devices it sees, by ordinal.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// Device `ordinal` (for CUDA, on its primary context).
    pub fn device(&self, ordinal: usize) -> Result<GpuDevice, Error> {
        let name = format!("{}:{ordinal}", self.api.runtime.prefix());
        if ordinal >= self.devices.len() {
            return Err(Error::Setting {
                name: "device",
                reason: format!(
                    "{name}: the {} sees {} device(s)",
                    self.api.runtime.api(),
                    self.devices.len()
                ),
            });
        }
        let api = self.api.clone();
        let n = api.names();
        let mut device: c_int = 0;
        // SAFETY: writes one handle; the ordinal is below the count.
        check(&name, api.runtime, n.device_get, unsafe {
            (api.device_get)(&mut device, ordinal as c_int)
        })?;
        let mut raw: Ctx = std::ptr::null_mut();
        if let (
            CurrentCalls::Contexts { retain, .. },
            CurrentNames::Contexts { retain: call, .. },
        ) = (&api.current, &n.current)
        {
            // SAFETY: writes one context handle for a valid device.
            check(&name, api.runtime, call, unsafe {
                retain(&mut raw, device)
            })?;
        }
        Ok(GpuDevice {
            ctx: Arc::new(Context { api, device, raw }),
            name,
        })
    }
}
