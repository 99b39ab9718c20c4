//! Fuzzing the targets in `fuzz/`, two ways:
//!
//! - `cargo xtask fuzz`: a long run of one target with cargo-fuzz (nightly,
//!   AddressSanitizer), its corpus kept in `fuzz/corpus/<target>`;
//! - `cargo xtask fuzz-smoke` (part of `cargo xtask test`): a short run of
//!   every target, built on the stable toolchain with libFuzzer's coverage
//!   instrumentation alone (what `cargo fuzz build --sanitizer none`
//!   passes), in `target/fuzz-smoke`, so that a parser change that panics
//!   fails the tests rather than the next long run.
//!
//! Both seed from the same place and give libFuzzer the same options (the
//! long run, under AddressSanitizer, more memory).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::args::Args;
use crate::{cargo, root, step};

/// The fuzz targets (the `[[bin]]`s of `fuzz/Cargo.toml`).
pub(crate) const TARGETS: [&str; 4] = ["header", "checkpoint", "index", "sllm"];

/// Seconds each target runs in the short run unless [`SECONDS_VAR`] says
/// otherwise: two minutes for the four.
const SMOKE_SECONDS: u64 = 30;

/// Overrides [`SMOKE_SECONDS`]; 0 builds the targets without running them.
pub(crate) const SECONDS_VAR: &str = "WEIGHTLIFT_FUZZ_SECONDS";

/// Where the short run builds, seeds and keeps what it finds (under the
/// ignored `target/`, apart from the workspace's own builds, which must not
/// see its flags).
const SMOKE_DIR: &str = "target/fuzz-smoke";

/// The flags `cargo fuzz build --sanitizer none` gives rustc (cargo-fuzz's
/// `project.rs`), all accepted by a stable rustc: libFuzzer's coverage
/// feedback, `cfg(fuzzing)`, and debug assertions with overflow checks
/// (implied by them, spelled out here), so that an arithmetic slip is a
/// crash rather than a wrapped number.
const COVERAGE_FLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
    "--cfg",
    "fuzzing",
    "-Clink-dead-code",
    "-Cdebug-assertions",
    "-Coverflow-checks",
    "-Ccodegen-units=1",
];

/// libFuzzer's options for a run of `seconds`: an input that takes more than
/// 10 s, or a process past `rss_mb`, is a failure like a crash.
fn libfuzzer_options(seconds: u64, rss_mb: u64) -> [String; 3] {
    [
        format!("-max_total_time={seconds}"),
        format!("-rss_limit_mb={rss_mb}"),
        "-timeout=10".into(),
    ]
}

fn check_target(target: &str) -> Result<()> {
    if !TARGETS.contains(&target) {
        bail!(
            "unknown fuzz target {target:?} (the targets: {})",
            TARGETS.join(", ")
        );
    }
    Ok(())
}

