//! `cargo xtask bench`: the main job.
//!
//! Until the I/O engine exists, it measures what there is: opening a
//! checkpoint (reading and validating every shard's header) and planning its
//! reads, then prints the plan and its statistics. A Llama-shaped checkpoint
//! is generated (and kept for the next run) when none is given.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use weightlift_format::Checkpoint;
use weightlift_io::{AlignedBuf, OpenMode, ReadFile, cache};
use weightlift_plan::{Geometry, Selection, plan};
use weightlift_tests::fixtures::{LlamaConfig, moe_specs, spec_bytes, write_checkpoint};

use crate::args::Args;

/// Size of the checkpoint generated when none is given.
pub(crate) const DEFAULT_SIZE: u64 = 512 << 20;

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
    args.finish()?;

    let path = match model {
        Some(p) => p,
        None => cached_fixture(Fixture::new(size, tensors))?,
    };
    let geometry = Geometry::new(alignment, max_extent).context("invalid read geometry")?;

    println!("weightlift bench: open and plan {}", path.display());
    println!(
        "(loading arrives with the I/O engine; this run measures header reading, validation and planning)\n"
    );

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
    if on_disk {
        let mut raw = Vec::new();
        for _ in 0..reps {
            raw.push(raw_direct_read(&files)?);
        }
        raw.sort_by_key(|r| r.1);
        let bytes = raw[0].0;
        let rate = |d: Duration| format!("{:.2} GB/s", bytes as f64 / d.as_secs_f64() / 1e9);
        println!(
            "{:<32} {:>12} {:>12} {:>12}",
            "raw O_DIRECT read, cold",
            rate(raw[raw.len() / 2].1),
            rate(raw[raw.len() - 1].1),
            rate(raw[0].1)
        );
        println!(
            "  (the storage limit, single stream: every file evicted and confirmed cold, then read sequentially with one 16 MiB direct read at a time into one reused buffer; {} in {} files; columns: median, min, max)",
            human(bytes),
            files.len()
        );
    } else {
        println!(
            "raw O_DIRECT read: not measured: the files are on an in-memory file system (tmpfs or ramfs), so memory is their storage"
        );
    }

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

/// Evict `files` from the page cache, confirm they are cold, then read them
/// start to end with 16 MiB direct reads, one at a time, into one reused
/// buffer aligned for all of them. Returns the bytes read and the time.
fn raw_direct_read(files: &[PathBuf]) -> Result<(u64, Duration)> {
    const CHUNK: usize = 16 << 20;
    let mut opened = Vec::with_capacity(files.len());
    for f in files {
        cache::evict(f)?;
        let r = cache::residency(f)?;
        ensure!(
            r.is_cold(),
            "{}: {} pages still cached after eviction",
            f.display(),
            r.resident_pages
        );
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
