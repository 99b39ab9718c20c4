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
    /// Extent indices out of range or not strictly increasing.
    Extents {
        /// Extents the plan has.
        extents: usize,
    },
    /// A share index not below the share count, or a count of 0.
    Share {
        /// The index asked for.
        index: u32,
        /// The count asked for.
        count: u32,
    },
    /// The memory for the plan's lists could not be allocated: the process
    /// may not have that much more (an address-space limit, strict
    /// overcommit).
    OutOfMemory {
        /// The checkpoint's first file with a selected tensor.
        file: std::path::PathBuf,
        /// Tensors selected.
        tensors: usize,
        /// About the bytes the plan needs.
        bytes: u64,
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
            Error::Extents { extents } => write!(
                f,
                "extent indices must be increasing and below the plan's {extents} extents"
            ),
            Error::OutOfMemory {
                file,
                tensors,
                bytes,
            } => write!(
                f,
                "{}: a read plan of {tensors} tensors needs about {bytes} bytes of memory, which could not be allocated",
                file.display()
            ),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_room_for_a_plan_names_the_file_and_the_bytes() {
        let e = Error::OutOfMemory {
            file: "m.safetensors".into(),
            tensors: 3,
            bytes: 264,
        };
        assert_eq!(
            e.to_string(),
            "m.safetensors: a read plan of 3 tensors needs about 264 bytes of memory, which could not be allocated"
        );
    }
}
