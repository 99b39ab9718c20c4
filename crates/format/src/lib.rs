//! The safetensors checkpoint model: parse and validate headers, name every
//! dtype, and assemble shards (a list of files, a directory, or a
//! `model.safetensors.index.json`) into one [`Checkpoint`].
//!
//! Parsing is a pure function of bytes: the caller reads the start of a file
//! and hands it to [`Header::parse`], which either returns the validated
//! header or says how many bytes it needs. Validation is at least as strict
//! as the reference `safetensors` library (see [`Header`]); every rejection
//! is a [`HeaderError`] naming the tensor and offsets involved, wrapped in an
//! [`Error`] naming the file. Nothing a file says is allocated before its
//! length was checked against the file and against [`MAX_HEADER_LEN`], and
//! the memory a parse uses grows only with the header's length (a small
//! multiple of it: names, shapes and metadata strings with their
//! bookkeeping), never with numbers the header states. That multiple is
//! asked for before anything is built ([`memory_estimate`]), and the lists
//! that grow with the header are asked for fallibly, so a header the
//! process has no room for is [`HeaderError::OutOfMemory`], not an abort.
//!
//! The only file access is through the [`Fs`] trait, used by
//! [`Checkpoint::open`] to read headers; [`StdFs`] implements it with `std::fs`.
//!
//! ```
//! use weightlift_format::{encode_header, Checkpoint, Dtype, Header, TensorSpec};
//! use std::path::PathBuf;
//!
//! // Write a one-tensor file in memory, then parse it back.
//! let enc = encode_header(&[TensorSpec::new("w", Dtype::F16, [4, 4])], None)?;
//! let mut file = enc.bytes;
//! file.resize(file.len() + enc.data_len as usize, 0);
//! let header = Header::parse_file(&file)?;
//!
//! let ckpt = Checkpoint::from_headers(vec![(PathBuf::from("w.safetensors"), file.len() as u64, header)])
//!     .expect("one shard");
//! let w = ckpt.find("w").unwrap();
//! assert_eq!((w.dtype, w.len()), (Dtype::F16, 32));
//! assert_eq!(w.range.start, ckpt.shards()[0].data_start());
//! # Ok::<(), weightlift_format::HeaderError>(())
//! ```
#![forbid(unsafe_code)]

mod checkpoint;
mod dtype;
mod error;
mod fs;
mod header;
mod index;
mod range;
mod sllm;
mod write;

pub use checkpoint::{Checkpoint, Shard, ShardHeader, Source, Tensor};
pub use dtype::{Dtype, UnknownDtype};
pub use error::{Error, HeaderError, SllmError};
pub use fs::{FileAt, Fs, Stamp, StdFs, open_regular};
pub use header::{
    FIRST_READ_LEN, Header, MAX_HEADER_LEN, MEMORY_FIXED, MEMORY_PER_HEADER_BYTE,
    MEMORY_PER_METADATA_BYTE, METADATA_KEY, Metadata, PREFIX_LEN, Parsed, TensorInfo, header_span,
    memory_estimate,
};
pub use index::MAX_INDEX_LEN;
pub use range::{ByteRange, FileId, TensorId};
pub use sllm::{
    SLLM_INDEX, SLLM_PARTITION_PREFIX, SllmEntry, SllmIndex, partition_number, torch_dtype,
    torch_name,
};
pub use write::{EncodedHeader, TensorSpec, encode_header};
