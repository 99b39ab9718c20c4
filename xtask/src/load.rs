//! Timed loads, each in a fresh process: weightlift (through the wheel or
//! the Rust API), `safetensors` and the peers through `bench_runner.py`,
//! and the storage limit through `xtask load-once`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use weightlift::{LoadOptions, host};
use weightlift_format::Checkpoint;
use weightlift_io::{Backend, cache};
use weightlift_plan::Selection;

use crate::args::Args;

/// A way of loading the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loader {
    /// The storage ceiling: the files read as the best configuration of
    /// the ceiling sweep found (see `ceiling`).
    Raw,
    /// weightlift through the Rust API into host memory (`None`: the
    /// automatic choice).
    Rust(Option<Backend>),
    /// A remote server's limit: its objects read by many ranged GETs in
    /// parallel, as the best configurations of the sweep found (see
    /// `remote`).
    Server,
    /// weightlift reading a remote checkpoint with these settings
    /// (`WEIGHTLIFT_REMOTE_RANGE` and `WEIGHTLIFT_REMOTE_IN_FLIGHT`),
    /// through the wheel (`python`) or the Rust API.
    RemoteWith {
        range: usize,
        depth: usize,
        python: bool,
    },
    /// A loader of `bench_runner.py`, by the name it knows it by; `backend`
    /// only for weightlift.
    Python {
        runner: &'static str,
        backend: Option<Backend>,
    },
}

/// The runner's loaders other than weightlift, as `--peers` names them:
/// (name, the runner's name, the row's label).
pub(crate) const PEERS: &[(&str, &str, &str)] = &[
    (
        "safetensors",
        "safetensors_load_file",
        "safetensors load_file",
    ),
    (
        "safetensors",
        "safetensors_safe_open",
        "safetensors safe_open",
    ),
    ("fastsafetensors", "fastsafetensors", "fastsafetensors"),
    ("runai", "runai", "Run:ai streamer"),
    ("instanttensor", "instanttensor", "InstantTensor"),
];

impl Loader {
    pub(crate) fn name(&self) -> String {
        match self {
            Loader::Raw => "storage ceiling (limit)".into(),
            Loader::Rust(None) => "weightlift auto (Rust)".into(),
            Loader::Rust(Some(b)) => format!("weightlift {b} (Rust)"),
            Loader::Server => "server limit (parallel ranged GETs)".into(),
            Loader::RemoteWith {
                range,
                depth,
                python,
            } => format!(
                "weightlift {} MiB × {depth}{}",
                range >> 20,
                if *python { "" } else { " (Rust)" }
            ),
            Loader::Python {
                runner: "weightlift",
                backend,
            } => match backend {
                None => "weightlift auto".into(),
                Some(b) => format!("weightlift {b}"),
            },
            Loader::Python { runner, .. } => PEERS
                .iter()
                .find(|p| p.1 == *runner)
                .map_or_else(|| (*runner).to_string(), |p| p.2.to_string()),
        }
    }

    /// weightlift with its automatic choice, whichever way it is driven.
    pub(crate) fn is_weightlift_auto(&self) -> bool {
        matches!(
            self,
            Loader::Rust(None)
                | Loader::Python {
                    runner: "weightlift",
                    backend: None
                }
        )
    }

    pub(crate) fn is_weightlift(&self) -> bool {
        matches!(
            self,
            Loader::Rust(_)
                | Loader::RemoteWith { .. }
                | Loader::Python {
                    runner: "weightlift",
                    ..
                }
        )
    }

    /// The baseline every speedup is quoted against.
    pub(crate) fn is_baseline(&self) -> bool {
        matches!(
            self,
            Loader::Python {
                runner: "safetensors_load_file",
                ..
            }
        )
    }
}

/// One measured run, as a loader's process reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Run {
    pub seconds: f64,
    /// Payload bytes (for the limit: bytes read).
    pub bytes: u64,
    #[serde(default)]
    pub tensors: Option<u64>,
    pub backend: String,
    /// Peak resident set of the loading process (`VmHWM`), bytes.
    #[serde(default)]
    pub peak_rss: Option<u64>,
    /// Resident set just before the clock started, bytes.
    #[serde(default)]
    pub base_rss: Option<u64>,
    /// Peak device memory used by the load, bytes.
    #[serde(default)]
    pub peak_gpu: Option<u64>,
    /// A hash of every tensor's name and bytes, when asked for.
    #[serde(default)]
    pub digest: Option<String>,
}

