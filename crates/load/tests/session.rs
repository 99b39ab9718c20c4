//! A session: single tensors by name, passes over the selection, and the
//! switch to streaming when names are walked in order; every byte compared
//! with a plain read.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use weightlift::{Error, LoadOptions, Session};
use weightlift_format::Checkpoint;
use weightlift_io::EngineOptions;
use weightlift_plan::Selection;

fn fixture(tag: &str) -> (Scratch, Arc<Checkpoint>) {
    let dir = scratch(tag);
    let sizes: Vec<u64> = (0..40).map(|i| [0, 1, 7, 4096, 70_001][i % 5]).collect();
    write_shard(&dir.0.join("a.safetensors"), "a", &sizes, 1);
    write_shard(&dir.0.join("b.safetensors"), "b", &sizes[..9], 2);
    let ckpt = Checkpoint::open(&dir.0).unwrap();
    (dir, Arc::new(ckpt))
}

fn go() -> bool {
    true
}

#[test]
fn single_reads_in_any_order_equal_a_plain_read_and_never_alias() {
    let (_dir, ckpt) = fixture("session-single");
    let plain = plain_bytes(&ckpt);
    let mut s = Session::new(ckpt.clone(), &Selection::All, LoadOptions::default()).unwrap();
    // Reverse name order: never a walk, so every request is read alone.
    let names: Vec<String> = s
        .sorted()
        .iter()
        .rev()
        .map(|&id| ckpt.tensor(id).name.clone())
        .collect();
    for name in &names {
        let t = s.get(name, &mut go).unwrap();
        assert_eq!(t.bytes(), plain[name], "{name}");
    }
    let described = s.describe().unwrap();
    assert!(described.contains("read alone"), "{described}");
    let name = &names[3];
    let (a, b) = (s.get(name, &mut go).unwrap(), s.get(name, &mut go).unwrap());
    assert_eq!(a.bytes(), b.bytes());
    assert!(a.is_empty() || a.bytes().as_ptr() != b.bytes().as_ptr());
    // Parts of a tensor, for slices.
    let big = ckpt.tensors().iter().find(|t| t.len() == 70_001).unwrap();
    for (lo, hi) in [(0, 70_001), (5, 6), (4096, 70_000), (9, 9)] {
        let part = s.get_range(&big.name, lo..hi).unwrap();
        assert_eq!(part.bytes(), &plain[&big.name][lo as usize..hi as usize]);
    }
    assert!(s.get_range(&big.name, 0..70_002).is_err());
}

#[test]
fn walking_the_names_in_order_streams_the_rest() {
    let (_dir, ckpt) = fixture("session-walk");
    let plain = plain_bytes(&ckpt);
    let mut s = Session::new(ckpt.clone(), &Selection::All, LoadOptions::default()).unwrap();
    let names: Vec<String> = s
        .sorted()
        .iter()
        .map(|&id| ckpt.tensor(id).name.clone())
        .collect();
    for (i, name) in names.iter().enumerate() {
        let t = s.get(name, &mut go).unwrap();
        assert_eq!(t.bytes(), plain[name], "{name}");
        let streaming = s.describe().is_some_and(|d| d.contains("queue depth"));
        assert_eq!(streaming, i >= 1, "streaming from the second");
    }
    // Asked again: read again.
    assert_eq!(s.get(&names[5], &mut go).unwrap().bytes(), plain[&names[5]]);
}

#[test]
fn named_backends_read_single_tensors_too() {
    let (_dir, ckpt) = fixture("session-forced");
    let plain = plain_bytes(&ckpt);
    let options = with_engine(only(
        weightlift_io::Backend::PreadBuffered,
        &EngineOptions::default(),
    ));
    let mut s = Session::new(ckpt.clone(), &Selection::All, options).unwrap();
    let name = &ckpt.tensors()[7].name;
    assert_eq!(s.get(name, &mut go).unwrap().bytes(), plain[name]);
    let described = s.describe().unwrap();
    assert!(
        described.starts_with("backend PREAD_BUFFERED"),
        "{described}"
    );
}

