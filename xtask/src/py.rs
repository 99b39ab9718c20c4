//! The Python side: a virtual environment with torch and safetensors, the
//! wheel built by maturin and installed into it, and its pytest suite.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::{root, step};

/// What the environment holds: the reference library and the frameworks
/// the tests compare against, the test runner, and the wheel's builder.
const PACKAGES: &[&str] = &["torch", "safetensors", "numpy", "pytest", "maturin"];

/// Imported to check that the environment is complete.
const PROBE: &str = "import torch, safetensors, numpy, pytest, maturin";

/// A Python with torch, safetensors, numpy, pytest and maturin: `explicit`,
/// `WEIGHTLIFT_PYTHON`, or the project's virtual environment
/// (`target/venv`), made and filled on first use.
pub(crate) fn python(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit.or_else(|| std::env::var_os("WEIGHTLIFT_PYTHON").map(PathBuf::from)) {
        return Ok(p);
    }
    let venv = root().join("target/venv");
    let py = venv.join("bin/python");
    let complete = |py: &Path| {
        Command::new(py)
            .args(["-c", PROBE])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if py.exists() && complete(&py) {
        return Ok(py);
    }
    if !py.exists() {
        step(
            &format!("python3 -m venv {}", venv.display()),
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
        )?;
    }
    step(
        &format!(
            "pip install {} (torch is a large download)",
            PACKAGES.join(" ")
        ),
        Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "--upgrade"])
            .args(PACKAGES),
    )?;
    ensure!(
        complete(&py),
        "{} still cannot `{PROBE}` after installing",
        py.display()
    );
    Ok(py)
}

/// Build the abi3 wheel with maturin (release) and install it into `py`'s
/// environment, replacing any earlier build.
pub(crate) fn install_wheel(py: &Path) -> Result<PathBuf> {
    let out = root().join("target/wheels");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    step(
        "maturin build --release (the weightlift wheel)",
        Command::new(py)
            .current_dir(root())
            .args(["-m", "maturin", "build", "--release", "--quiet", "--out"])
            .arg(&out)
            .args(["--manifest-path", "crates/py/Cargo.toml"]),
    )?;
    let wheel = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("maturin left no wheel in {}", out.display()))?;
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

/// Run the Python test suite (`crates/py/tests`) with `py`.
pub(crate) fn pytest(py: &Path) -> Result<()> {
    step(
        "pytest crates/py/tests",
        Command::new(py)
            .current_dir(root().join("crates/py"))
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]),
    )
}
