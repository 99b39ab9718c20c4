//! `cargo xtask device-bundle`: everything a GPU machine without a Rust
//! toolchain or a package index needs to test and bench weightlift, built
//! here into one folder, with `run.sh` to run it there in one command.
//!
//! The folder mirrors the workspace where its parts expect to be found
//! (`xtask/bench_runner.py`, `crates/py/tests`, `tests/corpus`), and
//! `run.sh` points the benchmark at it with `WEIGHTLIFT_ROOT`:
//!
//! - `bin/xtask`: this program (bench, gen), `bin/load_to_device`: the
//!   loader's example, a Rust program loading onto a GPU on its own;
//! - `rust-tests/`: the GPU crate's test binaries;
//! - `wheels/`: the weightlift wheel, and `wheels/peers/` the peers' wheels
//!   for the GPU machine's Python (CPython 3.12, manylinux, x86-64);
//! - `crates/py/tests`, `crates/py/pyproject.toml` (its pytest markers),
//!   `tests/corpus`: the wheel's test suite;
//! - `xtask/bench_runner.py`: the benchmark's runner;
//! - `run.sh`, `MANIFEST`: what to run, and what is here.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::args::Args;
use crate::py::{self, Wheel};
use crate::{cargo, root, step};

/// What travels to a GPU machine in one call, at most.
const LIMIT: u64 = 64 << 20;

/// The peers' packages, for the GPU machine's Python. Their own needs
/// (typer, humanize, numpy, torch) are already there.
const PEER_WHEELS: &[&str] = &["instanttensor", "fastsafetensors", "runai-model-streamer"];

/// The platform tags pip may take the peers' wheels for.
const PLATFORMS: &[&str] = &[
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "any",
];

/// The options of `device-bundle`.
pub(crate) struct Bundle {
    pub out: PathBuf,
    /// Build the wheel with the test hooks (the `host` stand-in device),
    /// for a run of the bundle on this machine.
    pub test_hooks: bool,
    /// Leave the peers' wheels out.
    pub no_peers: bool,
    pub python: Option<PathBuf>,
}

impl Bundle {
    pub(crate) fn from_args(args: &mut Args) -> Result<Self> {
        let b = Bundle {
            out: args
                .value("--out")?
                .map_or_else(|| root().join("target/device-bundle"), PathBuf::from),
            test_hooks: args.flag("--test-hooks"),
            no_peers: args.flag("--no-peers"),
            python: args.value("--python")?.map(PathBuf::from),
        };
        args.finish()?;
        Ok(b)
    }
}

/// Build the bundle into `b.out` (emptied first); returns its size.
pub(crate) fn build(b: &Bundle) -> Result<u64> {
    let out = &b.out;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    for dir in ["bin", "rust-tests", "wheels/peers", "xtask", "crates/py"] {
        std::fs::create_dir_all(out.join(dir))?;
    }

    // The Rust side: this program, the example, the GPU crate's tests.
    let me = std::env::current_exe().context("finding xtask's own binary")?;
    copy(&me, &out.join("bin/xtask"))?;
    step(
        "cargo build --release --example load_to_device",
        cargo().args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "weightlift",
            "--example",
            "load_to_device",
        ]),
    )?;
    copy(
        &root().join("target/release/examples/load_to_device"),
        &out.join("bin/load_to_device"),
    )?;
    for exe in test_binaries()? {
        let name = exe
            .file_name()
            .and_then(|n| n.to_str())
            .context("a test binary without a name")?;
        // `cuda-0123abcd`: the test target's name, before cargo's hash.
        let target = name.rsplit_once('-').map_or(name, |(t, _)| t);
        copy(&exe, &out.join("rust-tests").join(target))?;
    }

    // The Python side: the wheel, the peers', the tests and the runner.
    let python = py::python(b.python.clone())?;
    let wheel = py::build_wheel(
        &python,
        if b.test_hooks {
            Wheel::Tests
        } else {
            Wheel::Release
        },
    )?;
    copy(
        &wheel,
        &out.join("wheels")
            .join(wheel.file_name().context("a wheel without a name")?),
    )?;
    if !b.no_peers {
        for w in peer_wheels(&python)? {
            copy(
                &w,
                &out.join("wheels/peers")
                    .join(w.file_name().context("no name")?),
            )?;
        }
    }
    copy_tree(
        &root().join("crates/py/tests"),
        &out.join("crates/py/tests"),
    )?;
    copy(
        &root().join("crates/py/pyproject.toml"),
        &out.join("crates/py/pyproject.toml"),
    )?;
    copy_tree(&root().join("tests/corpus"), &out.join("tests/corpus"))?;
    copy(&crate::load::runner(), &out.join("xtask/bench_runner.py"))?;
    copy(&root().join("xtask/device/run.sh"), &out.join("run.sh"))?;

    let files = walk(out)?;
    let size: u64 = files.iter().map(|(_, n)| n).sum();
    let commit = Command::new("git")
        .current_dir(root())
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("unknown".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    let mut manifest = format!(
        "weightlift device bundle, commit {commit}{}, {} in {} files\n\n",
        if b.test_hooks {
            ", wheel with the test hooks"
        } else {
            ""
        },
        crate::bench::human(size),
        files.len()
    );
    for (path, n) in &files {
        let rel = path.strip_prefix(out).unwrap_or(path);
        manifest.push_str(&format!("{n:>12}  {}\n", rel.display()));
    }
    std::fs::write(out.join("MANIFEST"), manifest)?;
    ensure!(
        size <= LIMIT,
        "the bundle in {} is {}, over the {} that travels to a GPU machine",
        out.display(),
        crate::bench::human(size),
        crate::bench::human(LIMIT)
    );
    Ok(size)
}

