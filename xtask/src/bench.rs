//! `cargo xtask bench`: the main job.
//!
//! Times opening a checkpoint (reading and validating every shard's header)
//! and planning its reads, then loads it into host memory with each
//! backend and with `safetensors`, cold and warm, each load in a fresh
//! process, interleaved run by run, next to the storage limit measured in
//! the same run. A Llama-shaped checkpoint is generated (and kept for the
//! next run) when none is given.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use weightlift_format::Checkpoint;
use weightlift_io::{AlignedBuf, Backend, OpenMode, ReadFile, cache};
use weightlift_plan::{Geometry, Selection, plan};
use weightlift_tests::fixtures::{LlamaConfig, moe_specs, spec_bytes, write_checkpoint};

use crate::args::Args;
use crate::load::{self, Cache, Loader, Run};

/// Size of the checkpoint generated when none is given.
pub(crate) const DEFAULT_SIZE: u64 = 3 << 30;

pub(crate) fn run(args: &mut Args) -> Result<()> {
    let model = args.value("--model")?.map(PathBuf::from);
    let size = args.size("--size")?.unwrap_or(DEFAULT_SIZE);
    let tensors = args.number("--tensors")?;
    let reps = args.number("--reps")?.unwrap_or(5).max(1);
    let alignment = args.size("--alignment")?.unwrap_or(4096);
    let max_extent = args
        .size("--max-extent")?
        .unwrap_or(Geometry::DEFAULT_MAX_EXTENT);
    let shares = args.number("--shares")?.unwrap_or(8).max(1) as u32;
    let load_reps = args.number("--load-reps")?.unwrap_or(3).max(1) as usize;
    let pause = Duration::from_secs_f64(args.number("--pause")?.unwrap_or(2) as f64);
    let backends = args.value("--backends")?;
    let python = args.value("--python")?.map(PathBuf::from);
    let no_python = args.flag("--no-python");
    let only_cold = args.flag("--cold");
    let only_warm = args.flag("--warm");
    args.finish()?;

    let path = match model {
        Some(p) => p,
        None => cached_fixture(Fixture::new(size, tensors))?,
    };
    let geometry = Geometry::new(alignment, max_extent).context("invalid read geometry")?;

    println!("weightlift bench: {}\n", path.display());

    let mut open_times = Vec::new();
    let mut plan_times = Vec::new();
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        let ckpt =
            Checkpoint::open(&path).with_context(|| format!("opening {}", path.display()))?;
        open_times.push(t.elapsed());
        let t = Instant::now();
        let p = plan(&ckpt, &Selection::All, &geometry)?;
        plan_times.push(t.elapsed());
        last = Some((ckpt, p));
    }
    let (ckpt, p) = last.expect("at least one repetition");

    println!(
        "checkpoint: {} tensors in {} shards, {} ({} bytes)",
        ckpt.len(),
        ckpt.shards().len(),
        human(ckpt.total_bytes()),
        ckpt.total_bytes()
    );
    if let Some(index) = ckpt.index_path() {
        println!("index:      {}", index.display());
    }
    if let Some(m) = ckpt.metadata() {
        println!("metadata:   {m:?}");
    }
    println!(
        "geometry:   alignment {alignment}, max extent {}, merge gap {}",
        human(geometry.max_extent()),
        human(geometry.merge_gap())
    );
    println!("plan:       {}\n", p.stats());

    println!(
        "{:<32} {:>12} {:>12} {:>12}",
        "step (n = {reps})".replace("{reps}", &reps.to_string()),
        "median",
        "min",
        "max"
    );
    for (name, times) in [
        ("open (read + validate headers)", &mut open_times),
        ("plan (all tensors)", &mut plan_times),
    ] {
        times.sort();
        println!(
            "{name:<32} {:>12} {:>12} {:>12}",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1])
        );
    }

    let files: Vec<PathBuf> = ckpt
        .shards()
        .iter()
        .map(|s| s.path().to_path_buf())
        .collect();
    let on_disk = files
        .iter()
        .map(|f| cache::in_memory(f).map(|m| !m))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .all(|d| d);
    let mut loaders = Vec::new();
    if on_disk {
        loaders.push(Loader::Raw);
    }
    loaders.push(Loader::Auto);
    let engine_backends = match backends {
        Some(list) => Backend::parse_list(&list)?,
        None => Backend::ALL
            .into_iter()
            .filter(|b| *b != Backend::Cufile)
            .collect(),
    };
    loaders.extend(engine_backends.into_iter().map(Loader::Backend));
    if !no_python {
        match crate::py::python(python) {
            Ok(py) => loaders.push(Loader::Safetensors(py)),
            Err(e) => println!("safetensors: not measured: {e:#}"),
        }
    }
    let states: Vec<Cache> = match (only_cold, only_warm) {
        (true, false) => vec![Cache::Cold],
        (false, true) => vec![Cache::Warm],
        _ => vec![Cache::Cold, Cache::Warm],
    };
    load_table(
        &path,
        &files,
        ckpt.total_bytes(),
        &loaders,
        &states,
        load_reps,
        pause,
    )?;

    println!("\nfirst extents of the plan:");
    for e in p.extents().iter().take(4) {
        let pieces = p.pieces(e);
        println!(
            "  {} @ {} + {}: {} piece(s), first {:?}",
            ckpt.shard(e.file)
                .path()
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            e.offset,
            human(e.len),
            pieces.len(),
            ckpt.tensor(pieces[0].tensor).name
        );
    }

    let split = p.split(shares)?;
    let target = p.read_bytes() as f64 / f64::from(shares);
    println!(
        "\nsplit into {shares} shares (bound: each within one extent, {}, of {}):",
        human(p.stats().largest_extent),
        human(target as u64)
    );
    for (k, s) in split.iter().enumerate() {
        println!(
            "  share {k}: {:>4} extents, {:>10} ({:+.2}% of an even share)",
            s.extents().len(),
            human(s.read_bytes()),
            (s.read_bytes() as f64 / target - 1.0) * 100.0
        );
    }
    Ok(())
}

