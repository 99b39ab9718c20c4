//! Property tests of the planner over random checkpoints and geometries.

use std::collections::BTreeSet;
use std::path::PathBuf;

use proptest::prelude::*;
use weightlift_format::{Checkpoint, Dtype, Header, Metadata, TensorId, TensorSpec, encode_header};
use weightlift_plan::{Geometry, ReadPlan, Selection, Share, plan};

/// One shard: tensors (unique names across the checkpoint are made by
/// prefixing the shard number) and metadata that shifts the data section.
fn shard() -> impl Strategy<Value = (Vec<(Dtype, Vec<u64>)>, usize)> {
    let tensor = (
        proptest::sample::select(Dtype::ALL.to_vec()),
        prop::collection::vec(prop_oneof![0u64..4, 1u64..70, Just(1000)], 0..3),
    )
        .prop_map(|(d, mut shape)| {
            if d.bytes_for(shape.iter().product()).is_none() {
                shape.push(4);
            }
            (d, shape)
        });
    (prop::collection::vec(tensor, 0..14), 0usize..300)
}

fn checkpoint() -> impl Strategy<Value = Checkpoint> {
    prop::collection::vec(shard(), 1..4).prop_map(|shards| {
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
    })
}

fn geometry() -> impl Strategy<Value = Geometry> {
    (
        proptest::sample::select(vec![1u64, 2, 8, 64, 512, 4096]),
        1u64..12,
        prop_oneof![Just(0u64), 1u64..5000, Just(1 << 20)],
    )
        .prop_map(|(a, k, gap)| Geometry::new(a, a * k).expect("valid").with_merge_gap(gap))
}

/// A checkpoint, a geometry, and a selection (all, or a random subset by name).
fn case() -> impl Strategy<Value = (Checkpoint, Geometry, Selection)> {
    (checkpoint(), geometry(), any::<bool>(), any::<u64>()).prop_map(|(c, g, all, bits)| {
        let sel = if all {
            Selection::All
        } else {
            Selection::names(
                c.tensors()
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| bits.rotate_left(*i as u32) & 1 == 1)
                    .map(|(_, t)| t.name.clone()),
            )
        };
        (c, g, sel)
    })
}

fn selected_ids(c: &Checkpoint, sel: &Selection) -> Vec<TensorId> {
    match sel {
        Selection::All => (0..c.len() as u32).map(TensorId).collect(),
        Selection::Names(n) => {
            let mut ids: Vec<_> = n.iter().map(|n| c.id(n).unwrap()).collect();
            ids.sort();
            ids
        }
        _ => unreachable!(),
    }
}

/// Every selected tensor byte is in exactly one piece; nothing else is.
fn check_coverage(c: &Checkpoint, p: &ReadPlan, sel: &[TensorId]) -> Result<(), TestCaseError> {
    let mut covered: Vec<Vec<(u64, u64)>> = vec![Vec::new(); c.len()];
    for e in p.extents() {
        for piece in p.pieces(e) {
            let t = c.tensor(piece.tensor);
            prop_assert_eq!(t.file, e.file);
            prop_assert!(piece.len > 0);
            prop_assert!(piece.extent_offset + piece.len <= e.len);
            prop_assert!(piece.tensor_offset + piece.len <= t.len());
            // The piece's bytes are the same file bytes seen from both sides.
            prop_assert_eq!(
                e.offset + piece.extent_offset,
                t.range.start + piece.tensor_offset
            );
            covered[piece.tensor.index()]
                .push((piece.tensor_offset, piece.tensor_offset + piece.len));
        }
    }
    let wanted: BTreeSet<_> = sel.iter().copied().collect();
    for (i, mut ranges) in covered.into_iter().enumerate() {
        let t = c.tensor(TensorId(i as u32));
        if !wanted.contains(&TensorId(i as u32)) {
            prop_assert!(ranges.is_empty(), "unselected {} has pieces", t.name);
            continue;
        }
        ranges.sort();
        let mut at = 0;
        for (s, e) in ranges {
            prop_assert_eq!(s, at, "gap or overlap in {}", t.name);
            at = e;
        }
        prop_assert_eq!(at, t.len(), "{} not fully covered", t.name);
    }
    Ok(())
}

