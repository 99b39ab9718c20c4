//! Fuzz a ServerlessLLM checkpoint: the input is a partition layout and a
//! `tensor_index.json`. The index is parsed; what parses is placed in the
//! partitions (pure, no I/O); what opens is planned with a geometry taken
//! from the input, and the plan must cover every tensor byte once, in
//! aligned extents inside the partitions, with every tensor inside its
//! partition.
//!
//! Input: byte 0 is the geometry; byte 1 the number of partitions (0 to 3);
//! then two bytes a partition, its size in 64-byte units; the rest is the
//! index.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use weightlift_format::{Checkpoint, SllmIndex};
use weightlift_plan::{Geometry, Selection, plan};

const INDEX: &str = "m/tensor_index.json";

fuzz_target!(|data: &[u8]| {
    let [g, n, rest @ ..] = data else {
        return;
    };
    let n = usize::from(n % 4);
    if rest.len() < 2 * n {
        return;
    }
    let (sizes, json) = rest.split_at(2 * n);
    let partitions: Vec<(PathBuf, u64)> = sizes
        .chunks(2)
        .enumerate()
        .map(|(i, s)| {
            (
                PathBuf::from(format!("m/tensor.data_{i}")),
                u64::from(u16::from_le_bytes([s[0], s[1]])) * 64,
            )
        })
        .collect();
    let index = match SllmIndex::parse(json) {
        Ok(i) => i,
        Err(e) => {
            // Displaying the error does not panic.
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let entries = index.entries().len();
    let ckpt = match Checkpoint::from_sllm(PathBuf::from(INDEX), index, partitions.clone()) {
        Ok(c) => c,
        Err(e) => {
            assert_eq!(e.file(), Path::new(INDEX), "{e}");
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert_eq!(ckpt.len(), entries);
    assert_eq!(ckpt.shards().len(), partitions.len());
    for t in ckpt.tensors() {
        assert!(t.range.end <= ckpt.shard(t.file).size(), "{}", t.name);
        assert_eq!(ckpt.find(&t.name), Some(t));
    }
    let alignment = 1u64 << (g & 0x0f);
    let geometry = Geometry::new(alignment, alignment * u64::from(1 + (g >> 4)))
        .expect("valid geometry")
        .with_merge_gap(u64::from(*g) * 37);
    let p = plan(&ckpt, &Selection::All, &geometry).expect("plans");
    let mut covered = vec![0u64; ckpt.len()];
    for (e, pieces) in p.iter() {
        let size = ckpt.shard(e.file).size();
        assert!(
            e.offset % alignment == 0 && e.len % alignment == 0 && e.len <= geometry.max_extent()
        );
        assert!(e.offset + e.len <= size.div_ceil(alignment) * alignment);
        for piece in pieces {
            let t = ckpt.tensor(piece.tensor);
            assert_eq!(
                e.offset + piece.extent_offset,
                t.range.start + piece.tensor_offset
            );
            covered[piece.tensor.index()] += piece.len;
        }
    }
    for (t, n) in ckpt.tensors().iter().zip(covered) {
        assert_eq!(n, t.len(), "{}", t.name);
    }
});
