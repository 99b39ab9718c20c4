//! Time single tensors read through a [`Session`] with each backend named:
//! one 256 KiB tensor on an open handle, 201 open/get/close rounds, and 8
//! threads sharing one handle (25 requests each). Prints the median, min
//! and max over the repetitions.
//!
//! ```text
//! cargo run --release -p weightlift --example lone_reads -- [DIR] [REPS]
//! ```
//!
//! `DIR` (default: the system's temporary directory) must be on a file
//! system that accepts `O_DIRECT` for the direct backends; one that refuses
//! is reported and skipped.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use weightlift::{Backend, Checkpoint, Error, LoadOptions, Selection, Session};
use weightlift_format::{Dtype, TensorSpec, encode_header};

const TENSOR: usize = 256 << 10;
const COUNT: usize = 16;

fn go() -> bool {
    true
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "median {:.3} [{:.3}, {:.3}]",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    )
}

fn options(backend: Option<Backend>) -> LoadOptions {
    let mut o = LoadOptions::default();
    o.engine.backends = backend.map(|b| vec![b]);
    o
}

/// A name that is never the next in sorted order after the previous one,
/// so that every request is read alone.
fn name(i: usize) -> String {
    format!("t{:02}", (i * 5 + 3) % COUNT)
}

struct Times {
    first: Vec<f64>,
    later: Vec<f64>,
    rounds: Vec<f64>,
    threads: Vec<f64>,
}

fn measure(
    path: &std::path::Path,
    backend: Option<Backend>,
    times: &mut Times,
) -> Result<(), Error> {
    let session = || -> Result<Session, Error> {
        let ckpt = Arc::new(Checkpoint::open(path)?);
        Session::new(ckpt, &Selection::All, options(backend))
    };
    let mut s = session()?;
    for i in 0..6 {
        let t0 = Instant::now();
        let t = s.get(&name(i), &mut go)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        assert_eq!(t.len(), TENSOR);
        if i == 0 {
            &mut times.first
        } else {
            &mut times.later
        }
        .push(ms);
    }
    let t0 = Instant::now();
    for i in 0..201 {
        assert_eq!(session()?.get(&name(i), &mut go)?.len(), TENSOR);
    }
    times.rounds.push(t0.elapsed().as_secs_f64());
    let shared = Mutex::new(session()?);
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|k| {
                let shared = &shared;
                scope.spawn(move || -> Result<(), Error> {
                    for i in 0..25 {
                        let t = shared.lock().unwrap().get(&name(k * 3 + i), &mut go)?;
                        assert_eq!(t.len(), TENSOR);
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap())
    })?;
    times.threads.push(t0.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).map_or_else(std::env::temp_dir, Into::into);
    let reps: usize = args.get(2).map_or(Ok(5), |s| s.parse())?;
    let specs: Vec<TensorSpec> = (0..COUNT)
        .map(|i| TensorSpec::new(format!("t{i:02}"), Dtype::U8, [TENSOR as u64]))
        .collect();
    let enc = encode_header(&specs, None)?;
    let mut bytes = enc.bytes;
    bytes.extend((0..COUNT * TENSOR).map(|i| (i % 251) as u8));
    let path = dir.join(format!("wl-lone-reads-{}.safetensors", std::process::id()));
    std::fs::write(&path, &bytes)?;
    let backends = [
        Some(Backend::Aio),
        Some(Backend::Pread),
        Some(Backend::Uring),
        Some(Backend::PreadBuffered),
        None,
    ];
    for backend in backends {
        let label = backend.map_or("(none named)", Backend::name);
        let mut times = Times {
            first: vec![],
            later: vec![],
            rounds: vec![],
            threads: vec![],
        };
        let measured = (0..reps).try_for_each(|_| measure(&path, backend, &mut times));
        if let Err(e) = measured {
            println!("{label:15} skipped: {e}");
            continue;
        }
        println!("{label:15} first get, ms     {}", stats(times.first));
        println!("{label:15} later gets, ms    {}", stats(times.later));
        println!("{label:15} 201 rounds, s     {}", stats(times.rounds));
        println!("{label:15} 8 threads x 25, s {}", stats(times.threads));
    }
    std::fs::remove_file(&path)?;
    Ok(())
}