/// Copy `target`'s seeds into `corpus`: its own (`fuzz/seeds/<target>`)
/// when it has them, else the hostile-header corpus (`tests/corpus`).
/// Returns how many.
fn seed(target: &str, corpus: &Path) -> Result<usize> {
    std::fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let own = root().join("fuzz/seeds").join(target);
    let (from, ext) = if own.is_dir() {
        (own, None)
    } else {
        (root().join("tests/corpus"), Some("safetensors"))
    };
    let mut n = 0;
    for e in std::fs::read_dir(&from).with_context(|| format!("reading {}", from.display()))? {
        let p = e?.path();
        if ext.is_none_or(|ext| p.extension().is_some_and(|x| x == ext)) {
            std::fs::copy(&p, corpus.join(p.file_name().expect("a file")))
                .with_context(|| format!("copying {}", p.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// `cargo xtask fuzz [TARGET] [--seconds N]`: a long run with cargo-fuzz.
pub(crate) fn long(args: &mut Args) -> Result<()> {
    let target = args.positional().unwrap_or_else(|| "header".into());
    let seconds = args.number("--seconds")?.unwrap_or(600);
    args.finish()?;
    check_target(&target)?;
    let have = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        bail!(
            "fuzzing needs a nightly toolchain and cargo-fuzz: `rustup toolchain install nightly && cargo install cargo-fuzz` (or `cargo xtask fuzz-smoke`, which needs neither)"
        );
    }
    // The corpus is kept between runs, so that each starts where the last
    // one stopped.
    seed(&target, &root().join("fuzz/corpus").join(&target))?;
    step(
        &format!("cargo +nightly fuzz run {target} for {seconds} s"),
        Command::new("cargo")
            .current_dir(root())
            .args(["+nightly", "fuzz", "run", &target, "--"])
            .args(libfuzzer_options(seconds, 4096)),
    )
}

/// `cargo xtask fuzz-smoke [TARGET] [--seconds N]`: the short run of every
/// target (or one).
pub(crate) fn smoke_command(args: &mut Args) -> Result<()> {
    let target = args.positional();
    let seconds = match args.number("--seconds")? {
        Some(s) => s,
        None => smoke_seconds()?,
    };
    args.finish()?;
    match target {
        Some(t) => {
            check_target(&t)?;
            smoke(&[t.as_str()], seconds)
        }
        None => smoke(&TARGETS, seconds),
    }
}

/// Seconds per target for the short run: [`SECONDS_VAR`] or
/// [`SMOKE_SECONDS`].
pub(crate) fn smoke_seconds() -> Result<u64> {
    match std::env::var(SECONDS_VAR) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{SECONDS_VAR}={v:?} is not a number of seconds")),
        Err(_) => Ok(SMOKE_SECONDS),
    }
}

/// Build every target with coverage instrumentation on the toolchain at
/// hand, then run each of `targets` for `seconds` from a fresh copy of its
/// seeds. Any crash, timeout or memory blow-up fails it, naming the input
/// libFuzzer saved and the command that replays it.
pub(crate) fn smoke(targets: &[&str], seconds: u64) -> Result<()> {
    let dir = root().join(SMOKE_DIR);
    let bin = build(&dir)?;
    if seconds == 0 {
        eprintln!("({SECONDS_VAR}=0: the fuzz targets are built, not run)");
        return Ok(());
    }
    let mut failed = Vec::new();
    for &target in targets {
        if let Err(e) = run_one(&dir, &bin, target, seconds) {
            eprintln!("\n{e:#}");
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz target(s) {} failed (see above)", failed.join(", "));
    }
    Ok(())
}

/// Build the targets into `dir`; returns the folder that holds them.
fn build(dir: &Path) -> Result<PathBuf> {
    let triple = host_triple()?;
    check_cxx(&triple)?;
    // An explicit --target keeps the flags off build scripts and proc
    // macros, which are not linked with libFuzzer. CARGO_ENCODED_RUSTFLAGS
    // outranks RUSTFLAGS and any rustflags in a cargo config.
    step(
        "cargo build of the fuzz targets with libFuzzer's coverage instrumentation",
        cargo()
            .args(["build", "--manifest-path", "fuzz/Cargo.toml", "--release"])
            .args(["--bins", "--target", &triple, "--target-dir"])
            .arg(dir)
            .env("CARGO_ENCODED_RUSTFLAGS", COVERAGE_FLAGS.join("\x1f")),
    )?;
    Ok(dir.join(triple).join("release"))
}

/// Run `target` for `seconds` with a scratch corpus and artifact folder in
/// `dir`; libFuzzer's output goes to `dir/<target>.log`.
fn run_one(dir: &Path, bin: &Path, target: &str, seconds: u64) -> Result<()> {
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&corpus, &artifacts] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let seeds = seed(target, &corpus)?;
    let exe = bin.join(target);
    let log_path = dir.join(format!("{target}.log"));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    eprintln!("\n==> fuzz {target} for {seconds} s from {seeds} seeds");
    // Paths from the repository root (the run's working folder), so that
    // libFuzzer names the saved input the way the message below does. The
    // trailing slash makes the prefix a folder.
    let prefix = format!("-artifact_prefix={}/", relative(&artifacts).display());
    let status = Command::new(&exe)
        .current_dir(root())
        .arg(&prefix)
        .args(libfuzzer_options(seconds, 2048))
        .arg(relative(&corpus))
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    let text = std::fs::read_to_string(&log_path)
        .with_context(|| format!("reading {}", log_path.display()))?;
    if status.success() {
        // libFuzzer's closing status line: runs, coverage, corpus, speed.
        match text.lines().rfind(|l| l.contains("DONE")) {
            Some(done) => {
                let (runs, stats) = done.split_once("DONE").unwrap_or(("", done));
                let runs = runs.trim_start_matches('#').trim();
                eprintln!("{target}: {runs} runs, {}", stats.trim());
            }
            None => eprintln!("{target}: passed"),
        }
        return Ok(());
    }
    // What libFuzzer printed after its last status line: the panic, the
    // stack and where it saved the input.
    let lines: Vec<&str> = text.lines().collect();
    let from = lines
        .iter()
        .rposition(|l| l.starts_with('#') && l[1..].starts_with(|c: char| c.is_ascii_digit()))
        .map_or(0, |i| i + 1);
    for l in &lines[from..] {
        eprintln!("{l}");
    }
    let saved: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
        .collect();
    let exe = relative(&exe);
    let replay = match saved.first() {
        Some(input) => format!(
            "libFuzzer saved the failing input as {input}; replay it with `{} {input}` from the repository root",
            exe.display()
        ),
        None => "libFuzzer saved no input".into(),
    };
    bail!(
        "fuzz target {target} failed ({status}): {replay} (log: {})",
        relative(&log_path).display()
    )
}

/// `path` from the repository root, when it is under it.
fn relative(path: &Path) -> PathBuf {
    path.strip_prefix(root()).unwrap_or(path).to_path_buf()
}

/// The toolchain's host target, such as `x86_64-unknown-linux-gnu`.
fn host_triple() -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .current_dir(root())
        .arg("-vV")
        .output()
        .with_context(|| format!("running {rustc} -vV"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .with_context(|| format!("{rustc} -vV names no host"))
}

/// libfuzzer-sys compiles libFuzzer from C++ sources with the cc crate,
/// which runs the compiler its environment names (`CXX_<triple>`,
/// `TARGET_CXX`, `CXX`) or else `c++`: say what to install before the build
/// fails on it deep inside a build script.
fn check_cxx(triple: &str) -> Result<()> {
    let named = [
        format!("CXX_{triple}"),
        format!("CXX_{}", triple.replace('-', "_")),
        "TARGET_CXX".into(),
        "CXX".into(),
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok());
    let cxx = named.unwrap_or_else(|| "c++".into());
    let program = cxx.split_whitespace().next().unwrap_or("c++");
    let found = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        bail!(
            "the fuzz targets link libFuzzer, which is built from C++ sources, and no C++ compiler runs as `{program}`: install one (Debian or Ubuntu: `sudo apt-get install g++`) or name it in CXX"
        );
    }
    Ok(())
}