fn check_extents(c: &Checkpoint, p: &ReadPlan, g: &Geometry) -> Result<(), TestCaseError> {
    let a = g.alignment();
    let mut prev: Option<&weightlift_plan::Extent> = None;
    for e in p.extents() {
        let size = c.shard(e.file).size();
        prop_assert_eq!(e.offset % a, 0);
        prop_assert_eq!(e.len % a, 0);
        prop_assert!(e.len > 0 && e.len <= g.max_extent());
        prop_assert!(
            e.offset + e.len <= size.div_ceil(a) * a,
            "extent past the file's aligned end"
        );
        prop_assert!(!p.pieces(e).is_empty(), "an extent carries nothing");
        if let Some(q) = prev.filter(|q| q.file == e.file) {
            prop_assert!(
                q.offset + q.len <= e.offset,
                "extents out of order or overlapping"
            );
            let gap = e.offset - (q.offset + q.len);
            if gap == 0 {
                // Contiguous extents are cuts of one run: all but the last are full.
                prop_assert_eq!(q.len, g.max_extent(), "a run was cut short");
            } else {
                // Separate runs only where the gap is worth skipping; inside a
                // run, only whole chunks that carry nothing are skipped.
                prop_assert!(
                    gap > g.merge_gap() || (gap % g.max_extent() == 0 && q.len == g.max_extent()),
                    "gap of {} not merged (merge gap {})",
                    gap,
                    g.merge_gap()
                );
            }
        } else if let Some(q) = prev {
            prop_assert!(q.file < e.file, "files out of order");
        }
        prev = Some(e);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_selected_byte_is_in_exactly_one_piece((c, g, sel) in case()) {
        let p = plan(&c, &sel, &g).unwrap();
        let ids = selected_ids(&c, &sel);
        prop_assert_eq!(p.tensors(), &ids[..]);
        check_coverage(&c, &p, &ids)?;
        prop_assert_eq!(p.stats().payload_bytes, ids.iter().map(|&i| c.tensor(i).len()).sum::<u64>());
    }

    #[test]
    fn extents_are_aligned_bounded_ordered_and_inside_the_file((c, g, sel) in case()) {
        let p = plan(&c, &sel, &g).unwrap();
        check_extents(&c, &p, &g)?;
        for f in 0..c.shards().len() as u32 {
            let file = weightlift_format::FileId(f);
            prop_assert!(p.extents_of(file).iter().all(|e| e.file == file));
        }
        prop_assert_eq!(plan(&c, &sel, &g).unwrap(), p, "planning is deterministic");
    }

    #[test]
    fn shares_cover_each_piece_once_and_balance_bytes((c, g, sel) in case(), n in 1u32..9) {
        let p = plan(&c, &sel, &g).unwrap();
        let shares = p.split(n).unwrap();
        prop_assert_eq!(shares.len(), n as usize);
        // In order, the shares' extents and pieces are exactly the plan's.
        let extents: Vec<_> = shares.iter().flat_map(|s| s.extents().iter().cloned()).collect();
        let pieces: Vec<_> = shares.iter().flat_map(|s| s.all_pieces().iter().copied()).collect();
        prop_assert_eq!(extents.len(), p.extents().len());
        prop_assert_eq!(&pieces[..], p.all_pieces());
        for (s, e) in extents.iter().zip(p.extents()) {
            prop_assert_eq!((s.file, s.offset, s.len), (e.file, e.offset, e.len));
        }
        // Each share is a valid plan in its own right.
        for s in &shares {
            check_extents(&c, s, &g)?;
            for e in s.extents() {
                prop_assert!(s.pieces(e).iter().all(|piece| s.tensors().contains(&piece.tensor)));
            }
        }
        // Every tensor is delivered by some share, empty ones by share 0.
        let delivered: BTreeSet<_> = shares.iter().flat_map(|s| s.tensors().iter().copied()).collect();
        prop_assert_eq!(delivered, p.tensors().iter().copied().collect::<BTreeSet<_>>());
        // The documented cut rule: share k starts at the extent boundary
        // nearest to k·T/n, the earlier one on a tie (checked as an argmin).
        let prefix: Vec<u128> = std::iter::once(0)
            .chain(p.extents().iter().scan(0u128, |acc, e| {
                *acc += u128::from(e.len);
                Some(*acc)
            }))
            .collect();
        let mut start = 0;
        for (k, s) in shares.iter().enumerate() {
            let ideal = k as u128 * u128::from(p.read_bytes());
            let distance = |i: usize| (prefix[i] * u128::from(n)).abs_diff(ideal);
            let want = (0..prefix.len()).min_by_key(|&i| (distance(i), i)).unwrap();
            prop_assert_eq!(start, want, "share {} starts at the wrong extent", k);
            start += s.extents().len();
        }
        // The documented bound: |share − T/n| < E, i.e. |share·n − T| < E·n.
        let total = i128::from(p.read_bytes());
        let largest = i128::from(p.stats().largest_extent);
        for (k, s) in shares.iter().enumerate() {
            let dev = (i128::from(s.read_bytes()) * i128::from(n) - total).abs();
            if largest == 0 {
                prop_assert_eq!(dev, 0);
            } else {
                prop_assert!(dev < largest * i128::from(n), "share {k}: {} of {total} bytes over {n}, E = {largest}", s.read_bytes());
            }
        }
        for (k, s) in shares.iter().enumerate() {
            prop_assert_eq!(&p.share(Share::new(k as u32, n).unwrap()).unwrap(), s);
        }
    }
}

/// A one-shard checkpoint of `specs`, held in memory.
fn one_shard(specs: &[TensorSpec]) -> Checkpoint {
    let enc = encode_header(specs, None).unwrap();
    let size = enc.bytes.len() as u64 + enc.data_len;
    let mut file = enc.bytes;
    file.resize(size as usize, 0);
    Checkpoint::from_headers(vec![("m".into(), size, Header::parse_file(&file).unwrap())]).unwrap()
}

#[test]
fn small_neighbours_share_an_extent_and_large_tensors_split() {
    let specs = [
        TensorSpec::new("tiny0", Dtype::U8, [3]),
        TensorSpec::new("tiny1", Dtype::U8, [5]),
        TensorSpec::new("big", Dtype::F32, [10_000]),
    ];
    let c = one_shard(&specs);
    let p = plan(&c, &Selection::All, &Geometry::new(4096, 8192).unwrap()).unwrap();
    let first = &p.extents()[0];
    let names: Vec<_> = p
        .pieces(first)
        .iter()
        .map(|x| c.tensor(x.tensor).name.as_str())
        .collect();
    assert_eq!(names, ["tiny0", "tiny1", "big"]);
    let big_pieces = p
        .all_pieces()
        .iter()
        .filter(|x| c.tensor(x.tensor).name == "big")
        .count();
    assert_eq!(big_pieces, p.extents().len());
    assert!(p.extents().len() >= 5, "40 KB in 8 KiB extents");
}

#[test]
fn bad_selections_and_settings_are_errors() {
    let c = Checkpoint::from_headers(vec![]).unwrap();
    let err = plan(&c, &Selection::names(["nope"]), &Geometry::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no tensor named \"nope\" in the checkpoint"
    );
    let err = plan(
        &c,
        &Selection::Ids([TensorId(0)].into()),
        &Geometry::default(),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        weightlift_plan::Error::UnknownId { count: 0, .. }
    ));
    assert!(Geometry::new(3000, 6000).is_err());
    assert!(Geometry::new(4096, 6000).is_err());
    assert!(Geometry::new(0, 0).is_err());
    assert!(Share::new(2, 2).is_err());
    let empty = plan(&c, &Selection::All, &Geometry::default()).unwrap();
    assert!(empty.split(0).is_err());
    assert!(empty.share(Share { index: 3, count: 2 }).is_err());
    assert_eq!(empty.split(3).unwrap().len(), 3);
}