impl Run {
    pub(crate) fn gbps(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e9
    }
}

/// What came of asking a loader to run once.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Ran(Run),
    /// It cannot run here (not installed, needs a GPU, ...): why.
    Unavailable(String),
    /// It failed: the last lines it printed.
    Failed(String),
}

impl Outcome {
    /// Why it did not run, for a table: `not run: ...` or `failed: ...`.
    pub(crate) fn why(&self) -> Option<String> {
        match self {
            Outcome::Ran(_) => None,
            Outcome::Unavailable(why) => Some(format!("not run: {why}")),
            Outcome::Failed(why) => Some(format!("failed: {why}")),
        }
    }
}

/// Where and how the loads run.
pub(crate) struct Target<'a> {
    pub model: &'a Path,
    pub files: &'a [PathBuf],
    pub device: &'a str,
    /// The Python with the wheel, torch and the peers (absent with `--no-python`).
    pub python: Option<&'a Path>,
    /// How the storage-ceiling row reads: the sweep's best configurations,
    /// each in turn, the fastest counting.
    pub raw: Vec<crate::ceiling::Config>,
    /// How the server-limit row reads, likewise.
    pub server: Vec<crate::remote::Config>,
    /// Set for every load (a loopback S3 server's endpoint and keys).
    pub env: Vec<(String, String)>,
}

/// The script every Python loader runs in.
pub(crate) fn runner() -> PathBuf {
    crate::root().join("xtask/bench_runner.py")
}

/// Exit status with which the runner says a loader cannot run here.
const UNAVAILABLE: i32 = 3;

/// Run `loader` once in a fresh process; `digest` asks for a hash of every
/// tensor, taken after the clock stopped.
pub(crate) fn run_once(loader: &Loader, target: &Target<'_>, digest: bool) -> Result<Outcome> {
    let mut cmd = match loader {
        Loader::Python { .. } | Loader::RemoteWith { python: true, .. } => {
            let (runner, backend) = match loader {
                Loader::Python { runner, backend } => (*runner, *backend),
                _ => ("weightlift", None),
            };
            let python = target.python.context("a Python loader without a Python")?;
            let mut c = Command::new(python);
            c.arg(self::runner())
                .args(["load", "--loader", runner, "--device", target.device]);
            if let Some(b) = backend {
                c.args(["--backend", b.name()]);
            }
            if digest {
                c.arg("--digest");
            }
            c.arg("--model").arg(target.model).args(target.files);
            c
        }
        Loader::Raw | Loader::Rust(_) | Loader::Server | Loader::RemoteWith { .. } => {
            // (A RemoteWith through the wheel was taken above.)
            let mut c = Command::new(std::env::current_exe()?);
            let name = match loader {
                Loader::Rust(Some(b)) => b.name().to_string(),
                Loader::Rust(None) | Loader::RemoteWith { .. } => "auto".to_string(),
                Loader::Server => "server".to_string(),
                _ => "raw".to_string(),
            };
            c.args(["load-once", "--loader", &name, "--model"])
                .arg(target.model);
            if let Loader::Raw = loader {
                let configs: Vec<String> = target.raw.iter().map(|c| c.arg()).collect();
                c.args(["--raw", &configs.join(",")]);
            }
            if let Loader::Server = loader {
                let configs: Vec<String> = target.server.iter().map(|c| c.arg()).collect();
                c.args(["--server", &configs.join(",")]);
            }
            c
        }
    };
    if let Loader::RemoteWith { range, depth, .. } = loader {
        cmd.env("WEIGHTLIFT_REMOTE_RANGE", range.to_string())
            .env("WEIGHTLIFT_REMOTE_IN_FLIGHT", depth.to_string());
    }
    cmd.envs(target.env.iter().map(|(k, v)| (k, v)));
    // The choice must come from the loader's own default, not the caller's environment.
    cmd.env_remove("WEIGHTLIFT_BACKEND");
    let out = output_within(&mut cmd, RUN_TIMEOUT)
        .with_context(|| format!("running {}", loader.name()))?;
    let Some((status, stdout, stderr)) = out else {
        return Ok(Outcome::Failed(format!(
            "no result within {} s: killed",
            RUN_TIMEOUT.as_secs()
        )));
    };
    let last = result_line(&stdout);
    if status.code() == Some(UNAVAILABLE) {
        #[derive(Deserialize)]
        struct Why {
            unavailable: String,
        }
        let why =
            serde_json::from_str::<Why>(last).map_or_else(|_| last.to_string(), |w| w.unavailable);
        return Ok(Outcome::Unavailable(why));
    }
    if !status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Ok(Outcome::Failed(format!("{} ({status})", tail.join(" | "))));
    }
    Ok(match serde_json::from_str::<Run>(last) {
        Ok(run) => Outcome::Ran(run),
        Err(e) => Outcome::Failed(format!("printed no result ({e}): {last:?}")),
    })
}

