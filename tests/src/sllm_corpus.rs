//! The hostile ServerlessLLM corpus: checkpoint directories (a
//! `tensor_index.json` and `tensor.data_<n>` partitions) that
//! [`Checkpoint::open`] must reject with a precise [`SllmError`], and a few
//! unusual but valid ones it must accept.
//!
//! [`entries`] builds every directory from code; the committed copies in
//! `tests/corpus/sllm/` are written by [`write_all`] (`cargo xtask corpus`)
//! and checked byte for byte by the corpus tests.
//!
//! ```
//! use weightlift_format::{Checkpoint, Error};
//! use weightlift_tests::sllm_corpus::entries;
//!
//! let dir = std::env::temp_dir().join(format!("wl-sllm-doc-{}", std::process::id()));
//! for e in entries() {
//!     let at = dir.join(e.name);
//!     e.write(&at)?;
//!     assert!(e.expect.matches(&Checkpoint::open(&at), &at), "{}", e.name);
//! }
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! [`Checkpoint::open`]: weightlift_format::Checkpoint::open

use std::fmt::Write as _;
use std::path::Path;

use weightlift_format::{Checkpoint, Error, SllmError};

/// One checkpoint directory of the corpus.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The directory's name.
    pub name: &'static str,
    /// The bytes of `tensor_index.json`.
    pub index: Vec<u8>,
    /// `tensor.data_<n>` for each `n`: its bytes, or `None` where that
    /// partition is absent.
    pub partitions: Vec<Option<Vec<u8>>>,
    /// What opening the directory must give.
    pub expect: Expect,
    /// What is hostile (or unusual) about it, in one line.
    pub why: &'static str,
}

impl Entry {
    /// Write the directory at `dir` (created if needed), removing any other
    /// file there.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("tensor_index.json"), &self.index)?;
        for (i, p) in self.partitions.iter().enumerate() {
            if let Some(bytes) = p {
                std::fs::write(dir.join(format!("tensor.data_{i}")), bytes)?;
            }
        }
        Ok(())
    }
}

/// What opening a corpus directory must give: a valid checkpoint, or one
/// [`SllmError`] variant with the fields that identify the fault (file
/// names of partitions as the last component; parser messages not
/// compared).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Expect {
    /// Valid, with this many tensors.
    Valid {
        tensors: usize,
    },
    NotUtf8 {
        offset: u64,
    },
    Json,
    InvalidEntry {
        tensor: &'static str,
    },
    DuplicateTensor {
        tensor: &'static str,
    },
    UnknownDtype {
        tensor: &'static str,
        dtype: &'static str,
    },
    ShapeOverflow {
        tensor: &'static str,
    },
    StrideRank {
        tensor: &'static str,
    },
    NotContiguous {
        tensor: &'static str,
    },
    SizeMismatch {
        tensor: &'static str,
        expected: u64,
        found: u64,
    },
    Overlap {
        tensor: &'static str,
        previous: &'static str,
    },
    PastPartitions {
        tensor: &'static str,
        end: u64,
        total: u64,
    },
    SpansPartitions {
        tensor: &'static str,
        partition: &'static str,
    },
    MissingPartition {
        tensor: &'static str,
    },
    PartitionGap {
        missing: &'static str,
        found: &'static str,
    },
}

impl Expect {
    /// Whether the directory must be rejected.
    pub fn is_error(&self) -> bool {
        !matches!(self, Expect::Valid { .. })
    }

