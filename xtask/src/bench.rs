//! `cargo xtask bench`: the main job.
//!
//! Times opening a checkpoint (reading and validating every shard's header)
//! and planning its reads, then loads it with weightlift (its automatic
//! choice and each backend), `safetensors` and the peers, cold and warm,
//! each load in a fresh process, interleaved run by run, next to the
//! hardware's limits measured in the same run, and writes the table, every
//! run and a chart. A Llama-shaped checkpoint is generated (and kept for the
//! next run) when none is given.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use weightlift_format::Checkpoint;
use weightlift_io::{Backend, cache};
use weightlift_plan::{Geometry, Selection, plan};
use weightlift_tests::fixtures::{LlamaConfig, moe_specs, spec_bytes, write_checkpoint};

use crate::args::Args;
use crate::load::{self, Cache, Loader, Outcome, PEERS, Run, Target};
use crate::report::{self, Limit, Report, Row, Section};

/// Size of the checkpoint generated when none is given.
pub(crate) const DEFAULT_SIZE: u64 = 3 << 30;

/// Size of the checkpoint `--quick` generates.
const QUICK_SIZE: u64 = 256 << 20;

/// Size of the checkpoint `--remote` generates when `--size` is not given:
/// loopback servers written in Python serve it in seconds, not minutes.
const REMOTE_SIZE: u64 = 1 << 30;

