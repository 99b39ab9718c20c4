//! Opening checkpoints from disk: files, directories, index files, and every
//! way they can disagree. Each error must name the file (and the tensor,
//! where one is involved).

use std::io;
use std::path::{Path, PathBuf};

use weightlift_format::{
    Checkpoint, Dtype, Error, FileAt, Fs, HeaderError, Source, StdFs, TensorSpec,
};
use weightlift_tests::fixtures::{LlamaConfig, TempDir, write_checkpoint, write_noise};

fn write_file(path: &Path, specs: &[TensorSpec]) {
    let enc = weightlift_format::encode_header(specs, None).unwrap();
    let mut bytes = enc.bytes;
    write_noise(&mut bytes, enc.data_len, 3).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn small() -> Vec<TensorSpec> {
    LlamaConfig::for_size(4 << 20).specs()
}

#[test]
fn a_sharded_checkpoint_opens_the_same_way_by_index_directory_and_file_list() {
    let dir = TempDir::new("ways");
    let specs = small();
    let index = write_checkpoint(&dir.0, &specs, 3, 9).unwrap();
    let by_index = Checkpoint::open(&index).unwrap();
    let by_dir = Checkpoint::open(&dir.0).unwrap();
    let mut files: Vec<PathBuf> = by_index
        .shards()
        .iter()
        .map(|s| s.path().to_path_buf())
        .collect();
    let by_list = Checkpoint::open_files(&files).unwrap();
    assert_eq!(by_index.index_path(), Some(index.as_path()));
    assert_eq!(
        by_dir.index_path(),
        Some(index.as_path()),
        "a directory with an index opens through it"
    );
    for c in [&by_index, &by_dir, &by_list] {
        assert_eq!(c.len(), specs.len());
        assert_eq!(c.shards().len(), 3);
        assert_eq!(
            c.metadata()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
        for s in &specs {
            let t = c.find(&s.name).unwrap();
            assert_eq!((t.dtype, &t.shape), (s.dtype, &s.shape));
        }
        assert_eq!(c.tensors(), by_index.tensors());
    }
    // File order is the caller's; tensor ids follow it.
    files.reverse();
    let reversed = Checkpoint::open_files(&files).unwrap();
    assert_eq!(reversed.shards()[0].path(), files[0]);
    assert_eq!(reversed.tensors()[0].file.0, 0);
}

#[test]
fn a_directory_without_index_is_its_safetensors_files_in_name_order() {
    let dir = TempDir::new("noindex");
    write_file(
        &dir.0.join("b.safetensors"),
        &[TensorSpec::new("x", Dtype::F32, [2])],
    );
    write_file(
        &dir.0.join("a.safetensors"),
        &[TensorSpec::new("y", Dtype::U8, [3])],
    );
    std::fs::write(dir.0.join("notes.txt"), "not a shard").unwrap();
    std::fs::create_dir(dir.0.join("sub.safetensors")).unwrap();
    let c = Checkpoint::open(&dir.0).unwrap();
    let names: Vec<_> = c
        .shards()
        .iter()
        .map(|s| s.path().file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["a.safetensors", "b.safetensors"]);
    assert_eq!(c.tensors()[0].name, "y");
    assert_eq!(c.total_bytes(), 3 + 8);
}

#[test]
fn directory_errors_name_the_directory() {
    let dir = TempDir::new("dirs");
    let err = Checkpoint::open(&dir.0).unwrap_err();
    assert!(
        matches!(&err, Error::NoShards { dir: d } if d == &dir.0),
        "{err}"
    );
    std::fs::write(dir.0.join("a.safetensors.index.json"), "{}").unwrap();
    std::fs::write(dir.0.join("b.safetensors.index.json"), "{}").unwrap();
    let err = Checkpoint::open(&dir.0).unwrap_err();
    assert!(
        matches!(&err, Error::AmbiguousIndex { found, .. } if found.len() == 2),
        "{err}"
    );
    assert!(
        err.to_string().contains("a.safetensors.index.json"),
        "{err}"
    );
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let dir = TempDir::new("missing");
    let path = dir.0.join("absent.safetensors");
    let err = Checkpoint::open(&path).unwrap_err();
    assert!(
        matches!(&err, Error::Io { file, source } if file == &path && source.kind() == io::ErrorKind::NotFound),
        "{err}"
    );
    assert!(err.to_string().contains("absent.safetensors"), "{err}");
    // In a list, the missing one is named, not its neighbours.
    write_file(
        &dir.0.join("ok.safetensors"),
        &[TensorSpec::new("x", Dtype::F32, [2])],
    );
    let err = Checkpoint::open_files(&[dir.0.join("ok.safetensors"), path.clone()]).unwrap_err();
    assert_eq!(err.file(), path);
}

#[test]
fn a_tensor_in_two_shards_is_an_error_naming_both() {
    let dir = TempDir::new("dup");
    let (a, b) = (dir.0.join("a.safetensors"), dir.0.join("b.safetensors"));
    write_file(&a, &[TensorSpec::new("w", Dtype::F32, [2])]);
    write_file(
        &b,
        &[
            TensorSpec::new("v", Dtype::F32, [1]),
            TensorSpec::new("w", Dtype::F32, [2]),
        ],
    );
    let err = Checkpoint::open(&dir.0).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateTensor { tensor, first, second } if tensor == "w" && first == &a && second == &b),
        "{err}"
    );
    assert_eq!(err.tensor(), Some("w"));
    let err = Checkpoint::open_files(&[&a, &a]).unwrap_err();
    assert!(matches!(err, Error::DuplicateFile { .. }), "{err}");
}

