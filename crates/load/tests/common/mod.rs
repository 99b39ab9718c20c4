//! Shared helpers for the loader's tests: checkpoints written to disk, a
//! sink that collects staged reads, and checks against plain reads.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use weightlift::{LoadOptions, host};
use weightlift_format::Checkpoint;
use weightlift_io::{Backend, Engine, EngineOptions, Error, Release, Sink};
use weightlift_plan::{ReadPlan, Selection};
pub(crate) use weightlift_tests::fixtures::{Scratch, plain_bytes, write_u8_shard as write_shard};

/// A scratch directory under cargo's target directory (a real disk, where
/// direct I/O works, unlike tmpfs).
pub(crate) fn scratch(tag: &str) -> Scratch {
    Scratch::new(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &format!("load-{tag}"),
    )
}

/// Collects staged extents into per-tensor buffers. Every `keep_every`-th
/// slot is kept (as an asynchronous consumer would) and given back on the
/// next `reclaim`, so slot reuse after a later release is exercised.
pub(crate) struct Collect<'a> {
    pub(crate) plan: &'a ReadPlan,
    pub(crate) ckpt: &'a Checkpoint,
    pub(crate) out: HashMap<u32, Vec<u8>>,
    pub(crate) keep_every: usize,
    pub(crate) kept: Vec<usize>,
    pub(crate) delivered: usize,
    pub(crate) in_use: Vec<bool>,
}

impl<'a> Collect<'a> {
    pub(crate) fn new(
        plan: &'a ReadPlan,
        ckpt: &'a Checkpoint,
        keep_every: usize,
        slots: usize,
    ) -> Self {
        let out = plan
            .tensors()
            .iter()
            .map(|&id| (id.0, vec![0u8; ckpt.tensor(id).len() as usize]))
            .collect();
        Self {
            plan,
            ckpt,
            out,
            keep_every,
            kept: Vec::new(),
            delivered: 0,
            in_use: vec![false; slots],
        }
    }
}

impl Sink for Collect<'_> {
    fn deliver(&mut self, index: usize, data: &[u8], slot: usize) -> Result<Release, Error> {
        assert!(
            !self.in_use[slot],
            "slot {slot} handed out while still in use"
        );
        let extent = &self.plan.extents()[index];
        for p in self.plan.pieces(extent) {
            let dst = self.out.get_mut(&p.tensor.0).unwrap();
            let (t, e, n) = (
                p.tensor_offset as usize,
                p.extent_offset as usize,
                p.len as usize,
            );
            dst[t..t + n].copy_from_slice(&data[e..e + n]);
        }
        self.delivered += 1;
        if self.keep_every > 0 && self.delivered.is_multiple_of(self.keep_every) {
            self.in_use[slot] = true;
            self.kept.push(slot);
            return Ok(Release::Later);
        }
        Ok(Release::Now)
    }

    fn reclaim(&mut self, _block: bool, freed: &mut Vec<usize>) -> Result<(), Error> {
        for s in self.kept.drain(..) {
            self.in_use[s] = false;
            freed.push(s);
        }
        Ok(())
    }

    fn settle(&mut self) -> Result<(), Error> {
        for s in self.kept.drain(..) {
            self.in_use[s] = false;
        }
        Ok(())
    }
}

/// Whether `backend` can read `paths` here; prints why not. With
/// `WEIGHTLIFT_REQUIRE_URING=1` (set where io_uring and `O_DIRECT` are known
/// to work), an unusable backend fails the test instead.
pub(crate) fn usable(backend: Backend, paths: &[PathBuf]) -> bool {
    match weightlift_io::choose(paths, Some(&[backend]), true, true) {
        Ok(_) => true,
        Err(e) => {
            let required = std::env::var("WEIGHTLIFT_REQUIRE_URING").is_ok_and(|v| v == "1");
            if required {
                panic!("WEIGHTLIFT_REQUIRE_URING=1 but {backend} is unusable: {e}");
            }
            eprintln!("skipping {backend}: {e}");
            false
        }
    }
}

/// The backends the engine itself implements (cuFile belongs to the GPU crate).
pub(crate) fn engine_backends() -> impl Iterator<Item = Backend> {
    Backend::ALL.into_iter().filter(|&b| b != Backend::Cufile)
}

/// Options naming one backend.
pub(crate) fn only(backend: Backend, base: &EngineOptions) -> EngineOptions {
    EngineOptions {
        backends: Some(vec![backend]),
        ..base.clone()
    }
}

/// Load through the staged path and return tensor name -> bytes.
pub(crate) fn load_staged(
    ckpt: &Checkpoint,
    selection: &Selection,
    opts: &EngineOptions,
    keep_every: usize,
) -> Result<HashMap<String, Vec<u8>>, Error> {
    let paths: Vec<PathBuf> = ckpt
        .shards()
        .iter()
        .map(|s| s.path().to_path_buf())
        .collect();
    let engine = Engine::open(&paths, opts, true)?;
    let plan = weightlift_plan::plan(ckpt, selection, &engine.geometry()).unwrap();
    let ring = engine.ring()?;
    let mut sink = Collect::new(&plan, ckpt, keep_every, ring.slots());
    engine.run(&plan, &ring, &mut sink, None)?;
    Ok(sink
        .out
        .into_iter()
        .map(|(id, b)| (ckpt.tensor(weightlift_format::TensorId(id)).name.clone(), b))
        .collect())
}

/// The engine options `engine`, and the defaults otherwise.
pub(crate) fn with_engine(engine: EngineOptions) -> LoadOptions {
    LoadOptions {
        engine,
        ..LoadOptions::default()
    }
}

/// Load through the host loader and return tensor name -> bytes.
pub(crate) fn load_host(
    ckpt: &Arc<Checkpoint>,
    selection: &Selection,
    opts: &EngineOptions,
) -> Result<HashMap<String, Vec<u8>>, weightlift::Error> {
    let load = host::load(ckpt.clone(), selection, &with_engine(opts.clone()))?;
    let mut out = HashMap::new();
    for t in load {
        let t = t?;
        let name = ckpt.tensor(t.id()).name.clone();
        assert!(
            out.insert(name, t.bytes().to_vec()).is_none(),
            "tensor handed out twice"
        );
    }
    Ok(out)
}

#[allow(unused_imports, reason = "not every test binary reports error chains")]
pub(crate) use weightlift_io::chain;
