//! A checkpoint: the tensors of one or more safetensors shards.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::fs::{FileAt, Fs, Stamp, StdFs, read_full_at};
use crate::header::{FIRST_READ_LEN, Metadata, memory_estimate};
use crate::index::{INDEX_SUFFIX, IndexFile, read_index};
use crate::sllm::{SLLM_INDEX, SLLM_PARTITION_PREFIX, SllmIndex, partition_number};
use crate::{
    ByteRange, Dtype, Error, FileId, Header, HeaderError, PREFIX_LEN, Parsed, SllmError, TensorId,
};

/// One shard (file) of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    path: PathBuf,
    size: u64,
    data_start: u64,
    metadata: Option<Metadata>,
    tensors: Range<usize>,
    stamp: Option<Stamp>,
    has_header: bool,
}

impl Shard {
    /// The file's path, as given or as resolved against an index's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes when its header was read.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Absolute offset of the data section (the length prefix plus the
    /// header); 0 for a file without a header (a ServerlessLLM partition).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The length of the file's safetensors header as its 8-byte prefix
    /// states it, or `None` for a file that has no header (a ServerlessLLM
    /// partition, whose tensors' bytes are all it holds).
    pub fn header_len(&self) -> Option<u64> {
        self.has_header
            .then(|| self.data_start - crate::PREFIX_LEN as u64)
    }

    /// A shard without a header, its tensors set later.
    pub(crate) fn raw(path: PathBuf, size: u64) -> Shard {
        Shard {
            path,
            size,
            data_start: 0,
            metadata: None,
            tensors: 0..0,
            stamp: None,
            has_header: false,
        }
    }

    pub(crate) fn set_tensors(&mut self, tensors: Range<usize>) {
        self.tensors = tensors;
    }

    /// The version of the file its header was read from, where the
    /// [`Fs`] it was opened through gives one ([`Checkpoint::from_headers`]
    /// knows none). A reader compares it with the file it opens, and with
    /// that file again after reading, to know it read this version.
    pub fn stamp(&self) -> Option<&Stamp> {
        self.stamp.as_ref()
    }

    /// This shard's own `__metadata__`.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// The ids of this shard's tensors, in offset order.
    pub fn tensor_ids(&self) -> impl ExactSizeIterator<Item = TensorId> + use<> {
        // Checkpoint construction bounds tensor counts by u32::MAX.
        self.tensors.clone().map(|i| TensorId(i as u32))
    }
}

/// A tensor of a checkpoint, located in its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// The tensor's name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first. Empty for a scalar.
    pub shape: Vec<u64>,
    /// The shard that holds it.
    pub file: FileId,
    /// Its bytes, as absolute offsets in the shard's file.
    pub range: ByteRange,
}

impl Tensor {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.range.len()
    }

    /// Whether the tensor holds no bytes (a dimension is 0).
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The bytes of rows `rows` along the first dimension, as offsets
    /// inside the tensor; `None` for a scalar, for rows beyond the first
    /// dimension, and where a row is not a whole number of bytes (4- and
    /// 6-bit dtypes).
    ///
    /// ```
    /// # use weightlift_format::{Checkpoint, Dtype, Header, Parsed, TensorSpec, encode_header};
    /// let enc = encode_header(&[TensorSpec::new("w", Dtype::BF16, [4, 3])], None)?;
    /// let size = enc.bytes.len() as u64 + enc.data_len;
    /// let Parsed::Complete(header) = Header::parse(&enc.bytes, size)? else { unreachable!() };
    /// let ckpt = Checkpoint::from_headers(vec![("m.safetensors".into(), size, header)])?;
    /// let w = ckpt.find("w").unwrap();
    /// assert_eq!(w.rows(1..3), Some(6..18)); // two rows of three 2-byte elements
    /// assert_eq!(w.rows(3..5), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rows(&self, rows: std::ops::Range<u64>) -> Option<std::ops::Range<u64>> {
        let (&first, rest) = self.shape.split_first()?;
        if rows.start > rows.end || rows.end > first {
            return None;
        }
        let per_row = rest.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
        let row_bits = per_row.checked_mul(u64::from(self.dtype.bits()))?;
        if !row_bits.is_multiple_of(8) {
            return None;
        }
        let row = row_bits / 8;
        Some(rows.start.checked_mul(row)?..rows.end.checked_mul(row)?)
    }
}

