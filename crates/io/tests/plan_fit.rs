//! A plan that does not fit the engine or its destinations is refused
//! before any read, with an error that says what does not fit.

mod common;

use std::path::PathBuf;

use common::*;
use weightlift_format::Checkpoint;
use weightlift_io::{
    Backend, Engine, EngineOptions, Error, InPlace, PlanMismatch, Release, Ring, Sink,
};
use weightlift_plan::{Geometry, Selection, plan};

/// A sink that must never be reached.
struct Unreached;

impl Sink for Unreached {
    fn deliver(&mut self, index: usize, _: &[u8], _: usize) -> Result<Release, Error> {
        panic!("extent {index} delivered from a plan that does not fit");
    }
}

#[test]
fn a_plan_that_does_not_fit_says_what_does_not() {
    let dir = scratch("plan-fit");
    let path = dir.0.join("a.safetensors");
    write_shard(&path, "t.", &[10_000, 3, 20_000], 1);
    let ckpt = Checkpoint::open(&path).unwrap();
    let paths: Vec<PathBuf> = vec![path];
    let options = EngineOptions {
        backends: Some(vec![Backend::PreadBuffered]),
        slot_size: 8192,
        ring_bytes: 4 * 8192,
        ..EngineOptions::default()
    };
    let engine = Engine::open(&paths, &options, true).unwrap();
    let good = plan(&ckpt, &Selection::All, &engine.geometry()).unwrap();
    let longest = good.extents().iter().map(|e| e.len).max().unwrap();
    assert!(good.extents().len() > 1 && longest > 4096);

    // Staging slots shorter than an extent.
    let ring = Ring::new(4096, 2).unwrap();
    match engine.run(&good, &ring, &mut Unreached, None) {
        Err(Error::Plan(PlanMismatch::ExtentOverSlot { len, slot_size })) => {
            assert_eq!((len, slot_size), (longest, 4096));
        }
        other => panic!("expected an extent over a slot, got {other:?}"),
    }

    // An alignment finer than the engine's.
    let fine = plan(&ckpt, &Selection::All, &Geometry::new(512, 8192).unwrap()).unwrap();
    let dst = InPlace::packed(&fine, 1).unwrap();
    match engine.run_in_place(&fine, &dst, |_| Ok(()), None) {
        Err(
            e @ Error::Plan(PlanMismatch::Alignment {
                plan: 512,
                engine: 4096,
            }),
        ) => {
            let message = e.to_string();
            assert!(
                message.contains("512") && message.contains("4096"),
                "{message}"
            );
        }
        other => panic!("expected an alignment mismatch, got {other:?}"),
    }

    // Destinations for no file at all, and for another plan.
    match InPlace::packed(&good, 0) {
        Err(Error::Plan(PlanMismatch::UnknownFile { index: 0, files: 0 })) => {}
        other => panic!("expected an unknown file, got {other:?}"),
    }
    let one = plan(
        &ckpt,
        &Selection::Names(["t.1".to_string()].into()),
        &engine.geometry(),
    )
    .unwrap();
    let other = InPlace::packed(&one, 1).unwrap();
    match engine.run_in_place(&good, &other, |_| Ok(()), None) {
        Err(Error::Plan(PlanMismatch::OtherLayout {
            extents,
            laid_out,
            regions: 1,
            files: 1,
        })) => assert_eq!(
            (extents, laid_out),
            (good.extents().len(), one.extents().len())
        ),
        other => panic!("expected destinations for another plan, got {other:?}"),
    }
}
