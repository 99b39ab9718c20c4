//! The Python side: a virtual environment with torch and safetensors, the
//! wheel built by maturin and installed into it, and its pytest suite.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::report::Limit;
use crate::{root, step};

/// What the environment holds: the reference library and the frameworks
/// the tests compare against, the test runner, the wheel's builder, and the
/// benchmark's chart library.
const PACKAGES: &[&str] = &[
    "torch",
    "safetensors",
    "numpy",
    "pytest",
    "maturin",
    "matplotlib",
    "transformers",
    "moto",
];

/// The pip requirement for an import name, where the two differ: the
/// remote-checkpoint tests run moto's S3 server, which needs its extra.
fn requirement(module: &str) -> &str {
    match module {
        "moto" => "moto[server]",
        m => m,
    }
}

/// A Python with [`PACKAGES`] (import names; pip's are [`requirement`]): `explicit`,
/// `WEIGHTLIFT_PYTHON`, or the project's virtual environment
/// (`target/venv`), made and filled on first use.
pub(crate) fn python(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit.or_else(|| std::env::var_os("WEIGHTLIFT_PYTHON").map(PathBuf::from)) {
        return Ok(p);
    }
    venv(
        &root().join("target/venv"),
        PACKAGES,
        "torch is a large download",
    )
}

/// The virtual environment `dir` (made on first use) able to import
/// `modules`: what it lacks is installed with pip, what it has is left as
/// it is.
fn venv(dir: &Path, modules: &[&str], why_slow: &str) -> Result<PathBuf> {
    let py = dir.join("bin/python");
    let imports = modules.join(", ");
    if py.exists() && importable(&py, &imports) {
        return Ok(py);
    }
    if !py.exists() {
        step(
            &format!("python3 -m venv {}", dir.display()),
            Command::new("python3").args(["-m", "venv"]).arg(dir),
        )?;
    }
    let missing: Vec<&str> = modules
        .iter()
        .filter(|m| !importable(&py, m))
        .map(|m| requirement(m))
        .collect();
    step(
        &format!("pip install {} ({why_slow})", missing.join(" ")),
        Command::new(&py)
            .args(["-m", "pip", "install", "--quiet"])
            .args(&missing),
    )?;
    ensure!(
        importable(&py, &imports),
        "{} still cannot `import {imports}` after installing",
        py.display()
    );
    Ok(py)
}

/// Which wheel to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wheel {
    /// The wheel as released.
    Release,
    /// With the `test-hooks` feature: the `host` device name, host memory
    /// standing in for a GPU, which the Python suite loads onto.
    Tests,
}

/// Build the abi3 wheel with maturin (release) and install it into `py`'s
/// environment, replacing any earlier build.
pub(crate) fn install_wheel(py: &Path, wheel: Wheel) -> Result<PathBuf> {
    let wheel = build_wheel(py, wheel)?;
    step(
        "pip install the wheel",
        Command::new(py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--force-reinstall",
                "--no-deps",
            ])
            .arg(&wheel),
    )?;
    Ok(wheel)
}

/// Build the abi3 wheel with maturin (release, by `py`) into
/// `target/wheels`, replacing any earlier build; returns its path.
pub(crate) fn build_wheel(py: &Path, wheel: Wheel) -> Result<PathBuf> {
    let out = root().join("target/wheels");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let mut build = Command::new(py);
    build
        .current_dir(root())
        .args(["-m", "maturin", "build", "--release", "--quiet", "--out"])
        .arg(&out)
        .args(["--manifest-path", "crates/py/Cargo.toml"]);
    let what = match wheel {
        Wheel::Release => "maturin build --release (the weightlift wheel)",
        Wheel::Tests => {
            build.args(["--features", "test-hooks"]);
            "maturin build --release --features test-hooks (the weightlift wheel, with the test hooks)"
        }
    };
    step(what, &mut build)?;
    std::fs::read_dir(&out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("maturin left no wheel in {}", out.display()))
}

/// Run the Python test suite (`crates/py/tests`) with `py`.
pub(crate) fn pytest(py: &Path) -> Result<()> {
    pytest_with(py, &["tests"], None)
}

/// Run pytest with `py` in `crates/py` on `args`, with `required` set to
/// `1` (a test that would skip for want of it fails instead).
pub(crate) fn pytest_with(py: &Path, args: &[&str], required: Option<&str>) -> Result<()> {
    let mut what = format!("pytest {}", args.join(" "));
    let mut cmd = Command::new(py);
    cmd.current_dir(root().join("crates/py"))
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .args(args);
    if let Some(var) = required {
        what += &format!(" ({var}=1)");
        cmd.env(var, "1");
    }
    step(&what, &mut cmd)
}

