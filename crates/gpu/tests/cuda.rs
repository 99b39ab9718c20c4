//! The CUDA driver and the HIP runtime are found at run time, or their
//! absence is an error that says what is missing; with
//! `WEIGHTLIFT_REQUIRE_GPU=1` the CUDA driver must be found.
//! On a GPU, the upload pipeline delivers every byte and running out of
//! memory is an error that leaves the device usable.

use weightlift_gpu::{Device, DeviceMemory, Error, GpuDriver, UploadOptions, Uploader};

#[test]
fn the_driver_loads_or_says_what_is_missing() {
    let required = std::env::var("WEIGHTLIFT_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match GpuDriver::cuda() {
        Ok(driver) => {
            let (major, _) = driver.version();
            assert!(
                major >= 11,
                "implausible driver version {:?}",
                driver.version()
            );
            assert!(
                !driver.devices().is_empty(),
                "a driver with no device loaded"
            );
            assert!(driver.devices().iter().all(|name| !name.is_empty()));
        }
        Err(Error::Unavailable { api, reason }) => {
            assert!(!required, "WEIGHTLIFT_REQUIRE_GPU=1, but {api}: {reason}");
            assert_eq!(api, "CUDA driver");
            assert!(
                reason.contains("libcuda") || reason.contains("result"),
                "the reason names the library or the call: {reason}"
            );
            eprintln!("no CUDA here: {reason}");
        }
        Err(e) => panic!("expected the driver or Error::Unavailable, got {e:?}"),
    }
}

#[test]
fn the_hip_runtime_loads_or_says_what_is_missing() {
    match GpuDriver::hip() {
        Ok(runtime) => {
            assert_eq!(runtime.runtime(), weightlift_gpu::Runtime::Hip);
            assert!(
                !runtime.devices().is_empty(),
                "a runtime with no device loaded"
            );
        }
        Err(Error::Unavailable { api, reason }) => {
            assert_eq!(api, "HIP runtime");
            assert!(
                reason.contains("libamdhip64") || reason.contains("result"),
                "the reason names the library or the call: {reason}"
            );
        }
        Err(e) => panic!("expected the runtime or Error::Unavailable, got {e:?}"),
    }
}

/// The driver and its first device, or `None` (and why) without a GPU.
fn gpu() -> Option<(GpuDriver, weightlift_gpu::GpuDevice)> {
    match GpuDriver::cuda() {
        Ok(driver) => {
            let device = driver.device(0).expect("device 0 of a loaded driver");
            Some((driver, device))
        }
        Err(e) => {
            let required = std::env::var("WEIGHTLIFT_REQUIRE_GPU").is_ok_and(|v| v == "1");
            assert!(!required, "WEIGHTLIFT_REQUIRE_GPU=1, but {e}");
            eprintln!("skipped, no GPU: {e}");
            None
        }
    }
}

#[test]
fn tensors_arrive_on_the_gpu_byte_for_byte() {
    let Some((_driver, device)) = gpu() else {
        return;
    };
    let sizes = [0usize, 1, 7, 4096, 4097, 1 << 20, (3 << 20) + 5, 100];
    let data: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|k| (k * 31 + i * 7) as u8).collect())
        .collect();
    let opts = UploadOptions {
        slot_size: 1 << 20,
        slots: 3,
        streams: 2,
        ..UploadOptions::default()
    };
    let mut up = Uploader::new(&device, opts).unwrap();
    let mut got = Vec::new();
    for (i, d) in data.iter().enumerate() {
        up.upload(i, &format!("t{i}"), d).unwrap();
        got.extend(up.poll().unwrap());
    }
    got.extend(up.finish().unwrap());
    assert_eq!(got.len(), sizes.len());
    for u in &got {
        assert_eq!(
            device.read_back(&u.memory).unwrap(),
            data[u.id],
            "tensor {}",
            u.id
        );
    }
}

#[test]
fn out_of_memory_is_an_error_and_the_gpu_stays_usable() {
    let Some((_driver, device)) = gpu() else {
        return;
    };
    match device.alloc(1 << 50) {
        Err(Error::OutOfMemory { requested, .. }) => assert_eq!(requested, 1 << 50),
        Err(e) => panic!("expected OutOfMemory, got {e:?}"),
        Ok(_) => panic!("a 1 PiB allocation succeeded"),
    }
    let small = device.alloc(4096).unwrap();
    assert_eq!(small.len(), 4096);
}
