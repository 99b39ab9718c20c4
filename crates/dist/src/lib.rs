//! Loading across a process group: which rank reads which extents of a
//! [`ReadPlan`](weightlift_plan::ReadPlan), and what each rank then gives
//! each other rank, so that the group reads every byte from storage once and
//! every rank receives exactly the bytes it asked for.
//!
//! Every rank asks for tensors ([`Request`]): whole ([`Want::Whole`]), or
//! its part of a split ([`Want::Split`], the part `torch.tensor_split` gives
//! the rank's index; [`part`] says where those bytes lie in the tensor).
//! Every rank plans the union of all requests identically, and passes the
//! plan and everyone's requests to [`schedule`], which is pure and
//! deterministic: each rank computes the same [`Schedule`], so none is sent.
//!
//! A schedule is a list of [`Round`]s. In each, every rank reads its extents
//! of the round into a round buffer (at most [`Options::round_bytes`]), then
//! the group exchanges: `round.moves[src][dst]` lists the strided copies
//! from `src`'s buffer into `dst`'s [`Output`]s. Each extent is read by one
//! rank, preferring the rank that wants most of it, and no rank reads more
//! than `ceil(T / n) + E` (`T` the plan's bytes, `E` its largest extent, `n`
//! the group's size). Carrying out the exchange (with `torch.distributed`
//! collectives) is the loader's; this crate does no I/O and no
//! communication.
//!
//! ```
//! use std::path::PathBuf;
//! use weightlift_dist::{schedule, Options, Request};
//! use weightlift_format::{encode_header, Checkpoint, Dtype, Header, TensorSpec};
//! use weightlift_plan::{plan, Geometry, Selection};
//!
//! // A checkpoint with a 4×8 matrix of bytes and a bias.
//! let specs = [TensorSpec::new("w", Dtype::U8, [4, 8]), TensorSpec::new("b", Dtype::U8, [8])];
//! let enc = encode_header(&specs, None)?;
//! let size = enc.bytes.len() as u64 + enc.data_len;
//! let mut file = enc.bytes;
//! file.resize(size as usize, 0);
//! let ckpt = Checkpoint::from_headers(vec![(PathBuf::from("m.safetensors"), size, Header::parse_file(&file)?)])?;
//! let (w, b) = (ckpt.id("w").unwrap(), ckpt.id("b").unwrap());
//!
//! // Two ranks: each takes half of `w`'s columns and all of `b`.
//! let wants = vec![vec![Request::split(w, 1), Request::whole(b)]; 2];
//! let plan = plan(&ckpt, &Selection::All, &Geometry::new(8, 16)?)?;
//! let s = schedule(&ckpt, &plan, &wants, &Options::default())?;
//! assert_eq!(s.outputs()[1][0].shape, [4, 4]);
//! // Every extent is read once, and no rank reads more than its bound.
//! let reads: usize = s.rounds().iter().flat_map(|r| &r.reads).map(Vec::len).sum();
//! assert_eq!(reads, plan.extents().len());
//! assert!(s.read_bytes().iter().all(|&r| r <= s.read_bound()));
//! // Each rank receives its half of `w` and the bias, part from itself.
//! for rank in 0..2 {
//!     assert_eq!(s.received_bytes()[rank] + s.local_bytes()[rank], 16 + 8);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod error;
mod part;
mod schedule;

pub use error::Error;
pub use part::{Block, PartError, part};
pub use schedule::{Move, Options, Output, Request, Round, Schedule, Want, schedule};