/// The runner's result: the last JSON line of its output (a library may
/// print after it), or "" when there is none.
pub(crate) fn result_line(stdout: &str) -> &str {
    stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_default()
}

/// How long one load may take before it is killed and counted as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// Run `cmd` to completion, collecting its output, or kill it after
/// `timeout` (`None`).
pub(crate) fn output_within(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<Option<(std::process::ExitStatus, String, String)>> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Drain both pipes while waiting, so a chatty child cannot block on a
    // full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let mut bytes = Vec::new();
                let _ = p.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    Ok(status.map(|s| (s, out, err)))
}

/// `xtask load-once --model P --loader auto|raw|NAME [--raw WAY:BLOCK:DEPTH]`:
/// one load in this process (for `raw`, the files read as the storage
/// ceiling's configuration says), printed as one JSON line (the parent
/// times nothing itself).
pub(crate) fn load_once(args: &mut Args) -> Result<()> {
    let model = args.value("--model")?.context("--model is required")?;
    let loader = args.value("--loader")?.unwrap_or_else(|| "auto".into());
    let raw = args.value("--raw")?;
    let server = args.value("--server")?;
    args.finish()?;
    if loader == "server" {
        let configs = server
            .as_deref()
            .context("--loader server needs --server RANGE:CONNS[,...]")?
            .split(',')
            .map(crate::remote::Config::parse)
            .collect::<Result<Vec<_>>>()?;
        let (_, shards) = crate::remote::open(&model, &[])?;
        let (targets, _) = crate::remote::targets(&shards, &[]);
        // The fastest configuration of this repetition counts.
        let mut best: Option<(u64, Duration, crate::remote::Config)> = None;
        for &config in &configs {
            let (bytes, d) = crate::remote::read(&targets, config, u64::MAX)?;
            if best.as_ref().is_none_or(|b| d < b.1) {
                best = Some((bytes, d, config));
            }
        }
        let (bytes, d, config) = best.context("--server named no configuration")?;
        let run = Run {
            seconds: d.as_secs_f64(),
            bytes,
            tensors: None,
            backend: config.to_string(),
            peak_rss: peak_rss(),
            base_rss: None,
            peak_gpu: None,
            digest: None,
        };
        println!("{}", serde_json::to_string(&run)?);
        return Ok(());
    }
    let mut opts = LoadOptions::from_env()?;
    // Local paths open as `Checkpoint::open` does, remote ones through
    // weightlift's remote path (whose objects go into the options).
    let ckpt = Arc::new(weightlift::open_checkpoint(&[&model], &mut opts)?);
    let run = match loader.as_str() {
        "raw" => {
            let files: Vec<PathBuf> = ckpt
                .shards()
                .iter()
                .map(|s| s.path().to_path_buf())
                .collect();
            let configs = raw
                .as_deref()
                .context("--loader raw needs --raw WAY:BLOCK:DEPTH[,...]")?
                .split(',')
                .map(crate::ceiling::Config::parse)
                .collect::<Result<Vec<_>>>()?;
            // Each configuration reads every file cold (the caller evicted
            // them for the first); the fastest is the ceiling of this run.
            let mut best: Option<(u64, Duration, crate::ceiling::Config)> = None;
            for (i, &config) in configs.iter().enumerate() {
                if i > 0 {
                    prepare(&files, Cache::Cold)?;
                }
                let (bytes, d) = crate::ceiling::read(&files, config, u64::MAX)?;
                if best.as_ref().is_none_or(|b| d < b.1) {
                    best = Some((bytes, d, config));
                }
            }
            let (bytes, d, config) = best.context("--raw named no configuration")?;
            Run {
                seconds: d.as_secs_f64(),
                bytes,
                tensors: None,
                backend: config.to_string(),
                peak_rss: peak_rss(),
                base_rss: None,
                peak_gpu: None,
                digest: None,
            }
        }
        name => {
            let backends = if name == "auto" {
                None
            } else {
                Some(Backend::parse_list(name)?)
            };
            opts.engine.backends = backends;
            load_and_touch(&ckpt, &opts)?
        }
    };
    println!("{}", serde_json::to_string(&run)?);
    Ok(())
}

