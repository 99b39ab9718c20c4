//! The CUDA driver is found at run time, or its absence is an error that
//! says what is missing; with `WEIGHTLIFT_REQUIRE_GPU=1` it must be found.

use weightlift_gpu::{CudaDriver, Error};

#[test]
fn the_driver_loads_or_says_what_is_missing() {
    let required = std::env::var("WEIGHTLIFT_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match CudaDriver::load() {
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
                reason.contains("libcuda") || reason.contains("CUresult"),
                "the reason names the library or the call: {reason}"
            );
            eprintln!("no CUDA here: {reason}");
        }
        Err(e) => panic!("expected the driver or Error::Unavailable, got {e:?}"),
    }
}
