//! Shared helpers for the engine's tests: checkpoints written to disk.
#![allow(dead_code)]

use std::path::Path;

pub(crate) use weightlift_tests::fixtures::{Scratch, write_u8_shard as write_shard};

/// A scratch directory under cargo's target directory (a real disk, where
/// direct I/O works, unlike tmpfs).
pub(crate) fn scratch(tag: &str) -> Scratch {
    Scratch::new(Path::new(env!("CARGO_TARGET_TMPDIR")), &format!("io-{tag}"))
}
