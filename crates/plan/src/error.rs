//! Errors of planning.

use std::fmt;

use weightlift_format::TensorId;

/// Why a plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A selection names a tensor the checkpoint does not have.
    UnknownTensor {
        /// The name.
        name: String,
    },
    /// A selection names a tensor id beyond the checkpoint's tensors.
    UnknownId {
        /// The id.
        id: TensorId,
        /// How many tensors the checkpoint has.
        count: u32,
    },
    /// A geometry setting is invalid.
    Geometry {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What it must be.
        reason: &'static str,
    },
    /// A file too close to 2^64 bytes for its aligned extents to be numbered.
    FileTooLarge {
        /// The file.
        file: std::path::PathBuf,
        /// Its size.
        size: u64,
    },
    /// A share index not below the share count, or a count of 0.
    Share {
        /// The index asked for.
        index: u32,
        /// The count asked for.
        count: u32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownTensor { name } => {
                write!(f, "no tensor named {name:?} in the checkpoint")
            }
            Error::UnknownId { id, count } => {
                write!(
                    f,
                    "tensor id {} is beyond the checkpoint's {count} tensors",
                    id.0
                )
            }
            Error::Geometry {
                field,
                value,
                reason,
            } => write!(f, "invalid {field} {value}: {reason}"),
            Error::FileTooLarge { file, size } => {
                write!(
                    f,
                    "{}: size {size} is too large to plan reads for",
                    file.display()
                )
            }
            Error::Share { count: 0, .. } => write!(f, "cannot split a plan into 0 shares"),
            Error::Share { index, count } => write!(f, "no share {index} of {count}"),
        }
    }
}

impl std::error::Error for Error {}
