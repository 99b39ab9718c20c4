//! Timed loads into host memory, each in a fresh process, cold and warm,
//! interleaved with the storage limit and with `safetensors`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use weightlift_format::Checkpoint;
use weightlift_io::{Backend, EngineOptions, cache, host};
use weightlift_plan::Selection;

use crate::args::Args;

/// Python that loads with `safetensors.torch.load_file`, imports untimed,
/// and touches one byte of every page of every tensor before the clock
/// stops, as the Rust loads do.
const SAFETENSORS_LOAD: &str = r#"
import json, sys, time
import torch
from safetensors.torch import load_file
files = sys.argv[1:]
t = time.perf_counter()
total = 0
touched = 0
for f in files:
    for v in load_file(f).values():
        if v.numel() == 0:
            continue
        b = v.reshape(-1).view(torch.uint8)
        touched += int(b[::4096].sum())
        total += b.numel()
s = time.perf_counter() - t
print(json.dumps({"seconds": s, "bytes": total, "backend": "safetensors", "checksum": touched}))
"#;

/// A way of loading the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loader {
    /// The storage limit: one stream of 16 MiB `O_DIRECT` reads into one buffer.
    Raw,
    /// weightlift with the automatic choice.
    Auto,
    /// weightlift with one backend.
    Backend(Backend),
    /// `safetensors.torch.load_file` under this Python.
    Safetensors(PathBuf),
}

impl Loader {
    pub(crate) fn name(&self) -> String {
        match self {
            Loader::Raw => "raw O_DIRECT (limit)".into(),
            Loader::Auto => "weightlift auto".into(),
            Loader::Backend(b) => format!("weightlift {b}"),
            Loader::Safetensors(_) => "safetensors load_file".into(),
        }
    }
}

/// One measured run.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub seconds: f64,
    pub bytes: u64,
    pub backend: String,
}

/// `xtask load-once --model P --loader auto|raw|NAME`: one load in this
/// process, printed as one JSON line (the parent times nothing itself).
pub(crate) fn load_once(args: &mut Args) -> Result<()> {
    let model = args.value("--model")?.context("--model is required")?;
    let loader = args.value("--loader")?.unwrap_or_else(|| "auto".into());
    args.finish()?;
    let ckpt = Arc::new(Checkpoint::open(&model)?);
    let run = match loader.as_str() {
        "raw" => {
            let files: Vec<PathBuf> = ckpt
                .shards()
                .iter()
                .map(|s| s.path().to_path_buf())
                .collect();
            let (bytes, d) = crate::bench::raw_direct_read(&files, false)?;
            Run {
                seconds: d.as_secs_f64(),
                bytes,
                backend: "raw".into(),
            }
        }
        name => {
            let backends = if name == "auto" {
                None
            } else {
                Some(Backend::parse_list(name)?)
            };
            let opts = EngineOptions {
                backends,
                ..EngineOptions::default().with_env()?
            };
            load_and_touch(&ckpt, &opts)?
        }
    };
    println!(
        "{{\"seconds\": {}, \"bytes\": {}, \"backend\": \"{}\"}}",
        run.seconds, run.bytes, run.backend
    );
    Ok(())
}

/// Load every tensor and read one byte of every page of each as it
/// arrives; the clock stops when the last page was read.
fn load_and_touch(ckpt: &Arc<Checkpoint>, opts: &EngineOptions) -> Result<Run> {
    let t = Instant::now();
    let load = host::load(ckpt.clone(), &Selection::All, opts)?;
    let backend = load.backend().to_string();
    let mut bytes = 0u64;
    let mut sum = 0u64;
    let mut tensors = Vec::with_capacity(load.tensor_count());
    for tensor in load {
        let tensor = tensor?;
        let b = tensor.bytes();
        sum += b.iter().step_by(4096).map(|&x| u64::from(x)).sum::<u64>();
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
        backend,
    })
}

/// Whether files are evicted (and confirmed cold) or read into the page
/// cache (and confirmed warm) before each run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cache {
    Cold,
    Warm,
}

/// Prepare the page cache for one run.
pub(crate) fn prepare(files: &[PathBuf], cache_state: Cache) -> Result<()> {
    for f in files {
        match cache_state {
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

/// Run `loader` once in a fresh process.
pub(crate) fn run_once(loader: &Loader, model: &Path, files: &[PathBuf]) -> Result<Run> {
    let mut cmd = match loader {
        Loader::Safetensors(python) => {
            let mut c = Command::new(python);
            c.arg("-c").arg(SAFETENSORS_LOAD).args(files);
            c
        }
        other => {
            let mut c = Command::new(std::env::current_exe()?);
            let name = match other {
                Loader::Raw => "raw".to_string(),
                Loader::Auto => "auto".to_string(),
                Loader::Backend(b) => b.name().to_string(),
                Loader::Safetensors(_) => unreachable!(),
            };
            c.arg("load-once")
                .arg("--model")
                .arg(model)
                .arg("--loader")
                .arg(name);
            c
        }
    };
    // The choice must come from the loader's own default, not the caller's environment.
    cmd.env_remove(weightlift_io::BACKEND_ENV);
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", loader.name()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            loader.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let line = line.lines().last().unwrap_or_default();
    let field = |key: &str| -> Option<&str> {
        let at = line.find(&format!("\"{key}\": "))? + key.len() + 4;
        let rest = &line[at..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim().trim_matches('"'))
    };
    let seconds: f64 = field("seconds").context("no seconds")?.parse()?;
    let bytes: u64 = field("bytes").context("no bytes")?.parse()?;
    Ok(Run {
        seconds,
        bytes,
        backend: field("backend").unwrap_or("?").to_string(),
    })
}
