//! Reading checkpoints as fast as the storage allows.
//!
//! This crate knows files, extents and buffers, not safetensors. Today it
//! holds the primitives every read backend is built on:
//!
//! - [`AlignedBuf`]: owned memory aligned for direct I/O, freed exactly once;
//! - [`ReadFile`]: a file opened for positional reads, buffered or with
//!   `O_DIRECT`, which knows its size and its direct-I/O alignment (from
//!   `statx(STATX_DIOALIGN)`), retries interrupted and short reads, and stops
//!   short only at the end of the file;
//! - [`cache`]: how much of a file is in the page cache (`mincore`), and
//!   dropping it (`posix_fadvise(POSIX_FADV_DONTNEED)`), for cold loads;
//! - [`Error`]: every failure, naming the file and the offset.
//!
//! The engine that executes a `weightlift_plan::ReadPlan` with io_uring, Linux AIO, a pread pool or mmap into a ring of staging
//! slots arrives with the I/O engine work.
//!
//! ```
//! use weightlift_io::{AlignedBuf, OpenMode, ReadFile};
//!
//! let path = std::env::temp_dir().join(format!("wl-io-doc-{}", std::process::id()));
//! std::fs::write(&path, vec![7u8; 10_000])?;
//! let file = ReadFile::open(&path, OpenMode::Buffered)?;
//! let mut buf = AlignedBuf::zeroed(8192, file.alignment().memory)?;
//! // The last aligned block of the file reads short: 10,000 − 8,192 bytes.
//! let n = file.read_at(buf.as_mut_slice(), 8192)?;
//! assert_eq!(n, 10_000 - 8192);
//! std::fs::remove_file(&path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod buf;
pub mod cache;
mod error;
mod file;

pub use buf::AlignedBuf;
pub use error::Error;
pub use file::{DioAlignment, OpenMode, ReadFile};
