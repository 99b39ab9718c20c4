//! ServerlessLLM checkpoints: written here as ServerlessLLM's writer lays
//! them out (records padded to 8 bytes, a new partition before a record
//! that would pass the partition limit, each partition padded to 4096
//! bytes, offsets into the partitions laid end to end, a shared record for
//! tied weights), then opened from files and from memory.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use weightlift_format::{
    Checkpoint, Dtype, Error, FileAt, Fs, SllmError, SllmIndex, Source, StdFs, torch_name,
};

/// A fresh directory under cargo's target directory, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("sllm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tensor to write: name, dtype, shape, and (for a tied weight) the name
/// of the tensor whose record it shares.
#[derive(Debug, Clone)]
struct Spec {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    tied_to: Option<usize>,
}

fn bytes_of(s: &Spec) -> u64 {
    s.shape.iter().product::<u64>() * u64::from(s.dtype.bits()) / 8
}

/// Contiguous strides of `shape`, as torch gives them.
fn strides(shape: &[u64]) -> Vec<u64> {
    let mut out = vec![0; shape.len()];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        out[i] = acc;
        acc *= shape[i].max(1);
    }
    out
}

/// Write `specs` as ServerlessLLM does, with partitions of at most
/// `limit` bytes before padding; each tensor's bytes are its index
/// repeated. Returns each tensor's contents.
fn write(dir: &Path, specs: &[Spec], limit: u64) -> Vec<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut closed = 0u64;
    let mut index = serde_json::Map::new();
    let mut contents: Vec<Vec<u8>> = Vec::new();
    let mut offsets = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let data = vec![i as u8 ^ 0x5a; bytes_of(s) as usize];
        let offset = match s.tied_to {
            Some(j) => {
                contents.push(contents[j].clone());
                offsets[j]
            }
            None => {
                let size = data.len() as u64;
                if parts.is_empty() || parts.last().unwrap().len() as u64 + size > limit {
                    if let Some(last) = parts.last_mut() {
                        last.resize(last.len().div_ceil(4096) * 4096, 0);
                        closed += last.len() as u64;
                    }
                    parts.push(Vec::new());
                }
                let part = parts.last_mut().unwrap();
                let offset = closed + part.len() as u64;
                part.extend_from_slice(&data);
                part.resize(part.len().div_ceil(8) * 8, 0);
                contents.push(data);
                offset
            }
        };
        offsets.push(offset);
        index.insert(
            s.name.clone(),
            serde_json::json!([
                offset,
                bytes_of(s),
                s.shape,
                strides(&s.shape),
                torch_name(s.dtype).unwrap()
            ]),
        );
    }
    if let Some(last) = parts.last_mut() {
        last.resize(last.len().div_ceil(4096) * 4096, 0);
    }
    for (i, p) in parts.iter().enumerate() {
        std::fs::write(dir.join(format!("tensor.data_{i}")), p).unwrap();
    }
    std::fs::write(
        dir.join("tensor_index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    contents
}

fn spec(name: &str, dtype: Dtype, shape: &[u64]) -> Spec {
    Spec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        tied_to: None,
    }
}

/// Every tensor of `ckpt` reads back as `contents` from its partition.
fn check_contents(ckpt: &Checkpoint, specs: &[Spec], contents: &[Vec<u8>]) {
    assert_eq!(ckpt.len(), specs.len());
    let files: Vec<Vec<u8>> = ckpt
        .shards()
        .iter()
        .map(|s| std::fs::read(s.path()).unwrap())
        .collect();
    for (s, want) in specs.iter().zip(contents) {
        let t = ckpt.find(&s.name).unwrap();
        assert_eq!((t.dtype, &t.shape), (s.dtype, &s.shape), "{}", s.name);
        let file = &files[t.file.index()];
        let got = &file[t.range.start as usize..t.range.end as usize];
        assert_eq!(got, &want[..], "{}", s.name);
    }
    // Shards hold their tensors in offset order, ids shard by shard.
    let mut next = 0;
    for (f, shard) in ckpt.shards().iter().enumerate() {
        assert_eq!(shard.header_len(), None);
        assert_eq!(shard.data_start(), 0);
        assert!(shard.stamp().is_some());
        let mut last = 0;
        for id in shard.tensor_ids() {
            assert_eq!(id.index(), next);
            next += 1;
            let t = ckpt.tensor(id);
            assert_eq!(t.file.index(), f);
            assert!(t.range.start >= last && t.range.end <= shard.size());
            last = t.range.start;
        }
    }
    assert_eq!(next, ckpt.len());
    assert!(ckpt.is_sllm());
    assert_eq!(ckpt.metadata(), None);
}