/// A generated checkpoint: Llama-shaped of about `size` bytes, or
/// mixture-of-experts-shaped with `tensors` tensors.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fixture {
    Llama { size: u64 },
    Moe { tensors: u64 },
}

impl Fixture {
    pub(crate) fn new(size: u64, tensors: Option<u64>) -> Self {
        match tensors {
            Some(tensors) => Fixture::Moe { tensors },
            None => Fixture::Llama { size },
        }
    }

    fn specs(self) -> Vec<weightlift_format::TensorSpec> {
        match self {
            Fixture::Llama { size } => LlamaConfig::for_size(size).specs(),
            Fixture::Moe { tensors } => moe_specs(tensors as usize),
        }
    }

    fn dir_name(self) -> String {
        match self {
            Fixture::Llama { size } => format!("llama-{size}"),
            Fixture::Moe { tensors } => format!("moe-{tensors}"),
        }
    }

    /// Shards as real exports have them: 2 for a Llama, one per ~2,500
    /// tensors for a mixture of experts.
    fn shards(self) -> usize {
        match self {
            Fixture::Llama { .. } => 2,
            Fixture::Moe { tensors } => (tensors as usize).div_ceil(2500).max(1),
        }
    }
}

/// Load with every loader, `reps` times per cache state, interleaved, and
/// print a table per state.
fn load_table(
    model: &Path,
    files: &[PathBuf],
    payload: u64,
    loaders: &[Loader],
    states: &[Cache],
    reps: usize,
    pause: Duration,
) -> Result<()> {
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); loaders.len()]; states.len()];
    for rep in 0..reps {
        for (si, &state) in states.iter().enumerate() {
            // Rotate the order each repetition, so that no loader always
            // follows the same one (storage that throttles bursts favours
            // whoever comes after a pause).
            for k in 0..loaders.len() {
                let li = (k + rep) % loaders.len();
                let loader = &loaders[li];
                if state == Cache::Warm && *loader == Loader::Raw {
                    continue; // direct reads bypass the cache: the same as cold
                }
                eprint!(
                    "\r  rep {}/{reps} {state:?}: {:<32}",
                    rep + 1,
                    loader.name()
                );
                load::prepare(files, state)?;
                if state == Cache::Cold {
                    // Virtual disks throttle bursts: let each cold load
                    // start from the same rested state, whoever ran before.
                    std::thread::sleep(pause);
                }
                runs[si][li].push(load::run_once(loader, model, files)?);
            }
        }
    }
    eprintln!();
    let raw_rate =
        median_rate(&runs[0][0], payload).filter(|_| loaders.first() == Some(&Loader::Raw));
    for (si, state) in states.iter().enumerate() {
        let st_rate = loaders
            .iter()
            .position(|l| matches!(l, Loader::Safetensors(_)))
            .and_then(|i| median_rate(&runs[si][i], payload));
        println!(
            "\nload into host memory, {state:?} ({} per load, {} payload; n = {reps}; GB/s median [min, max]; clock stops when one byte of every page of every tensor was read)",
            match state {
                Cache::Cold => "every file evicted and confirmed cold",
                Cache::Warm => "every file read into the page cache and confirmed warm",
            },
            human(payload)
        );
        println!(
            "{:<28} {:<16} {:>10} {:>24} {:>9} {:>13}",
            "loader", "backend", "seconds", "GB/s", "% limit", "× safetensors"
        );
        for (li, loader) in loaders.iter().enumerate() {
            let r = &runs[si][li];
            if r.is_empty() {
                continue;
            }
            let bytes = if *loader == Loader::Raw {
                r[0].bytes
            } else {
                payload
            };
            let mut secs: Vec<f64> = r.iter().map(|x| x.seconds).collect();
            secs.sort_by(f64::total_cmp);
            let med = secs[secs.len() / 2];
            let gbs = |s: f64| bytes as f64 / s / 1e9;
            let rate = gbs(med);
            println!(
                "{:<28} {:<16} {:>10.3} {:>24} {:>9} {:>13}",
                loader.name(),
                r[0].backend,
                med,
                format!(
                    "{:.2} [{:.2}, {:.2}]",
                    rate,
                    gbs(secs[secs.len() - 1]),
                    gbs(secs[0])
                ),
                raw_rate.map_or("-".into(), |l| format!("{:.0}%", rate / l * 100.0)),
                st_rate.map_or("-".into(), |s| format!("{:.2}", rate / s)),
            );
        }
    }
    if loaders.first() == Some(&Loader::Raw) {
        println!(
            "(limit: the raw O_DIRECT read of the same files, cold, one stream of 16 MiB reads into one reused buffer, measured interleaved with the loads)"
        );
    }
    Ok(())
}

