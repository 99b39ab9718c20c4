//! Load a checkpoint onto a GPU from Rust alone:
//!
//! ```sh
//! cargo run --release -p weightlift --example load_to_device -- model.safetensors.index.json cuda:0
//! ```
//!
//! `host` instead of `cuda:N` loads onto host memory standing in for a GPU
//! (as the tests do where there is none). Settings come from the
//! `WEIGHTLIFT_*` variables (`WEIGHTLIFT_PINNED_BYTES`, `WEIGHTLIFT_BACKEND`,
//! ...).

use std::sync::Arc;

use weightlift::device::{Allocate, DeviceLoad, GpuSpec, Staging};
use weightlift::{Checkpoint, LoadOptions, Selection};
use weightlift_gpu::{Device, DeviceMemory, HostDevice};

/// Load every tensor of `ckpt` onto `device`; print each as it lands.
fn load<D: Device + Clone>(device: D, ckpt: Arc<Checkpoint>) -> Result<(), weightlift::Error> {
    let options = LoadOptions::from_env()?;
    let staging = Staging::new(device.clone(), options.staging)?;
    let dests = Allocate(device);
    let mut load = DeviceLoad::start(staging, ckpt.clone(), &Selection::All, dests, &options)?;
    eprintln!("{}", load.describe());
    while let Some(batch) = load.next(&mut || true)? {
        for tensor in batch {
            let (name, memory) = (&ckpt.tensor(tensor.id).name, &tensor.owner);
            println!(
                "{name}: {} bytes at {:#x}",
                memory.len(),
                memory.device_ptr()
            );
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), device) = (args.next(), args.next()) else {
        return Err("usage: load_to_device CHECKPOINT [cuda:N | hip:N | host]".into());
    };
    let ckpt = Arc::new(Checkpoint::open(path)?);
    match device.as_deref().unwrap_or("cuda:0") {
        "host" => load(Arc::new(HostDevice::new()), ckpt)?,
        gpu => load(gpu.parse::<GpuSpec>()?.open()?, ckpt)?,
    }
    Ok(())
}