/// Where a checkpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One path: a `.safetensors` file, a directory, or an index file
    /// (a name ending in `.json`, such as `model.safetensors.index.json`).
    ///
    /// A directory holding exactly one `*.safetensors.index.json` is opened
    /// through that index (so a `consolidated.safetensors` beside the shards
    /// is left alone); otherwise, one holding a `tensor_index.json` beside
    /// `tensor.data_<n>` files is a ServerlessLLM checkpoint (see
    /// [`Checkpoint::from_sllm`]); otherwise it is every `*.safetensors`
    /// file in it, in name order (or, when there is none, a ServerlessLLM
    /// checkpoint missing its partitions if it has a `tensor_index.json`).
    /// Several index files in one directory are an error. A file named
    /// `tensor_index.json` opens the ServerlessLLM checkpoint beside it.
    Path(PathBuf),
    /// These `.safetensors` files, in this order.
    Files(Vec<PathBuf>),
}

/// The tensors of one or more safetensors shards, validated and indexed.
///
/// Every shard's header was checked with [`Header::parse`]; no tensor name is
/// in two shards; when an index was used, its `weight_map` agrees with the
/// headers. Tensors are numbered by [`TensorId`] in file order: shard by
/// shard, then by offset.
///
/// ```no_run
/// use weightlift_format::Checkpoint;
///
/// let ckpt = Checkpoint::open("model.safetensors.index.json")?;
/// let embed = ckpt.find("model.embed_tokens.weight").expect("present");
/// println!("{} bytes in {} shards; embedding {:?} {}", ckpt.total_bytes(),
///          ckpt.shards().len(), embed.shape, embed.dtype);
/// # Ok::<(), weightlift_format::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Checkpoint {
    shards: Vec<Shard>,
    tensors: Vec<Tensor>,
    by_name: HashMap<String, TensorId>,
    metadata: Option<Metadata>,
    index: Option<PathBuf>,
}

/// A shard's path, size and parsed header: the input of [`Checkpoint::from_headers`].
pub type ShardHeader = (PathBuf, u64, Header);

