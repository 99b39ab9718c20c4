//! Telling remote locations from local paths.

use weightlift_remote::{Location, is_remote, is_remote_path};

/// A local path whose 5th, 7th or 8th byte falls inside a character is
/// local, not a panic: `is_remote` is asked of every path a load is given.
#[test]
fn multibyte_local_paths_are_local() {
    for p in [
        "模型/model.safetensors",
        "模型",
        "ab模型",
        "abcd€",
        "abcdef€x",
        "s3:/é",
    ] {
        assert!(!is_remote(p), "{p}");
        assert!(!is_remote_path(std::path::Path::new(p)), "{p}");
        assert!(Location::parse(p).is_err(), "{p}");
    }
    assert!(is_remote("S3://b/模型"));
    assert!(matches!(
        Location::parse("s3://b/模型").unwrap(),
        Location::S3 { ref key, .. } if key == "模型"
    ));
}
