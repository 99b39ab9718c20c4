//! A group load run by every rank in one process, its all-to-all done by
//! hand: each rank receives exactly its requests, byte for byte as a plain
//! read and `tensor_split` give them, and the group reads each extent once.

mod common;

use std::sync::Arc;

use common::*;
use weightlift::group::{GroupLoad, fingerprint};
use weightlift::{Checkpoint, LoadOptions};
use weightlift_dist::{Request, Want};
use weightlift_format::{Dtype, TensorSpec};
use weightlift_tests::fixtures::write_checkpoint;

/// Part `index` of `n` of a row-major tensor of `shape` (elements of
/// `size` bytes) split along `dim` as torch.tensor_split does, element by
/// element.
fn split(bytes: &[u8], shape: &[u64], size: usize, dim: usize, n: usize, index: usize) -> Vec<u8> {
    let len = shape[dim] as usize;
    let (q, r) = (len / n, len % n);
    let lo = index * q + index.min(r);
    let hi = lo + q + usize::from(index < r);
    let outer: usize = shape[..dim].iter().product::<u64>() as usize;
    let inner: usize = shape[dim + 1..].iter().product::<u64>() as usize * size;
    let mut out = Vec::new();
    for o in 0..outer {
        for i in lo..hi {
            let at = (o * len + i) * inner;
            out.extend_from_slice(&bytes[at..at + inner]);
        }
    }
    out
}

#[test]
fn every_rank_receives_its_requests_and_the_group_reads_each_extent_once() {
    let dir = scratch("group");
    let specs = vec![
        TensorSpec::new("embed", Dtype::F32, [37, 64]),
        TensorSpec::new("w1", Dtype::BF16, [128, 300]),
        TensorSpec::new("w2", Dtype::F16, [7, 5, 3]),
        TensorSpec::new("bias", Dtype::U8, [33]),
        TensorSpec::new("scalar", Dtype::F64, []),
        TensorSpec::new("empty", Dtype::F32, [0, 4]),
    ];
    let path = write_checkpoint(&dir.0, &specs, 2, 5).unwrap();
    let ckpt = Arc::new(Checkpoint::open(&path).unwrap());
    assert_eq!(
        fingerprint(&ckpt),
        fingerprint(&Checkpoint::open(&path).unwrap())
    );
    let plain = plain_bytes(&ckpt);
    let id = |n: &str| ckpt.id(n).unwrap();
    let n = 3;
    // Rank 0 and 1 split the matrices; rank 2 takes some whole, some not.
    let wants: Vec<Vec<Request>> = vec![
        vec![
            Request::split(id("embed"), 0),
            Request::split(id("w1"), 1),
            Request::whole(id("bias")),
        ],
        vec![
            Request::split(id("embed"), 0),
            Request::split(id("w1"), 1),
            Request::split(id("w2"), 2),
        ],
        vec![
            Request::whole(id("embed")),
            Request::whole(id("scalar")),
            Request::whole(id("empty")),
        ],
    ];
    // Small rounds: many of them, each extent once.
    let options = LoadOptions::default();
    let loads: Vec<GroupLoad> = (0..n)
        .map(|r| GroupLoad::new(ckpt.clone(), &wants, r, 4096, &options).unwrap())
        .collect();
    assert!(loads[0].rounds() > 5, "{} rounds", loads[0].rounds());
    let mut completed: Vec<Vec<usize>> = loads.iter().map(|l| vec![0; l.outputs().len()]).collect();
    let mut outputs: Vec<Vec<Vec<u8>>> = loads
        .iter()
        .map(|l| {
            l.outputs()
                .iter()
                .map(|o| vec![0xA5; o.len as usize])
                .collect()
        })
        .collect();
    let mut written: Vec<Vec<u64>> = loads.iter().map(|l| vec![0; l.outputs().len()]).collect();
    for k in 0..loads[0].rounds() {
        let rounds: Vec<_> = loads.iter().map(|l| l.round(k, None).unwrap()).collect();
        for (me, x) in rounds.iter().enumerate() {
            // The all-to-all: from each rank, its split for `me`, in rank order.
            let mut recv = Vec::new();
            for (src, from) in rounds.iter().enumerate() {
                let start: u64 = from.send_splits[..me].iter().sum();
                let len = from.send_splits[me];
                assert_eq!(len, x.recv_splits[src]);
                // SAFETY: the send buffer is complete and nothing writes it.
                let bytes = unsafe { from.send.slice(start as usize, len as usize) };
                recv.extend_from_slice(bytes);
            }
            for u in &x.unpack {
                let out = &mut outputs[me][u.output];
                out[u.at as usize..(u.at + u.len) as usize]
                    .copy_from_slice(&recv[u.recv_at as usize..(u.recv_at + u.len) as usize]);
                written[me][u.output] += u.len;
            }
            for &o in &x.complete {
                assert_eq!(
                    written[me][o],
                    loads[me].outputs()[o].len,
                    "rank {me} output {o}"
                );
                completed[me][o] += 1;
            }
        }
    }
    for (me, l) in loads.iter().enumerate() {
        for (o, out) in l.outputs().iter().enumerate() {
            let t = ckpt.tensor(out.tensor);
            let whole = &plain[&t.name];
            let expected = match out.want {
                Want::Whole => whole.clone(),
                Want::Split { dim } => {
                    split(whole, &t.shape, t.dtype.bits() as usize / 8, dim, n, me)
                }
            };
            assert_eq!(outputs[me][o], expected, "rank {me}: {}", t.name);
            assert_eq!(written[me][o], out.len);
            // Each output with bytes is complete once, in the round that
            // brought its last byte; an empty one in none.
            assert_eq!(
                completed[me][o],
                usize::from(out.len > 0),
                "rank {me}: {}",
                t.name
            );
        }
    }
    // Each byte read once: the ranks' reads add up to the plan's.
    let s = loads[0].schedule();
    let read: u64 = s.read_bytes().iter().sum();
    let union: u64 = ["embed", "w1", "w2", "bias", "scalar", "empty"]
        .iter()
        .map(|n| ckpt.find(n).unwrap().len())
        .sum();
    assert!(
        read >= union && read < union + 2 * 2 * 4096 * 6,
        "{read} for {union}"
    );
}
