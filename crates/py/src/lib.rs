//! The Python facade: a thin PyO3 layer over the Rust crates, exposing
//! `safe_open`, `load_file`, `load` and `load_into` as a drop-in for
//! `safetensors` and InstantTensor. Only this crate knows Python.
//!
//! It is a skeleton: the bindings and the `python/weightlift` package arrive
//! with the Python wheel work.
