//! The crates composed: weightlift loads a checkpoint into host memory,
//! weightlift-gpu's pipeline uploads each tensor as it arrives onto the
//! host-memory device, and every tensor that comes back equals what the
//! reference `safetensors` crate reads from the same file.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use weightlift::{LoadOptions, host};
use weightlift_format::{Checkpoint, TensorId};
use weightlift_gpu::{HostDevice, UploadOptions, Uploaded, Uploader};
use weightlift_plan::Selection;
use weightlift_tests::fixtures::{
    LlamaConfig, TempDir, assert_same_as_reference, moe_specs, write_checkpoint,
};

/// Load `index` and upload each tensor the moment it is loaded; returns
/// the uploads by tensor.
fn load_and_upload(
    ckpt: &Arc<Checkpoint>,
    device: &HostDevice,
    opts: UploadOptions,
) -> HashMap<TensorId, Uploaded<weightlift_gpu::HostMemory>> {
    let mut up = Uploader::new(device, opts).unwrap();
    let mut done = HashMap::new();
    let load = host::load(ckpt.clone(), &Selection::All, &LoadOptions::default()).unwrap();
    for tensor in load {
        let tensor = tensor.unwrap();
        let id = tensor.id();
        up.upload(id.index(), &ckpt.tensor(id).name, tensor.bytes())
            .unwrap();
        // The host copy may go at once: the bytes are staged.
        drop(tensor);
        for u in up.poll().unwrap() {
            done.insert(TensorId(u.id as u32), u);
        }
    }
    for u in up.finish().unwrap() {
        done.insert(TensorId(u.id as u32), u);
    }
    done
}

fn check_against_reference(
    ckpt: &Checkpoint,
    got: &HashMap<TensorId, Uploaded<weightlift_gpu::HostMemory>>,
) {
    assert_eq!(got.len(), ckpt.len());
    assert_same_as_reference(ckpt, (0..ckpt.len() as u32).map(TensorId), |id| {
        got.get(&id).map(|u| u.memory.bytes())
    });
}

#[test]
fn a_llama_checkpoint_arrives_whole() {
    let dir = TempDir::new("llama");
    let index = write_checkpoint(&dir.0, &LlamaConfig::for_size(24 << 20).specs(), 2, 7).unwrap();
    let ckpt = Arc::new(Checkpoint::open(&index).unwrap());
    let device = HostDevice::new();
    // Slots far smaller than the tensors: each goes in many copies.
    let opts = UploadOptions {
        slot_size: 256 << 10,
        slots: 4,
        streams: 2,
        ..UploadOptions::default()
    };
    let got = load_and_upload(&ckpt, &device, opts);
    check_against_reference(&ckpt, &got);
    drop(got);
    assert_eq!(device.used(), 0);
}

#[test]
fn many_tiny_tensors_with_slow_copies() {
    let dir = TempDir::new("moe");
    let index = write_checkpoint(&dir.0, &moe_specs(3000), 2, 9).unwrap();
    let ckpt = Arc::new(Checkpoint::open(&index).unwrap());
    let device = HostDevice::new().with_copy_delay(Duration::from_micros(50));
    let opts = UploadOptions {
        slot_size: 1 << 20,
        slots: 3,
        streams: 3,
        ..UploadOptions::default()
    };
    let got = load_and_upload(&ckpt, &device, opts);
    check_against_reference(&ckpt, &got);
}