/// Write an index with this weight map next to two shards holding `a` and `b`.
fn index_case(tag: &str, weight_map: &str) -> (TempDir, PathBuf, Result<Checkpoint, Error>) {
    let dir = TempDir::new(tag);
    write_file(
        &dir.0.join("s1.safetensors"),
        &[TensorSpec::new("a", Dtype::F16, [4])],
    );
    write_file(
        &dir.0.join("s2.safetensors"),
        &[TensorSpec::new("b", Dtype::BF16, [4])],
    );
    let index = dir.0.join("model.safetensors.index.json");
    std::fs::write(
        &index,
        format!("{{\"metadata\":{{\"total_size\":16}},\"weight_map\":{weight_map}}}"),
    )
    .unwrap();
    let r = Checkpoint::open(&index);
    (dir, index, r)
}

#[test]
fn an_index_must_agree_with_the_headers() {
    let (_d, _, ok) = index_case("idx-ok", r#"{"a":"s1.safetensors","b":"s2.safetensors"}"#);
    assert_eq!(ok.unwrap().len(), 2);

    let (d, index, r) = index_case(
        "idx-wrong",
        r#"{"a":"s2.safetensors","b":"s1.safetensors"}"#,
    );
    let err = r.unwrap_err();
    assert!(
        matches!(&err, Error::IndexMismatch { file, tensor, listed: Some(l), found: Some(f) }
            if file == &index && tensor == "a" && l == &d.0.join("s2.safetensors") && f == &d.0.join("s1.safetensors")),
        "{err}"
    );

    let (_d, _, r) = index_case(
        "idx-absent",
        r#"{"a":"s1.safetensors","b":"s2.safetensors","c":"s2.safetensors"}"#,
    );
    let err = r.unwrap_err();
    assert!(
        matches!(&err, Error::IndexMismatch { tensor, found: None, .. } if tensor == "c"),
        "{err}"
    );

    // An index naming only s1 makes a one-shard checkpoint: s2 is not read.
    let (_d, _, r) = index_case("idx-subset", r#"{"a":"s1.safetensors"}"#);
    let c = r.unwrap();
    assert_eq!((c.len(), c.shards().len()), (1, 1));
    assert!(c.find("b").is_none());

    let (_d, _, r) = index_case(
        "idx-missing-shard",
        r#"{"a":"s1.safetensors","b":"s3.safetensors"}"#,
    );
    let err = r.unwrap_err();
    assert!(
        matches!(&err, Error::Io { file, .. } if file.ends_with("s3.safetensors")),
        "{err}"
    );

    for escape in [r#""../s1.safetensors""#, r#""/etc/passwd""#, r#""""#] {
        let (_d, index, r) = index_case("idx-escape", &format!(r#"{{"a":{escape}}}"#));
        let err = r.unwrap_err();
        assert!(
            matches!(&err, Error::IndexPath { file, tensor, .. } if file == &index && tensor == "a"),
            "{escape}: {err}"
        );
    }

    // A tensor listed twice (JSON allows repeated keys; a map would keep one).
    let (d, _, r) = index_case(
        "idx-twice",
        r#"{"a":"s1.safetensors","b":"s2.safetensors","a":"s1.safetensors"}"#,
    );
    let err = r.unwrap_err();
    assert!(
        matches!(&err, Error::IndexDuplicate { file, tensor } if tensor == "a" && file == &d.0.join("model.safetensors.index.json")),
        "{err}"
    );
    assert_eq!(err.file(), d.0.join("model.safetensors.index.json"));

    // One shard spelled two ways is one shard.
    let (_d, _, r) = index_case(
        "idx-spelling",
        r#"{"a":"./s1.safetensors","b":"s2.safetensors"}"#,
    );
    let c = r.unwrap();
    assert_eq!(c.shards().len(), 2);
    assert!(c.shards()[0].path().ends_with("s1.safetensors"));

    let (_d, index, r) = index_case("idx-empty", "{}");
    assert!(matches!(r.unwrap_err(), Error::IndexEmpty { file } if file == index));
    let (_d, _, r) = index_case(
        "idx-twice-elsewhere",
        r#"{"a":"s1.safetensors","b":"s2.safetensors","a":"s2.safetensors"}"#,
    );
    let err = r.unwrap_err();
    assert!(
        matches!(&err, Error::IndexMismatch { tensor, .. } if tensor == "a"),
        "{err}"
    );

    let (_d, index, r) = index_case("idx-bad-json", r#"{"a":"s1.safetensors""#);
    assert!(matches!(r.unwrap_err(), Error::Index { file, .. } if file == index));
}

#[test]
fn a_shard_tensor_missing_from_the_weight_map_is_an_error() {
    let dir = TempDir::new("idx-unlisted2");
    write_file(
        &dir.0.join("s1.safetensors"),
        &[
            TensorSpec::new("a", Dtype::F16, [4]),
            TensorSpec::new("extra", Dtype::U8, [1]),
        ],
    );
    let index = dir.0.join("model.safetensors.index.json");
    std::fs::write(&index, r#"{"weight_map":{"a":"s1.safetensors"}}"#).unwrap();
    let err = Checkpoint::open(&index).unwrap_err();
    assert!(
        matches!(&err, Error::IndexMismatch { tensor, listed: None, found: Some(_), .. } if tensor == "extra"),
        "{err}"
    );
    assert!(err.to_string().contains("not in the weight_map"), "{err}");
}

/// A file system whose one file claims to be longer than its bytes, as a
/// file truncated between `stat` and `read` would.
struct Shrinking(Vec<u8>);

struct ShrinkingFile<'a>(&'a [u8]);

impl FileAt for ShrinkingFile<'_> {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64 + 100)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let data = self.0.get(offset as usize..).unwrap_or_default();
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }
}

impl Fs for Shrinking {
    fn open(&self, _: &Path) -> io::Result<Box<dyn FileAt + '_>> {
        Ok(Box::new(ShrinkingFile(&self.0)))
    }
    fn is_dir(&self, _: &Path) -> io::Result<bool> {
        Ok(false)
    }
    fn list_dir(&self, _: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
}

#[test]
fn a_file_shorter_than_its_size_is_reported_as_changed_or_truncated() {
    let enc = weightlift_format::encode_header(&[TensorSpec::new("w", Dtype::F32, [1000])], None)
        .unwrap();
    let mut bytes = enc.bytes;
    write_noise(&mut bytes, enc.data_len, 1).unwrap();
    // The whole file fits in the first read, which comes back short.
    let err = Checkpoint::open_in(
        &Shrinking(bytes[..100].to_vec()),
        &Source::Path("m.safetensors".into()),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Changed { file } if file == Path::new("m.safetensors")),
        "{err}"
    );
    // A file longer than the first read: the header reads fine, but the
    // size the file system reports does not match its data section.
    let enc = weightlift_format::encode_header(&[TensorSpec::new("w", Dtype::F32, [25_000])], None)
        .unwrap();
    let mut bytes = enc.bytes;
    write_noise(&mut bytes, enc.data_len, 1).unwrap();
    assert!(bytes.len() > weightlift_format::FIRST_READ_LEN);
    let err =
        Checkpoint::open_in(&Shrinking(bytes), &Source::Path("m.safetensors".into())).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Header {
                source: HeaderError::DataSizeMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_directory_is_not_a_shard() {
    let dir = TempDir::new("isdir");
    let err = Checkpoint::open_in(&StdFs, &Source::Files(vec![dir.0.clone()])).unwrap_err();
    assert!(
        matches!(&err, Error::Io { file, .. } if file == &dir.0),
        "{err}"
    );
}

#[test]
fn a_dangling_link_in_a_directory_is_an_error_not_a_missing_shard() {
    let dir = TempDir::new("dangling");
    write_file(
        &dir.0.join("a.safetensors"),
        &[TensorSpec::new("x", Dtype::F32, [2])],
    );
    let link = dir.0.join("b.safetensors");
    std::os::unix::fs::symlink(dir.0.join("gone.safetensors"), &link).unwrap();
    let err = Checkpoint::open(&dir.0).unwrap_err();
    assert!(
        matches!(&err, Error::Io { file, .. } if file == &link),
        "{err}"
    );
}