pub(crate) fn run(args: &mut Args) -> Result<()> {
    let command = std::iter::once("cargo xtask bench".to_string())
        .chain(std::env::args().skip(2))
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(ranks) = args.number("--ranks")? {
        let b = crate::group::GroupBench {
            ranks: u32::try_from(ranks).context("--ranks: too many")?,
            model: args.value("--model")?.map(PathBuf::from),
            size: args.size("--size")?.unwrap_or(DEFAULT_SIZE),
            reps: args.number("--reps")?.unwrap_or(3) as usize,
            device: device(args.value("--device")?.as_deref().unwrap_or("cpu"))?,
            python: args.value("--python")?.map(PathBuf::from),
            out: args.value("--out")?.map(PathBuf::from),
            only_cold: args.flag("--cold"),
            only_warm: args.flag("--warm"),
            command,
        };
        args.finish()?;
        ensure!(
            b.device != "host",
            "--ranks: the host stand-in is not a device of a process group; use cpu or cuda:0"
        );
        return crate::group::run(b);
    }
    let quick = args.flag("--quick");
    let model = args.value("--model")?.map(PathBuf::from);
    let size_arg = args.size("--size")?;
    let size = size_arg.unwrap_or(if quick { QUICK_SIZE } else { DEFAULT_SIZE });
    let tensors = args.number("--tensors")?;
    let reps = args.number("--reps")?.unwrap_or(if quick { 2 } else { 3 }) as usize;
    let device = device(args.value("--device")?.as_deref().unwrap_or("cpu"))?;
    let backends = args.value("--backends")?;
    let peers = peers(args.value("--peers")?.as_deref())?;
    let only_cold = args.flag("--cold");
    let only_warm = args.flag("--warm");
    let out = args.value("--out")?.map(PathBuf::from);
    let verify = args.flag("--verify") || quick;
    let pause = match args.value("--pause")? {
        Some(p) => p
            .parse::<f64>()
            .ok()
            .filter(|p| p.is_finite() && *p >= 0.0)
            .with_context(|| format!("--pause {p:?} is not a number of seconds"))?,
        None if quick => 0.5,
        None => 2.0,
    };
    let python = args.value("--python")?.map(PathBuf::from);
    let installed = args.flag("--installed");
    let no_python = args.flag("--no-python");
    let alignment = args.size("--alignment")?.unwrap_or(4096);
    let max_extent = args
        .size("--max-extent")?
        .unwrap_or(Geometry::DEFAULT_MAX_EXTENT);
    let shares = args.number("--shares")?.unwrap_or(8).max(1) as u32;
    let remote_kind = args
        .value("--remote")?
        .map(|k| crate::remote::Kind::parse(&k))
        .transpose()?;
    let remote_settings = args
        .value("--remote-settings")?
        .map(|list| {
            list.split(',')
                .map(crate::remote::Config::parse)
                .collect::<Result<Vec<_>>>()
        })
        .transpose()
        .context("--remote-settings RANGE:DEPTH[,...]")?;
    args.finish()?;
    ensure!(reps > 0, "--reps 0: nothing would be measured");
    ensure!(
        !(installed && python.is_none()),
        "--installed uses the wheel already importable by --python PATH: name it"
    );
    ensure!(
        !(no_python && device != "cpu"),
        "--device {device} loads through the wheel: drop --no-python"
    );
    ensure!(
        !(no_python && verify),
        "--verify compares the tensors the Python loaders return: drop --no-python"
    );

    let geometry = Geometry::new(alignment, max_extent).context("invalid read geometry")?;
    if remote_kind.is_some()
        || model
            .as_deref()
            .is_some_and(weightlift::remote::is_remote_path)
    {
        return run_remote(RemoteBench {
            kind: remote_kind,
            model: model.map(|m| m.to_string_lossy().into_owned()),
            fixture: Fixture::new(
                size_arg.unwrap_or(if quick { QUICK_SIZE } else { REMOTE_SIZE }),
                tensors,
            ),
            reps,
            device,
            peers,
            verify,
            python,
            installed,
            no_python,
            out,
            geometry,
            shares,
            settings: remote_settings.unwrap_or_default(),
            command,
        });
    }
    ensure!(
        remote_settings.is_none(),
        "--remote-settings: for remote checkpoints (--remote, or --model s3://... or http://...)"
    );
    let path = match model {
        Some(p) => p,
        None => cached_fixture(Fixture::new(size, tensors))?,
    };
    println!("weightlift bench: {}\n", path.display());
    let (ckpt, preamble) = open_and_plan(
        || Checkpoint::open(&path).with_context(|| format!("opening {}", path.display())),
        &geometry,
        reps.max(5),
        shares,
    )?;
    for line in &preamble {
        println!("{line}");
    }

    // The peers, safetensors the reference among them, read safetensors
    // files only.
    let sllm = ckpt.is_sllm();
    ensure!(
        !(sllm && verify),
        "--verify (which --quick implies) compares with safetensors, which cannot read the ServerlessLLM checkpoint {}",
        path.display()
    );
    if sllm && !no_python {
        println!(
            "\na ServerlessLLM checkpoint: the peers read safetensors files only, so weightlift runs without them"
        );
    }
    let (files, on_disk) = files_on_disk(&ckpt)?;
    let states: Vec<Cache> = match (only_cold, only_warm, on_disk) {
        (true, false, false) => bail!(
            "--cold: {} is in memory (tmpfs?): it cannot be evicted",
            path.display()
        ),
        (true, false, true) => vec![Cache::Cold],
        (false, true, _) | (_, _, false) => vec![Cache::Warm],
        _ => vec![Cache::Cold, Cache::Warm],
    };
    if !on_disk {
        println!("\nthe checkpoint is in memory (tmpfs?): warm loads only, no storage limit");
    }

    let py =
        if no_python {
            None
        } else {
            Some(crate::py::bench_python(python, &peers, installed).context(
                "setting up the Python loaders (--no-python measures the Rust API alone)",
            )?)
        };
    let mut loaders = Vec::new();
    let mut preamble = preamble;
    let mut raw = Vec::new();
    if on_disk && states.contains(&Cache::Cold) {
        // The storage's ceiling, as fio finds it: the best of a sweep of
        // ways to read the same files cold, each reading up to 1 GiB.
        let limit = ckpt.total_bytes().min(1 << 30);
        println!(
            "\nstorage ceiling: {} configurations, cold, up to {} each",
            crate::ceiling::sweep_configs().len(),
            human(limit)
        );
        let swept = crate::ceiling::sweep(&files, limit)?;
        preamble.push(sweep_line(
            &format!(
                "storage ceiling sweep (cold, up to {} each; GB/s)",
                human(limit)
            ),
            &swept,
        ));
        println!("{}", preamble.last().expect("just pushed"));
        // Its three best, timed again reading everything in every
        // repetition (the fastest counting): one configuration's single
        // run is too noisy a ceiling.
        raw = swept.iter().take(3).map(|(c, _)| *c).collect();
        loaders.push(Loader::Raw);
    }
    let weightlift = |backend| match py {
        Some(_) => Loader::Python {
            runner: "weightlift",
            backend,
        },
        None => Loader::Rust(backend),
    };
    loaders.push(weightlift(None));
    let engine_backends = match backends {
        Some(list) if list == "none" => Vec::new(),
        Some(list) => Backend::parse_list(&list)?,
        None if quick => Vec::new(),
        None => Backend::ALL
            .into_iter()
            .filter(|b| *b != Backend::Cufile)
            .collect(),
    };
    loaders.extend(engine_backends.into_iter().map(|b| weightlift(Some(b))));
    if py.is_some() && !sllm {
        loaders.extend(
            PEERS
                .iter()
                .filter(|p| p.0 == BASELINE || peers.contains(&p.0))
                .map(|p| Loader::Python {
                    runner: p.1,
                    backend: None,
                }),
        );
    }

    let target = Target {
        model: &path,
        files: &files,
        device: &device,
        python: py.as_deref(),
        raw: raw.clone(),
        server: Vec::new(),
        env: Vec::new(),
    };
    let warm_limit = if on_host(&device) {
        Limit::new(
            "memcpy",
            "a 512 MiB memory copy split over every core, 5 times".into(),
            load::memcpy_rates(5),
        )
        .context("memcpy measured nothing")?
    } else {
        let (limit, sweep) =
            crate::py::h2d_limit(py.as_deref().expect("a GPU device needs Python"), &device)?;
        preamble.push(format!(
            "host-to-device copy sweep (GB/s, median of 5): {}",
            sweep.join("; ")
        ));
        println!("\n{}", preamble.last().expect("just pushed"));
        limit
    };
    let mut sections = measure(
        &target,
        &loaders,
        &states,
        reps,
        Duration::from_secs_f64(pause),
        verify,
        ckpt.total_bytes(),
    )?;
    for s in &mut sections {
        s.limit = match s.state {
            Cache::Warm => Some(warm_limit.clone()),
            Cache::Remote => None,
            Cache::Cold => s
                .rows
                .iter()
                .find(|r| r.loader == Loader::Raw)
                .and_then(|r| Some((r.rates()?, r.runs.iter().map(Run::gbps).collect())))
                .map(|(stats, rates)| Limit {
                    name: "storage ceiling".into(),
                    what: format!(
                        "the storage's read ceiling as fio finds it: a sweep of reads of the same files, cold (O_DIRECT with io_uring at queue depths 1 to 64 and with 4 or 16 pread threads, buffered with 4 or 16 pread threads; reads of 1, 4 and 16 MiB), whose three best ({}) each read all the files, cold, in every repetition, interleaved with the loads; the fastest of the three counts",
                        raw.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("; ")
                    ),
                    rates,
                    stats,
                }),
        };
    }
    let verified = verify.then(|| verify_digests(&sections, None));
    let report = Report {
        command,
        checkpoint: format!(
            "{} ({} tensors in {} shards, {})",
            path.display(),
            ckpt.len(),
            ckpt.shards().len(),
            human(ckpt.total_bytes())
        ),
        name: checkpoint_name(&path),
        device: device.clone(),
        payload: ckpt.total_bytes(),
        reps,
        sections,
        preamble,
        verify: verified.as_ref().map(|v| match v {
            Ok(s) | Err(s) => s.clone(),
        }),
        machine: report::machine(&path, py.as_deref()),
    };
    let out = out.unwrap_or_else(|| default_out(if quick { "-quick" } else { "" }));
    report.publish(&out, py.as_deref())?;
    // weightlift must run on the host: there, "cannot run" is a failure
    // too (a wheel that does not import, say), except for a backend named
    // explicitly that this machine refuses.
    let failed: Vec<String> = report
        .sections
        .iter()
        .flat_map(|s| &s.rows)
        .filter(|r| {
            r.loader.is_weightlift()
                && match &r.stopped {
                    Some(Outcome::Failed(_)) => true,
                    Some(Outcome::Unavailable(_)) => {
                        on_host(&device) && r.loader.is_weightlift_auto()
                    }
                    _ => false,
                }
        })
        .map(|r| r.loader.name())
        .collect();
    ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    if let Some(Err(e)) = verified {
        bail!("verify: {e}");
    }
    Ok(())
}

