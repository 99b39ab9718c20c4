//! `cargo xtask bench --ranks N`: a torch.distributed group of N processes
//! on this machine loads the checkpoint together (gloo on the CPU, NCCL on
//! GPUs), every rank every tensor and then each its tensor-parallel part,
//! beside one process loading alone; cold and warm, repeated, in one run.
//! Reports each load's time (median [min, max]) and what each rank read
//! from storage, sent and received.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use weightlift_format::Checkpoint;

use crate::bench::{Fixture, cached_fixture, default_out, files_on_disk, human};
use crate::load::{Cache, Loader, Outcome, Target, output_within, prepare, result_line, run_once};
use crate::report::Stats;

/// What the group bench measures.
pub(crate) struct GroupBench {
    pub ranks: u32,
    pub model: Option<PathBuf>,
    pub size: u64,
    pub reps: usize,
    pub device: String,
    pub python: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub only_cold: bool,
    pub only_warm: bool,
    pub command: String,
}

/// One rank's report of a group load.
#[derive(Debug, Clone, Deserialize)]
struct RankRun {
    storage_read: u64,
    kept: u64,
    stats: Traffic,
}

/// What the schedule had a rank read, send, receive and copy locally.
#[derive(Debug, Clone, Deserialize)]
struct Traffic {
    read: u64,
    sent: u64,
    received: u64,
    local: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct GroupRun {
    seconds: f64,
    ranks: Vec<RankRun>,
}

/// The loads compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Alone,
    All,
    TensorParallel,
}

impl Way {
    fn name(self, ranks: u32) -> String {
        match self {
            Way::Alone => "one process alone (load_file)".into(),
            Way::All => format!("group of {ranks}, every rank every tensor"),
            Way::TensorParallel => format!("group of {ranks}, tensor-parallel parts (shard=)"),
        }
    }
}

/// One repetition of one way: seconds, and per rank (for a group) its run.
struct Sample {
    seconds: f64,
    ranks: Vec<RankRun>,
}

pub(crate) fn run(b: GroupBench) -> Result<()> {
    ensure!(b.ranks >= 1, "--ranks 0: a group needs a rank");
    ensure!(b.reps > 0, "--reps 0: nothing would be measured");
    let path = match &b.model {
        Some(p) => p.clone(),
        None => cached_fixture(Fixture::new(b.size, None))?,
    };
    let ckpt = Checkpoint::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let (files, on_disk) = files_on_disk(&ckpt)?;
    let states: Vec<Cache> = match (b.only_cold, b.only_warm, on_disk) {
        (true, false, false) => bail!("--cold: {} is in memory (tmpfs?)", path.display()),
        (true, false, true) => vec![Cache::Cold],
        (false, true, _) | (_, _, false) => vec![Cache::Warm],
        _ => vec![Cache::Cold, Cache::Warm],
    };
    let py = crate::py::bench_python(b.python.clone(), &[], false)
        .context("setting up Python with the wheel and torch")?;
    println!(
        "weightlift group bench: {} ({} tensors, {}), {} ranks on {}\n",
        path.display(),
        ckpt.len(),
        human(ckpt.total_bytes()),
        b.ranks,
        b.device
    );
    let target = Target {
        model: &path,
        files: &files,
        device: &b.device,
        python: Some(&py),
        raw: Vec::new(),
        server: Vec::new(),
        env: Vec::new(),
    };
    let ways = [Way::Alone, Way::All, Way::TensorParallel];
    let mut text = String::new();
    for &state in &states {
        let mut samples: Vec<Vec<Sample>> = ways.iter().map(|_| Vec::new()).collect();
        for rep in 0..b.reps {
            // Interleaved, so that drift in the machine spreads over all.
            for (w, &way) in ways.iter().enumerate() {
                prepare(&files, state)?;
                std::thread::sleep(Duration::from_millis(500));
                let sample = match way {
                    Way::Alone => alone(&target)?,
                    Way::All => group(&py, &path, &b, "all")?,
                    Way::TensorParallel => group(&py, &path, &b, "tp")?,
                };
                println!(
                    "{} rep {}: {}: {:.3} s",
                    state.name(),
                    rep + 1,
                    way.name(b.ranks),
                    sample.seconds
                );
                samples[w].push(sample);
            }
        }
        let table = table(state, &ways, &samples, b.ranks, ckpt.total_bytes());
        println!("\n{table}");
        text.push_str(&table);
        text.push('\n');
    }
    let out = b
        .out
        .clone()
        .unwrap_or_else(|| default_out(&format!("-ranks{}", b.ranks)));
    std::fs::create_dir_all(&out)?;
    let readme = out.join("README.md");
    std::fs::write(
        &readme,
        format!(
            "# Group loads: {} ranks\n\n`{}`\n\nCheckpoint: {} ({} tensors, {}). Device: {}. \
             {} repetitions of each, interleaved; times are median [min, max] seconds from a \
             barrier to the slowest rank's last tensor (one process: from the call). Bytes are per \
             rank, min to max over ranks and repetitions: read from storage \
             (/proc/self/io read_bytes), and the schedule's read, sent, received and local copies.\n\n{}",
            b.ranks,
            b.command,
            path.display(),
            ckpt.len(),
            human(ckpt.total_bytes()),
            b.device,
            b.reps,
            text
        ),
    )?;
    println!("wrote {}", readme.display());
    Ok(())
}