#[test]
fn a_checkpoint_in_three_partitions_opens_by_directory_and_by_index() {
    let dir = Scratch::new("three");
    let mut specs = vec![
        spec("embed", Dtype::BF16, &[64, 32]),
        spec("layer.0.w", Dtype::F16, &[32, 33]),
        spec("layer.0.b", Dtype::F32, &[3]),
        spec("scalar", Dtype::I64, &[]),
        spec("empty", Dtype::F32, &[0, 4]),
        spec("mask", Dtype::Bool, &[5]),
        spec("layer.1.w", Dtype::BF16, &[40, 32]),
    ];
    specs.push(Spec {
        tied_to: Some(0),
        ..spec("lm_head", Dtype::BF16, &[64, 32])
    });
    let contents = write(&dir.0, &specs, 4096);
    assert!(dir.0.join("tensor.data_2").exists());
    let by_dir = Checkpoint::open(&dir.0).unwrap();
    check_contents(&by_dir, &specs, &contents);
    assert!(by_dir.shards().len() >= 3);
    assert_eq!(
        by_dir.index_path(),
        Some(dir.0.join("tensor_index.json").as_path())
    );
    let by_index = Checkpoint::open(dir.0.join("tensor_index.json")).unwrap();
    assert_eq!(by_index.tensors(), by_dir.tensors());
    // The tied names share one record.
    assert_eq!(
        by_dir.find("lm_head").unwrap().range,
        by_dir.find("embed").unwrap().range
    );
}

fn open_err(dir: &Path) -> SllmError {
    match Checkpoint::open(dir) {
        Err(Error::Sllm { file, source }) => {
            assert_eq!(file, dir.join("tensor_index.json"));
            assert!(
                !Error::Sllm {
                    file: file.clone(),
                    source: SllmError::OutOfMemory { index_len: 0 }
                }
                .to_string()
                .is_empty()
            );
            source
        }
        other => panic!("expected an Sllm error, got {other:?}"),
    }
}

#[test]
fn partitions_must_be_numbered_from_zero_without_a_gap() {
    let dir = Scratch::new("gap");
    let specs = vec![
        spec("a", Dtype::U8, &[4000]),
        spec("b", Dtype::U8, &[4000]),
        spec("c", Dtype::U8, &[4000]),
    ];
    write(&dir.0, &specs, 4096);
    std::fs::remove_file(dir.0.join("tensor.data_1")).unwrap();
    match open_err(&dir.0) {
        SllmError::PartitionGap { missing, found } => {
            assert_eq!(missing, dir.0.join("tensor.data_1"));
            assert_eq!(found, dir.0.join("tensor.data_2"));
        }
        e => panic!("{e:?}"),
    }
    // Without the last partition, its tensor lies past the others.
    write(&dir.0, &specs, 4096);
    std::fs::remove_file(dir.0.join("tensor.data_2")).unwrap();
    let e = open_err(&dir.0);
    assert!(
        matches!(&e, SllmError::PastPartitions { tensor, total: 8192, partitions: 2, .. } if tensor == "c"),
        "{e:?}"
    );
    // Without any partition, the first is named.
    for i in 0..2 {
        std::fs::remove_file(dir.0.join(format!("tensor.data_{i}"))).unwrap();
    }
    let e = open_err(&dir.0);
    assert!(
        matches!(&e, SllmError::MissingPartition { tensor, partition } if tensor == "a" && *partition == dir.0.join("tensor.data_0")),
        "{e:?}"
    );
}