fn median_rate(runs: &[Run], payload: u64) -> Option<f64> {
    let mut secs: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
    secs.sort_by(f64::total_cmp);
    let med = *secs.get(secs.len() / 2)?;
    let bytes = if runs[0].backend == "raw" {
        runs[0].bytes
    } else {
        payload
    };
    Some(bytes as f64 / med / 1e9)
}

/// Read `files` start to end with 16 MiB direct reads, one at a time, into
/// one reused buffer aligned for all of them (after evicting them and
/// confirming they are cold, when `evict`). Returns the bytes read and the
/// time.
pub(crate) fn raw_direct_read(files: &[PathBuf], evict: bool) -> Result<(u64, Duration)> {
    const CHUNK: usize = 16 << 20;
    let mut opened = Vec::with_capacity(files.len());
    for f in files {
        if evict {
            load::prepare(std::slice::from_ref(f), Cache::Cold)?;
        }
        let file = ReadFile::open(f, OpenMode::Direct)?;
        if !file.alignment().reported {
            eprintln!(
                "note: {} does not report its direct-I/O alignment; assuming {}",
                f.display(),
                file.alignment().offset
            );
        }
        opened.push(file);
    }
    let align = opened
        .iter()
        .map(|f| (f.alignment().offset as usize).max(f.alignment().memory))
        .max()
        .unwrap_or(4096)
        .max(4096);
    let mut buf = AlignedBuf::zeroed(CHUNK, align)?;
    let mut bytes = 0u64;
    let t = Instant::now();
    for file in &opened {
        let mut offset = 0;
        while offset < file.size() {
            let n = file.read_at(buf.as_mut_slice(), offset)?;
            ensure!(n > 0, "{}: no progress at {offset}", file.path().display());
            offset += n as u64;
        }
        bytes += offset;
    }
    Ok((bytes, t.elapsed()))
}

/// Write `fixture` into `dir`.
pub(crate) fn generate(
    dir: &Path,
    fixture: Fixture,
    shards: Option<usize>,
    seed: u64,
) -> Result<PathBuf> {
    let specs = fixture.specs();
    let bytes: u64 = specs.iter().map(spec_bytes).sum();
    eprintln!(
        "generating {fixture:?}: {} tensors, {} in {}",
        specs.len(),
        human(bytes),
        dir.display()
    );
    write_checkpoint(dir, &specs, shards.unwrap_or(fixture.shards()), seed)
        .with_context(|| format!("writing {}", dir.display()))
}

/// The generated checkpoint for `fixture`, written on first use.
fn cached_fixture(fixture: Fixture) -> Result<PathBuf> {
    let dir = crate::root()
        .join("target/weightlift-bench")
        .join(fixture.dir_name());
    let index = dir.join("model.safetensors.index.json");
    let want: u64 = fixture.specs().iter().map(spec_bytes).sum();
    if let Ok(c) = Checkpoint::open(&index)
        && c.total_bytes() == want
    {
        return Ok(index);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let index = generate(&dir, fixture, None, 1)?;
    ensure!(
        Checkpoint::open(&index)?.total_bytes() == want,
        "generated checkpoint has the wrong size"
    );
    Ok(index)
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}