/// The peers' packages: (peer, module, pip name).
const BENCH_EXTRAS: &[(&str, &str, &str)] = &[
    ("fastsafetensors", "fastsafetensors", "fastsafetensors"),
    ("runai", "runai_model_streamer", "runai-model-streamer"),
    // Its S3 reader, a package of its own.
    (
        "runai",
        "runai_model_streamer_s3",
        "runai-model-streamer-s3",
    ),
    ("instanttensor", "instanttensor", "instanttensor"),
];

/// The benchmark's Python: [`python`] with the wheel built from this tree
/// installed, and the selected peers installed from PyPI on first use. A
/// package that does not install is reported and left out: its row says
/// why it did not run. With `installed`, nothing is built or installed:
/// `explicit` already imports weightlift and whichever peers it has (a
/// device bundle's `PYTHONPATH`).
pub(crate) fn bench_python(
    explicit: Option<PathBuf>,
    peers: &[&str],
    installed: bool,
) -> Result<PathBuf> {
    let py = python(explicit)?;
    if installed {
        ensure!(
            importable(&py, "weightlift"),
            "--installed: {} cannot `import weightlift`",
            py.display()
        );
        return Ok(py);
    }
    install_wheel(&py, Wheel::Release)?;
    for &(peer, module, pip) in BENCH_EXTRAS {
        if !peers.contains(&peer) || importable(&py, module) {
            continue;
        }
        let installed = step(
            &format!("pip install {pip}"),
            Command::new(&py).args(["-m", "pip", "install", "--quiet", pip]),
        );
        if let Err(e) = installed {
            eprintln!("note: {pip} is not installed ({e:#}); its row will say so");
        }
    }
    Ok(py)
}

/// Whether `py` can `import {modules}` (a comma-separated list).
fn importable(py: &Path, modules: &str) -> bool {
    Command::new(py)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The host-to-device copy limit of `device`, found by the benchmark's
/// runner with torch as the storage ceiling is: a sweep of copy sizes and
/// stream counts from pinned memory, the best median counting; with the
/// sweep itself (pageable copies too), one line per way, for the report.
pub(crate) fn h2d_limit(py: &Path, device: &str) -> Result<(Limit, Vec<String>)> {
    #[derive(serde::Deserialize)]
    struct Way {
        pinned: bool,
        bytes: u64,
        streams: u32,
        rates: Vec<f64>,
    }
    #[derive(serde::Deserialize)]
    struct H2d {
        ways: Vec<Way>,
    }
    let out = Command::new(py)
        .arg(crate::load::runner())
        .args(["h2d", "--device", device])
        .output()
        .context("starting the host-to-device measurement")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = crate::load::result_line(&stdout);
    ensure!(
        out.status.success(),
        "measuring the host-to-device bandwidth of {device}: {last} {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let h: H2d = serde_json::from_str(last).with_context(|| format!("h2d printed {last:?}"))?;
    let name = |w: &Way| {
        format!(
            "{} {} on {} stream{}",
            if w.pinned { "pinned" } else { "pageable" },
            crate::bench::human(w.bytes),
            w.streams,
            if w.streams == 1 { "" } else { "s" }
        )
    };
    let median = |w: &Way| crate::report::Stats::of(w.rates.iter().copied()).map(|s| s.median);
    let sweep = h
        .ways
        .iter()
        .map(|w| match median(w) {
            Some(m) => format!("{}: {m:.2}", name(w)),
            None => format!("{}: nothing measured", name(w)),
        })
        .collect();
    let best = h
        .ways
        .iter()
        .filter(|w| w.pinned)
        .filter_map(|w| Some((median(w)?, w)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, w)| w)
        .context("h2d measured nothing")?;
    let limit = Limit::new(
        "pinned H2D",
        format!(
            "the best of a sweep of host-to-device copies from pinned memory (sizes 1 MiB to 1 GiB, 1, 2 or 4 streams; pageable copies beside them): {}, 5 copies timed with CUDA events",
            name(best)
        ),
        best.rates.clone(),
    )
    .context("h2d measured nothing")?;
    Ok((limit, sweep))
}

/// `cargo xtask test --integrations`: vLLM, too large for the default
/// environment, in an environment of its own (`target/venv-integrations`,
/// made on first use), with the wheel built from this tree; then the tests
/// that run vLLM's own loader machinery with `--load-format weightlift`
/// (`crates/py/tests/test_vllm.py`), required to find vLLM.
pub(crate) fn integrations() -> Result<()> {
    let py = venv(
        &root().join("target/venv-integrations"),
        &["vllm", "pytest", "maturin"],
        "vLLM and its torch are a large download",
    )?;
    install_wheel(&py, Wheel::Release)?;
    pytest_with(
        &py,
        &["tests/test_vllm.py"],
        Some("WEIGHTLIFT_REQUIRE_VLLM"),
    )
}