#[test]
fn a_truncated_partition_and_a_directory_as_partition_are_errors() {
    let dir = Scratch::new("trunc");
    let specs = vec![spec("a", Dtype::U8, &[4000]), spec("b", Dtype::U8, &[4000])];
    write(&dir.0, &specs, 4096);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.0.join("tensor.data_1"))
        .unwrap();
    f.set_len(100).unwrap();
    let e = open_err(&dir.0);
    assert!(
        matches!(&e, SllmError::PastPartitions { tensor, end: 8096, total: 4196, .. } if tensor == "b"),
        "{e:?}"
    );
    std::fs::remove_file(dir.0.join("tensor.data_1")).unwrap();
    std::fs::create_dir(dir.0.join("tensor.data_1")).unwrap();
    match Checkpoint::open(&dir.0) {
        Err(Error::Io { file, .. }) => assert_eq!(file, dir.0.join("tensor.data_1")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_index_without_partitions_or_safetensors_names_the_missing_partition() {
    let dir = Scratch::new("lone");
    std::fs::write(
        dir.0.join("tensor_index.json"),
        br#"{"w": [0, 4, [4], [1], "torch.uint8"]}"#,
    )
    .unwrap();
    assert!(matches!(
        open_err(&dir.0),
        SllmError::MissingPartition { .. }
    ));
    // An index of nothing is an empty checkpoint.
    std::fs::write(dir.0.join("tensor_index.json"), b"{}").unwrap();
    let ckpt = Checkpoint::open(&dir.0).unwrap();
    assert!(ckpt.is_empty() && ckpt.is_sllm());
}

/// The local file system as a server without listings sees it; with
/// `true`, a missing file is refused (403), as by a bucket that may not
/// be listed.
struct Unlisted(bool);

impl Fs for Unlisted {
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn FileAt + '_>> {
        match StdFs.open(path) {
            Err(e) if self.0 && e.kind() == std::io::ErrorKind::NotFound => {
                Err(std::io::ErrorKind::PermissionDenied.into())
            }
            r => r,
        }
    }
    fn is_dir(&self, path: &Path) -> std::io::Result<bool> {
        StdFs.is_dir(path)
    }
    fn list_dir(&self, _: &Path) -> std::io::Result<Vec<PathBuf>> {
        panic!("an Fs that cannot list is never asked to")
    }
    fn can_list(&self, _: &Path) -> bool {
        false
    }
}

#[test]
fn without_a_listing_partitions_are_found_in_turn_with_the_same_errors() {
    let dir = Scratch::new("probe");
    let index = dir.0.join("tensor_index.json");
    let unlisted = || Checkpoint::open_in(&Unlisted(false), &Source::Path(index.clone()));
    let refusing = || Checkpoint::open_in(&Unlisted(true), &Source::Path(index.clone()));
    let specs = vec![
        spec("a", Dtype::U8, &[4000]),
        spec("b", Dtype::U8, &[4000]),
        spec("c", Dtype::U8, &[4000]),
    ];
    let contents = write(&dir.0, &specs, 4096);
    for ckpt in [unlisted().unwrap(), refusing().unwrap()] {
        assert_eq!(ckpt.shards().len(), 3);
        check_contents(&ckpt, &specs, &contents);
    }
    // A gap of one number, the last partition missing, and none at all:
    // what a listing gives.
    for gone in [&[1][..], &[2], &[0, 1, 2], &[0]] {
        write(&dir.0, &specs, 4096);
        for i in gone {
            std::fs::remove_file(dir.0.join(format!("tensor.data_{i}"))).unwrap();
        }
        let (Err(Error::Sllm { source: l, .. }), Err(Error::Sllm { source: r, .. })) =
            (Checkpoint::open(&index), unlisted())
        else {
            panic!("{gone:?}: both must be errors")
        };
        assert_eq!(format!("{l:?}"), format!("{r:?}"), "{gone:?}");
        let Err(Error::Sllm { source: r, .. }) = refusing() else {
            panic!("{gone:?}: must be an error")
        };
        assert_eq!(format!("{l:?}"), format!("{r:?}"), "{gone:?} (refused)");
    }
}

/// A server that answers every name with a small object.
struct Endless;

struct Small;

impl FileAt for Small {
    fn size(&self) -> std::io::Result<u64> {
        Ok(8)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let n = buf.len().min(8usize.saturating_sub(offset as usize));
        buf[..n].fill(0);
        Ok(n)
    }
}

impl Fs for Endless {
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn FileAt + '_>> {
        if path.ends_with("tensor_index.json") {
            return StdFs.open(path);
        }
        Ok(Box::new(Small))
    }
    fn is_dir(&self, _: &Path) -> std::io::Result<bool> {
        Ok(false)
    }
    fn list_dir(&self, _: &Path) -> std::io::Result<Vec<PathBuf>> {
        unreachable!()
    }
    fn can_list(&self, _: &Path) -> bool {
        false
    }
}