/// Load every tensor and read one byte of every page of each as it
/// arrives; the clock stops when the last page was read.
fn load_and_touch(ckpt: &Arc<Checkpoint>, opts: &LoadOptions) -> Result<Run> {
    let base_rss = rss("VmRSS");
    let t = Instant::now();
    let load = host::load(ckpt.clone(), &Selection::All, opts)?;
    let backend = load.backend().to_string();
    let mut bytes = 0u64;
    let mut sum = 0u64;
    let mut tensors = Vec::with_capacity(load.tensor_count());
    for tensor in load {
        let tensor = tensor?;
        let b = tensor.bytes();
        // One byte of every page, and the last byte (the last page of a
        // tensor that does not start on a page boundary).
        sum += b.iter().step_by(4096).map(|&x| u64::from(x)).sum::<u64>();
        sum += b.last().map_or(0, |&x| u64::from(x));
        bytes += b.len() as u64;
        tensors.push(tensor);
    }
    let seconds = t.elapsed().as_secs_f64();
    std::hint::black_box(sum);
    ensure!(
        tensors.len() == ckpt.len(),
        "{} of {} tensors loaded",
        tensors.len(),
        ckpt.len()
    );
    Ok(Run {
        seconds,
        bytes,
        tensors: Some(tensors.len() as u64),
        backend,
        peak_rss: peak_rss(),
        base_rss,
        peak_gpu: None,
        digest: None,
    })
}

fn peak_rss() -> Option<u64> {
    rss("VmHWM")
}

/// A `/proc/self/status` memory line (`VmRSS`, `VmHWM`), in bytes.
fn rss(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The memory bandwidth a copy out of the page cache is bounded by: `reps`
/// copies of a 512 MiB buffer into another, split over every core, both
/// touched beforehand. GB/s of bytes copied, one per repetition.
pub(crate) fn memcpy_rates(reps: usize) -> Vec<f64> {
    const LEN: usize = 512 << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let src = vec![0x5au8; LEN];
    // Written once untimed: zeroed allocations are not backed by pages
    // until first written.
    let mut dst = vec![0xa5u8; LEN];
    let chunk = LEN.div_ceil(threads);
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::thread::scope(|s| {
                for (d, c) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                    s.spawn(move || d.copy_from_slice(c));
                }
            });
            let secs = t.elapsed().as_secs_f64();
            std::hint::black_box(&dst);
            LEN as f64 / secs / 1e9
        })
        .collect()
}

/// Whether files are evicted (and confirmed cold) or read into the page
/// cache (and confirmed warm) before each run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cache {
    Cold,
    Warm,
    /// A remote checkpoint: no local page-cache state applies.
    Remote,
}

impl Cache {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cache::Cold => "cold",
            Cache::Warm => "warm",
            Cache::Remote => "remote",
        }
    }
}

/// Prepare the page cache for one run.
pub(crate) fn prepare(files: &[PathBuf], cache_state: Cache) -> Result<()> {
    if cache_state == Cache::Remote {
        return Ok(());
    }
    for f in files {
        match cache_state {
            Cache::Remote => {}
            Cache::Cold => {
                cache::evict(f)?;
                let r = cache::residency(f)?;
                ensure!(
                    r.is_cold(),
                    "{}: {} pages still cached after eviction",
                    f.display(),
                    r.resident_pages
                );
            }
            Cache::Warm => {
                // This machine's page cache drops idle pages quickly; read
                // again until every page is resident, a few times at most.
                let mut r = cache::residency(f)?;
                for _ in 0..3 {
                    if r.is_warm() {
                        break;
                    }
                    use std::io::Read;
                    let mut file = std::fs::File::open(f)?;
                    let mut buf = vec![0u8; 8 << 20];
                    while file.read(&mut buf)? > 0 {}
                    r = cache::residency(f)?;
                }
                ensure!(
                    r.is_warm(),
                    "{}: only {} of {} pages cached after reading it three times",
                    f.display(),
                    r.resident_pages,
                    r.total_pages
                );
            }
        }
    }
    Ok(())
}
