//! Backend parity: every backend, staged or in place, returns exactly the
//! bytes a plain read gives, for random plans over real files of random,
//! unaligned sizes.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use weightlift_format::Checkpoint;
use weightlift_io::EngineOptions;
use weightlift_plan::Selection;

fn shard_sizes() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(
        prop_oneof![
            4 => 0u64..600,
            3 => 600u64..20_000,
            1 => 20_000u64..300_000,
        ],
        1..24,
    )
}

#[derive(Debug, Clone)]
struct Case {
    shards: Vec<Vec<u64>>,
    /// Which tensors to select, by a bit per tensor; `None` selects all.
    pick: Option<Vec<bool>>,
    slot_pages: usize,
    slots: usize,
    depth: usize,
    keep_every: usize,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(shard_sizes(), 1..3),
        prop::option::of(prop::collection::vec(any::<bool>(), 48)),
        1usize..12,
        1usize..5,
        1usize..9,
        0usize..4,
        any::<u64>(),
    )
        .prop_map(
            |(shards, pick, slot_pages, slots, depth, keep_every, seed)| Case {
                shards,
                pick,
                slot_pages,
                slots,
                depth,
                keep_every,
                seed,
            },
        )
}

fn run_case(c: &Case) {
    let dir = scratch("parity");
    let paths: Vec<PathBuf> = c
        .shards
        .iter()
        .enumerate()
        .map(|(i, sizes)| {
            let p = dir.0.join(format!("s{i}.safetensors"));
            write_shard(&p, &format!("s{i}."), sizes, c.seed ^ i as u64);
            p
        })
        .collect();
    let ckpt = Arc::new(Checkpoint::open_files(&paths).unwrap());
    let plain = plain_bytes(&ckpt);
    let selection = match &c.pick {
        None => Selection::All,
        Some(bits) => Selection::names(
            ckpt.tensors()
                .iter()
                .enumerate()
                .filter(|(i, _)| bits[i % bits.len()])
                .map(|(_, t)| t.name.clone()),
        ),
    };
    let want: HashMap<String, Vec<u8>> = match &selection {
        Selection::All => plain.clone(),
        _ => plain
            .iter()
            .filter(|(n, _)| {
                let i = ckpt.id(n).unwrap().index();
                c.pick.as_ref().unwrap()[i % 48]
            })
            .map(|(n, b)| (n.clone(), b.clone()))
            .collect(),
    };
    let slot = c.slot_pages * 4096;
    let base = EngineOptions {
        queue_depth: c.depth,
        slot_size: slot,
        ring_bytes: slot * c.slots,
        threads: 3,
        ..EngineOptions::default()
    };
    for backend in engine_backends() {
        if !usable(backend, &paths) {
            continue;
        }
        let opts = only(backend, &base);
        let staged = load_staged(&ckpt, &selection, &opts, c.keep_every)
            .unwrap_or_else(|e| panic!("{backend} staged: {e}"));
        assert!(
            staged == want,
            "{backend} staged bytes differ from a plain read"
        );
        let hosted =
            load_host(&ckpt, &selection, &opts).unwrap_or_else(|e| panic!("{backend} host: {e}"));
        assert_eq!(hosted.len(), want.len(), "{backend} host: tensor count");
        for (name, bytes) in &want {
            assert!(
                hosted[name] == *bytes,
                "{backend} host: {name} differs from a plain read"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn every_backend_reads_what_a_plain_read_does(c in case()) {
        run_case(&c);
    }
}

/// One large tensor across many extents and a file whose last aligned
/// block is short: the edges proptest visits rarely.
#[test]
fn large_tensor_and_short_tail() {
    run_case(&Case {
        shards: vec![vec![3 << 20, 1, 4095], vec![0, 5, 1 << 20]],
        pick: None,
        slot_pages: 16,
        slots: 3,
        depth: 4,
        keep_every: 2,
        seed: 7,
    });
}