/// A sweep of ways to read for the report: `what`, then each way with its
/// GB/s, best first.
fn sweep_line<C: std::fmt::Display>(what: &str, swept: &[(C, f64)]) -> String {
    let ways: Vec<String> = swept.iter().map(|(c, g)| format!("{c}: {g:.2}")).collect();
    format!("{what}: {}", ways.join("; "))
}

/// The name of a checkpoint's file, or of its directory for an index.
fn checkpoint_name(path: &Path) -> String {
    let named = if path.extension().is_some_and(|e| e == "json") {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    named.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// `cpu`, `host` (weightlift's host-memory stand-in for a GPU, in a wheel
/// built with the test hooks), `cuda` or `cuda:N` (as `cuda:N`).
fn device(s: &str) -> Result<String> {
    match s {
        "cpu" | "host" => Ok(s.into()),
        "cuda" => Ok("cuda:0".into()),
        _ => match s.strip_prefix("cuda:").map(str::parse::<u32>) {
            Some(Ok(n)) => Ok(format!("cuda:{n}")),
            _ => bail!("--device {s:?}: expected cpu, host, cuda or cuda:N"),
        },
    }
}

/// Whether the tensors of a load onto `device` end in host memory, where
/// a memory copy is the warm limit.
fn on_host(device: &str) -> bool {
    matches!(device, "cpu" | "host")
}

/// The loaders every Python run measures: the baseline for the speedups
/// and the reference for `--verify`.
const BASELINE: &str = "safetensors";

/// The peers `--peers` names (`all`, the default, or `none`, or a list);
/// safetensors, the baseline, is always measured.
fn peers(arg: Option<&str>) -> Result<Vec<&'static str>> {
    let mut known: Vec<&'static str> = PEERS
        .iter()
        .map(|p| p.0)
        .filter(|&p| p != BASELINE)
        .collect();
    known.dedup();
    match arg {
        None | Some("all") => Ok(known),
        Some("none") => Ok(Vec::new()),
        Some(list) => list
            .split(',')
            .map(|name| {
                let name = name.trim();
                if name.eq_ignore_ascii_case(BASELINE) {
                    return Ok(BASELINE);
                }
                known
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(name))
                    .copied()
                    .with_context(|| {
                        format!(
                            "--peers: unknown peer {name:?} (known: {})",
                            known.join(", ")
                        )
                    })
            })
            .collect(),
    }
}