    /// Whether `result`, of opening the directory `dir`, is exactly what
    /// this expectation names (an error must name `dir/tensor_index.json`).
    pub fn matches(&self, result: &Result<Checkpoint, Error>, dir: &Path) -> bool {
        let e = match result {
            Ok(c) => return matches!(self, Expect::Valid { tensors } if *tensors == c.len()),
            Err(Error::Sllm { file, source }) if *file == dir.join("tensor_index.json") => source,
            Err(_) => return false,
        };
        let name = |p: &Path| {
            p.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_owned()
        };
        use Expect as X;
        use SllmError as S;
        match (self, e) {
            (X::NotUtf8 { offset }, S::NotUtf8 { offset: o }) => offset == o,
            (X::Json, S::Json { .. }) => true,
            (X::InvalidEntry { tensor }, S::InvalidEntry { tensor: t, .. })
            | (X::DuplicateTensor { tensor }, S::DuplicateTensor { tensor: t })
            | (X::ShapeOverflow { tensor }, S::ShapeOverflow { tensor: t, .. })
            | (X::StrideRank { tensor }, S::StrideRank { tensor: t, .. })
            | (X::NotContiguous { tensor }, S::NotContiguous { tensor: t, .. })
            | (X::MissingPartition { tensor }, S::MissingPartition { tensor: t, .. }) => {
                tensor == t
            }
            (
                X::UnknownDtype { tensor, dtype },
                S::UnknownDtype {
                    tensor: t,
                    dtype: d,
                },
            ) => tensor == t && dtype == d,
            (
                X::SizeMismatch {
                    tensor,
                    expected,
                    found,
                },
                S::SizeMismatch {
                    tensor: t,
                    expected: x,
                    found: f,
                },
            ) => tensor == t && (expected, found) == (x, f),
            (
                X::Overlap { tensor, previous },
                S::Overlap {
                    tensor: t,
                    previous: p,
                    ..
                },
            ) => tensor == t && previous == p,
            (
                X::PastPartitions { tensor, end, total },
                S::PastPartitions {
                    tensor: t,
                    end: e,
                    total: n,
                    ..
                },
            ) => tensor == t && (end, total) == (e, n),
            (
                X::SpansPartitions { tensor, partition },
                S::SpansPartitions {
                    tensor: t,
                    partition: p,
                    ..
                },
            ) => tensor == t && *partition == name(p),
            (
                X::PartitionGap { missing, found },
                S::PartitionGap {
                    missing: m,
                    found: f,
                },
            ) => *missing == name(m) && *found == name(f),
            _ => false,
        }
    }

    /// The tensor the expected error names, if any.
    pub fn tensor(&self) -> Option<&'static str> {
        use Expect::*;
        match self {
            InvalidEntry { tensor }
            | DuplicateTensor { tensor }
            | UnknownDtype { tensor, .. }
            | ShapeOverflow { tensor }
            | StrideRank { tensor }
            | NotContiguous { tensor }
            | SizeMismatch { tensor, .. }
            | Overlap { tensor, .. }
            | PastPartitions { tensor, .. }
            | SpansPartitions { tensor, .. }
            | MissingPartition { tensor } => Some(tensor),
            _ => None,
        }
    }
}

/// One partition of `len` bytes, each byte its offset's low bits.
fn part(len: usize) -> Option<Vec<u8>> {
    Some((0..len).map(|i| (i % 251) as u8).collect())
}

