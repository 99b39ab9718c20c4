//! Errors of scheduling.

use std::fmt;

use weightlift_format::TensorId;

use crate::PartError;

/// Why a schedule could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// No ranks: `wants` is empty.
    NoRanks,
    /// More ranks than part indices can number (`u32`).
    TooManyRanks {
        /// The number of ranks given.
        ranks: usize,
    },
    /// A request names a tensor id beyond the checkpoint's tensors.
    UnknownId {
        /// The rank that asked.
        rank: usize,
        /// The id.
        id: TensorId,
        /// How many tensors the checkpoint has.
        count: usize,
    },
    /// A request names a tensor the plan does not read.
    NotInPlan {
        /// The rank that asked.
        rank: usize,
        /// The tensor's name.
        tensor: String,
    },
    /// A rank asks for the same tensor twice.
    Duplicate {
        /// The rank that asked.
        rank: usize,
        /// The tensor's name.
        tensor: String,
    },
    /// A rank's part of a tensor cannot be cut out as asked.
    Split {
        /// The rank that asked.
        rank: usize,
        /// The tensor's name.
        tensor: String,
        /// The tensor's shape.
        shape: Vec<u64>,
        /// What is wrong.
        source: PartError,
    },
    /// The plan reads only some of a requested tensor's bytes (a share of a
    /// plan, say, rather than the whole plan).
    Incomplete {
        /// The tensor's name.
        tensor: String,
        /// Bytes of it the plan reads.
        planned: u64,
        /// Its length.
        len: u64,
    },
    /// A piece of the plan does not fit its tensor or its extent: the plan
    /// was made for another checkpoint.
    PlanMismatch {
        /// Index of the extent in the plan.
        extent: usize,
        /// The piece's tensor id.
        tensor: TensorId,
    },
    /// The round budget is smaller than the plan's largest extent, which
    /// must be read whole in one round.
    RoundTooSmall {
        /// The budget given.
        round_bytes: u64,
        /// The plan's largest extent.
        largest_extent: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoRanks => write!(f, "cannot schedule a group of 0 ranks"),
            Error::TooManyRanks { ranks } => {
                write!(f, "a group of {ranks} ranks is more than {}", u32::MAX)
            }
            Error::UnknownId { rank, id, count } => write!(
                f,
                "rank {rank} asks for tensor id {}, beyond the checkpoint's {count} tensors",
                id.0
            ),
            Error::NotInPlan { rank, tensor } => {
                write!(
                    f,
                    "rank {rank} asks for tensor {tensor:?}, which the plan does not read"
                )
            }
            Error::Duplicate { rank, tensor } => {
                write!(f, "rank {rank} asks for tensor {tensor:?} twice")
            }
            Error::Split {
                rank,
                tensor,
                shape,
                source,
            } => write!(
                f,
                "rank {rank} cannot take its part of tensor {tensor:?} of shape {shape:?}: {source}"
            ),
            Error::Incomplete {
                tensor,
                planned,
                len,
            } => write!(
                f,
                "the plan reads {planned} of the {len} bytes of tensor {tensor:?}"
            ),
            Error::PlanMismatch { extent, tensor } => write!(
                f,
                "extent {extent} of the plan has a piece of tensor id {} that does not fit the checkpoint",
                tensor.0
            ),
            Error::RoundTooSmall {
                round_bytes,
                largest_extent,
            } => write!(
                f,
                "a round of {round_bytes} bytes cannot hold the plan's largest extent of {largest_extent} bytes"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Split { source, .. } => Some(source),
            _ => None,
        }
    }
}