/// Time opening the checkpoint (reading and validating every header) and
/// planning its reads `reps` times; the checkpoint and the lines that say
/// how long each took.
fn open_and_plan(
    mut open: impl FnMut() -> Result<Checkpoint>,
    geometry: &Geometry,
    reps: usize,
    shares: u32,
) -> Result<(Checkpoint, Vec<String>)> {
    let mut open_times = Vec::new();
    let mut plan_times = Vec::new();
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        let ckpt = open()?;
        open_times.push(t.elapsed());
        let t = Instant::now();
        let p = plan(&ckpt, &Selection::All, geometry)?;
        plan_times.push(t.elapsed());
        last = Some((ckpt, p));
    }
    let (ckpt, p) = last.expect("at least one repetition");
    let mut lines = vec![format!(
        "checkpoint: {} tensors in {} shards, {} ({} bytes)",
        ckpt.len(),
        ckpt.shards().len(),
        human(ckpt.total_bytes()),
        ckpt.total_bytes()
    )];
    if let Some(index) = ckpt.index_path() {
        lines.push(format!("index:      {}", index.display()));
    }
    lines.push(format!(
        "geometry:   alignment {}, max extent {}, merge gap {}",
        geometry.alignment(),
        human(geometry.max_extent()),
        human(geometry.merge_gap())
    ));
    lines.push(format!("plan:       {}", p.stats()));
    lines.push(format!(
        "{:<32} {:>12} {:>12} {:>12}",
        format!("step (n = {reps})"),
        "median",
        "min",
        "max"
    ));
    for (name, times) in [
        ("open (read + validate headers)", &mut open_times),
        ("plan (all tensors)", &mut plan_times),
    ] {
        times.sort();
        lines.push(format!(
            "{name:<32} {:>12} {:>12} {:>12}",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1])
        ));
    }
    let split = p.split(shares)?;
    let target = p.read_bytes() as f64 / f64::from(shares);
    let worst = split
        .iter()
        .map(|s| (s.read_bytes() as f64 / target - 1.0).abs() * 100.0)
        .fold(0.0, f64::max);
    lines.push(format!(
        "split into {shares} shares: each within {worst:.2}% of an even share of {} (bound: one extent, {})",
        human(target as u64),
        human(p.stats().largest_extent),
    ));
    Ok((ckpt, lines))
}

