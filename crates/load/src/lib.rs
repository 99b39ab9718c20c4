//! weightlift: safetensors checkpoints into host or GPU memory, as fast as
//! the storage and the PCIe link allow.
//!
//! This crate is the loader: it composes the others (the checkpoint model
//! of `weightlift-format`, the planner of `weightlift-plan`, the read
//! engine of `weightlift-io` and the devices of `weightlift-gpu`) into
//! loads that hand out tensors in completion order:
//!
//! - [`host::load`]: tensors in host memory, read straight into place or
//!   viewing the page cache;
//! - [`Session`]: the policy behind a `safe_open` handle: single tensors by
//!   name, passes over the selection, and the switch to streaming when
//!   names are walked in order.
//!
//! Settings come from [`LoadOptions`], whose `Default` reads nothing from
//! the environment; [`LoadOptions::from_env`] applies the `WEIGHTLIFT_*`
//! variables.
//!
//! ```
//! use std::sync::Arc;
//! use weightlift::{Checkpoint, LoadOptions, Selection, host};
//! use weightlift_format::{encode_header, Dtype, TensorSpec};
//!
//! // A small file: two tensors, 6 and 8 bytes.
//! let enc = encode_header(&[TensorSpec::new("a", Dtype::U8, [6]), TensorSpec::new("b", Dtype::F32, [2])], None)?;
//! let mut file = enc.bytes;
//! file.extend(1..=14u8);
//! let path = std::env::temp_dir().join(format!("wl-load-doc-{}.safetensors", std::process::id()));
//! std::fs::write(&path, &file)?;
//!
//! let ckpt = Arc::new(Checkpoint::open(&path)?);
//! let load = host::load(ckpt.clone(), &Selection::All, &LoadOptions::default())?;
//! println!("{}", load.describe()); // the backend chosen and its settings
//! for tensor in load {
//!     let tensor = tensor?;
//!     let name = &ckpt.tensor(tensor.id()).name;
//!     assert_eq!(tensor.len(), if name == "a" { 6 } else { 8 });
//! }
//! std::fs::remove_file(&path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod device;
mod error;
pub mod group;
pub mod host;
mod options;
pub mod remote;
pub mod session;

pub use error::Error;
pub use host::{HostLoad, HostTensor};
pub use options::{ENV_VARS, LoadOptions, StagingOptions};
pub use remote::open_checkpoint;
pub use session::{Host, Pass, Session, Source, Wait};
pub use weightlift_format::{Checkpoint, TensorId};
pub use weightlift_io::Backend;
pub use weightlift_plan::Selection;
