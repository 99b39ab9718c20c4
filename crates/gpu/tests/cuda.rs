//! The CUDA driver and the HIP runtime are found at run time, or their
//! absence is an error that says what is missing; with
//! `WEIGHTLIFT_REQUIRE_GPU=1` the CUDA driver must be found.
//! On a GPU, the upload pipeline delivers every byte, memory someone else
//! mapped is registered as staging and copied from, and running out of
//! memory is an error that leaves the device usable.

use weightlift_gpu::{
    Device, DeviceMemory, Error, GpuDriver, PinnedMemory, UploadOptions, Uploader,
};

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
                reason.contains("libcuda"),
                "the reason names the library: {reason}"
            );
            eprintln!("no CUDA here: {reason}");
        }
        // Loaded, but a call setting it up failed (no device, the stub).
        Err(Error::Driver {
            device: None,
            source,
        }) => {
            assert!(!required, "WEIGHTLIFT_REQUIRE_GPU=1, but {source}");
            assert_eq!(source.runtime, weightlift_gpu::Runtime::Cuda);
            assert!(source.call.starts_with("cu"), "{source}");
            assert!(source.to_string().contains("result"), "{source}");
            eprintln!("no CUDA here: {source}");
        }
        Err(e) => panic!("expected the driver, Error::Unavailable or Error::Driver, got {e:?}"),
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
                reason.contains("libamdhip64"),
                "the reason names the library: {reason}"
            );
        }
        Err(Error::Driver {
            device: None,
            source,
        }) => {
            assert_eq!(source.runtime, weightlift_gpu::Runtime::Hip);
            assert!(source.call.starts_with("hip"), "{source}");
        }
        Err(e) => panic!("expected the runtime, Error::Unavailable or Error::Driver, got {e:?}"),
    }
}

/// An error and its causes, as `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// The driver and its first device, or `None` (and why) without a GPU.
fn gpu() -> Option<(GpuDriver, weightlift_gpu::GpuDevice)> {
    match GpuDriver::cuda() {
        Ok(driver) => {
            let device = driver.device(0).expect("device 0 of a loaded driver");
            Some((driver, device))
        }
        Err(e) => {
            let why = chain(&e);
            let required = std::env::var("WEIGHTLIFT_REQUIRE_GPU").is_ok_and(|v| v == "1");
            assert!(!required, "WEIGHTLIFT_REQUIRE_GPU=1, but {why}");
            eprintln!("skipped, no GPU: {why}");
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

/// Anonymous memory from mmap, page aligned, as an I/O engine's staging
/// ring is; unmapped when dropped.
struct Mapped {
    ptr: *mut u8,
    len: usize,
}

impl Mapped {
    fn new(len: usize) -> Self {
        // SAFETY: a fresh private anonymous mapping; no memory of this
        // process is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            ptr != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Mapped {
            ptr: ptr.cast(),
            len,
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; every registration of
        // it is gone (they are dropped first).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[test]
fn mapped_memory_is_registered_copied_from_and_left_mapped() {
    let Some((_driver, device)) = gpu() else {
        return;
    };
    let mapped = Mapped::new(4 << 20);
    let data: Vec<u8> = (0..mapped.len).map(|k| (k * 13 + k / 4099) as u8).collect();
    // SAFETY: within the mapping, which nothing else uses.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), mapped.ptr, mapped.len) };
    {
        // SAFETY: the mapping outlives the registration, page aligned; the
        // bytes are written before the copies are queued and not after.
        let src = unsafe { device.register(mapped.ptr, mapped.len) }.unwrap();
        assert_eq!(src.len(), mapped.len);
        let whole = device.alloc(mapped.len).unwrap();
        let part = device.alloc(4097).unwrap();
        let stream = device.stream().unwrap();
        // SAFETY: source and destinations stay alive and untouched until
        // the event below completes.
        unsafe {
            device
                .copy_to_device(&stream, &whole, 0, &src, 0, mapped.len)
                .unwrap();
            device
                .copy_to_device(&stream, &part, 0, &src, 12_345, 4097)
                .unwrap();
        }
        device.wait(&device.record(&stream).unwrap()).unwrap();
        assert!(
            device.read_back(&whole).unwrap() == data,
            "the whole mapping"
        );
        assert_eq!(
            device.read_back(&part).unwrap(),
            &data[12_345..12_345 + 4097]
        );
    }
    // Unregistered, not freed: the mapping still holds its bytes.
    // SAFETY: within the mapping, which nothing else uses now.
    let now = unsafe { std::slice::from_raw_parts(mapped.ptr, mapped.len) };
    assert!(now == &data[..], "the mapping changed");
}