/// Every directory of the corpus, in a fixed order; names are unique.
pub fn entries() -> Vec<Entry> {
    fn add(
        v: &mut Vec<Entry>,
        name: &'static str,
        index: impl AsRef<[u8]>,
        partitions: Vec<Option<Vec<u8>>>,
        expect: Expect,
        why: &'static str,
    ) {
        v.push(Entry {
            name,
            index: index.as_ref().to_vec(),
            partitions,
            expect,
            why,
        })
    }
    let mut v = Vec::new();
    let one = || vec![part(4096)];
    let u8s = |name: &str, offset: u64, n: u64| {
        format!(r#""{name}": [{offset}, {n}, [{n}], [1], "torch.uint8"]"#)
    };

    // --- Valid. ---
    add(
        &mut v,
        "valid-two-partitions",
        r#"{"a": [0, 8, [2, 2], [2, 1], "torch.bfloat16"], "b": [8, 4, [], [], "torch.float32"],
            "c": [4096, 16, [2], [1], "torch.int64"], "m": [4112, 3, [3], [1], "torch.bool"]}"#,
        vec![part(4096), part(4096)],
        Expect::Valid { tensors: 4 },
        "valid: tensors in two partitions, offsets into both laid end to end",
    );
    add(
        &mut v,
        "valid-tied-weights",
        r#"{"embed": [0, 64, [4, 8], [8, 1], "torch.float16"], "lm_head": [0, 64, [4, 8], [8, 1], "torch.float16"]}"#,
        one(),
        Expect::Valid { tensors: 2 },
        "valid: two names for one record, as ServerlessLLM writes tied weights",
    );
    add(
        &mut v,
        "valid-empty-and-size-one-strides",
        r#"{"e": [8, 0, [0, 3], [7, 9], "torch.float32"], "s": [0, 8, [1, 4], [99, 1], "torch.float16"], "end": [4096, 0, [0], [1], "torch.int8"]}"#,
        one(),
        Expect::Valid { tensors: 3 },
        "valid: an empty tensor (any strides), a size-1 dimension with any stride, an empty tensor at the very end",
    );
    add(
        &mut v,
        "valid-empty-index",
        "{}",
        vec![],
        Expect::Valid { tensors: 0 },
        "valid: an index of no tensors and no partitions",
    );

    // --- The index's text. ---
    add(
        &mut v,
        "index-not-utf8",
        b"{\"a\": [0, 1, [1], [1], \"torch.uint8\xff\"]}",
        one(),
        Expect::NotUtf8 { offset: 35 },
        "a byte that is not UTF-8 in a dtype",
    );
    add(
        &mut v,
        "index-empty-file",
        "",
        one(),
        Expect::Json,
        "an empty index file",
    );
    add(
        &mut v,
        "index-array",
        "[]",
        one(),
        Expect::Json,
        "an array, not an object",
    );
    add(
        &mut v,
        "index-truncated",
        r#"{"a": [0, 4, [4], [1], "torch.uint8"]"#,
        one(),
        Expect::Json,
        "the closing brace is missing",
    );
    add(
        &mut v,
        "index-trailing",
        r#"{"a": [0, 4, [4], [1], "torch.uint8"]} {}"#,
        one(),
        Expect::Json,
        "a second value after the object",
    );
    let deep = format!(
        "{{\"a\": [0, 4, {}{}, [1], \"torch.uint8\"]}}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    add(
        &mut v,
        "index-deep",
        deep,
        one(),
        Expect::InvalidEntry { tensor: "a" },
        "a shape nested 50,000 deep: an error, not a stack overflow",
    );

    // --- One entry. ---
    add(
        &mut v,
        "entry-four-fields",
        r#"{"a": [0, 4, [4], [1]]}"#,
        one(),
        Expect::InvalidEntry { tensor: "a" },
        "an entry without its dtype",
    );
    add(
        &mut v,
        "entry-six-fields",
        r#"{"a": [0, 4, [4], [1], "torch.uint8", 0]}"#,
        one(),
        Expect::InvalidEntry { tensor: "a" },
        "an entry with a sixth field",
    );
    add(
        &mut v,
        "entry-object",
        r#"{"a": {"offset": 0, "size": 4}}"#,
        one(),
        Expect::InvalidEntry { tensor: "a" },
        "an object where the list belongs",
    );
    add(
        &mut v,
        "offset-negative",
        r#"{"a": [-4096, 4, [4], [1], "torch.uint8"]}"#,
        one(),
        Expect::InvalidEntry { tensor: "a" },
        "a negative offset",
    );
    add(
        &mut v,
        "size-negative",
        r#"{"a": [0, -4, [4], [1], "torch.uint8"]}"#,
        one(),
        Expect::InvalidEntry { tensor: "a" },
        "a negative size",
    );
    add(
        &mut v,
        "dim-negative",
        r#"{"a": [0, 4, [-4], [1], "torch.uint8"]}"#,
        one(),
        Expect::InvalidEntry { tensor: "a" },
        "a negative dimension",
    );
    add(
        &mut v,
        "stride-negative",
        r#"{"a": [0, 4, [4], [-1], "torch.uint8"]}"#,
        one(),
        Expect::InvalidEntry { tensor: "a" },
        "a negative stride (a flipped view)",
    );
    add(
        &mut v,
        "offset-fraction",
        r#"{"a": [0.5, 4, [4], [1], "torch.uint8"]}"#,
        one(),
        Expect::InvalidEntry { tensor: "a" },
        "a fractional offset",
    );
    add(
        &mut v,
        "offset-beyond-u64",
        r#"{"a": [18446744073709551616, 4, [4], [1], "torch.uint8"]}"#,
        one(),
        Expect::InvalidEntry { tensor: "a" },
        "an offset of 2^64",
    );
    add(
        &mut v,
        "offset-plus-size-overflows",
        r#"{"a": [18446744073709551612, 8, [8], [1], "torch.uint8"]}"#,
        one(),
        Expect::InvalidEntry { tensor: "a" },
        "offset plus size past 2^64",
    );
    add(
        &mut v,
        "dtype-unknown",
        r#"{"a": [0, 4, [4], [1], "torch.float128"]}"#,
        one(),
        Expect::UnknownDtype {
            tensor: "a",
            dtype: "torch.float128",
        },
        "a dtype torch does not have",
    );
    add(
        &mut v,
        "dtype-safetensors-name",
        r#"{"a": [0, 4, [2], [1], "F16"]}"#,
        one(),
        Expect::UnknownDtype {
            tensor: "a",
            dtype: "F16",
        },
        "a safetensors dtype name, not torch's",
    );
    add(
        &mut v,
        "dtype-alias",
        r#"{"a": [0, 4, [2], [1], "torch.half"]}"#,
        one(),
        Expect::UnknownDtype {
            tensor: "a",
            dtype: "torch.half",
        },
        "an alias that str(dtype) never prints",
    );
    add(
        &mut v,
        "dtype-not-string",
        r#"{"a": [0, 4, [2], [1], 5]}"#,
        one(),
        Expect::InvalidEntry { tensor: "a" },
        "a number for the dtype",
    );
    add(
        &mut v,
        "duplicate-names",
        format!("{{{}, {}}}", u8s("a", 0, 4), u8s("a", 8, 4)),
        one(),
        Expect::DuplicateTensor { tensor: "a" },
        "a name given twice (a JSON map would keep one silently)",
    );
    add(
        &mut v,
        "shape-overflow",
        r#"{"a": [0, 4, [4294967296, 4294967296], [4294967296, 1], "torch.uint8"]}"#,
        one(),
        Expect::ShapeOverflow { tensor: "a" },
        "2^32 × 2^32 elements",
    );
    add(
        &mut v,
        "bytes-overflow",
        r#"{"a": [0, 4, [4611686018427387904], [1], "torch.float32"]}"#,
        one(),
        Expect::ShapeOverflow { tensor: "a" },
        "2^62 four-byte elements",
    );
    add(
        &mut v,
        "stride-rank",
        r#"{"a": [0, 4, [4], [1, 1], "torch.uint8"]}"#,
        one(),
        Expect::StrideRank { tensor: "a" },
        "two strides for one dimension",
    );
    add(
        &mut v,
        "stride-transposed",
        r#"{"a": [0, 6, [2, 3], [1, 2], "torch.uint8"]}"#,
        one(),
        Expect::NotContiguous { tensor: "a" },
        "a transposed (column-major) tensor",
    );
    add(
        &mut v,
        "stride-expanded",
        r#"{"a": [0, 3, [4, 3], [0, 1], "torch.uint8"]}"#,
        one(),
        Expect::NotContiguous { tensor: "a" },
        "a broadcast view (stride 0) over fewer bytes than its elements",
    );
    add(
        &mut v,
        "size-short",
        r#"{"a": [0, 4, [4], [1], "torch.float16"]}"#,
        one(),
        Expect::SizeMismatch {
            tensor: "a",
            expected: 8,
            found: 4,
        },
        "a record shorter than its tensor",
    );
    add(
        &mut v,
        "size-storage-larger",
        r#"{"a": [0, 64, [4], [1], "torch.float16"]}"#,
        one(),
        Expect::SizeMismatch {
            tensor: "a",
            expected: 8,
            found: 64,
        },
        "a record holding more than its tensor (a view of a larger storage)",
    );

    // --- Records and partitions. ---
    add(
        &mut v,
        "overlap",
        format!("{{{}, {}}}", u8s("a", 0, 16), u8s("b", 8, 16)),
        one(),
        Expect::Overlap {
            tensor: "b",
            previous: "a",
        },
        "a record starting inside another",
    );
    add(
        &mut v,
        "overlap-contained",
        format!("{{{}, {}}}", u8s("inner", 4, 4), u8s("outer", 0, 64)),
        one(),
        Expect::Overlap {
            tensor: "inner",
            previous: "outer",
        },
        "a record inside a longer one listed after it",
    );
    add(
        &mut v,
        "overlap-same-start",
        format!("{{{}, {}}}", u8s("a", 0, 8), u8s("b", 0, 16)),
        one(),
        Expect::Overlap {
            tensor: "b",
            previous: "a",
        },
        "two records at one offset with different sizes",
    );
    add(
        &mut v,
        "past-partitions",
        format!("{{{}}}", u8s("a", 4090, 16)),
        one(),
        Expect::PastPartitions {
            tensor: "a",
            end: 4106,
            total: 4096,
        },
        "a record ending past the last partition",
    );
    add(
        &mut v,
        "past-partitions-far",
        format!("{{{}}}", u8s("a", 1 << 40, 16)),
        one(),
        Expect::PastPartitions {
            tensor: "a",
            end: (1 << 40) + 16,
            total: 4096,
        },
        "a record a terabyte past the partitions",
    );
    add(
        &mut v,
        "partition-truncated",
        format!("{{{}, {}}}", u8s("a", 0, 4096), u8s("b", 4096, 4096)),
        vec![part(4096), part(100)],
        Expect::PastPartitions {
            tensor: "b",
            end: 8192,
            total: 4196,
        },
        "the second partition cut short",
    );
    add(
        &mut v,
        "spans-partitions",
        format!("{{{}}}", u8s("a", 4090, 16)),
        vec![part(4096), part(4096)],
        Expect::SpansPartitions {
            tensor: "a",
            partition: "tensor.data_0",
        },
        "a record running from one partition into the next",
    );
    add(
        &mut v,
        "no-partitions",
        format!("{{{}}}", u8s("a", 0, 16)),
        vec![],
        Expect::MissingPartition { tensor: "a" },
        "an index with tensors and no tensor.data_0",
    );
    add(
        &mut v,
        "partition-gap",
        format!("{{{}, {}}}", u8s("a", 0, 16), u8s("b", 8192, 16)),
        vec![part(4096), None, part(4096)],
        Expect::PartitionGap {
            missing: "tensor.data_1",
            found: "tensor.data_2",
        },
        "tensor.data_1 missing between tensor.data_0 and tensor.data_2",
    );
    add(
        &mut v,
        "partition-zero-missing",
        format!("{{{}}}", u8s("a", 0, 16)),
        vec![None, part(4096)],
        Expect::PartitionGap {
            missing: "tensor.data_0",
            found: "tensor.data_1",
        },
        "tensor.data_1 without tensor.data_0",
    );
    v
}

