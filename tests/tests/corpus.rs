//! The hostile-header corpus: every file gives exactly its expected result,
//! from memory, read piecemeal, and through `Checkpoint::open`; the
//! committed files match the generator; the reference `safetensors` crate
//! rejects them too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use weightlift_format::{
    Checkpoint, Error, FIRST_READ_LEN, Header, HeaderError, PREFIX_LEN, Parsed,
};
use weightlift_tests::corpus::{Entry, Expect, entries, readme};
use weightlift_tests::fixtures::TempDir;

/// Hostile files on which the reference crate (safetensors 0.8) panics in
/// debug builds, and why. A panic counts as a rejection here.
const REFERENCE_PANICS: &[(&str, &str)] = &[(
    "data-beyond-u64",
    "it adds the data section's end to the header length unchecked (tensor.rs:420); release builds wrap and reject by a mismatch",
)];

/// Hostile files that the reference library (safetensors 0.8) accepts,
/// with the reason. Every other hostile file must be rejected by it, and
/// these must be accepted, so that the list stays exact.
const REFERENCE_ACCEPTS: &[(&str, &str)] = &[
    (
        "duplicate-names",
        "its serde map keeps the last entry of a repeated name",
    ),
    (
        "leading-whitespace",
        "serde_json skips whitespace before the object, though the format requires '{' first",
    ),
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn describe(r: &Result<Header, HeaderError>) -> String {
    match r {
        Ok(h) => format!("Ok({} tensors)", h.tensors().len()),
        Err(e) => format!("{e:?} ({e})"),
    }
}

#[test]
fn names_are_unique_and_every_kind_is_covered() {
    let all = entries();
    let mut names = HashSet::new();
    for e in &all {
        assert!(names.insert(e.name), "{} appears twice", e.name);
        assert!(
            e.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{}: file names are lowercase ASCII and dashes",
            e.name
        );
    }
    assert!(all.iter().filter(|e| e.expect.is_error()).count() >= 40);
    assert!(all.iter().filter(|e| !e.expect.is_error()).count() >= 5);
}

#[test]
fn every_file_gives_exactly_its_expected_result() {
    for e in entries() {
        let got = Header::parse_file(&e.bytes);
        assert!(
            e.expect.matches(&got),
            "{}: expected {:?}, got {}",
            e.name,
            e.expect,
            describe(&got)
        );
        if let Err(err) = &got {
            assert_eq!(err.tensor(), e.expect.tensor(), "{}", e.name);
            // Every error has a message, and displaying it does not panic.
            assert!(!err.to_string().is_empty(), "{}", e.name);
        }
    }
}

/// Parse `e` from a prefix of `k` bytes and then, while the parser asks for
/// more, from the prefix it asks for, as a loader reading piecemeal would.
/// Each request must grow and stay within the file; two suffice (the length
/// prefix, then the header).
fn parse_from_prefix(e: &Entry, mut k: usize) -> Result<Header, HeaderError> {
    let size = e.bytes.len() as u64;
    for _ in 0..3 {
        match Header::parse(&e.bytes[..k], size)? {
            Parsed::Complete(h) => return Ok(h),
            Parsed::NeedMore { total } => {
                assert!(
                    total > k && total <= e.bytes.len(),
                    "{}: from {k} bytes, asked for {total} of {}",
                    e.name,
                    e.bytes.len()
                );
                k = total;
            }
        }
    }
    panic!("{}: still asking for more after {k} bytes", e.name)
}

#[test]
fn reading_piecemeal_gives_the_same_result() {
    for e in entries() {
        let len = e.bytes.len();
        let mut ks = vec![
            0,
            1,
            PREFIX_LEN - 1,
            PREFIX_LEN,
            PREFIX_LEN + 1,
            FIRST_READ_LEN,
        ];
        ks.extend([len / 2, len.saturating_sub(1), len]);
        ks.retain(|&k| k <= len);
        for k in ks {
            let got = parse_from_prefix(&e, k);
            assert!(
                e.expect.matches(&got),
                "{}: from a prefix of {k} bytes, expected {:?}, got {}",
                e.name,
                e.expect,
                describe(&got)
            );
        }
    }
}

#[test]
fn committed_files_match_the_generator() {
    let dir = corpus_dir();
    let all = entries();
    let regen = "run `cargo xtask corpus` to regenerate tests/corpus";
    for e in &all {
        let path = dir.join(e.file_name());
        let on_disk =
            std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}; {regen}", path.display()));
        assert!(
            on_disk == e.bytes,
            "{} differs from the generator; {regen}",
            path.display()
        );
    }
    let names: HashSet<String> = all.iter().map(Entry::file_name).collect();
    for item in std::fs::read_dir(&dir).expect("tests/corpus exists") {
        let path = item.expect("readable directory").path();
        if path.extension().is_some_and(|x| x == "safetensors") {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            assert!(
                names.contains(name),
                "{} has no corpus entry; {regen}",
                path.display()
            );
        }
    }
    let committed = std::fs::read_to_string(dir.join("README.md")).expect("tests/corpus/README.md");
    assert!(
        committed == readme(&all),
        "tests/corpus/README.md is stale; {regen}"
    );
}

