//! Behaviour of `schedule` on small hand-made cases: who reads, what moves,
//! and every error.

use std::path::PathBuf;

use weightlift_dist::{Error, Options, PartError, Request, Schedule, schedule};
use weightlift_format::{Checkpoint, Dtype, Header, TensorId, TensorSpec, encode_header};
use weightlift_plan::{Geometry, ReadPlan, Selection, Share, plan};

fn checkpoint(specs: &[TensorSpec]) -> Checkpoint {
    let enc = encode_header(specs, None).expect("valid");
    let size = enc.bytes.len() as u64 + enc.data_len;
    let mut file = enc.bytes;
    file.resize(size as usize, 0);
    let header = Header::parse_file(&file).expect("valid");
    Checkpoint::from_headers(vec![(PathBuf::from("m.safetensors"), size, header)]).expect("valid")
}

fn all(ckpt: &Checkpoint, geometry: Geometry) -> ReadPlan {
    plan(ckpt, &Selection::All, &geometry).expect("plan")
}

fn run(ckpt: &Checkpoint, plan: &ReadPlan, wants: &[Vec<Request>]) -> Result<Schedule, Error> {
    schedule(ckpt, plan, wants, &Options::default())
}

#[test]
fn row_parts_are_read_by_their_owners_and_never_sent() {
    // 8 rows of 16 bytes in 4 parts of 32 bytes: with byte alignment and
    // 32-byte extents, each extent is one rank's part.
    let ckpt = checkpoint(&[TensorSpec::new("w", Dtype::U8, [8, 16])]);
    let plan = all(&ckpt, Geometry::new(1, 32).unwrap());
    assert_eq!(plan.extents().len(), 4);
    let wants = vec![vec![Request::split(TensorId(0), 0)]; 4];
    let s = run(&ckpt, &plan, &wants).unwrap();
    assert_eq!(s.read_bytes(), [32; 4]);
    assert_eq!(s.sent_bytes(), [0; 4]);
    assert_eq!(s.local_bytes(), [32; 4]);
    for (rank, reads) in s.rounds()[0].reads.iter().enumerate() {
        assert_eq!(reads, &[rank]);
    }
}

#[test]
fn whole_tensors_for_everyone_spread_the_reads() {
    let ckpt = checkpoint(&[TensorSpec::new("w", Dtype::F32, [64, 16])]);
    let plan = all(&ckpt, Geometry::new(64, 256).unwrap());
    let wants = vec![vec![Request::whole(TensorId(0))]; 4];
    let s = run(&ckpt, &plan, &wants).unwrap();
    let (min, max) = (
        s.read_bytes().iter().min().unwrap(),
        s.read_bytes().iter().max().unwrap(),
    );
    assert!(max - min <= 256, "{:?}", s.read_bytes());
    // Every rank sends what it read to the three others.
    for r in 0..4 {
        assert_eq!(s.sent_bytes()[r], 3 * s.local_bytes()[r]);
        assert_eq!(s.received_bytes()[r] + s.local_bytes()[r], 4096);
    }
}

#[test]
fn moves_do_not_grow_with_rows() {
    // 10000 rows of 4 bytes, one extent: each rank's column is one strided move.
    let ckpt = checkpoint(&[TensorSpec::new("w", Dtype::U8, [10_000, 4])]);
    let plan = all(&ckpt, Geometry::new(1, 1 << 20).unwrap());
    let wants = vec![vec![Request::split(TensorId(0), 1)]; 4];
    let s = run(&ckpt, &plan, &wants).unwrap();
    let moves: Vec<_> = s.rounds()[0].moves.iter().flatten().flatten().collect();
    assert_eq!(moves.len(), 4);
    assert!(
        moves
            .iter()
            .all(|m| (m.run, m.count, m.src_stride) == (1, 10_000, 4))
    );
}

#[test]
fn a_run_across_extents_comes_from_both_readers() {
    // Two rows of 10 bytes in two column parts; 6-byte extents at the
    // tensor's start (byte alignment). Rank 1's first run, bytes 5..10,
    // crosses the boundary at 6: byte 5 is in extent 0, which rank 0 reads
    // (it wants 5 of its bytes), and 6..10 in extent 1, which rank 1 reads.
    let ckpt = checkpoint(&[TensorSpec::new("w", Dtype::U8, [2, 10])]);
    let plan = all(&ckpt, Geometry::new(1, 6).unwrap());
    assert_eq!(plan.extents().len(), 4);
    let wants = vec![vec![Request::split(TensorId(0), 1)]; 2];
    let s = run(&ckpt, &plan, &wants).unwrap();
    let owner = |extent: usize| {
        s.rounds()
            .iter()
            .flat_map(|r| r.reads.iter().enumerate())
            .find(|(_, reads)| reads.contains(&extent))
            .map(|(rank, _)| rank)
    };
    assert_eq!((owner(0), owner(1)), (Some(0), Some(1)));
    let mut to_rank_1: Vec<(usize, u64, u64)> = s
        .rounds()
        .iter()
        .flat_map(|r| {
            r.moves
                .iter()
                .enumerate()
                .flat_map(|(src, row)| row[1].iter().map(move |m| (src, m.dst_at, m.len())))
        })
        .collect();
    to_rank_1.sort_by_key(|&(_, at, _)| at);
    assert_eq!(to_rank_1[..2], [(0, 0, 1), (1, 1, 4)]);
    assert_eq!(to_rank_1.iter().map(|m| m.2).sum::<u64>(), 10);
}

