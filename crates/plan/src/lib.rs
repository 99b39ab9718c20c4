//! Pure read planning: from a [`Checkpoint`], the tensors wanted and the
//! storage's geometry, the aligned reads to issue and where each read's bytes
//! belong.
//!
//! A [`ReadPlan`] lists, per file and in offset order, [`Extent`]s: reads
//! whose start and length are multiples of the alignment (so they can be
//! issued with `O_DIRECT`) and no longer than the maximum extent. Each extent
//! lists the [`Piece`]s it carries: which tensor, at which offset inside the
//! tensor, at which offset inside the extent, and how many bytes. Large
//! tensors are cut across extents; small neighbours share one; neighbours
//! separated by at most [`Geometry::merge_gap`] bytes are read in one extent
//! (reading through the gap is cheaper than a second request).
//!
//! Planning does no I/O and is deterministic. [`ReadPlan::split`] cuts a plan
//! into balanced shares for workers or ranks.
//!
//! ```
//! use std::path::PathBuf;
//! use weightlift_format::{encode_header, Checkpoint, Dtype, Header, TensorSpec};
//! use weightlift_plan::{plan, Geometry, Selection};
//!
//! let specs = [TensorSpec::new("a", Dtype::F32, [1000]), TensorSpec::new("b", Dtype::BF16, [3])];
//! let enc = encode_header(&specs, None)?;
//! let size = enc.bytes.len() as u64 + enc.data_len;
//! let mut file = enc.bytes;
//! file.resize(size as usize, 0);
//! let ckpt = Checkpoint::from_headers(vec![(PathBuf::from("m.safetensors"), size, Header::parse_file(&file)?)])?;
//!
//! let geometry = Geometry::new(512, 1024)?;
//! let plan = plan(&ckpt, &Selection::All, &geometry)?;
//! // 4006 data bytes after a small header, read in aligned chunks of at most 1 KiB.
//! assert!(plan.extents().iter().all(|e| e.offset % 512 == 0 && e.len <= 1024));
//! assert_eq!(plan.stats().payload_bytes, 4006);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod error;
mod share;

use std::collections::BTreeSet;
use std::fmt;
use std::mem::size_of;
use std::ops::Range;

pub use error::Error;
pub use share::Share;
use weightlift_format::{ByteRange, Checkpoint, FileId, TensorId};

/// How reads must be shaped for the storage they go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    alignment: u64,
    max_extent: u64,
    merge_gap: u64,
}

impl Geometry {
    /// Default maximum extent: large enough for full-bandwidth sequential
    /// reads, small enough to keep many in flight in a modest staging ring.
    pub const DEFAULT_MAX_EXTENT: u64 = 16 << 20;
    /// Default merge gap: below this, reading through unwanted bytes costs
    /// less than the latency of a separate request on SSDs.
    pub const DEFAULT_MERGE_GAP: u64 = 256 << 10;

    /// Reads aligned to `alignment` bytes (a power of two, such as 512 or
    /// 4096, the file system's direct I/O alignment) and at most
    /// `max_extent` bytes long (a non-zero multiple of `alignment`), with the
    /// default merge gap.
    pub fn new(alignment: u64, max_extent: u64) -> Result<Self, Error> {
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(Error::Geometry {
                field: "alignment",
                value: alignment,
                reason: "must be a power of two",
            });
        }
        if max_extent == 0 || !max_extent.is_multiple_of(alignment) {
            return Err(Error::Geometry {
                field: "max_extent",
                value: max_extent,
                reason: "must be a non-zero multiple of the alignment",
            });
        }
        Ok(Self {
            alignment,
            max_extent,
            merge_gap: Self::DEFAULT_MERGE_GAP,
        })
    }

    /// The same geometry, reading through gaps of up to `merge_gap` bytes
    /// between wanted tensors rather than issuing separate reads.
    pub fn with_merge_gap(mut self, merge_gap: u64) -> Self {
        self.merge_gap = merge_gap;
        self
    }

    /// Alignment of every extent's offset and length.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Largest extent length.
    pub fn max_extent(&self) -> u64 {
        self.max_extent
    }

    /// Largest gap read through to merge neighbouring tensors into one extent.
    pub fn merge_gap(&self) -> u64 {
        self.merge_gap
    }

    fn align_down(&self, x: u64) -> u64 {
        x & !(self.alignment - 1)
    }

    fn align_up(&self, x: u64) -> u64 {
        // `plan` rejects files within an extent of u64::MAX, so no overflow.
        self.align_down(x + (self.alignment - 1))
    }
}

