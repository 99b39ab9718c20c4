//! GPU devices for weightlift: what a device must offer to receive
//! tensors (memory, page-locked staging memory, in-order streams of
//! asynchronous copies, events), and the upload pipeline built on that
//! alone.
//!
//! This crate knows devices and buffers, and files only where a device
//! reads them itself ([`DirectReader`], below). [`Uploader`] packs
//! tensors' host bytes into a bounded ring of staging slots and copies
//! them into device memory (its own, or memory the caller allocated and
//! lends with [`Device::borrow`]), several slots in flight over several
//! streams, optionally ordered after a stream of the caller's; it hands a
//! tensor back only once its copies have completed, and refills a slot only
//! after the event behind its copies has completed, on error paths and on
//! drop too. [`Device::register`] page-locks host memory someone else
//! allocated (an I/O engine's staging ring) so that copies run from it
//! directly. [`HostDevice`] implements [`Device`] in host
//! memory, with threads for streams, so that the pipeline is tested where
//! there is no GPU; it can also slow copies down, limit memory and fail a
//! copy, to open the windows a GPU keeps narrow.
//!
//! ```
//! use weightlift_gpu::{HostDevice, UploadOptions, Uploader};
//!
//! let device = HostDevice::new();
//! let mut up = Uploader::new(&device, UploadOptions::default())?;
//! up.upload(0, "model.embed_tokens.weight", &[1, 2, 3, 4])?;
//! up.upload(1, "model.norm.weight", &[5, 6])?;
//! let mut done = up.finish()?;
//! done.sort_by_key(|u| u.id);
//! assert_eq!(done[1].memory.bytes(), &[5, 6]);
//! # Ok::<(), weightlift_gpu::Error>(())
//! ```
//!
//! [`GpuDriver`] finds the CUDA driver or the HIP runtime at run time and
//! says what is missing when it cannot; [`GpuDevice`] implements [`Device`]
//! on one of its GPUs (for CUDA, on the primary context torch uses).
//! A [`DirectReader`] reads files its caller opened ([`OpenedFile`]),
//! one read of file bytes straight into device memory per call, returning its raw result (bytes, or the
//! operating system's error, `EINTR` included): through GPUDirect Storage
//! ([`CuFileReader`]) or, in tests, a host-memory stand-in
//! ([`HostFileReader`]). It never retries: running many reads on threads,
//! under `weightlift-io`'s retry and end-of-file rule, is the loader's job
//! (`weightlift::device::DirectLoad`).
//!
//! An [`Error`]'s cause (a [`DriverError`], a [`CuFileError`], an
//! [`std::io::Error`], the error of an upload's tensor) is what
//! [`std::error::Error::source`] returns, never repeated in its message.

mod cufile;
mod device;
mod direct;
mod driver;
mod error;
mod fill;
mod host;
mod upload;

pub use cufile::{CuFile, CuFileReader};
pub use device::{Device, DeviceMemory, PinnedMemory};
pub use direct::{DirectReader, HostFileReader, OpenedFile};
pub use driver::{GpuDevice, GpuDriver, GpuEvent, GpuMemory, GpuPinned, GpuStream, Runtime};
pub use error::{CuFileError, DriverError, Error};
pub use host::{HostDevice, HostEvent, HostMemory, HostPinned, HostStream};
pub use upload::{UploadOptions, Uploaded, Uploader};