#[test]
fn a_server_answering_every_partition_name_is_bounded() {
    let dir = Scratch::new("endless");
    let index = dir.0.join("tensor_index.json");
    std::fs::write(&index, br#"{"w": [0, 4, [4], [1], "torch.uint8"]}"#).unwrap();
    let e = Checkpoint::open_in(&Endless, &Source::Path(index)).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Sllm {
                source: SllmError::TooManyPartitions { .. },
                ..
            }
        ),
        "{e}"
    );
}

/// Parse `json` as an index, expecting an error.
fn parse_err(json: &str) -> SllmError {
    SllmIndex::parse(json.as_bytes()).expect_err(json)
}

/// Whether an error is the one a case expects.
type Check = fn(&SllmError) -> bool;

#[test]
fn entries_are_checked_on_their_own() {
    use SllmError as E;
    let cases: Vec<(&str, Check)> = vec![
        ("[]", |e| matches!(e, E::Json { .. })),
        ("{", |e| matches!(e, E::Json { .. })),
        (r#"{"w": [0, 4, [4], [1], "torch.uint8"]} x"#, |e| {
            matches!(e, E::Json { .. })
        }),
        (
            r#"{"w": [0, 4, [4], [1]]}"#,
            |e| matches!(e, E::InvalidEntry { tensor, .. } if tensor == "w"),
        ),
        (
            r#"{"w": [0, 4, [4], [1], "torch.uint8", 7]}"#,
            |e| matches!(e, E::InvalidEntry { tensor, .. } if tensor == "w"),
        ),
        (
            r#"{"w": [-8, 4, [4], [1], "torch.uint8"]}"#,
            |e| matches!(e, E::InvalidEntry { tensor, .. } if tensor == "w"),
        ),
        (
            r#"{"w": [0, 4, [-4], [1], "torch.uint8"]}"#,
            |e| matches!(e, E::InvalidEntry { tensor, .. } if tensor == "w"),
        ),
        (
            r#"{"w": [0, 4, [4], [-1], "torch.uint8"]}"#,
            |e| matches!(e, E::InvalidEntry { tensor, .. } if tensor == "w"),
        ),
        (
            r#"{"w": [0.5, 4, [4], [1], "torch.uint8"]}"#,
            |e| matches!(e, E::InvalidEntry { tensor, .. } if tensor == "w"),
        ),
        (
            r#"{"w": [18446744073709551616, 4, [4], [1], "torch.uint8"]}"#,
            |e| matches!(e, E::InvalidEntry { tensor, .. } if tensor == "w"),
        ),
        (
            r#"{"w": [18446744073709551615, 4, [4], [1], "torch.uint8"]}"#,
            |e| matches!(e, E::InvalidEntry { tensor, .. } if tensor == "w"),
        ),
        (
            r#"{"w": {"offset": 0}}"#,
            |e| matches!(e, E::InvalidEntry { tensor, .. } if tensor == "w"),
        ),
        (
            r#"{"w": [0, 4, [4], [1], "torch.float128"]}"#,
            |e| matches!(e, E::UnknownDtype { tensor, dtype } if tensor == "w" && dtype == "torch.float128"),
        ),
        (
            r#"{"w": [0, 4, [4], [1], "F16"]}"#,
            |e| matches!(e, E::UnknownDtype { dtype, .. } if dtype == "F16"),
        ),
        (
            r#"{"w": [0, 4, [4], [1], "torch.uint8"], "w": [8, 4, [4], [1], "torch.uint8"]}"#,
            |e| matches!(e, E::DuplicateTensor { tensor } if tensor == "w"),
        ),
        (
            r#"{"w": [0, 4, [4294967296, 4294967296], [4294967296, 1], "torch.uint8"]}"#,
            |e| matches!(e, E::ShapeOverflow { tensor, .. } if tensor == "w"),
        ),
        (
            r#"{"w": [0, 4, [4], [1, 1], "torch.uint8"]}"#,
            |e| matches!(e, E::StrideRank { tensor, .. } if tensor == "w"),
        ),
        (
            r#"{"w": [0, 6, [2, 3], [1, 2], "torch.uint8"]}"#,
            |e| matches!(e, E::NotContiguous { tensor, stride, .. } if tensor == "w" && *stride == [1, 2]),
        ),
        (
            r#"{"w": [0, 16, [4], [1], "torch.float16"]}"#,
            |e| matches!(e, E::SizeMismatch { tensor, expected: 8, found: 16 } if tensor == "w"),
        ),
        (
            r#"{"w": [0, 4, [4], [1], "torch.float16"]}"#,
            |e| matches!(e, E::SizeMismatch { tensor, expected: 8, found: 4 } if tensor == "w"),
        ),
        ("{\"w\": [0, 4, [4], [1], \"torch.uint8\"]}\u{0}", |e| {
            matches!(e, E::Json { .. })
        }),
    ];
    for (json, ok) in cases {
        let e = parse_err(json);
        assert!(ok(&e), "{json}: {e:?}");
        assert!(!e.to_string().is_empty());
    }
    // Four halves in 8 bytes; a size-1 dimension with any stride.
    let ok = SllmIndex::parse(br#"{"w": [0, 8, [4, 1], [1, 99], "torch.float16"]}"#).unwrap();
    assert_eq!(ok.entries()[0].range.end, 8);
    assert!(matches!(
        SllmIndex::parse(b"{\"w\": \xff}"),
        Err(SllmError::NotUtf8 { offset: 6 })
    ));
    // Deep nesting is reported as JSON, not a stack overflow.
    let deep = format!("{{\"w\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(
        parse_err(&deep),
        SllmError::InvalidEntry { .. } | SllmError::Json { .. }
    ));
}