impl Default for Geometry {
    /// 4096-byte alignment (right for direct I/O on every common file
    /// system), 16 MiB extents, a 256 KiB merge gap.
    fn default() -> Self {
        Self {
            alignment: 4096,
            max_extent: Self::DEFAULT_MAX_EXTENT,
            merge_gap: Self::DEFAULT_MERGE_GAP,
        }
    }
}

/// Which tensors to read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Selection {
    /// Every tensor of the checkpoint.
    #[default]
    All,
    /// The tensors with these names; naming a tensor the checkpoint lacks is
    /// an error.
    Names(BTreeSet<String>),
    /// The tensors with these ids.
    Ids(BTreeSet<TensorId>),
}

impl Selection {
    /// The tensors named by `names`.
    pub fn names<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Selection::Names(names.into_iter().map(Into::into).collect())
    }
}

/// Part of one tensor carried by an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Piece {
    /// The tensor.
    pub tensor: TensorId,
    /// Offset of these bytes inside the tensor.
    pub tensor_offset: u64,
    /// Offset of these bytes inside the extent's buffer.
    pub extent_offset: u64,
    /// Number of bytes.
    pub len: u64,
}

/// One aligned read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// The file to read.
    pub file: FileId,
    /// Offset in the file, a multiple of the alignment.
    pub offset: u64,
    /// Bytes to read, a multiple of the alignment, at most the maximum
    /// extent. The last extent of a file may reach past its end up to the
    /// next multiple of the alignment; a read there returns short.
    pub len: u64,
    pieces: Range<usize>,
}

impl Extent {
    /// The bytes of the file this extent reads.
    pub fn range(&self) -> ByteRange {
        ByteRange::new(self.offset, self.offset + self.len)
    }
}

/// The reads that load a selection of a checkpoint. See the crate docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    geometry: Geometry,
    extents: Vec<Extent>,
    pieces: Vec<Piece>,
    tensors: Vec<TensorId>,
}

/// Numbers that describe a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanStats {
    /// Tensors the plan delivers (in whole or, for a share, in part).
    pub tensors: usize,
    /// Files read.
    pub files: usize,
    /// Reads issued.
    pub extents: usize,
    /// Pieces delivered.
    pub pieces: usize,
    /// Tensor bytes delivered.
    pub payload_bytes: u64,
    /// Bytes read, including alignment padding and merged gaps.
    pub read_bytes: u64,
    /// The longest extent.
    pub largest_extent: u64,
}

impl fmt::Display for PlanStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let overhead = if self.payload_bytes == 0 {
            0.0
        } else {
            (self.read_bytes as f64 / self.payload_bytes as f64 - 1.0) * 100.0
        };
        write!(
            f,
            "{} tensors in {} files: {} extents carrying {} pieces; {} payload bytes, {} read ({overhead:.2}% overhead); largest extent {} bytes",
            self.tensors,
            self.files,
            self.extents,
            self.pieces,
            self.payload_bytes,
            self.read_bytes,
            self.largest_extent
        )
    }
}

/// Plan the reads that load `selection` of `ckpt` with `geometry`.
///
/// The plan's lists grow with the tensors selected, so they are asked for
/// fallibly: no room for them is [`Error::OutOfMemory`].
pub fn plan(
    ckpt: &Checkpoint,
    selection: &Selection,
    geometry: &Geometry,
) -> Result<ReadPlan, Error> {
    let selected = select(ckpt, selection)?;
    let mut pieces = Vec::new();
    if pieces.try_reserve_exact(selected.len()).is_err() {
        return Err(out_of_memory(
            ckpt,
            selected.first().copied(),
            selected.len(),
        ));
    }
    let mut out = ReadPlan {
        geometry: *geometry,
        extents: Vec::new(),
        pieces,
        tensors: selected,
    };
    // `selected` is in file order (ids are), so each file's tensors are a
    // contiguous run of it.
    let mut rest = &out.tensors[..];
    while let Some(&first) = rest.first() {
        let file = ckpt.tensor(first).file;
        // Aligned ends and extent ends must fit in 64 bits. Real files are far
        // smaller; a custom file system could claim otherwise.
        let shard = ckpt.shard(file);
        if shard.size() > u64::MAX - geometry.max_extent - geometry.alignment {
            return Err(Error::FileTooLarge {
                file: shard.path().to_path_buf(),
                size: shard.size(),
            });
        }
        let n = rest
            .iter()
            .position(|&id| ckpt.tensor(id).file != file)
            .unwrap_or(rest.len());
        let (these, tail) = rest.split_at(n);
        let planned = plan_file(
            ckpt,
            file,
            these,
            geometry,
            &mut out.extents,
            &mut out.pieces,
        );
        if planned.is_err() {
            return Err(out_of_memory(ckpt, Some(first), out.tensors.len()));
        }
        rest = tail;
    }
    Ok(out)
}