#[test]
fn files_too_large_to_align_are_an_error_naming_them() {
    // A file system may claim any size: a file of 2^64 − 100 bytes holding
    // one U8 tensor cannot have its aligned extents numbered.
    let size = u64::MAX - 100;
    // Fifteen tensors of 2^60 bytes and a tail filling the file exactly.
    let header_for = |tail: u64| {
        let mut json = String::from("{");
        let mut at = 0u64;
        for (i, len) in std::iter::repeat_n(1u64 << 60, 15)
            .chain([tail])
            .enumerate()
        {
            let sep = if i == 0 { "" } else { "," };
            json.push_str(&format!(
                r#"{sep}"t{i}":{{"dtype":"U8","shape":[{len}],"data_offsets":[{at},{}]}}"#,
                at + len
            ));
            at += len;
        }
        json + "}"
    };
    // The tail's digits change the header's length: iterate to a fixed point.
    let mut tail = 0;
    let json = loop {
        let json = header_for(tail);
        let next = size - 8 - json.len() as u64 - 15 * (1u64 << 60);
        if next == tail {
            break json;
        }
        tail = next;
    };
    let json_len = json.len() as u64;
    let mut bytes = json_len.to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    let header = match Header::parse(&bytes, size).unwrap() {
        weightlift_format::Parsed::Complete(h) => h,
        other => panic!("{other:?}"),
    };
    let c =
        Checkpoint::from_headers(vec![(PathBuf::from("huge.safetensors"), size, header)]).unwrap();
    let err = plan(&c, &Selection::All, &Geometry::default()).unwrap_err();
    assert!(
        matches!(&err, weightlift_plan::Error::FileTooLarge { file, .. } if file.ends_with("huge.safetensors")),
        "{err}"
    );
    assert!(err.to_string().contains("huge.safetensors"), "{err}");
}

