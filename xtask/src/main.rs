//! Project automation, run as `cargo xtask <command>`:
//!
//! - `test`: every check and test of the workspace (the README's test command);
//! - `bench`: the main job: open, plan and load a checkpoint (generated when none is given), cold and warm, next to the storage limit and safetensors;
//! - `device-bundle`: what a GPU machine needs to test and bench, with the script that does it;
//! - `gen`: write a Llama-shaped checkpoint;
//! - `corpus`: regenerate the hostile-header corpus in `tests/corpus`;
//! - `fuzz`: a long run of a fuzz target (needs nightly and cargo-fuzz);
//! - `fuzz-smoke`: a short run of every fuzz target on the stable toolchain (part of `test`).

mod args;
mod bench;
mod bundle;
mod ceiling;
mod fuzz;
mod group;
mod load;
mod py;
mod remote;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use args::Args;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  test                    run every check and test (fmt, clippy, tests, doctests, docs,
                          the wheel's pytest suite in target/venv, the device
                          bundle's run.sh onto the host stand-in, and fuzz-smoke)
      --integrations      instead: vLLM itself (a multi-GB install, in
                          target/venv-integrations) loading its model classes
                          on the CPU through --load-format weightlift
  bench [options]         load a checkpoint with weightlift (its automatic choice and
                          each backend), safetensors and the peers, cold and warm,
                          each load in a fresh process, next to the hardware's
                          limits measured in the same run; print the table and
                          write summary.md, raw.jsonl and chart.png
      --model PATH        a .safetensors file, a directory, or an index.json
                          (default: a generated Llama-shaped checkpoint);
                          or s3://bucket/key-or-prefix or an http(s):// URL,
                          loaded through weightlift's remote path in one
                          state (no cold/warm), next to the Run:ai streamer
                          (S3) and the server's limit (parallel ranged GETs)
      --remote s3|s3-range|http
                          instead: start a server on 127.0.0.1 (moto's S3
                          server; s3-range, the HTTP range server answering
                          S3 path-style GETs, signatures not checked, as
                          fast as http where moto is not; or an HTTP range
                          server) holding the
                          generated checkpoint (default 1GiB) and bench it
                          as --model s3://... or http://... would; --verify
                          compares with safetensors on the local copy
      --remote-settings LIST
                          remote only: also time weightlift (Rust API) with
                          these range sizes and requests in flight, such as
                          8MiB:8,16MiB:16
      --size SIZE         size of the generated checkpoint (default 3GiB)
      --tensors N         generate a mixture-of-experts-shaped checkpoint of N
                          tiny tensors instead (one shard per 2,500 tensors)
      --reps N            timed loads per loader and cache state (default 3)
      --device DEV        cpu (default), cuda:N, or host (weightlift onto its
                          host-memory stand-in for a GPU, the others onto
                          the CPU; needs a wheel built with the test hooks)
      --backends LIST     weightlift backends to time besides the automatic
                          choice (default: all but CUFILE), such as URING,MMAP,
                          or none
      --peers LIST        fastsafetensors, runai, instanttensor, all (default)
                          or none; safetensors, the baseline, always runs
      --cold | --warm     only cold (files evicted) or only warm loads
      --out DIR           where the results go (default results/<date>-<host>,
                          or results/<date>-<host>-quick)
      --verify            check that every loader returned what safetensors
                          load_file did (names, dtypes, shapes, bytes)
      --quick             a small run: a 256 MiB checkpoint, 2 repetitions,
                          the automatic choice alone, --verify
      --pause SECONDS     rest before each cold load (default 2; 0.5 with
                          --quick), so that storage that throttles bursts
                          treats all alike
      --python PATH       a Python with torch and safetensors (default: made
                          in target/venv on first use); the wheel and the
                          peers are installed into it
      --installed         with --python: weightlift and the peers are already
                          importable there (a device bundle); build and
                          install nothing
      --no-python         time weightlift through its Rust API alone (host
                          memory, no peers)
      --alignment N       read alignment in bytes (default 4096)
      --max-extent SIZE   largest read (default 16MiB)
      --shares N          also split the plan into N shares (default 8)
      --ranks N           instead: a torch.distributed group of N processes
                          here (gloo; NCCL with --device cuda:0, one GPU per
                          rank) loads the checkpoint, every rank every tensor
                          and then its tensor-parallel part, beside one
                          process alone; with --model, --size, --reps,
                          --device, --cold/--warm, --python and --out
                          (default results/<date>-<host>-ranksN)
  device-bundle [--out DIR] [--test-hooks] [--no-peers] [--python PATH]
                          build into DIR (default target/device-bundle), under
                          64 MiB, all a GPU machine without Rust or a package
                          index needs: the wheel, the peers' wheels for its
                          CPython 3.12, the GPU crate's test binaries, the
                          Rust example, the Python tests, the bench and
                          run.sh, which tests and benches there in one
                          command (see xtask/device/run.sh); --test-hooks
                          builds the wheel with the host stand-in device
  gpu-test [--python PATH]
                          the GPU tests, with WEIGHTLIFT_REQUIRE_GPU=1 so that a
                          missing GPU fails them instead of skipping: the gpu
                          crate's (the CUDA driver and device) and the wheel's
                          (pytest -m gpu)
  gen --out DIR [--size SIZE | --tensors N] [--shards N] [--seed N]
                          write a Llama-shaped (or, with --tensors, a
                          mixture-of-experts-shaped) checkpoint with an index
  corpus                  regenerate tests/corpus from tests/src/corpus.rs and sllm_corpus.rs
  fuzz [TARGET] [--seconds N]
                          run a fuzz target with cargo-fuzz, nightly and AddressSanitizer
                          (header, checkpoint or index; default header, 600 s)
  fuzz-smoke [TARGET] [--seconds N]
                          build the fuzz targets on the stable toolchain with libFuzzer's
                          coverage instrumentation and run each (or TARGET) for N s
                          (default 30, or WEIGHTLIFT_FUZZ_SECONDS; 0 builds only);
                          a crash fails it, naming the saved input and how to replay it
";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = Args::from_env();
    let Some(cmd) = args.command() else {
        print!("{USAGE}");
        return Ok(());
    };
    match cmd.as_str() {
        "test" => {
            let integrations = args.flag("--integrations");
            args.finish()?;
            if integrations {
                py::integrations()
            } else {
                test()
            }
        }
        "gpu-test" => {
            let python = args.value("--python")?.map(PathBuf::from);
            args.finish()?;
            gpu_test(python)
        }
        "bench" => bench::run(&mut args),
        "load-once" => load::load_once(&mut args),
        "device-bundle" => {
            let b = bundle::Bundle::from_args(&mut args)?;
            let size = bundle::build(&b)?;
            println!(
                "{} ({}): run it on a GPU machine with `bash {}/run.sh`",
                b.out.display(),
                bench::human(size),
                b.out.display()
            );
            Ok(())
        }
        "gen" => {
            let out = PathBuf::from(args.value("--out")?.context("gen needs --out DIR")?);
            let size = args.size("--size")?.unwrap_or(bench::DEFAULT_SIZE);
            let tensors = args.number("--tensors")?;
            let shards = args.number("--shards")?.map(|n| n as usize);
            let seed = args.number("--seed")?.unwrap_or(1);
            args.finish()?;
            let index = bench::generate(&out, bench::Fixture::new(size, tensors), shards, seed)?;
            println!("{}", index.display());
            Ok(())
        }
        "corpus" => {
            args.finish()?;
            let dir = root().join("tests/corpus");
            weightlift_tests::corpus::write_all(&dir)
                .with_context(|| format!("writing {}", dir.display()))?;
            println!("wrote {}", dir.display());
            let dir = root().join("tests/corpus/sllm");
            weightlift_tests::sllm_corpus::write_all(&dir)
                .with_context(|| format!("writing {}", dir.display()))?;
            println!("wrote {}", dir.display());
            Ok(())
        }
        "fuzz" => fuzz::long(&mut args),
        "fuzz-smoke" => fuzz::smoke_command(&mut args),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

/// The workspace root (xtask lives one level below it), or
/// `WEIGHTLIFT_ROOT`: a device bundle, which holds the benchmark's runner
/// where the workspace does and is run where no workspace is.
fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEIGHTLIFT_ROOT") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Run a command, failing with its description if it fails.
fn step(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("\n==> {what}");
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Make sure rustfmt and clippy are installed (a minimal rustup profile lacks them).
fn ensure_components() -> Result<()> {
    let have = |tool: &str| {
        cargo()
            .args([tool, "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(have("fmt") && have("clippy")) {
        step(
            "rustup component add rustfmt clippy",
            Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]),
        )?;
    }
    Ok(())
}

/// The GPU tests, required to find a GPU.
fn gpu_test(python: Option<PathBuf>) -> Result<()> {
    const REQUIRE: &str = "WEIGHTLIFT_REQUIRE_GPU";
    step(
        "cargo test -p weightlift-gpu (WEIGHTLIFT_REQUIRE_GPU=1)",
        cargo()
            .args(["test", "-p", "weightlift-gpu"])
            .env(REQUIRE, "1"),
    )?;
    let python = py::python(python)?;
    py::install_wheel(&python, py::Wheel::Release)?;
    py::pytest_with(&python, &["-m", "gpu", "tests"], Some(REQUIRE))
}

fn test() -> Result<()> {
    // Read before the long steps, so that a bad value fails at once.
    let fuzz_seconds = fuzz::smoke_seconds()?;
    ensure_components()?;
    // Property tests run 256 cases each unless told otherwise.
    let cases = std::env::var("PROPTEST_CASES").unwrap_or_else(|_| "256".into());
    step(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    step(
        "cargo clippy (workspace, all targets, warnings denied)",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "cargo clippy with the test hooks (warnings denied)",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "cargo test (workspace: unit, integration, property and corpus tests; benchmarks run once)",
        cargo()
            .args(["test", "--workspace", "--all-targets"])
            .env("PROPTEST_CASES", &cases),
    )?;
    // The Rust example of the README, run as a user would, onto the
    // host-memory device that stands in for a GPU.
    let example = root().join("target/xtask-example");
    let _ = std::fs::remove_dir_all(&example);
    let index = bench::generate(&example, bench::Fixture::new(16 << 20, None), Some(2), 3)?;
    step(
        "cargo run --example load_to_device (onto the host stand-in)",
        cargo()
            .args([
                "run",
                "--quiet",
                "-p",
                "weightlift",
                "--example",
                "load_to_device",
                "--",
            ])
            .arg(&index)
            .arg("host")
            .stdout(std::process::Stdio::null()),
    )?;
    step(
        "cargo test --doc (workspace)",
        cargo().args(["test", "--workspace", "--doc"]),
    )?;
    step(
        "cargo doc (workspace, warnings denied)",
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--quiet"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    let python = py::python(None)?;
    py::install_wheel(&python, py::Wheel::Tests)?;
    py::pytest(&python)?;
    // The device bundle, built and run here onto the host stand-in.
    bundle::check_here(&python)?;
    // A short run of every fuzz target, so that a parser change that
    // panics is caught here rather than by the next long run.
    fuzz::smoke(&fuzz::TARGETS, fuzz_seconds)?;
    eprintln!("\nxtask test: all checks passed");
    Ok(())
}