impl Checkpoint {
    /// Open a `.safetensors` file, a directory of them, or an index file.
    /// See [`Source::Path`] for how a directory is read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_in(&StdFs, &Source::Path(path.as_ref().to_path_buf()))
    }

    /// Open these `.safetensors` files as one checkpoint.
    pub fn open_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self, Error> {
        let paths = paths.iter().map(|p| p.as_ref().to_path_buf()).collect();
        Self::open_in(&StdFs, &Source::Files(paths))
    }

    /// Open a checkpoint through any [`Fs`]. Shards' headers are read in parallel.
    pub fn open_in(fs: &dyn Fs, source: &Source) -> Result<Self, Error> {
        match source {
            Source::Files(paths) => from_read(read_headers(fs, paths)?),
            Source::Path(path) => {
                let io = |source| Error::Io {
                    file: path.clone(),
                    source,
                };
                if fs.is_dir(path).map_err(io)? {
                    open_dir(fs, path)
                } else if path.file_name().is_some_and(|n| n == SLLM_INDEX) {
                    open_sllm(fs, path, None)
                } else if path.extension().is_some_and(|e| e == "json") {
                    open_index(fs, path)
                } else {
                    from_read(read_headers(fs, std::slice::from_ref(path))?)
                }
            }
        }
    }

    /// Assemble a checkpoint from headers already read. Pure: does no I/O.
    ///
    /// Fails when a file is given twice, when a tensor name is in two shards,
    /// when a header does not fit its file's size, or when there is no
    /// memory for the tables of tensors ([`HeaderError::OutOfMemory`],
    /// naming the shard that did not fit).
    pub fn from_headers(shards: Vec<ShardHeader>) -> Result<Self, Error> {
        let mut out = Checkpoint {
            shards: Vec::with_capacity(shards.len()),
            tensors: Vec::new(),
            by_name: HashMap::new(),
            metadata: None,
            index: None,
        };
        // The tables grow with the tensors, so they are asked for fallibly:
        // all at once where that fits, else shard by shard below, so that
        // the shard that does not fit is the one named.
        let total = shards.iter().map(|s| s.2.tensors().len()).sum();
        if out.tensors.try_reserve_exact(total).is_ok() {
            let _ = out.by_name.try_reserve(total);
        }
        let mut paths = std::collections::HashSet::new();
        for (path, size, header) in shards {
            if !paths.insert(path.clone()) {
                return Err(Error::DuplicateFile { file: path });
            }
            let file = FileId(u32::try_from(out.shards.len()).map_err(|_| Error::TooMany {
                file: path.clone(),
                what: "shards",
            })?);
            let data_start = header.data_start();
            let mismatch = match data_start.checked_add(header.data_len()) {
                Some(expected_size) if expected_size == size => None,
                Some(expected_size) => Some(HeaderError::DataSizeMismatch {
                    expected_size,
                    file_size: size,
                }),
                None => Some(HeaderError::DataTooLarge {
                    data_len: header.data_len(),
                }),
            };
            if let Some(source) = mismatch {
                return Err(Error::Header { file: path, source });
            }
            let header_len = header.header_len();
            let out_of_memory = |file: PathBuf| Error::Header {
                file,
                source: HeaderError::OutOfMemory {
                    header_len,
                    needed: memory_estimate(header_len),
                },
            };
            let n = header.tensors().len();
            if out.tensors.try_reserve(n).is_err() || out.by_name.try_reserve(n).is_err() {
                return Err(out_of_memory(path));
            }
            let first = out.tensors.len();
            let (infos, metadata) = header.into_parts();
            for info in infos {
                let id =
                    TensorId(
                        u32::try_from(out.tensors.len()).map_err(|_| Error::TooMany {
                            file: path.clone(),
                            what: "tensors",
                        })?,
                    );
                let Some(key) = try_clone(&info.name) else {
                    return Err(out_of_memory(path));
                };
                match out.by_name.entry(key) {
                    Entry::Occupied(prev) => {
                        let prev_file = out.tensors[prev.get().index()].file;
                        return Err(Error::DuplicateTensor {
                            tensor: info.name,
                            first: out.shards[prev_file.index()].path.clone(),
                            second: path,
                        });
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(id);
                    }
                }
                // In range: data_start + data.end <= size, checked above.
                let range =
                    ByteRange::new(data_start + info.data.start, data_start + info.data.end);
                out.tensors.push(Tensor {
                    name: info.name,
                    dtype: info.dtype,
                    shape: info.shape,
                    file,
                    range,
                });
            }
            if let Some(m) = &metadata {
                let merged = out.metadata.get_or_insert_with(Metadata::new);
                for (k, v) in m {
                    merged.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            out.shards.push(Shard {
                path,
                size,
                data_start,
                metadata,
                tensors: first..out.tensors.len(),
                stamp: None,
                has_header: true,
            });
        }
        Ok(out)
    }

    /// The shards, in the order given (by name for a directory or an index).
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// One shard. Panics if `id` is not one of this checkpoint's.
    pub fn shard(&self, id: FileId) -> &Shard {
        &self.shards[id.index()]
    }

    /// Every tensor in file order (shard by shard, by offset); the position
    /// of a tensor in this slice is its [`TensorId`].
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// One tensor by id. Panics if `id` is not one of this checkpoint's
    /// (ids come from [`Checkpoint::id`] or a plan of this checkpoint).
    pub fn tensor(&self, id: TensorId) -> &Tensor {
        &self.tensors[id.index()]
    }

    /// The id of the tensor called `name`.
    pub fn id(&self, name: &str) -> Option<TensorId> {
        self.by_name.get(name).copied()
    }

    /// The tensor called `name`.
    pub fn find(&self, name: &str) -> Option<&Tensor> {
        self.id(name).map(|id| self.tensor(id))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total bytes of all tensors (saturating: shards on a custom [`Fs`]
    /// may describe more than 2^64 bytes together).
    pub fn total_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |acc, t| acc.saturating_add(t.len()))
    }

    /// The shards' `__metadata__` merged: every key of every shard, with the
    /// value of the first shard (in order) that has the key. `None` when no
    /// shard has metadata. Each shard's own is in [`Shard::metadata`].
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// The tensor before `id` whose bytes `id` shares, if any: two names
    /// for one record, as a ServerlessLLM checkpoint writes tied weights
    /// (a safetensors header cannot). Such tensors are neighbours in
    /// [`TensorId`] order. Empty tensors share no bytes.
    pub fn alias_of(&self, id: TensorId) -> Option<TensorId> {
        let t = self.tensors.get(id.index())?;
        let prev = TensorId(id.0.checked_sub(1)?);
        let p = &self.tensors[prev.index()];
        (!t.is_empty() && p.file == t.file && p.range == t.range).then_some(prev)
    }

    /// The index file the checkpoint was opened through, if any: a
    /// `model.safetensors.index.json`, or a ServerlessLLM checkpoint's
    /// `tensor_index.json`.
    pub fn index_path(&self) -> Option<&Path> {
        self.index.as_deref()
    }

    /// Whether this is a ServerlessLLM checkpoint (its shards are the data
    /// partitions, without headers).
    pub fn is_sllm(&self) -> bool {
        self.shards.first().is_some_and(|s| !s.has_header)
            || self
                .index
                .as_deref()
                .is_some_and(|p| p.file_name().is_some_and(|n| n == SLLM_INDEX))
    }

    /// A checkpoint from parts already checked (by [`Checkpoint::from_sllm`]).
    pub(crate) fn assembled(
        shards: Vec<Shard>,
        tensors: Vec<Tensor>,
        by_name: HashMap<String, TensorId>,
        index: Option<PathBuf>,
    ) -> Checkpoint {
        Checkpoint {
            shards,
            tensors,
            by_name,
            metadata: None,
            index,
        }
    }
}

/// A shard's header as read, with the version of the file it was read from.
type ReadHeader = (ShardHeader, Option<Stamp>);

/// Assemble a checkpoint from headers read through an [`Fs`], keeping each
/// file's stamp.
fn from_read(read: Vec<ReadHeader>) -> Result<Checkpoint, Error> {
    let (headers, stamps): (Vec<ShardHeader>, Vec<Option<Stamp>>) = read.into_iter().unzip();
    let mut ckpt = Checkpoint::from_headers(headers)?;
    for (shard, stamp) in ckpt.shards.iter_mut().zip(stamps) {
        shard.stamp = stamp;
    }
    Ok(ckpt)
}

/// A copy of `s`, or `None` when there is no memory for it.
fn try_clone(s: &str) -> Option<String> {
    let mut out = String::new();
    out.try_reserve_exact(s.len()).ok()?;
    out.push_str(s);
    Some(out)
}

/// Read and parse the headers of `paths`, in parallel when there are several.
fn read_headers(fs: &dyn Fs, paths: &[PathBuf]) -> Result<Vec<ReadHeader>, Error> {
    const MAX_THREADS: usize = 16;
    let threads = paths.len().min(MAX_THREADS);
    if threads <= 1 {
        return paths.iter().map(|p| read_header(fs, p)).collect();
    }
    let mut results: Vec<Option<Result<ReadHeader, Error>>> = Vec::new();
    results.resize_with(paths.len(), || None);
    // After a failure the other threads stop early. A slot is left empty
    // only then, so no error means every shard was read; with errors, the
    // first one in shard order among those read is reported.
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let chunk = paths.len().div_ceil(threads);
        let mut handles = Vec::with_capacity(threads);
        for (paths, out) in paths.chunks(chunk).zip(results.chunks_mut(chunk)) {
            let failed = &failed;
            handles.push(s.spawn(move || {
                for (p, slot) in paths.iter().zip(out) {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let r = read_header(fs, p);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    *slot = Some(r);
                }
            }));
        }
        // Join each thread explicitly: unlike the scope's own wait, a join
        // returns only once the thread has exited, so none outlives the call.
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    let mut out = Vec::with_capacity(paths.len());
    let mut first_error = None;
    for r in results {
        match r {
            Some(Ok(h)) => out.push(h),
            Some(Err(e)) => {
                first_error.get_or_insert(e);
            }
            None => {}
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Read one file's header: one read of the first [`FIRST_READ_LEN`] bytes,
/// and a second only when the header is longer.
fn read_header(fs: &dyn Fs, path: &Path) -> Result<ReadHeader, Error> {
    let io = |source| Error::Io {
        file: path.to_path_buf(),
        source,
    };
    let bad = |source| Error::Header {
        file: path.to_path_buf(),
        source,
    };
    let changed = || Error::Changed {
        file: path.to_path_buf(),
    };
    let file = fs.open(path).map_err(io)?;
    let stamp = file.stamp().map_err(io)?;
    let size = file.size().map_err(io)?;
    let first = (size.min(FIRST_READ_LEN as u64)) as usize;
    let mut buf = vec![0u8; first];
    if !read_full_at(&*file, &mut buf, 0).map_err(io)? {
        return Err(changed());
    }
    let header = match Header::parse(&buf, size).map_err(bad)? {
        Parsed::Complete(h) => h,
        Parsed::NeedMore { total } => {
            // `total` is bounded by the format's header limit and the file
            // size, and still may be more than the process can have.
            let have = buf.len();
            if buf.try_reserve_exact(total - have).is_err() {
                let header_len = (total - PREFIX_LEN) as u64;
                return Err(bad(HeaderError::OutOfMemory {
                    header_len,
                    needed: header_len + memory_estimate(header_len),
                }));
            }
            buf.resize(total, 0);
            if !read_full_at(&*file, &mut buf[have..], have as u64).map_err(io)? {
                return Err(changed());
            }
            match Header::parse(&buf, size).map_err(bad)? {
                Parsed::Complete(h) => h,
                Parsed::NeedMore { .. } => return Err(changed()),
            }
        }
    };
    if file.size().map_err(io)? != size {
        return Err(changed());
    }
    // The same version from before the first read to after the last.
    if let Some(before) = &stamp {
        match file.stamp().map_err(io)? {
            Some(after) if before.change(&after).is_none() => {}
            _ => return Err(changed()),
        }
    }
    Ok(((path.to_path_buf(), size, header), stamp))
}

fn open_dir(fs: &dyn Fs, dir: &Path) -> Result<Checkpoint, Error> {
    let entries = fs.list_dir(dir).map_err(|source| Error::Io {
        file: dir.to_path_buf(),
        source,
    })?;
    // Names are bytes: a shard whose name is not UTF-8 is still a shard.
    let name_ends = |p: &Path, suffix: &str| {
        p.file_name().is_some_and(|n| {
            let n = n.as_encoded_bytes();
            n.ends_with(suffix.as_bytes()) && n.len() > suffix.len()
        })
    };
    let mut indexes: Vec<PathBuf> = entries
        .iter()
        .filter(|p| name_ends(p, INDEX_SUFFIX))
        .cloned()
        .collect();
    indexes.sort();
    match indexes.len() {
        0 => {}
        1 => return open_index(fs, &indexes[0]),
        _ => {
            return Err(Error::AmbiguousIndex {
                dir: dir.to_path_buf(),
                found: indexes,
            });
        }
    }
    // A ServerlessLLM checkpoint: its index beside its partitions.
    let is_named = |p: &Path, name: &str| p.file_name().is_some_and(|n| n == name);
    let sllm_index = entries.iter().find(|p| is_named(p, SLLM_INDEX)).cloned();
    if let Some(index) = &sllm_index {
        let partitioned = entries.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| partition_number(n.as_encoded_bytes()).is_some())
        });
        if partitioned {
            return open_sllm(fs, index, Some(entries));
        }
    }
    let mut files = Vec::new();
    for p in entries {
        if !name_ends(&p, ".safetensors") {
            continue;
        }
        // A dangling link or an unreadable entry is an error, not a shard
        // silently left out.
        match fs.is_dir(&p) {
            Ok(true) => {}
            Ok(false) => files.push(p),
            Err(source) => return Err(Error::Io { file: p, source }),
        }
    }
    if files.is_empty() {
        // An index without partitions: say which partition is missing.
        if let Some(index) = sllm_index {
            return open_sllm(fs, &index, None);
        }
        return Err(Error::NoShards {
            dir: dir.to_path_buf(),
        });
    }
    files.sort();
    from_read(read_headers(fs, &files)?)
}

/// Open a ServerlessLLM checkpoint through its `tensor_index.json`; its
/// partitions are the `tensor.data_<n>` files beside it (`entries`: the
/// directory's, when already listed).
fn open_sllm(
    fs: &dyn Fs,
    index_path: &Path,
    entries: Option<Vec<PathBuf>>,
) -> Result<Checkpoint, Error> {
    let bytes = read_index(fs, index_path)?;
    let index = SllmIndex::parse(&bytes).map_err(|source| Error::Sllm {
        file: index_path.to_path_buf(),
        source,
    })?;
    drop(bytes);
    let dir = index_path.parent().unwrap_or(Path::new(""));
    // `Path::parent` of a bare name is "", which lists as ".".
    let listed = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let opened = if entries.is_some() || fs.can_list(listed) {
        let entries = match entries {
            Some(e) => e,
            None => fs.list_dir(listed).map_err(|source| Error::Io {
                file: dir.to_path_buf(),
                source,
            })?,
        };
        listed_partitions(fs, index_path, dir, entries)?
    } else {
        probed_partitions(fs, index_path, dir)?
    };
    let (partitions, stamps): (Vec<_>, Vec<_>) = opened
        .into_iter()
        .map(|(path, size, stamp)| ((path, size), stamp))
        .unzip();
    let mut ckpt = Checkpoint::from_sllm(index_path.to_path_buf(), index, partitions)?;
    for (shard, stamp) in ckpt.shards.iter_mut().zip(stamps) {
        shard.stamp = stamp;
    }
    Ok(ckpt)
}

/// A partition: its path, size and stamp.
type Measured = (PathBuf, u64, Option<Stamp>);

/// Open `path` for its size and stamp.
fn measure(fs: &dyn Fs, path: PathBuf) -> Result<Measured, Error> {
    match fs.open(&path) {
        Ok(file) => measured(path, &*file),
        Err(source) => Err(Error::Io { file: path, source }),
    }
}

fn measured(path: PathBuf, file: &dyn FileAt) -> Result<Measured, Error> {
    let stamp = file.stamp();
    let size = file.size();
    match (stamp, size) {
        (Ok(stamp), Ok(size)) => Ok((path, size, stamp)),
        (Err(source), _) | (_, Err(source)) => Err(Error::Io { file: path, source }),
    }
}

/// The `tensor.data_<n>` files among a directory's `entries`, numbered
/// from 0 without a gap, opened.
fn listed_partitions(
    fs: &dyn Fs,
    index_path: &Path,
    dir: &Path,
    entries: Vec<PathBuf>,
) -> Result<Vec<Measured>, Error> {
    let mut numbered: Vec<(u64, PathBuf)> = entries
        .into_iter()
        .filter_map(|p| {
            let n = partition_number(p.file_name()?.as_encoded_bytes())?;
            Some((n, dir.join(p.file_name()?)))
        })
        .collect();
    numbered.sort();
    // Numbered from 0 without a gap: ServerlessLLM's reader stops at the
    // first missing number, which would silently drop the rest.
    for (i, (n, path)) in numbered.iter().enumerate() {
        if *n != i as u64 {
            return Err(Error::Sllm {
                file: index_path.to_path_buf(),
                source: SllmError::PartitionGap {
                    missing: dir.join(format!("{SLLM_PARTITION_PREFIX}{i}")),
                    found: path.clone(),
                },
            });
        }
    }
    numbered
        .into_iter()
        .map(|(_, path)| measure(fs, path))
        .collect()
}

/// The most partitions looked for where a directory cannot be listed: a
/// server that answers every name must not make opening long, nor hold
/// the opening range of every name it answers (at ServerlessLLM's 10 GiB a
/// partition, 10 TiB; the largest open models are near 1.5 TiB).
const MAX_PROBED_PARTITIONS: u64 = 1 << 10;

/// The partitions beside an index in a directory that cannot be listed:
/// `tensor.data_0`, `tensor.data_1`, ... opened in turn until one is not
/// found; then the next number is tried too, so that a gap is the same
/// error as where the directory is listed (a gap of one number: a listing
/// sees any later partition, this the next one only).
///
/// A refusal counts as not found: a bucket that may not be listed answers
/// 403 for a key that does not exist. A partition that exists but is
/// refused therefore ends the partitions, and the records in it or past
/// it are reported as past the partitions; none is read from elsewhere.
fn probed_partitions(fs: &dyn Fs, index_path: &Path, dir: &Path) -> Result<Vec<Measured>, Error> {
    let absent = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
        )
    };
    let name = |i: u64| dir.join(format!("{SLLM_PARTITION_PREFIX}{i}"));
    let mut found = Vec::new();
    for i in 0..MAX_PROBED_PARTITIONS {
        let path = name(i);
        match fs.open(&path) {
            Ok(file) => found.push(measured(path, &*file)?),
            Err(e) if absent(&e) => {
                let next = name(i + 1);
                return match fs.open(&next) {
                    Ok(_) => Err(Error::Sllm {
                        file: index_path.to_path_buf(),
                        source: SllmError::PartitionGap {
                            missing: path,
                            found: next,
                        },
                    }),
                    Err(e) if absent(&e) => Ok(found),
                    Err(source) => Err(Error::Io { file: next, source }),
                };
            }
            Err(source) => return Err(Error::Io { file: path, source }),
        }
    }
    Err(Error::Sllm {
        file: index_path.to_path_buf(),
        source: SllmError::TooManyPartitions {
            limit: MAX_PROBED_PARTITIONS,
        },
    })
}