/// No memory for a list of the plan.
struct Full;

/// Push `item`, asking for any growth fallibly.
fn push<T>(list: &mut Vec<T>, item: T) -> Result<(), Full> {
    list.try_reserve(1).map_err(|_| Full)?;
    list.push(item);
    Ok(())
}

/// The error for no room for a plan of `tensors` tensors, `first` the
/// first of them if known: about its size, naming the first file it reads
/// (or the checkpoint's first).
fn out_of_memory(ckpt: &Checkpoint, first: Option<TensorId>, tensors: usize) -> Error {
    let file = match first {
        Some(id) => ckpt.shard(ckpt.tensor(id).file).path().to_path_buf(),
        None => ckpt
            .shards()
            .first()
            .map(|s| s.path().to_path_buf())
            .unwrap_or_default(),
    };
    // Each tensor is listed, carried by a piece or more, and read by an
    // extent at most.
    let each = size_of::<TensorId>() + size_of::<Piece>() + size_of::<Extent>();
    Error::OutOfMemory {
        file,
        tensors,
        bytes: tensors.saturating_mul(each) as u64,
    }
}

fn select(ckpt: &Checkpoint, selection: &Selection) -> Result<Vec<TensorId>, Error> {
    // Checkpoints number their tensors with u32.
    let count = u32::try_from(ckpt.len()).unwrap_or(u32::MAX);
    let mut ids = Vec::new();
    let len = match selection {
        Selection::All => count as usize,
        Selection::Names(names) => names.len(),
        Selection::Ids(set) => set.len(),
    };
    if ids.try_reserve_exact(len).is_err() {
        return Err(out_of_memory(ckpt, None, len));
    }
    match selection {
        Selection::All => ids.extend((0..count).map(TensorId)),
        Selection::Names(names) => {
            for n in names {
                let id = ckpt
                    .id(n)
                    .ok_or_else(|| Error::UnknownTensor { name: n.clone() })?;
                ids.push(id);
            }
            ids.sort_unstable();
        }
        Selection::Ids(set) => {
            if let Some(&bad) = set.iter().find(|id| id.0 >= count) {
                return Err(Error::UnknownId { id: bad, count });
            }
            ids.extend(set.iter().copied());
        }
    }
    Ok(ids)
}

/// Plan one file's reads. `ids` are this file's selected tensors in offset order.
fn plan_file(
    ckpt: &Checkpoint,
    file: FileId,
    ids: &[TensorId],
    g: &Geometry,
    extents: &mut Vec<Extent>,
    pieces: &mut Vec<Piece>,
) -> Result<(), Full> {
    let mut i = 0;
    while i < ids.len() {
        // Skip empty tensors: they have no bytes to read.
        if ckpt.tensor(ids[i]).is_empty() {
            i += 1;
            continue;
        }
        // Grow a run of neighbours whose aligned ranges touch or whose gap is
        // small enough to read through.
        let run_start = i;
        let mut run = ByteRange::new(
            g.align_down(ckpt.tensor(ids[i]).range.start),
            g.align_up(ckpt.tensor(ids[i]).range.end),
        );
        i += 1;
        while i < ids.len() {
            let t = ckpt.tensor(ids[i]);
            if t.is_empty() {
                i += 1;
                continue;
            }
            let start = g.align_down(t.range.start);
            if start > run.end.saturating_add(g.merge_gap) {
                break;
            }
            run.end = run.end.max(g.align_up(t.range.end));
            i += 1;
        }
        cut_run(ckpt, file, &ids[run_start..i], run, g, extents, pieces)?;
    }
    Ok(())
}