#[test]
fn the_reference_library_agrees() {
    for (name, _) in REFERENCE_ACCEPTS {
        assert!(
            entries()
                .iter()
                .any(|e| e.name == *name && e.expect.is_error()),
            "{name} is not a hostile corpus entry"
        );
    }
    for e in entries() {
        if REFERENCE_PANICS.iter().any(|(n, _)| *n == e.name) {
            let reference = std::panic::catch_unwind(|| {
                safetensors::SafeTensors::deserialize(&e.bytes).map(|st| st.len())
            });
            // Panicking (debug) or rejecting (release) are both rejections.
            assert!(
                !matches!(reference, Ok(Ok(_))),
                "{}: the reference accepts it",
                e.name
            );
            continue;
        }
        let reference = safetensors::SafeTensors::deserialize(&e.bytes);
        let excused = REFERENCE_ACCEPTS.iter().find(|(n, _)| *n == e.name);
        match (&e.expect, &reference, excused) {
            (Expect::Valid { tensors }, Ok(st), None) => {
                assert_eq!(
                    st.len(),
                    *tensors,
                    "{}: the reference counts other tensors",
                    e.name
                )
            }
            (Expect::Valid { .. }, Err(err), _) => {
                panic!("{}: valid here, rejected by the reference: {err}", e.name)
            }
            (_, Err(_), None) => {}
            (_, Ok(_), Some(_)) => {}
            (_, Ok(_), None) => panic!(
                "{}: hostile ({:?}) but the reference accepts it",
                e.name, e.expect
            ),
            (_, Err(err), Some((_, why))) => panic!(
                "{}: listed as accepted by the reference ({why}), but it rejects it: {err}",
                e.name
            ),
        }
    }
}

#[test]
fn checkpoint_open_rejects_each_file_and_names_it() {
    let tmp = TempDir::new("corpus");
    for e in entries() {
        let path = tmp.0.join(e.file_name());
        std::fs::write(&path, &e.bytes).expect("write a corpus file");
        let result = Checkpoint::open(&path);
        match (&e.expect, result) {
            (Expect::Valid { tensors }, Ok(ckpt)) => {
                assert_eq!(ckpt.len(), *tensors, "{}", e.name);
                assert_eq!(ckpt.shards()[0].size(), e.bytes.len() as u64, "{}", e.name);
            }
            (Expect::Valid { .. }, Err(err)) => panic!("{}: valid, but open failed: {err}", e.name),
            (expect, Ok(_)) => panic!("{}: hostile ({expect:?}), but open succeeded", e.name),
            (expect, Err(err)) => {
                match &err {
                    Error::Header { file, source } => {
                        assert_eq!(file, &path, "{}", e.name);
                        assert!(
                            expect.matches_error(source),
                            "{}: expected {expect:?}, got {source:?}",
                            e.name
                        );
                    }
                    other => panic!("{}: expected a header error, got {other:?}", e.name),
                }
                assert_eq!(err.file(), path, "{}", e.name);
                let message = err.to_string();
                assert!(
                    message.contains(&path.display().to_string())
                        && message.contains(&e.file_name()),
                    "{}: the message does not name the file: {message}",
                    e.name
                );
                assert_eq!(err.tensor(), expect.tensor(), "{}: {message}", e.name);
                if let Some(t) = expect.tensor() {
                    assert!(message.contains(&format!("{t:?}")), "{}: {message}", e.name);
                }
            }
        }
        std::fs::remove_file(&path).expect("remove a corpus file");
    }
}

#[test]
fn expectations_tell_files_apart() {
    // Guards against a `matches` that accepts too much: no file's result
    // matches another file's expectation unless the two are equal.
    let all = entries();
    for e in &all {
        let got = Header::parse_file(&e.bytes);
        for other in &all {
            if other.expect != e.expect {
                assert!(
                    !other.expect.matches(&got),
                    "{}'s result {} also matches {}'s {:?}",
                    e.name,
                    describe(&got),
                    other.name,
                    other.expect
                );
            }
        }
    }
}