fn open_index(fs: &dyn Fs, index_path: &Path) -> Result<Checkpoint, Error> {
    let bytes = read_index(fs, index_path)?;
    let index = IndexFile::parse(index_path, &bytes)?;
    let dir = index_path.parent().unwrap_or(Path::new(""));
    // Each entry's shard, numbered in name order. Entries naming the same
    // shard are usually consecutive, so remember the last one.
    if index.weight_map.is_empty() {
        return Err(Error::IndexEmpty {
            file: index_path.to_path_buf(),
        });
    }
    // Each entry's shard, numbered in name order; "./a" and "a" are one
    // shard. Entries naming the same shard are usually consecutive, so
    // remember the last one.
    let mut names: BTreeMap<PathBuf, u32> = BTreeMap::new();
    let mut spelled: HashMap<&str, PathBuf> = HashMap::new();
    let mut last: Option<&str> = None;
    for (tensor, shard) in &index.weight_map {
        if last == Some(shard.as_ref()) || spelled.contains_key(shard.as_ref()) {
            last = Some(shard);
            continue;
        }
        let rel = Path::new(shard.as_ref());
        let inside = rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        let normal: PathBuf = rel
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        if !inside || normal.as_os_str().is_empty() {
            return Err(Error::IndexPath {
                file: index_path.to_path_buf(),
                tensor: tensor.to_string(),
                shard: shard.to_string(),
            });
        }
        names.insert(normal.clone(), 0);
        spelled.insert(shard, normal);
        last = Some(shard);
    }
    for (i, id) in names.values_mut().enumerate() {
        *id = i as u32;
    }
    let files: Vec<PathBuf> = names.keys().map(|s| dir.join(s)).collect();
    let mut ckpt = from_read(read_headers(fs, &files)?)?;
    let mismatch =
        |tensor: &str, listed: Option<FileId>, found: Option<FileId>| Error::IndexMismatch {
            file: index_path.to_path_buf(),
            tensor: tensor.to_owned(),
            listed: listed.map(|f| files[f.index()].clone()),
            found: found.map(|f| files[f.index()].clone()),
        };
    // One pass: each listed tensor is in the shard the index names, and
    // listed once.
    let mut listed_once = vec![false; ckpt.len()];
    let mut last: Option<(&str, FileId)> = None;
    for (tensor, shard) in &index.weight_map {
        let listed = match last {
            Some((s, f)) if s == shard.as_ref() => f,
            _ => {
                let f = FileId(names[&spelled[shard.as_ref()]]);
                last = Some((shard, f));
                f
            }
        };
        let Some(id) = ckpt.id(tensor) else {
            return Err(mismatch(tensor, Some(listed), None));
        };
        let found = ckpt.tensor(id).file;
        if found != listed {
            return Err(mismatch(tensor, Some(listed), Some(found)));
        }
        if std::mem::replace(&mut listed_once[id.index()], true) {
            return Err(Error::IndexDuplicate {
                file: index_path.to_path_buf(),
                tensor: tensor.to_string(),
            });
        }
    }
    // Every listed tensor was found once; any left are in a shard but unlisted.
    if let Some(i) = listed_once.iter().position(|&seen| !seen) {
        let t = &ckpt.tensors[i];
        return Err(mismatch(&t.name, None, Some(t.file)));
    }
    ckpt.index = Some(index_path.to_path_buf());
    Ok(ckpt)
}