/// The text of `tests/corpus/sllm/README.md`: a table of every directory.
pub fn readme(entries: &[Entry]) -> String {
    let mut s = String::from(
        "# Hostile ServerlessLLM corpus\n\
         \n\
         Checkpoint directories in ServerlessLLM's layout (`tensor_index.json` and\n\
         `tensor.data_<n>` partitions) that `Checkpoint::open` must reject with exactly\n\
         the error named here, and a few unusual ones it must accept. They are\n\
         generated by `weightlift_tests::sllm_corpus::entries()`\n\
         (tests/src/sllm_corpus.rs); regenerate them and this README with\n\
         `cargo xtask corpus`. tests/tests/sllm_corpus.rs checks that they match the\n\
         generator byte for byte and that each gives its result. The seeds of the fuzz\n\
         target `fuzz/fuzz_targets/sllm.rs` (`fuzz/seeds/sllm`) were made from them.\n\
         \n\
         Do not edit these files by hand.\n\
         \n\
         | Directory | What is hostile about it | Must give |\n\
         |---|---|---|\n",
    );
    for e in entries {
        let expect = match &e.expect {
            Expect::Valid { tensors } => format!("Ok ({tensors} tensors)"),
            other => format!("`{other:?}`"),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(s, "| `{}` | {} | {} |", e.name, e.why, expect);
    }
    s
}

/// Write every entry under `dir` as `<name>/`, and `README.md`; remove any
/// other directory there, so that `dir` holds exactly the corpus.
pub fn write_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let entries = entries();
    for item in std::fs::read_dir(dir)? {
        let path = item?.path();
        let stale = path.is_dir()
            && !entries
                .iter()
                .any(|e| path.file_name().is_some_and(|n| *n == *e.name));
        if stale {
            std::fs::remove_dir_all(&path)?;
        }
    }
    for e in &entries {
        e.write(&dir.join(e.name))?;
    }
    std::fs::write(dir.join("README.md"), readme(&entries))
}
