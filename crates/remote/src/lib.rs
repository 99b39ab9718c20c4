//! Ranged reads of objects in S3-compatible storage and over HTTP.
//!
//! One job: given `s3://bucket/key` or an `http(s)://` URL, read byte
//! ranges of the object at the version seen when it was opened, with every
//! wait bounded and transient failures retried.
//!
//! - [`Location`]: `s3://bucket/key` or a URL.
//! - [`Client`]: one connection pool (`ureq`, synchronous: the loader
//!   reads on threads), S3 requests signed with SigV4 ([`S3Config`]: the
//!   standard AWS chain of environment and `~/.aws` files, custom
//!   endpoints with path-style addressing, anonymous access), every
//!   request bounded by [`Limits`] (connect, stall, total retry time).
//! - [`Object`]: opened with one ranged GET of its first [`FIRST_RANGE`]
//!   bytes (which also gives its size, ETag and `Last-Modified`); each
//!   later range asks `If-Match` on that ETag and checks what comes back
//!   (status, `Content-Range`, length, ETag), so a replaced object is
//!   [`Error::Changed`], never a mix of versions.
//! - [`RemoteFs`]: the format crate's [`weightlift_format::Fs`] over
//!   remote locations, so checkpoints (a file, an index with shards beside
//!   it, an S3 prefix of shards) open through `Checkpoint::open_in`.
//! - [`Cache`]: local copies of objects, each named by its URL and
//!   version, written whole under a temporary name and then renamed, so a
//!   partial or stale copy is never used.
//!
//! ```no_run
//! use std::sync::Arc;
//! use weightlift_format::{Checkpoint, Source};
//! use weightlift_remote::{Client, Limits, RemoteFs};
//!
//! let fs = RemoteFs::new(Arc::new(Client::new(Limits::from_env()?)));
//! let ckpt = Checkpoint::open_in(&fs, &Source::Path("s3://models/llama/".into()))?;
//! let shard = fs.object(ckpt.shards()[0].path()).expect("opened");
//! let mut first = vec![0u8; 8];
//! shard.read_at(&mut first, 0)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache;
mod client;
mod config;
mod error;
mod fs;
mod location;
mod object;
mod sigv4;

pub use cache::Cache;
pub use client::{Client, FIRST_RANGE, SharedClient, Version};
pub use config::{Credentials, Limits, S3Config};
pub use error::Error;
pub use fs::RemoteFs;
pub use location::{Location, is_remote, is_remote_path};
pub use object::Object;
