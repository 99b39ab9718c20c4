//! Shared fixtures for weightlift's tests, benchmarks and xtask: the
//! hostile-header [`corpus`], and [`fixtures`] that write realistic
//! checkpoints (Llama-shaped, or with very many tensors) to disk.
//!
//! ```
//! use weightlift_tests::fixtures::{LlamaConfig, write_checkpoint};
//! use weightlift_format::Checkpoint;
//!
//! let dir = std::env::temp_dir().join(format!("wl-doc-{}", std::process::id()));
//! let cfg = LlamaConfig::for_size(8 << 20);
//! let index = write_checkpoint(&dir, &cfg.specs(), 2, 7)?;
//! let ckpt = Checkpoint::open(&index)?;
//! assert_eq!(ckpt.shards().len(), 2);
//! assert_eq!(ckpt.len(), cfg.specs().len());
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod corpus;
pub mod fixtures;
pub mod sllm_corpus;
