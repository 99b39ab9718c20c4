//! Parsing and planning a 100,000-tensor checkpoint (the size of the largest
//! mixture-of-experts checkpoints), headers held in memory so that only the
//! CPU work is measured.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use weightlift_format::{Checkpoint, Header, Parsed, encode_header};
use weightlift_plan::{Geometry, Selection, plan};
use weightlift_tests::fixtures::{moe_specs, shard_specs};

const TENSORS: usize = 100_000;
const SHARDS: usize = 40;

/// Each shard's header bytes and file size (the data is never materialised).
fn headers() -> Vec<(PathBuf, Vec<u8>, u64)> {
    shard_specs(&moe_specs(TENSORS), SHARDS)
        .iter()
        .enumerate()
        .map(|(k, specs)| {
            let enc = encode_header(specs, None).expect("valid fixture");
            let size = enc.bytes.len() as u64 + enc.data_len;
            (
                PathBuf::from(format!("model-{k:05}.safetensors")),
                enc.bytes,
                size,
            )
        })
        .collect()
}

fn parse(shards: &[(PathBuf, Vec<u8>, u64)]) -> Checkpoint {
    let parsed = shards
        .iter()
        .map(|(p, bytes, size)| match Header::parse(bytes, *size) {
            Ok(Parsed::Complete(h)) => (p.clone(), *size, h),
            other => panic!("fixture header did not parse: {other:?}"),
        })
        .collect();
    Checkpoint::from_headers(parsed).expect("valid fixture")
}

fn bench(c: &mut Criterion) {
    let shards = headers();
    let header_bytes: usize = shards.iter().map(|s| s.1.len()).sum();
    let ckpt = parse(&shards);
    assert_eq!(ckpt.len(), TENSORS);
    eprintln!("{TENSORS} tensors in {SHARDS} shards, {header_bytes} header bytes");
    let geometry = Geometry::default();

    let mut g = c.benchmark_group("100k_tensors");
    g.sample_size(20);
    g.bench_function("parse", |b| b.iter(|| parse(black_box(&shards))));
    g.bench_function("plan", |b| {
        b.iter(|| plan(black_box(&ckpt), &Selection::All, &geometry).expect("plans"))
    });
    g.bench_function("parse_and_plan", |b| {
        b.iter(|| {
            let ckpt = parse(black_box(&shards));
            plan(&ckpt, &Selection::All, &geometry).expect("plans")
        })
    });
    let names = Selection::names(ckpt.tensors().iter().step_by(8).map(|t| t.name.clone()));
    g.bench_function("plan_every_8th_by_name", |b| {
        b.iter(|| plan(black_box(&ckpt), &names, &geometry).expect("plans"))
    });
    let full = plan(&ckpt, &Selection::All, &geometry).expect("plans");
    g.bench_function("split_8", |b| {
        b.iter(|| black_box(&full).split(8).expect("splits"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
