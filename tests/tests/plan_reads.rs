//! End to end over real files: execute read plans with plain positional
//! reads, reassemble every tensor from its pieces, and compare byte for byte
//! with what the reference `safetensors` crate reads from the same files.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use weightlift_format::{Checkpoint, Dtype, TensorId, TensorSpec};
use weightlift_plan::{Geometry, ReadPlan, Selection, plan};
use weightlift_tests::fixtures::{
    LlamaConfig, TempDir, assert_same_as_reference, moe_specs, write_checkpoint,
};

/// Run a plan the simplest way: read each extent (short at the end of a
/// file), copy each piece into its tensor's buffer.
fn execute(c: &Checkpoint, p: &ReadPlan, out: &mut HashMap<TensorId, Vec<u8>>) {
    let files: Vec<std::fs::File> = c
        .shards()
        .iter()
        .map(|s| std::fs::File::open(s.path()).unwrap())
        .collect();
    let mut buf = Vec::new();
    for e in p.extents() {
        buf.resize(e.len as usize, 0);
        let size = c.shard(e.file).size();
        let want = (size.min(e.offset + e.len) - e.offset) as usize;
        files[e.file.index()]
            .read_exact_at(&mut buf[..want], e.offset)
            .unwrap();
        for piece in p.pieces(e) {
            let dst = out
                .entry(piece.tensor)
                .or_insert_with(|| vec![0xEE; c.tensor(piece.tensor).len() as usize]);
            let (t, x) = (piece.tensor_offset as usize, piece.extent_offset as usize);
            dst[t..t + piece.len as usize].copy_from_slice(&buf[x..x + piece.len as usize]);
        }
    }
}

/// Every tensor `p` delivers equals what the reference reads.
fn check_against_reference(c: &Checkpoint, got: &HashMap<TensorId, Vec<u8>>, ids: &[TensorId]) {
    assert_same_as_reference(c, ids.iter().copied(), |id| got.get(&id).map(Vec::as_slice));
    assert_eq!(
        got.len(),
        ids.iter().filter(|&&id| !c.tensor(id).is_empty()).count()
    );
}

fn geometries() -> Vec<Geometry> {
    vec![
        Geometry::default(),
        Geometry::new(512, 4096).unwrap().with_merge_gap(0),
        Geometry::new(4096, 1 << 20)
            .unwrap()
            .with_merge_gap(1 << 20),
        Geometry::new(1, 999).unwrap(),
    ]
}

#[test]
fn llama_checkpoint_loads_byte_for_byte() {
    let dir = TempDir::new("llama");
    let index = write_checkpoint(&dir.0, &LlamaConfig::for_size(24 << 20).specs(), 3, 5).unwrap();
    let c = Checkpoint::open(&index).unwrap();
    for g in geometries() {
        let p = plan(&c, &Selection::All, &g).unwrap();
        let mut got = HashMap::new();
        execute(&c, &p, &mut got);
        check_against_reference(&c, &got, p.tensors());
    }
}

#[test]
fn selections_and_shares_load_byte_for_byte() {
    let dir = TempDir::new("moe");
    let mut specs = moe_specs(3000);
    // Odd sizes and empty tensors, so that boundaries are unaligned.
    specs.push(TensorSpec::new("odd", Dtype::U8, [4099]));
    specs.push(TensorSpec::new("empty", Dtype::F32, [0, 7]));
    specs.push(TensorSpec::new("scalar", Dtype::F64, []));
    specs.push(TensorSpec::new("fp4", Dtype::F4, [3, 2]));
    let index = write_checkpoint(&dir.0, &specs, 2, 11).unwrap();
    let c = Checkpoint::open(&index).unwrap();
    let names = Selection::names(
        c.tensors()
            .iter()
            .filter(|t| t.name.len() % 3 == 0)
            .map(|t| t.name.clone()),
    );
    for g in geometries() {
        for sel in [&Selection::All, &names] {
            let p = plan(&c, sel, &g).unwrap();
            // Loading share by share into one map gives every tensor whole.
            let mut got = HashMap::new();
            for share in p.split(5).unwrap() {
                execute(&c, &share, &mut got);
            }
            check_against_reference(&c, &got, p.tensors());
        }
    }
}