#[test]
fn pieces_come_from_the_plan_the_extent_belongs_to() {
    let specs: Vec<_> = (0..50)
        .map(|i| TensorSpec::new(format!("t{i}"), Dtype::F32, [300]))
        .collect();
    let c = one_shard(&specs);
    let p = plan(&c, &Selection::All, &Geometry::new(512, 4096).unwrap()).unwrap();
    let pairs: Vec<_> = p.iter().collect();
    assert_eq!(pairs.len(), p.extents().len());
    for (e, pieces) in pairs {
        assert_eq!(pieces, p.pieces(e));
    }
    let shares = p.split(3).unwrap();
    let foreign = &shares[2].extents()[0];
    let caught = std::panic::catch_unwind(|| p.pieces(foreign).len());
    assert!(
        caught.is_err(),
        "an extent of another plan must not index this one"
    );
}

#[test]
fn one_share_costs_the_plan_not_the_share_count() {
    // With four billion shares, computing one must not build the cut list
    // of all of them (8 bytes per share: 32 GiB, an allocation failure).
    // Which share gets which extent is checked against split() above.
    let specs: Vec<_> = (0..20)
        .map(|i| TensorSpec::new(format!("t{i}"), Dtype::U8, [5000]))
        .collect();
    let c = one_shard(&specs);
    let p = plan(&c, &Selection::All, &Geometry::new(512, 4096).unwrap()).unwrap();
    let n = u32::MAX;
    for k in [0, 1, n / 3, n / 2, n - 2, n - 1] {
        let share = p.share(Share::new(k, n).unwrap()).unwrap();
        // Shares this thin hold at most one extent each.
        assert!(share.extents().len() <= 1, "share {k}");
    }
}
