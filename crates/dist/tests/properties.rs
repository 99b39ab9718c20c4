//! Property tests: random checkpoints, groups and requests; every schedule is
//! carried out against random file bytes and checked against a naive
//! element-wise `tensor_split`.

use std::path::PathBuf;

use proptest::prelude::*;
use weightlift_dist::{Request, Schedule, Want, schedule};
use weightlift_format::{Checkpoint, Dtype, Metadata, TensorId, TensorSpec};
use weightlift_plan::{Geometry, ReadPlan, Selection, plan};

/// A small deterministic generator, so that one seed draws a whole group's
/// requests (and shrinks as one value).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

type ShardSpec = (Vec<(Dtype, Vec<u64>)>, usize);

fn shard() -> impl Strategy<Value = ShardSpec> {
    let tensor = (
        proptest::sample::select(vec![Dtype::U8, Dtype::BF16, Dtype::F32, Dtype::F64]),
        prop::collection::vec(prop_oneof![0u64..3, 1u64..9, 10u64..40], 0..4),
    );
    (prop::collection::vec(tensor, 0..8), 0usize..200)
}

fn build(shards: Vec<ShardSpec>) -> Checkpoint {
    let shards = shards
        .into_iter()
        .enumerate()
        .map(|(f, (tensors, pad))| {
            let specs: Vec<TensorSpec> = tensors
                .into_iter()
                .enumerate()
                .map(|(i, (d, s))| TensorSpec::new(format!("s{f}.t{i}"), d, s))
                .collect();
            let meta = Metadata::from([("pad".to_owned(), "x".repeat(pad))]);
            (
                PathBuf::from(format!("shard{f}.safetensors")),
                specs,
                Some(meta),
            )
        })
        .collect();
    Checkpoint::described(shards).expect("valid")
}

fn geometry() -> impl Strategy<Value = Geometry> {
    (
        proptest::sample::select(vec![1u64, 2, 8, 64, 512]),
        1u64..12,
        prop_oneof![Just(0u64), 1u64..3000, Just(1 << 20)],
    )
        .prop_map(|(a, k, gap)| Geometry::new(a, a * k).expect("valid").with_merge_gap(gap))
}

/// A group's requests: each rank a random subset of the tensors, in random
/// order, each whole or split along a random dimension.
fn requests(ckpt: &Checkpoint, n: usize, rng: &mut Rng) -> Vec<Vec<Request>> {
    let density = rng.below(4); // 0: sparse .. 3: nearly everything
    (0..n)
        .map(|_| {
            let mut mine = Vec::new();
            for (i, t) in ckpt.tensors().iter().enumerate() {
                if rng.below(4) > density {
                    continue;
                }
                let id = TensorId(i as u32);
                mine.push(if t.shape.is_empty() || rng.below(3) == 0 {
                    Request::whole(id)
                } else {
                    Request::split(id, rng.below(t.shape.len() as u64) as usize)
                });
            }
            for i in (1..mine.len()).rev() {
                mine.swap(i, rng.below(i as u64 + 1) as usize);
            }
            mine
        })
        .collect()
}

