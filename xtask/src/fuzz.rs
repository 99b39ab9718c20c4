//! Fuzzing the targets in `fuzz/`: `cargo xtask fuzz`, a long run of one
//! target with cargo-fuzz (nightly, AddressSanitizer), its corpus kept in
//! `fuzz/corpus/<target>`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::args::Args;
use crate::{root, step};

/// The fuzz targets (the `[[bin]]`s of `fuzz/Cargo.toml`).
pub(crate) const TARGETS: [&str; 3] = ["header", "checkpoint", "index"];

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
            "fuzzing needs a nightly toolchain and cargo-fuzz: `rustup toolchain install nightly && cargo install cargo-fuzz`"
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