#[test]
fn every_pass_yields_each_selected_tensor_once() {
    let (_dir, ckpt) = fixture("session-pass");
    let plain = plain_bytes(&ckpt);
    let wanted: Vec<String> = ckpt
        .tensors()
        .iter()
        .step_by(3)
        .map(|t| t.name.clone())
        .collect();
    let mut s = Session::new(
        ckpt.clone(),
        &Selection::names(wanted.clone()),
        LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(s.selected().len(), wanted.len());
    let want: HashSet<&String> = wanted.iter().collect();
    for round in 0..3 {
        let mut pass = s.pass();
        let mut seen = HashSet::new();
        // Mid-pass, take one tensor by name: the pass still yields it.
        let early = s.get(&wanted[round], &mut go).unwrap();
        assert_eq!(early.bytes(), plain[&wanted[round]]);
        while let Some(t) = s.next(&mut pass, &mut go) {
            let t = t.unwrap();
            let name = &ckpt.tensor(t.id()).name;
            assert!(want.contains(name), "{name} not selected");
            assert!(seen.insert(name.clone()), "{name} twice in round {round}");
            assert_eq!(t.bytes(), plain[name], "{name}");
        }
        assert_eq!(seen.len(), wanted.len(), "round {round}");
    }
    // Unselected and unknown names are refused, naming them.
    for bad in [ckpt.tensors()[1].name.as_str(), "nope"] {
        match s.get(bad, &mut go) {
            Err(e @ Error::Select(_)) => assert!(e.to_string().contains(bad), "{e}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn a_selection_naming_a_missing_tensor_is_refused() {
    let (_dir, ckpt) = fixture("session-missing");
    let err = Session::new(
        ckpt,
        &Selection::names(["a0", "zzz"]),
        LoadOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Select(_)) && err.to_string().contains("zzz"),
        "{err}"
    );
}

#[test]
fn a_file_truncated_after_open_fails_a_single_read_naming_file_and_tensor() {
    let (dir, ckpt) = fixture("session-truncated");
    let last = ckpt
        .tensors()
        .iter()
        .rfind(|t| t.file.index() == 0 && !t.is_empty())
        .unwrap();
    let path = dir.0.join("a.safetensors");
    let truncate = || {
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(ckpt.shards()[0].data_start() + 10).unwrap();
    };
    // Truncated before the session opened the file: it changed.
    let mut s = Session::new(ckpt.clone(), &Selection::All, LoadOptions::default()).unwrap();
    truncate();
    let err = s.get(&last.name, &mut go).unwrap_err();
    assert!(chain(&err).contains("a.safetensors"), "{}", chain(&err));
    assert_eq!(err.tensor(), Some(last.name.as_str()), "{err}");
    // Truncated while open: the read comes up short.
    let (dir2, ckpt2) = fixture("session-truncated-open");
    let mut s = Session::new(ckpt2.clone(), &Selection::All, LoadOptions::default()).unwrap();
    s.get("a1", &mut go).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir2.0.join("a.safetensors"))
        .unwrap();
    f.set_len(ckpt2.shards()[0].data_start() + 10).unwrap();
    let err = s.get(&last.name, &mut go).unwrap_err();
    assert!(
        matches!(&err, Error::Tensor { source, .. } if matches!(**source, Error::Io(weightlift_io::Error::Truncated { .. }))),
        "{err:?}"
    );
    assert!(chain(&err).contains("a.safetensors"), "{}", chain(&err));
}

#[test]
fn a_pass_polled_without_waiting_yields_every_tensor_once() {
    let (_dir, ckpt) = fixture("session-try");
    let plain = plain_bytes(&ckpt);
    let mut s = Session::new(ckpt.clone(), &Selection::All, LoadOptions::default()).unwrap();
    let mut pass = s.pass();
    let mut seen = HashSet::new();
    let mut pending = 0u64;
    loop {
        match s.try_next(&mut pass) {
            std::task::Poll::Pending => {
                pending += 1;
                std::thread::yield_now();
            }
            std::task::Poll::Ready(None) => break,
            std::task::Poll::Ready(Some(t)) => {
                let t = t.unwrap();
                let name = &ckpt.tensor(t.id()).name;
                assert_eq!(t.bytes(), plain[name], "{name}");
                assert!(seen.insert(name.clone()), "{name} twice");
            }
        }
        assert!(pending < 50_000_000, "the pass never finished");
    }
    assert_eq!(seen.len(), ckpt.len());
    assert!(matches!(
        s.try_next(&mut pass),
        std::task::Poll::Ready(None)
    ));
}

#[test]
fn a_load_naming_a_missing_tensor_names_it() {
    let dir = scratch("select");
    let path = dir.0.join("m.safetensors");
    write_shard(&path, "t.", &[10], 3);
    let ckpt = Arc::new(Checkpoint::open(&path).unwrap());
    let selection = Selection::names(["t.0", "no.such.tensor"]);
    match weightlift::host::load(ckpt, &selection, &LoadOptions::default()) {
        Err(e @ Error::Select(_)) => assert!(e.to_string().contains("no.such.tensor"), "{e}"),
        other => panic!(
            "expected a selection error, got {:?}",
            other.map(|l| l.backend())
        ),
    }
}
