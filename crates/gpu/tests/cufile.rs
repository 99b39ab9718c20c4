//! GPUDirect Storage: cuFile found at run time, or said to be missing.
//! (Reading through a `DirectReader` is the loader's, and tested there.)

use weightlift_gpu::{CuFile, Error};

#[test]
fn cufile_loads_or_says_what_is_missing() {
    match CuFile::open() {
        Ok(_) => {}
        Err(Error::Unavailable { api, reason }) => {
            assert_eq!(api, "cuFile");
            assert!(
                reason.contains("libcufile") || reason.contains("cuFile"),
                "{reason}"
            );
        }
        // Found, but its driver would not open.
        Err(Error::CuFile { path: None, source }) => {
            assert_eq!(source.call, "cuFileDriverOpen");
        }
        Err(e) => panic!("expected cuFile or Error::Unavailable, got {e:?}"),
    }
}
