//! The hostile ServerlessLLM corpus: every directory gives exactly its
//! expected result through `Checkpoint::open` (by directory and by its
//! `tensor_index.json`), and the committed copies match the generator.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use weightlift_format::Checkpoint;
use weightlift_tests::sllm_corpus::{entries, readme};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/sllm")
}

#[test]
fn names_are_unique_and_errors_outnumber_the_valid() {
    let all = entries();
    let mut names = HashSet::new();
    for e in &all {
        assert!(names.insert(e.name), "{} appears twice", e.name);
    }
    assert!(all.iter().filter(|e| e.expect.is_error()).count() >= 30);
    assert!(all.iter().filter(|e| !e.expect.is_error()).count() >= 4);
}

#[test]
fn every_directory_gives_exactly_its_expected_result() {
    let dir = corpus_dir();
    for e in entries() {
        let at = dir.join(e.name);
        for opened in [
            Checkpoint::open(&at),
            Checkpoint::open(at.join("tensor_index.json")),
        ] {
            assert!(
                e.expect.matches(&opened, &at),
                "{}: expected {:?}, got {:?}",
                e.name,
                e.expect,
                opened.as_ref().map(|c| c.len())
            );
            if let Err(err) = &opened {
                assert_eq!(err.tensor(), e.expect.tensor(), "{}", e.name);
                let message = err.to_string();
                assert!(message.contains("tensor_index.json"), "{message}");
                if let Some(t) = e.expect.tensor() {
                    assert!(message.contains(&format!("{t:?}")), "{message}");
                }
            }
        }
    }
}

#[test]
fn the_committed_corpus_matches_the_generator() {
    let dir = corpus_dir();
    let all = entries();
    for e in &all {
        let at = dir.join(e.name);
        let index = std::fs::read(at.join("tensor_index.json"))
            .unwrap_or_else(|err| panic!("{}: {err}; run `cargo xtask corpus`", e.name));
        assert_eq!(index, e.index, "{}: run `cargo xtask corpus`", e.name);
        let mut files: Vec<String> = std::fs::read_dir(&at)
            .unwrap()
            .map(|f| f.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let mut want = vec!["tensor_index.json".to_owned()];
        for (i, p) in e.partitions.iter().enumerate() {
            if let Some(bytes) = p {
                let name = format!("tensor.data_{i}");
                assert_eq!(&std::fs::read(at.join(&name)).unwrap(), bytes, "{}", e.name);
                want.push(name);
            }
        }
        want.sort();
        assert_eq!(files, want, "{}: run `cargo xtask corpus`", e.name);
    }
    let dirs = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|f| f.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(
        dirs,
        all.len(),
        "stale directories: run `cargo xtask corpus`"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("README.md")).unwrap(),
        readme(&all)
    );
}