/// The bytes of part `rank` of `n` of a tensor split along `dim`, element by
/// element, as `torch.tensor_split` defines it.
fn reference_part(
    bytes: &[u8],
    shape: &[u64],
    elem: usize,
    dim: usize,
    n: u64,
    rank: u64,
) -> (Vec<u64>, Vec<u8>) {
    let len = shape[dim];
    let sizes: Vec<u64> = (0..n).map(|i| len / n + u64::from(i < len % n)).collect();
    let first: u64 = sizes[..rank as usize].iter().sum();
    let mut part_shape = shape.to_vec();
    part_shape[dim] = sizes[rank as usize];
    let mut out = Vec::new();
    if part_shape.contains(&0) {
        return (part_shape, out);
    }
    let mut idx = vec![0u64; shape.len()];
    loop {
        let mut linear = 0u64;
        for (d, &i) in idx.iter().enumerate() {
            let i = if d == dim { i + first } else { i };
            linear = linear * shape[d] + i;
        }
        let at = linear as usize * elem;
        out.extend_from_slice(&bytes[at..at + elem]);
        // Odometer over the part's shape, last dimension fastest.
        let mut d = shape.len();
        loop {
            if d == 0 {
                return (part_shape, out);
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < part_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Carry out `s`: read, move, and check every property named in the crate
/// docs against the reference.
fn check(
    ckpt: &Checkpoint,
    plan: &ReadPlan,
    wants: &[Vec<Request>],
    round_bytes: u64,
    s: &Schedule,
    seed: u64,
) {
    let n = wants.len();
    let mut rng = Rng(seed ^ 0x5eed);
    let files: Vec<Vec<u8>> = ckpt
        .shards()
        .iter()
        .map(|sh| (0..sh.size()).map(|_| rng.next() as u8).collect())
        .collect();
    let extents = plan.extents();

    // Reads: each extent once, whole, in plan order per rank, within budget
    // and bound.
    let total: u64 = extents.iter().map(|e| e.len).sum();
    let largest = extents.iter().map(|e| e.len).max().unwrap_or(0);
    let bound = total.div_ceil(n as u64) + largest;
    assert_eq!(s.read_bound(), bound);
    let mut times_read = vec![0u32; extents.len()];
    let mut read = vec![0u64; n];
    let mut outputs: Vec<Vec<Vec<u8>>> = s
        .outputs()
        .iter()
        .map(|outs| outs.iter().map(|o| vec![0u8; o.len as usize]).collect())
        .collect();
    let mut written: Vec<Vec<Vec<u8>>> = outputs.clone();
    let (mut sent, mut received, mut local) = (vec![0u64; n], vec![0u64; n], vec![0u64; n]);
    let mut moves = 0usize;
    for round in s.rounds() {
        assert_eq!(round.reads.len(), n);
        assert_eq!(round.moves.len(), n);
        let buffers: Vec<Vec<u8>> = round
            .reads
            .iter()
            .enumerate()
            .map(|(r, list)| {
                assert!(list.windows(2).all(|w| w[0] < w[1]), "plan order");
                let mut buf = Vec::new();
                for &i in list {
                    times_read[i] += 1;
                    let e = &extents[i];
                    read[r] += e.len;
                    let file = &files[e.file.index()];
                    for at in e.offset..e.offset + e.len {
                        // A read past the end of the file returns short.
                        buf.push(file.get(at as usize).copied().unwrap_or(0xa5));
                    }
                }
                assert!(buf.len() as u64 <= round_bytes, "round budget");
                buf
            })
            .collect();
        for (src, row) in round.moves.iter().enumerate() {
            assert_eq!(row.len(), n);
            for (dst, list) in row.iter().enumerate() {
                for m in list {
                    moves += 1;
                    assert!(m.run > 0 && m.count > 0, "empty move");
                    assert!(m.count == 1 || m.src_stride >= m.run, "overlapping runs");
                    let out = &mut outputs[dst][m.output];
                    let marks = &mut written[dst][m.output];
                    for i in 0..m.count {
                        let from = (m.src_at + i * m.src_stride) as usize;
                        let to = (m.dst_at + i * m.run) as usize;
                        let run = m.run as usize;
                        assert!(from + run <= buffers[src].len(), "read outside the buffer");
                        assert!(to + run <= out.len(), "write outside the output");
                        out[to..to + run].copy_from_slice(&buffers[src][from..from + run]);
                        for mark in &mut marks[to..to + run] {
                            *mark += 1;
                        }
                    }
                    if src == dst {
                        local[src] += m.len();
                    } else {
                        sent[src] += m.len();
                        received[dst] += m.len();
                    }
                }
            }
        }
    }
    assert!(times_read.iter().all(|&t| t == 1), "each extent read once");
    assert_eq!(read, s.read_bytes());
    assert!(read.iter().all(|&r| r <= bound), "{read:?} over {bound}");
    assert_eq!(sent, s.sent_bytes());
    assert_eq!(received, s.received_bytes());
    assert_eq!(local, s.local_bytes());

    // Moves stay proportional to pieces times the ranks that want them.
    let wanting = |t: TensorId| {
        wants
            .iter()
            .filter(|w| w.iter().any(|r| r.tensor == t))
            .count()
    };
    let bound_moves: usize = plan
        .all_pieces()
        .iter()
        .map(|p| 3 * wanting(p.tensor))
        .sum();
    assert!(moves <= bound_moves, "{moves} moves for {bound_moves}");

    // Outputs: each byte written once, equal to the reference.
    for (rank, requests) in wants.iter().enumerate() {
        assert_eq!(s.outputs()[rank].len(), requests.len());
        for (o, req) in requests.iter().enumerate() {
            let out = &s.outputs()[rank][o];
            assert_eq!((out.tensor, out.want), (req.tensor, req.want));
            assert!(
                written[rank][o].iter().all(|&w| w == 1),
                "rank {rank} output {o} written once"
            );
            let t = ckpt.tensor(req.tensor);
            let bytes = &files[t.file.index()][t.range.start as usize..t.range.end as usize];
            let (shape, expected) = match req.want {
                Want::Whole => (t.shape.clone(), bytes.to_vec()),
                Want::Split { dim } => {
                    let elem = (t.dtype.bits() / 8) as usize;
                    reference_part(bytes, &t.shape, elem, dim, n as u64, rank as u64)
                }
            };
            assert_eq!(out.shape, shape);
            assert_eq!(out.len, expected.len() as u64);
            assert!(
                outputs[rank][o] == expected,
                "rank {rank} output {o} ({})",
                t.name
            );
        }
    }
}

fn case() -> impl Strategy<Value = (Checkpoint, Geometry, usize, u64)> {
    (
        prop::collection::vec(shard(), 1..4).prop_map(build),
        geometry(),
        prop_oneof![1usize..5, 1usize..=64],
        any::<u64>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn schedules_deliver_exactly_what_is_asked((ckpt, geometry, n, seed) in case()) {
        let mut rng = Rng(seed);
        let wants = requests(&ckpt, n, &mut rng);
        // The plan reads the union of the requests, and sometimes more.
        let extra = rng.below(3) == 0;
        let selection = Selection::Ids(
            (0..ckpt.len())
                .map(|i| TensorId(i as u32))
                .filter(|&t| (extra && rng.below(2) == 0) || wants.iter().any(|w| w.iter().any(|r| r.tensor == t)))
                .collect(),
        );
        let plan = plan(&ckpt, &selection, &geometry).expect("plan");
        let largest = plan.extents().iter().map(|e| e.len).max().unwrap_or(0);
        let round_bytes = match rng.below(4) {
            0 => largest,
            1 => u64::MAX,
            _ => largest + rng.below(3 * largest + 1),
        };
        let options = weightlift_dist::Options { round_bytes };
        let s = schedule(&ckpt, &plan, &wants, &options).expect("schedule");
        check(&ckpt, &plan, &wants, round_bytes, &s, seed);
        // Deterministic: the same inputs give the same schedule.
        prop_assert_eq!(schedule(&ckpt, &plan, &wants, &options).expect("schedule"), s);
    }
}