#[test]
fn empty_requests_and_empty_tensors() {
    let ckpt = checkpoint(&[
        TensorSpec::new("e", Dtype::F16, [0, 3]),
        TensorSpec::new("s", Dtype::F32, []),
    ]);
    let plan = all(&ckpt, Geometry::new(8, 64).unwrap());
    let wants = vec![
        vec![Request::split(TensorId(0), 1), Request::whole(TensorId(1))],
        vec![],
    ];
    let s = run(&ckpt, &plan, &wants).unwrap();
    assert_eq!(s.outputs()[0][0].shape, [0, 2]);
    assert_eq!(s.outputs()[0][0].len, 0);
    assert_eq!(s.outputs()[0][1].len, 4);
    assert!(s.outputs()[1].is_empty());
    assert_eq!(s.rounds().len(), 1);
    // Nobody wants anything: the plan is still read.
    let s = run(&ckpt, &plan, &[vec![], vec![]]).unwrap();
    assert_eq!(s.read_bytes().iter().sum::<u64>(), plan.read_bytes());
}

#[test]
fn errors_name_the_tensor() {
    let ckpt = checkpoint(&[
        TensorSpec::new("w", Dtype::U8, [4, 4]),
        TensorSpec::new("scalar", Dtype::F32, []),
        TensorSpec::new("fp4", Dtype::F4, [3, 2]),
    ]);
    let full = all(&ckpt, Geometry::new(8, 64).unwrap());
    let only_w = plan(
        &ckpt,
        &Selection::names(["w"]),
        &Geometry::new(8, 64).unwrap(),
    )
    .unwrap();
    let err = |plan: &ReadPlan, wants: Vec<Vec<Request>>| run(&ckpt, plan, &wants).unwrap_err();

    assert_eq!(err(&full, vec![]), Error::NoRanks);
    let e = err(&only_w, vec![vec![Request::whole(TensorId(1))]]);
    assert!(matches!(e, Error::NotInPlan { rank: 0, .. }));
    assert!(e.to_string().contains("\"scalar\""), "{e}");
    let e = err(
        &full,
        vec![
            vec![],
            vec![Request::whole(TensorId(0)), Request::split(TensorId(0), 0)],
        ],
    );
    assert!(matches!(e, Error::Duplicate { rank: 1, .. }));
    assert!(e.to_string().contains("\"w\""), "{e}");
    let e = err(&full, vec![vec![Request::split(TensorId(1), 0)]]);
    assert!(matches!(
        e,
        Error::Split {
            source: PartError::NoSuchDim { dim: 0, dims: 0 },
            ..
        }
    ));
    assert!(e.to_string().contains("\"scalar\""), "{e}");
    let e = err(&full, vec![vec![Request::split(TensorId(0), 2)]]);
    assert!(matches!(
        e,
        Error::Split {
            source: PartError::NoSuchDim { dim: 2, dims: 2 },
            ..
        }
    ));
    // Three F4 rows of one byte each: two parts cut at a byte are fine, but
    // the columns are half bytes.
    assert!(run(&ckpt, &full, &vec![vec![Request::split(TensorId(2), 0)]; 2]).is_ok());
    let e = err(&full, vec![vec![Request::split(TensorId(2), 1)]; 2]);
    assert!(matches!(
        e,
        Error::Split {
            source: PartError::NotWholeBytes { dim: 1, bits: 4 },
            ..
        }
    ));
    assert!(e.to_string().contains("\"fp4\""), "{e}");
    let e = err(&full, vec![vec![Request::whole(TensorId(7))]]);
    assert!(matches!(
        e,
        Error::UnknownId {
            id: TensorId(7),
            count: 3,
            ..
        }
    ));

    // A share of a plan reads only part of a tensor.
    let big = checkpoint(&[TensorSpec::new("big", Dtype::U8, [4096])]);
    let whole = all(&big, Geometry::new(8, 64).unwrap());
    let share = whole.share(Share::new(0, 2).unwrap()).unwrap();
    let e = run(&big, &share, &[vec![Request::whole(TensorId(0))]]).unwrap_err();
    assert!(matches!(e, Error::Incomplete { len: 4096, .. }));
    assert!(e.to_string().contains("\"big\""), "{e}");
    // A plan of another checkpoint.
    let e = run(&ckpt, &whole, &[vec![]]).unwrap_err();
    assert!(matches!(e, Error::PlanMismatch { .. }), "{e}");
    // A round smaller than an extent.
    let e = schedule(&big, &whole, &[vec![]], &Options { round_bytes: 63 }).unwrap_err();
    assert_eq!(
        e,
        Error::RoundTooSmall {
            round_bytes: 63,
            largest_extent: 64
        }
    );
}