fn alone(target: &Target<'_>) -> Result<Sample> {
    let loader = Loader::Python {
        runner: "weightlift",
        backend: None,
    };
    match run_once(&loader, target, false)? {
        Outcome::Ran(run) => Ok(Sample {
            seconds: run.seconds,
            ranks: Vec::new(),
        }),
        other => bail!("weightlift alone: {}", other.why().unwrap_or_default()),
    }
}

fn group(py: &Path, model: &Path, b: &GroupBench, spec: &str) -> Result<Sample> {
    let mut cmd = Command::new(py);
    cmd.arg(crate::load::runner())
        .args(["group", "--ranks", &b.ranks.to_string(), "--spec", spec])
        .args(["--device", &b.device, "--model"])
        .arg(model);
    cmd.env_remove("WEIGHTLIFT_BACKEND");
    let Some((status, stdout, stderr)) = output_within(&mut cmd, Duration::from_secs(1800))? else {
        bail!("the group load ({spec}) did not finish within 30 minutes");
    };
    if !status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        bail!(
            "the group load ({spec}) failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let run: GroupRun = serde_json::from_str(result_line(&stdout))
        .with_context(|| format!("the group runner's result: {}", result_line(&stdout)))?;
    Ok(Sample {
        seconds: run.seconds,
        ranks: run.ranks,
    })
}

/// `min–max` of `f` over every rank of every sample, in MiB.
fn spread(samples: &[Sample], f: impl Fn(&RankRun) -> u64) -> String {
    let v: Vec<u64> = samples
        .iter()
        .flat_map(|s| s.ranks.iter().map(&f))
        .collect();
    match (v.iter().min(), v.iter().max()) {
        (Some(lo), Some(hi)) => format!(
            "{:.0}–{:.0}",
            *lo as f64 / 1048576.0,
            *hi as f64 / 1048576.0
        ),
        _ => "–".into(),
    }
}

fn table(state: Cache, ways: &[Way], samples: &[Vec<Sample>], ranks: u32, payload: u64) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "### {}\n", state.name());
    let _ = writeln!(
        t,
        "| load | seconds | GB/s of the checkpoint | MiB read from storage per rank | schedule: read / sent / received / local MiB per rank | MiB kept per rank |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|");
    for (way, s) in ways.iter().zip(samples) {
        let Some(st) = Stats::of(s.iter().map(|x| x.seconds)) else {
            continue;
        };
        let gbps = |sec: f64| payload as f64 / sec / 1e9;
        let schedule = if s.iter().all(|x| x.ranks.is_empty()) {
            "–".to_string()
        } else {
            format!(
                "{} / {} / {} / {}",
                spread(s, |r| r.stats.read),
                spread(s, |r| r.stats.sent),
                spread(s, |r| r.stats.received),
                spread(s, |r| r.stats.local)
            )
        };
        let _ = writeln!(
            t,
            "| {} | {:.3} [{:.3}, {:.3}] | {:.2} | {} | {} | {} |",
            way.name(ranks),
            st.median,
            st.min,
            st.max,
            gbps(st.median),
            if s.iter().all(|x| x.ranks.is_empty()) {
                "–".into()
            } else {
                spread(s, |r| r.storage_read)
            },
            schedule,
            if s.iter().all(|x| x.ranks.is_empty()) {
                "–".into()
            } else {
                spread(s, |r| r.kept)
            },
        );
    }
    t
}
