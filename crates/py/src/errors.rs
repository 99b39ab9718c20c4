//! Rust errors as Python exceptions of the `weightlift` hierarchy.
//!
//! The classes live in `weightlift/_errors.py`, where they can also derive
//! from the built-in exception each resembles (`FileNotFoundError`,
//! `KeyError`, ...); this module only picks the class.

use std::io::ErrorKind;

use pyo3::prelude::*;
use weightlift::Error as LoadError;
use weightlift_format::{Error as FormatError, HeaderError};
use weightlift_gpu::Error as GpuError;
use weightlift_io::Error as IoError;

use crate::objects;

/// An exception of class `class` (a name in `weightlift._errors`) with
/// `message`.
pub(crate) fn raise(py: Python<'_>, class: &str, message: String) -> PyErr {
    // Every object made fallibly: with no memory left, the MemoryError
    // Python raised is the answer.
    let made = objects::string(py, "weightlift._errors")
        .and_then(|name| PyModule::import(py, name))
        .and_then(|m| m.getattr(objects::string(py, class)?))
        .and_then(|cls| cls.call1((objects::str(py, &message)?,)));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        // The package is broken, or memory ran out; still say what went
        // wrong.
        Err(e) => e,
    }
}

/// The class for an error opening a checkpoint.
fn format_class(e: &FormatError) -> &'static str {
    match e {
        FormatError::Header {
            source: HeaderError::OutOfMemory { .. },
            ..
        } => "WeightliftMemoryError",
        FormatError::Io { source, .. } if source.kind() == ErrorKind::NotFound => {
            "MissingFileError"
        }
        FormatError::Io { .. } | FormatError::Changed { .. } => "WeightliftIOError",
        _ => "HeaderError",
    }
}

/// The class for an error reading.
fn io_class(e: &IoError) -> &'static str {
    match e {
        IoError::Open { source, .. } if source.kind() == ErrorKind::NotFound => "MissingFileError",
        IoError::UnknownBackend { .. } | IoError::NoBackend { .. } => "BackendError",
        IoError::Setting { .. } => "SettingError",
        IoError::Cancelled | IoError::Spawn { .. } => "WeightliftError",
        _ => "WeightliftIOError",
    }
}

/// The class for an error loading.
fn load_class(e: &LoadError) -> &'static str {
    match e {
        LoadError::Tensor { source, .. } => load_class(source),
        LoadError::Open(e) => format_class(e),
        LoadError::Io(e) => io_class(e),
        LoadError::Device(e) => gpu_class(e),
        LoadError::OutOfMemory { .. }
        | LoadError::Select(weightlift_plan::Error::OutOfMemory { .. }) => "WeightliftMemoryError",
        LoadError::Select(_) => "TensorNotFoundError",
        // Requests that cannot be scheduled: a split along a dimension a
        // tensor lacks, a part that would cut sub-byte elements.
        LoadError::Group(_) => "SettingError",
        LoadError::Setting {
            name: "WEIGHTLIFT_BACKEND",
            ..
        } => "BackendError",
        LoadError::Setting { .. } => "SettingError",
        LoadError::Destination { .. } => "MismatchError",
        LoadError::NoRoom { .. } | LoadError::UnknownDevice { .. } => "DeviceError",
        LoadError::Range { .. } | LoadError::Cancelled | LoadError::Spawn { .. } => {
            "WeightliftError"
        }
        _ => "WeightliftIOError",
    }
}

/// The class for a device's error.
fn gpu_class(e: &GpuError) -> &'static str {
    match e {
        GpuError::Upload { source, .. } => gpu_class(source),
        GpuError::Setting { .. } => "SettingError",
        GpuError::Open { source, .. } if source.kind() == ErrorKind::NotFound => "MissingFileError",
        GpuError::Open { .. } | GpuError::CuFile { path: Some(_), .. } => "WeightliftIOError",
        // GPUDirect Storage missing is a backend that cannot be used here.
        GpuError::Unavailable { api: "cuFile", .. } | GpuError::CuFile { path: None, .. } => {
            "BackendError"
        }
        GpuError::Spawn { .. } => "WeightliftError",
        _ => "DeviceError",
    }
}

/// A Python exception for an error loading.
pub(crate) fn from_load(py: Python<'_>, e: LoadError) -> PyErr {
    raise(py, load_class(&e), chain(&e))
}

/// A Python exception for an error loading from the checkpoint `source`
/// names: the message names it where the error names no file of its own
/// (memory or a queue that could not be had, a setting, a name).
pub(crate) fn from_load_in(py: Python<'_>, e: LoadError, source: &str) -> PyErr {
    let message = chain(&e);
    let message = match e.file() {
        None if !source.is_empty() => format!("{source}: {message}"),
        _ => message,
    };
    raise(py, load_class(&e), message)
}

/// The error's message followed by its causes, as `a: b: c`, skipping a
/// cause already spelled out in the message.
pub(crate) use weightlift_io::chain;