/// The GPU crate's test binaries, built in release (smaller and closer to
/// what users run) without running them.
fn test_binaries() -> Result<Vec<PathBuf>> {
    eprintln!("\n==> cargo test --release -p weightlift-gpu --no-run");
    let o = cargo()
        .args([
            "test",
            "--release",
            "-p",
            "weightlift-gpu",
            "--tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting cargo test --no-run")?;
    ensure!(o.status.success(), "building the GPU tests failed");
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["profile"]["test"] == true
            && let Some(exe) = v["executable"].as_str()
        {
            out.push(PathBuf::from(exe));
        }
    }
    ensure!(!out.is_empty(), "cargo built no GPU test binary");
    Ok(out)
}

/// The peers' wheels for the GPU machine's Python, downloaded once into
/// `target/peer-wheels` and kept.
fn peer_wheels(python: &Path) -> Result<Vec<PathBuf>> {
    let dir = root().join("target/peer-wheels");
    std::fs::create_dir_all(&dir)?;
    let have = |pkg: &str| -> Result<Option<PathBuf>> {
        let prefix = format!("{}-", pkg.replace('-', "_"));
        Ok(std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
            }))
    };
    let mut wheels = Vec::new();
    for &pkg in PEER_WHEELS {
        if let Some(w) = have(pkg)? {
            wheels.push(w);
            continue;
        }
        let mut pip = Command::new(python);
        pip.args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            "-d",
        ])
        .arg(&dir);
        for p in PLATFORMS {
            pip.args(["--platform", p]);
        }
        pip.arg(pkg);
        step(&format!("pip download {pkg} (for CPython 3.12)"), &mut pip)?;
        match have(pkg)? {
            Some(w) => wheels.push(w),
            None => bail!("pip download {pkg} left no wheel in {}", dir.display()),
        }
    }
    Ok(wheels)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Copy the files of `from` into `to`, recursively (caches left out).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let name = e.file_name();
        if name == "__pycache__" {
            continue;
        }
        let kind = e.file_type()?;
        if kind.is_dir() {
            copy_tree(&e.path(), &to.join(&name))?;
        } else if kind.is_file() {
            copy(&e.path(), &to.join(&name))?;
        }
    }
    Ok(())
}

/// Every file under `dir` with its size, in order.
fn walk(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let kind = e.file_type()?;
        if kind.is_dir() {
            out.extend(walk(&e.path())?);
        } else {
            out.push((e.path(), e.metadata()?.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// The bundle's `run.sh` run here, as on a GPU machine but through the
/// host-memory stand-in with tiny checkpoints (part of `cargo xtask test`),
/// so that the bundle cannot rot between GPU runs: the wheel installs with
/// pip's `--target`, the Rust test binaries and the example run, the bench
/// runs every stage with `--verify`, and the results land in `OUT`.
pub(crate) fn check_here(python: &Path) -> Result<()> {
    let b = Bundle {
        out: root().join("target/device-bundle-ci"),
        test_hooks: true,
        no_peers: true,
        python: Some(python.to_path_buf()),
    };
    build(&b)?;
    let out = root().join("target/device-bundle-ci-out");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    step(
        "run.sh of the device bundle, onto the host stand-in (tiny checkpoints)",
        Command::new("bash")
            .arg(b.out.join("run.sh"))
            .current_dir(root())
            .env("OUT", &out)
            .env("WL_DEVICE", "host")
            .env("WL_PYTHON", python)
            .env("WL_SHM_SIZE", "32MiB")
            .env("WL_DISK_SIZE", "32MiB")
            .env("WL_TENSORS", "3000")
            .env("WL_REPS", "1")
            .env("WL_SHM_DIR", "/dev/shm/weightlift-ci")
            // The stage limits fit a GPU machine's lease; here, on a busy
            // machine, a slow stage is not a broken one.
            .env("WL_LIMIT_TESTS", "900")
            .env("WL_LIMIT_SHM", "900")
            .env("WL_LIMIT_TENSORS", "900")
            .env("WL_LIMIT_DISK", "900")
            .env("WL_DISK_DIR", root().join("target/device-bundle-ci-disk")),
    )?;
    for f in ["summary.md", "machine.txt", "run.log", "results.tar.gz"] {
        ensure!(
            out.join(f).is_file(),
            "run.sh passed but wrote no {}",
            out.join(f).display()
        );
    }
    Ok(())
}