/// `results/<date>-<host><suffix>` under the workspace.
/// The checkpoint's files, and whether all are on storage (not tmpfs), so
/// that they can be loaded cold.
pub(crate) fn files_on_disk(ckpt: &Checkpoint) -> Result<(Vec<PathBuf>, bool)> {
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
    Ok((files, on_disk))
}

pub(crate) fn default_out(suffix: &str) -> PathBuf {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    crate::root().join("results").join(format!(
        "{y:04}-{m:02}-{d:02}-{}{suffix}",
        if host.is_empty() { "host" } else { &host }
    ))
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
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

/// Load with every loader `reps` times per cache state, interleaved,
/// rotating the order each repetition; a loader that cannot run, or fails,
/// is not tried again in that state. With `verify`, each loader's first run
/// in each state hashes what it loaded (after its clock stopped).
fn measure(
    target: &Target<'_>,
    loaders: &[Loader],
    states: &[Cache],
    reps: usize,
    pause: Duration,
    verify: bool,
    payload: u64,
) -> Result<Vec<Section>> {
    let mut sections: Vec<Section> = states
        .iter()
        .map(|&state| Section {
            state,
            // Direct reads bypass the cache: the limit is the same warm.
            rows: loaders
                .iter()
                .filter(|l| !(state == Cache::Warm && **l == Loader::Raw))
                .cloned()
                .map(Row::new)
                .collect(),
            limit: None,
        })
        .collect();
    let total: usize = sections.iter().map(|s| s.rows.len()).sum::<usize>() * reps;
    let mut done = 0;
    let started = Instant::now();
    // A progress line redrawn in place on a terminal; a line a repetition elsewhere.
    let progress = std::io::stderr().is_terminal();
    for rep in 0..reps {
        if !progress {
            eprintln!(
                "  repetition {}/{reps} ({:.0} s)",
                rep + 1,
                started.elapsed().as_secs_f64()
            );
        }
        for section in &mut sections {
            let n = section.rows.len();
            for k in 0..n {
                // Rotate the starting point each repetition, so that no
                // loader always runs first or last in a round (storage
                // that throttles bursts favours whoever comes after a
                // rest).
                let row = &mut section.rows[(k + rep) % n];
                done += 1;
                if row.stopped.is_some() {
                    continue;
                }
                if progress {
                    eprint!(
                        "\r\x1b[K  [{done}/{total}, {:.0} s] rep {}/{reps} {}: {}",
                        started.elapsed().as_secs_f64(),
                        rep + 1,
                        section.state.name(),
                        row.loader.name()
                    );
                }
                load::prepare(target.files, section.state)?;
                if section.state == Cache::Cold {
                    std::thread::sleep(pause);
                }
                let digest = verify && rep == 0;
                match load::run_once(&row.loader, target, digest)? {
                    Outcome::Ran(run)
                        if !matches!(row.loader, Loader::Raw | Loader::Server)
                            && run.bytes != payload =>
                    {
                        row.stopped = Some(Outcome::Failed(format!(
                            "loaded {} bytes of {payload}",
                            run.bytes
                        )));
                    }
                    Outcome::Ran(run) => row.runs.push(run),
                    other => row.stopped = Some(other),
                }
            }
        }
    }
    eprintln!(
        "{}  {total} loads in {:.0} s",
        if progress { "\r\x1b[K" } else { "" },
        started.elapsed().as_secs_f64()
    );
    Ok(sections)
}

/// Whether every load that ran returned what safetensors' `load_file`
/// returned: each loader's first run in each state hashes its tensors
/// (names, dtypes, shapes, bytes); the baseline's hash is the reference.
/// What was compared, or which loaders disagree or did not hash.
fn verify_digests(sections: &[Section], given: Option<&str>) -> Result<String, String> {
    let reference = match given {
        Some(d) => d.to_string(),
        None => sections
            .iter()
            .flat_map(|s| &s.rows)
            .filter(|r| r.loader.is_baseline())
            .find_map(|r| r.runs.iter().find_map(|run| run.digest.clone()))
            .ok_or("safetensors load_file did not run, so there is nothing to compare with")?,
    };
    let (mut same, mut differ, mut unhashed) = (Vec::new(), Vec::new(), Vec::new());
    for s in sections {
        for r in s
            .rows
            .iter()
            .filter(|r| !matches!(r.loader, Loader::Raw | Loader::Server))
        {
            let who = format!("{} ({})", r.loader.name(), s.state.name());
            match r.runs.iter().find_map(|run| run.digest.as_deref()) {
                Some(d) if d == reference => same.push(who),
                Some(d) => differ.push(format!("{who}: {d}")),
                None if !r.runs.is_empty() => unhashed.push(who),
                None => {}
            }
        }
    }
    if differ.is_empty() && unhashed.is_empty() {
        Ok(format!(
            "{} loads returned the same names, dtypes, shapes and bytes as safetensors load_file (blake2b-128 {reference}): {}",
            same.len(),
            same.join(", ")
        ))
    } else {
        Err(format!(
            "against safetensors load_file ({reference}): {}{}",
            if differ.is_empty() {
                String::new()
            } else {
                format!("differ: {}. ", differ.join("; "))
            },
            if unhashed.is_empty() {
                String::new()
            } else {
                format!("not hashed: {}", unhashed.join(", "))
            }
        ))
    }
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
pub(crate) fn cached_fixture(fixture: Fixture) -> Result<PathBuf> {
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

/// A benchmark of a remote checkpoint (`--remote`, or `--model s3://...`
/// or `http(s)://...`).
struct RemoteBench {
    /// The loopback server to start (with a generated checkpoint).
    kind: Option<crate::remote::Kind>,
    /// A remote checkpoint already served.
    model: Option<String>,
    fixture: Fixture,
    reps: usize,
    device: String,
    peers: Vec<&'static str>,
    verify: bool,
    python: Option<PathBuf>,
    installed: bool,
    no_python: bool,
    out: Option<PathBuf>,
    geometry: Geometry,
    shares: u32,
    /// weightlift's rows with these settings (range × requests in
    /// flight), beside its defaults.
    settings: Vec<crate::remote::Config>,
    command: String,
}

/// Load a remote checkpoint through weightlift's remote path, beside the
/// Run:ai streamer (S3 only) and the server's limit, in one state: a
/// remote object has no local page-cache state to set up. `--verify`
/// compares every load with safetensors' read of a local copy (the
/// generated checkpoint the server serves, or the objects downloaded once,
/// untimed), since safetensors reads local files only.
fn run_remote(b: RemoteBench) -> Result<()> {
    use crate::remote;
    ensure!(
        !(b.kind.is_some() && b.model.is_some()),
        "--remote serves a generated checkpoint; --model names one already served: give one of them"
    );
    ensure!(
        !(b.no_python && b.device != "cpu"),
        "--device {} loads through the wheel: drop --no-python",
        b.device
    );
    ensure!(
        !(b.no_python && b.verify),
        "--verify compares the tensors the Python loaders return: drop --no-python"
    );
    let py = if b.no_python {
        None
    } else {
        Some(
            crate::py::bench_python(b.python.clone(), &b.peers, b.installed).context(
                "setting up the Python loaders (--no-python measures the Rust API alone)",
            )?,
        )
    };
    let mut env = Vec::new();
    let mut server = None;
    let mut preamble = Vec::new();
    let (model, generated) = match b.kind {
        Some(kind) => {
            let index = cached_fixture(b.fixture)?;
            // The server runs in the bench's Python even with --no-python.
            let server_py = match &py {
                Some(p) => p.clone(),
                None => crate::py::python(b.python.clone())?,
            };
            let (s, url) = remote::serve(&server_py, kind, &index)?;
            if kind != remote::Kind::Http {
                env = remote::s3_env(&s.endpoint);
            }
            preamble.push(format!(
                "server:     {} ({}), serving {}",
                s.what,
                s.endpoint,
                index.parent().unwrap_or(&index).display()
            ));
            server = Some(s);
            (url, Some(index))
        }
        None => (b.model.clone().expect("a remote model"), None),
    };
    println!("weightlift bench: {model}\n");
    let mut shards = Vec::new();
    let (ckpt, lines) = open_and_plan(
        || {
            let (c, s) = remote::open(&model, &env)?;
            shards = s;
            Ok(c)
        },
        &b.geometry,
        b.reps.max(5),
        b.shares,
    )?;
    preamble.extend(lines);
    preamble.push(
        "a remote object has no local cold or warm state (any caching is the server's): one state, `remote`; nothing local is evicted"
            .into(),
    );
    for line in &preamble {
        println!("{line}");
    }
    let files: Vec<PathBuf> = ckpt
        .shards()
        .iter()
        .map(|s| s.path().to_path_buf())
        .collect();
    let model_path = PathBuf::from(&model);
    let s3 = model.starts_with("s3://");

    // The reference for --verify: safetensors reading a local copy, untimed.
    let reference = if b.verify {
        ensure!(
            !ckpt.is_sllm(),
            "--verify compares with safetensors, which cannot read the ServerlessLLM checkpoint {model}"
        );
        let local: Vec<PathBuf> = match &generated {
            Some(index) => Checkpoint::open(index)?
                .shards()
                .iter()
                .map(|s| s.path().to_path_buf())
                .collect(),
            None => {
                let dir = crate::root().join("target/weightlift-bench/remote-copy");
                let _ = std::fs::remove_dir_all(&dir);
                eprintln!(
                    "downloading the shards into {} (untimed, for --verify)",
                    dir.display()
                );
                remote::download(&shards, &dir)?
            }
        };
        let copy = Target {
            model: &local[0],
            files: &local,
            device: "cpu",
            python: py.as_deref(),
            raw: Vec::new(),
            server: Vec::new(),
            env: Vec::new(),
        };
        let baseline = Loader::Python {
            runner: "safetensors_load_file",
            backend: None,
        };
        match load::run_once(&baseline, &copy, true)? {
            Outcome::Ran(run) => Some(run.digest.context("safetensors printed no digest")?),
            other => bail!(
                "safetensors on the local copy: {}",
                other.why().unwrap_or_default()
            ),
        }
    } else {
        None
    };

    // The server's limit: a sweep of range sizes and connections with a
    // plain client, whose three best read everything in every repetition.
    let (targets, plain) = remote::targets(&shards, &env);
    let limit = ckpt.total_bytes().min(1 << 30);
    println!(
        "\nserver limit: {} configurations, up to {} each, {}",
        remote::sweep_configs().len(),
        human(limit),
        if plain {
            "a plain HTTP/1.1 client"
        } else {
            "weightlift's client (the server refused unsigned requests)"
        }
    );
    let swept = remote::sweep(&targets, limit)?;
    preamble.push(sweep_line(
        &format!(
            "server limit sweep (ranged GETs, range × connections, up to {} each; GB/s)",
            human(limit)
        ),
        &swept,
    ));
    println!("{}", preamble.last().expect("just pushed"));
    let best: Vec<remote::Config> = swept.iter().take(3).map(|(c, _)| *c).collect();

    let mut loaders = vec![Loader::Server];
    loaders.push(match py {
        Some(_) => Loader::Python {
            runner: "weightlift",
            backend: None,
        },
        None => Loader::Rust(None),
    });
    loaders.extend(b.settings.iter().map(|c| Loader::RemoteWith {
        range: c.range,
        depth: c.conns,
        python: py.is_some(),
    }));
    if py.is_some() && !ckpt.is_sllm() && b.peers.contains(&"runai") {
        loaders.push(Loader::Python {
            runner: "runai",
            backend: None,
        });
    }
    if py.is_some() {
        preamble.push(format!(
            "safetensors reads local files only: no row{}",
            if reference.is_some() {
                "; its read of a local copy is --verify's reference"
            } else {
                ""
            }
        ));
    }
    if !s3 && py.is_some() {
        preamble.push("the Run:ai streamer reads s3://, gs:// and az:// objects, not HTTP URLs: its row says so".into());
    }
    let target = Target {
        model: &model_path,
        files: &files,
        device: &b.device,
        python: py.as_deref(),
        raw: Vec::new(),
        server: best.clone(),
        env: env.clone(),
    };
    let mut sections = measure(
        &target,
        &loaders,
        &[Cache::Remote],
        b.reps,
        Duration::ZERO,
        reference.is_some(),
        ckpt.total_bytes(),
    )?;
    drop(server);
    for s in &mut sections {
        s.limit = s
            .rows
            .iter()
            .find(|r| r.loader == Loader::Server)
            .and_then(|r| Some((r.rates()?, r.runs.iter().map(Run::gbps).collect())))
            .map(|(stats, rates)| Limit {
                name: "server limit".into(),
                what: format!(
                    "what the server delivers: a sweep of ranged GETs of the same objects with {} (ranges of 1, 4, 8 and 16 MiB over 4, 8, 16 and 32 connections, each request waiting for its whole body), whose three best ({}) each read every object whole in every repetition, interleaved with the loads; the fastest of the three counts (its bytes include the headers the loads read too)",
                    if plain {
                        "a plain HTTP/1.1 client (keep-alive connections over std's TcpStream, no TLS, no signing)"
                    } else {
                        "weightlift-remote's client without the loader"
                    },
                    best.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("; ")
                ),
                rates,
                stats,
            });
    }
    let verified = reference.as_deref().map(|r| {
        verify_digests(&sections, Some(r))
            .map(|s| format!("{s} (the reference: safetensors load_file of a local copy)"))
    });
    let report = Report {
        command: b.command,
        checkpoint: format!(
            "{model} ({} tensors in {} shards, {})",
            ckpt.len(),
            ckpt.shards().len(),
            human(ckpt.total_bytes())
        ),
        name: checkpoint_name(&model_path),
        device: b.device.clone(),
        payload: ckpt.total_bytes(),
        reps: b.reps,
        sections,
        preamble,
        verify: verified.as_ref().map(|v| match v {
            Ok(s) | Err(s) => s.clone(),
        }),
        machine: report::machine(
            generated.as_deref().unwrap_or(Path::new(".")),
            py.as_deref(),
        ),
    };
    let out = b.out.unwrap_or_else(|| {
        default_out(match b.kind {
            Some(remote::Kind::S3) => "-s3-moto",
            Some(remote::Kind::S3Range) => "-s3",
            Some(remote::Kind::Http) => "-http",
            None => "-remote",
        })
    });
    report.publish(&out, py.as_deref())?;
    let failed: Vec<String> = report
        .sections
        .iter()
        .flat_map(|s| &s.rows)
        .filter(|r| {
            r.loader.is_weightlift()
                && matches!(
                    r.stopped,
                    Some(Outcome::Failed(_)) | Some(Outcome::Unavailable(_))
                )
        })
        .map(|r| r.loader.name())
        .collect();
    ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    if let Some(Err(e)) = verified {
        bail!("verify: {e}");
    }
    Ok(())
}
