//! Reading checkpoints as fast as the storage allows.
//!
//! This crate knows files, extents and buffers; it never parses a file.
//! The primitives every read backend is built on:
//!
//! - [`AlignedBuf`]: owned memory aligned for direct I/O, freed exactly once;
//! - [`ReadProgress`]: the one retry and end-of-file rule of a positional
//!   read, with no I/O of its own: fed each raw result (bytes, or an error
//!   such as `EINTR`), it says whether the read is finished, where to read
//!   the rest (a direct read from its last aligned point), or why it failed
//!   ([`ReadFailure`]: truncated before the file's size at open, a read
//!   error, or [`ReadProgress::MAX_STALLS`] tries without progress). Every
//!   read of the project follows it: the engine's, [`ReadFile::read_at`],
//!   and the loader's reads straight into device memory;
//! - [`ReadFile`]: a file opened for positional reads, buffered or with
//!   `O_DIRECT`, which knows its size and its direct-I/O alignment (from
//!   `statx(STATX_DIOALIGN)`); its reads retry interrupted and short reads
//!   and stop short only at the end of the file as it was at open;
//! - [`cache`]: how much of a file is in the page cache (`mincore`), and
//!   dropping it (`posix_fadvise(POSIX_FADV_DONTNEED)`), for cold loads;
//! - [`Region`]: an anonymous mapping faulted in lazily, or a mapping of a
//!   file (`unsafe` to make: its bytes are only as stable as the file);
//! - [`Error`]: every failure, naming the file and the offset; its cause is
//!   its `source()`, not repeated in its message.
//!
//! On top of them:
//!
//! - [`Backend`]s: io_uring, Linux AIO, a `pread` thread pool (each with
//!   `O_DIRECT` or through the page cache) and `mmap`, tried in order by
//!   [`choose`], which says why each rejected candidate cannot be used;
//! - [`RemoteFiles`]: files read by ranges from elsewhere (implemented by
//!   the `weightlift-remote` crate for S3 and HTTP), which the engine reads
//!   with [`Backend::Remote`] on threads, into the same destinations;
//! - the [`Engine`], which executes a `weightlift_plan::ReadPlan` with many
//!   reads in flight, either into a [`Ring`] of staging slots handed to a
//!   [`Sink`] (the path to a GPU) or straight into their final place; its
//!   backends report raw results, judged by [`ReadProgress`].
//!
//! Loading a checkpoint's tensors with it (into host memory, or onto a
//! device) is the `weightlift` crate's job.
//!
//! The `test-hooks` feature adds what tests need and the product does not:
//! `EngineOptions::fault` (an `InjectedFault`, one read reporting an error
//! after it really completed), `Region::live` (regions mapped now, for
//! leak tests) and `aio_contexts_set_up`/`aio_contexts_destroyed` (Linux
//! AIO contexts made and ended so far). Tests enable it through their
//! dev-dependencies.
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

mod backend;
mod buf;
pub mod cache;
mod engine;
mod error;
mod file;
mod progress;
mod queue;
mod region;
mod remote;

pub use backend::{Backend, BackendPolicy, Chosen, Residence, choose};
pub use buf::AlignedBuf;
#[cfg(feature = "test-hooks")]
pub use engine::InjectedFault;
pub use engine::{Engine, EngineOptions, InPlace, Release, Ring, Sink};
pub use error::{Error, PlanMismatch, Rejected, chain};
pub use file::{DioAlignment, OpenMode, ReadFile};
pub use progress::{ReadFailure, ReadProgress, Resume, Verdict};
#[cfg(feature = "test-hooks")]
pub use queue::aio::{aio_contexts_destroyed, aio_contexts_set_up};
pub use region::Region;
pub use remote::{RangeRead, RemoteFiles};
