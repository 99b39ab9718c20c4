//! Loading across a process group: which rank reads which extents of a
//! [`weightlift_plan::ReadPlan`] (so each byte is read from storage once per
//! group), and the exchange schedule that gives every rank the tensors it
//! asked for.
//!
//! [`part`] says where a rank's part of a tensor split as
//! `torch.tensor_split` splits it lies in the tensor's bytes.
#![forbid(unsafe_code)]

mod part;

pub use part::{Block, PartError, part};