/// Cut an aligned run into extents of at most `max_extent` bytes and
/// record the pieces each carries. `ids` are the run's tensors in offset order.
fn cut_run(
    ckpt: &Checkpoint,
    file: FileId,
    ids: &[TensorId],
    run: ByteRange,
    g: &Geometry,
    extents: &mut Vec<Extent>,
    pieces: &mut Vec<Piece>,
) -> Result<(), Full> {
    // `next` is the first tensor that may still have bytes at or after the
    // current extent's start.
    let mut next = 0;
    let mut offset = run.start;
    while offset < run.end {
        let end = run.end.min(offset + g.max_extent);
        let first_piece = pieces.len();
        let mut j = next;
        while j < ids.len() {
            let t = ckpt.tensor(ids[j]);
            if t.range.start >= end {
                break;
            }
            let lo = t.range.start.max(offset);
            let hi = t.range.end.min(end);
            if lo < hi {
                push(
                    pieces,
                    Piece {
                        tensor: ids[j],
                        tensor_offset: lo - t.range.start,
                        extent_offset: lo - offset,
                        len: hi - lo,
                    },
                )?;
            }
            if t.range.end <= end {
                // Finished inside this extent: later extents need not look at it.
                if j == next {
                    next += 1;
                }
            }
            j += 1;
        }
        // A merged gap longer than an extent leaves chunks that carry
        // nothing: skip them rather than read them.
        if pieces.len() > first_piece {
            push(
                extents,
                Extent {
                    file,
                    offset,
                    len: end - offset,
                    pieces: first_piece..pieces.len(),
                },
            )?;
        }
        offset = end;
    }
    Ok(())
}

impl ReadPlan {
    /// The geometry the plan was made for.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The reads, by file and then by offset.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// The pieces an extent of this plan carries, in offset order.
    ///
    /// Panics if `extent` is not an element of this plan's
    /// [`extents`](ReadPlan::extents) (an extent of a share, say, indexes
    /// that share's pieces). [`iter`](ReadPlan::iter) pairs them without
    /// that hazard.
    pub fn pieces(&self, extent: &Extent) -> &[Piece] {
        assert!(
            self.extents
                .as_ptr_range()
                .contains(&std::ptr::from_ref(extent)),
            "ReadPlan::pieces: the extent belongs to another plan"
        );
        &self.pieces[extent.pieces.clone()]
    }

    /// Each extent with the pieces it carries, by file and then by offset.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Extent, &[Piece])> {
        self.extents
            .iter()
            .map(|e| (e, &self.pieces[e.pieces.clone()]))
    }

    /// Every piece of the plan, extent by extent.
    pub fn all_pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The tensors this plan delivers, in file order, including empty ones
    /// (which have no pieces). A tensor is complete when pieces totalling its
    /// length have landed. In a share, a tensor may be delivered only in part.
    pub fn tensors(&self) -> &[TensorId] {
        &self.tensors
    }

    /// The extents of one file, in offset order.
    pub fn extents_of(&self, file: FileId) -> &[Extent] {
        let lo = self.extents.partition_point(|e| e.file < file);
        let hi = self.extents.partition_point(|e| e.file <= file);
        &self.extents[lo..hi]
    }

    /// Numbers describing the plan.
    pub fn stats(&self) -> PlanStats {
        let mut files = 0;
        let mut last = None;
        for e in &self.extents {
            if last != Some(e.file) {
                files += 1;
                last = Some(e.file);
            }
        }
        PlanStats {
            tensors: self.tensors.len(),
            files,
            extents: self.extents.len(),
            pieces: self.pieces.len(),
            payload_bytes: self
                .pieces
                .iter()
                .fold(0u64, |acc, p| acc.saturating_add(p.len)),
            read_bytes: self.read_bytes(),
            largest_extent: self.extents.iter().map(|e| e.len).max().unwrap_or(0),
        }
    }

    /// Total bytes read by the plan's extents (saturating).
    pub fn read_bytes(&self) -> u64 {
        self.extents
            .iter()
            .fold(0u64, |acc, e| acc.saturating_add(e.len))
    }
}