/// Assemble `json` over partitions of `sizes`, in memory.
fn assemble(json: &str, sizes: &[u64]) -> Result<Checkpoint, Error> {
    let index = SllmIndex::parse(json.as_bytes()).unwrap();
    let parts = sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| (PathBuf::from(format!("m/tensor.data_{i}")), s))
        .collect();
    Checkpoint::from_sllm("m/tensor_index.json".into(), index, parts)
}

fn layout_err(json: &str, sizes: &[u64]) -> SllmError {
    match assemble(json, sizes) {
        Err(Error::Sllm { file, source }) => {
            assert_eq!(file, Path::new("m/tensor_index.json"));
            source
        }
        other => panic!("{json}: {other:?}"),
    }
}

#[test]
fn records_are_placed_in_partitions_without_overlap() {
    let e = layout_err(
        r#"{"a": [0, 8, [8], [1], "torch.uint8"], "b": [4, 8, [8], [1], "torch.uint8"]}"#,
        &[64],
    );
    assert!(
        matches!(&e, SllmError::Overlap { tensor, previous, start: 4, previous_end: 8 } if tensor == "b" && previous == "a"),
        "{e:?}"
    );
    // Contained in a longer one, listed first.
    let e = layout_err(
        r#"{"in": [2, 2, [2], [1], "torch.uint8"], "out": [0, 16, [16], [1], "torch.uint8"]}"#,
        &[64],
    );
    assert!(
        matches!(&e, SllmError::Overlap { tensor, previous, .. } if tensor == "in" && previous == "out"),
        "{e:?}"
    );
    let e = layout_err(r#"{"a": [60, 8, [8], [1], "torch.uint8"]}"#, &[64, 64]);
    assert!(
        matches!(&e, SllmError::SpansPartitions { tensor, start: 60, end: 68, partition, partition_end: 64 } if tensor == "a" && *partition == Path::new("m/tensor.data_0")),
        "{e:?}"
    );
    let e = layout_err(r#"{"a": [120, 16, [16], [1], "torch.uint8"]}"#, &[64, 64]);
    assert!(
        matches!(
            &e,
            SllmError::PastPartitions {
                end: 136,
                total: 128,
                partitions: 2,
                ..
            }
        ),
        "{e:?}"
    );
    let e = layout_err(r#"{"a": [0, 0, [0], [1], "torch.uint8"]}"#, &[]);
    assert!(matches!(&e, SllmError::MissingPartition { .. }), "{e:?}");
    match assemble(r#"{}"#, &[u64::MAX, 1]) {
        Err(Error::Sllm {
            source: SllmError::PartitionsTooLarge { partition },
            ..
        }) => {
            assert_eq!(partition, Path::new("m/tensor.data_1"))
        }
        other => panic!("{other:?}"),
    }

    // Valid: aliases, empty tensors between and at the ends, one record
    // filling a partition, a record at the start of the second.
    let ckpt = assemble(
        r#"{"z": [64, 0, [0], [1], "torch.float32"],
            "a": [0, 64, [32], [1], "torch.float16"],
            "tied": [0, 64, [32], [1], "torch.float16"],
            "b": [64, 4, [], [], "torch.int32"],
            "end": [128, 0, [2, 0], [0, 1], "torch.bool"]}"#,
        &[64, 64],
    )
    .unwrap();
    let at = |n: &str| {
        let t = ckpt.find(n).unwrap();
        (t.file.index(), t.range.start, t.range.end)
    };
    assert_eq!(at("a"), (0, 0, 64));
    assert_eq!(at("tied"), (0, 0, 64));
    let id = |n: &str| ckpt.id(n).unwrap();
    assert_eq!(ckpt.alias_of(id("tied")), Some(id("a")));
    assert_eq!(ckpt.alias_of(id("a")), None);
    // Empty tensors at one offset share no bytes.
    assert_eq!(ckpt.alias_of(id("b")), None);
    assert_eq!(at("z"), (1, 0, 0));
    assert_eq!(at("b"), (1, 0, 4));
    assert_eq!(at("end"), (1, 64, 64));
    assert_eq!(ckpt.shards()[0].tensor_ids().len(), 2);
    assert_eq!(ckpt.shards()[1].tensor_ids().len(), 3);
    assert_eq!(ckpt.total_bytes(), 132);
}

fn dtype() -> impl Strategy<Value = Dtype> {
    prop::sample::select(vec![
        Dtype::Bool,
        Dtype::U8,
        Dtype::I16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::F32,
        Dtype::I64,
        Dtype::F64,
        Dtype::C64,
        Dtype::F8E4M3,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the tensors and the partition limit, each tensor reads back
    /// from its partition as written.
    #[test]
    fn written_checkpoints_read_back(
        tensors in prop::collection::vec(
            (dtype(), prop::collection::vec(0u64..9, 0..4), prop::option::weighted(0.15, any::<prop::sample::Index>())),
            1..24,
        ),
        limit in 8u64..6000,
    ) {
        let dir = Scratch::new("prop");
        let mut specs: Vec<Spec> = Vec::new();
        for (i, (dtype, shape, tie)) in tensors.into_iter().enumerate() {
            let tied_to = tie.filter(|_| i > 0).map(|ix| ix.index(i));
            let s = match tied_to {
                Some(j) => Spec { name: format!("t{i}"), tied_to: Some(specs[j].tied_to.unwrap_or(j)), ..specs[j].clone() },
                None => Spec { name: format!("t{i}"), dtype, shape, tied_to: None },
            };
            specs.push(s);
        }
        let contents = write(&dir.0, &specs, limit);
        let ckpt = Checkpoint::open(&dir.0).unwrap();
        check_contents(&ckpt, &specs, &contents);
    }
}
