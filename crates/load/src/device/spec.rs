//! Device names (`cuda:N`, `hip:N`) and the GPU runtimes and devices
//! behind them, each loaded or opened once per process.

use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use weightlift_gpu::{CuFile, GpuDevice, GpuDriver, Runtime};

use crate::Error;

/// A GPU a load can target, as named by `cuda:N` or `hip:N`. (torch names
/// AMD GPUs `cuda` too; the caller picks the runtime that serves them.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuSpec {
    /// The runtime: CUDA or HIP.
    pub runtime: Runtime,
    /// The device's number in that runtime.
    pub ordinal: usize,
}

impl FromStr for GpuSpec {
    type Err = Error;

    /// `cuda:N` or `hip:N`.
    fn from_str(name: &str) -> Result<Self, Error> {
        let unknown = |reason| Error::UnknownDevice {
            name: name.to_owned(),
            reason,
        };
        let (kind, number) = name
            .split_once(':')
            .ok_or_else(|| unknown("name a GPU as cuda:N or hip:N"))?;
        let runtime = match kind {
            "cuda" => Runtime::Cuda,
            "hip" => Runtime::Hip,
            _ => return Err(unknown("name a GPU as cuda:N or hip:N")),
        };
        let ordinal = number
            .parse()
            .map_err(|_| unknown("the device number is not a whole number"))?;
        Ok(GpuSpec { runtime, ordinal })
    }
}

impl std::fmt::Display for GpuSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.runtime {
            Runtime::Hip => "hip",
            _ => "cuda",
        };
        write!(f, "{kind}:{}", self.ordinal)
    }
}

impl GpuSpec {
    /// The device, opened once per process and shared by every load onto
    /// it (its context and runtime stay loaded).
    pub fn open(self) -> Result<Arc<GpuDevice>, Error> {
        static DEVICES: Mutex<Vec<(GpuSpec, Arc<GpuDevice>)>> = Mutex::new(Vec::new());
        let mut devices = DEVICES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, d)) = devices.iter().find(|(s, _)| *s == self) {
            return Ok(d.clone());
        }
        let device = Arc::new(driver(self.runtime)?.device(self.ordinal)?);
        devices.push((self, device.clone()));
        Ok(device)
    }
}

/// The GPU runtime, loaded once per process; the error says what is
/// missing when it cannot be.
pub fn driver(runtime: Runtime) -> Result<&'static GpuDriver, Error> {
    static CUDA: OnceLock<Result<GpuDriver, weightlift_gpu::Error>> = OnceLock::new();
    static HIP: OnceLock<Result<GpuDriver, weightlift_gpu::Error>> = OnceLock::new();
    let (cell, load): (_, fn() -> Result<GpuDriver, weightlift_gpu::Error>) = match runtime {
        Runtime::Hip => (&HIP, GpuDriver::hip),
        _ => (&CUDA, GpuDriver::cuda),
    };
    cell.get_or_init(load)
        .as_ref()
        .map_err(|e| Error::Device(again(e, runtime.api())))
}

/// cuFile (GPUDirect Storage), loaded and opened once per process.
pub fn cufile() -> Result<Arc<CuFile>, Error> {
    static CUFILE: OnceLock<Result<Arc<CuFile>, weightlift_gpu::Error>> = OnceLock::new();
    match CUFILE.get_or_init(CuFile::open) {
        Ok(c) => Ok(c.clone()),
        Err(e) => Err(Error::Device(again(e, "cuFile"))),
    }
}

/// A failure to load a library, cached for the process, handed out again.
/// Loading fails only with plain data (the loader's words, a call and its
/// result), so it is rebuilt as it was; anything else keeps its words.
fn again(e: &weightlift_gpu::Error, api: &'static str) -> weightlift_gpu::Error {
    use weightlift_gpu::Error as E;
    match e {
        E::Unavailable { api, reason } => E::Unavailable {
            api,
            reason: reason.clone(),
        },
        E::Driver { device, source } => E::Driver {
            device: device.clone(),
            source: *source,
        },
        E::CuFile { path, source } => E::CuFile {
            path: path.clone(),
            source: *source,
        },
        other => E::Unavailable {
            api,
            reason: weightlift_io::chain(other),
        },
    }
}

/// The runtime described: "CUDA driver 12.8, 1 device: NVIDIA H100 80GB
/// HBM3".
pub fn describe_driver(runtime: Runtime) -> Result<String, Error> {
    let d = driver(runtime)?;
    let (major, minor) = d.version();
    let n = d.devices().len();
    Ok(format!(
        "{} {major}.{minor}, {n} device{}: {}",
        runtime.api(),
        if n == 1 { "" } else { "s" },
        d.devices().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let spec: GpuSpec = "cuda:3".parse().unwrap();
        assert_eq!((spec.runtime, spec.ordinal), (Runtime::Cuda, 3));
        assert_eq!(spec.to_string(), "cuda:3");
        let spec: GpuSpec = "hip:0".parse().unwrap();
        assert_eq!(spec.runtime, Runtime::Hip);
        for bad in ["cuda", "cuda:", "cuda:x", "cpu:0", "gpu:1", "cuda:-1", ""] {
            assert!(
                matches!(bad.parse::<GpuSpec>(), Err(Error::UnknownDevice { .. })),
                "{bad}"
            );
        }
    }
}
