//! The storage's read ceiling, measured as fio measures it: the same files
//! read cold, with `O_DIRECT` by io_uring at several queue depths and by
//! pread threads, and through the page cache by pread threads, at several
//! read sizes; the best of them is the limit.
//! One stream of reads, which a loader with many reads in flight passes,
//! is not a limit.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use io_uring::{IoUring, opcode, types};
use weightlift_io::{AlignedBuf, OpenMode, ReadFile};

use crate::load::{Cache, prepare};

/// How reads are issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    /// One io_uring with `depth` `O_DIRECT` reads in flight.
    Uring,
    /// `depth` threads, one blocking `O_DIRECT` `pread` each.
    Threads,
    /// `depth` threads, one blocking `pread` each through the page cache
    /// (the kernel's readahead merges and runs ahead of them).
    Buffered,
}

/// One configuration of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Config {
    pub way: Way,
    /// Bytes per read.
    pub block: usize,
    /// Reads in flight (io_uring) or threads.
    pub depth: usize,
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (way, of) = match self.way {
            Way::Uring => ("io_uring", "in flight"),
            Way::Threads => ("pread", "threads"),
            Way::Buffered => ("buffered pread", "threads"),
        };
        write!(
            f,
            "{way}, {} MiB reads, {} {of}",
            self.block >> 20,
            self.depth
        )
    }
}

impl Config {
    /// As `load-once --raw` takes it: `uring:BLOCK:DEPTH` or
    /// `threads:BLOCK:DEPTH`.
    pub(crate) fn arg(&self) -> String {
        let way = match self.way {
            Way::Uring => "uring",
            Way::Threads => "threads",
            Way::Buffered => "buffered",
        };
        format!("{way}:{}:{}", self.block, self.depth)
    }

    pub(crate) fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let [way, block, depth] = parts[..] else {
            bail!("{s:?}: expected WAY:BLOCK:DEPTH");
        };
        let way = match way {
            "uring" => Way::Uring,
            "threads" => Way::Threads,
            "buffered" => Way::Buffered,
            _ => bail!("{s:?}: the way is uring, threads or buffered"),
        };
        let block: usize = block.parse().with_context(|| format!("{s:?}: block"))?;
        let depth: usize = depth.parse().with_context(|| format!("{s:?}: depth"))?;
        ensure!(
            block >= 4096 && block.is_multiple_of(4096) && depth >= 1,
            "{s:?}: block must be a positive multiple of 4096, depth at least 1"
        );
        Ok(Config { way, block, depth })
    }
}

/// The configurations tried: `O_DIRECT` at queue depths 1 to 64 with
/// io_uring and with 4 or 16 threads, and through the page cache with 4 or
/// 16 threads; reads of 1, 4 and 16 MiB.
pub(crate) fn sweep_configs() -> Vec<Config> {
    let mut out = Vec::new();
    for block in [1 << 20, 4 << 20, 16 << 20] {
        for depth in [1, 4, 16, 64] {
            out.push(Config {
                way: Way::Uring,
                block,
                depth,
            });
        }
        for way in [Way::Threads, Way::Buffered] {
            for depth in [4, 16] {
                out.push(Config { way, block, depth });
            }
        }
    }
    out
}

/// Try every configuration on `files`, each cold and reading at most
/// `limit` bytes; GB/s of each, best first.
pub(crate) fn sweep(files: &[PathBuf], limit: u64) -> Result<Vec<(Config, f64)>> {
    let mut out = Vec::new();
    for config in sweep_configs() {
        prepare(files, Cache::Cold)?;
        let (bytes, d) = read(files, config, limit)?;
        out.push((config, bytes as f64 / d.as_secs_f64() / 1e9));
    }
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(out)
}

/// Read `files` in order, start to end, with `config`, stopping after
/// `limit` bytes; the bytes read and the time.
pub(crate) fn read(files: &[PathBuf], config: Config, limit: u64) -> Result<(u64, Duration)> {
    let mode = match config.way {
        Way::Buffered => OpenMode::Buffered,
        Way::Uring | Way::Threads => OpenMode::Direct,
    };
    let opened = files
        .iter()
        .map(|f| ReadFile::open(f, mode))
        .collect::<Result<Vec<_>, _>>()?;
    let align = opened
        .iter()
        .map(|f| (f.alignment().offset as usize).max(f.alignment().memory))
        .max()
        .unwrap_or(4096)
        .max(4096);
    ensure!(
        config.block.is_multiple_of(align),
        "{config}: reads must be multiples of the files' direct-I/O alignment ({align})"
    );
    // Every read: (file, offset), in order, up to `limit` bytes.
    let mut work = Vec::new();
    let mut planned = 0u64;
    'files: for (i, f) in opened.iter().enumerate() {
        let mut offset = 0;
        while offset < f.size() {
            if planned >= limit {
                break 'files;
            }
            work.push((i, offset));
            planned += config.block as u64;
            offset += config.block as u64;
        }
    }
    let t = Instant::now();
    let bytes = match config.way {
        Way::Uring => uring(&opened, &work, config, align)?,
        Way::Threads | Way::Buffered => threads(&opened, &work, config, align)?,
    };
    Ok((bytes, t.elapsed()))
}

fn uring(files: &[ReadFile], work: &[(usize, u64)], config: Config, align: usize) -> Result<u64> {
    let depth = config.depth.min(work.len()).max(1);
    let mut ring = IoUring::new(depth.next_power_of_two() as u32).context("io_uring_setup")?;
    let mut bufs = (0..depth)
        .map(|_| AlignedBuf::zeroed(config.block, align))
        .collect::<Result<Vec<_>, _>>()?;
    let mut in_flight = 0usize;
    let result = drive(&mut ring, &mut bufs, &mut in_flight, files, work, config);
    // On an error, reads may still be in flight: wait for them, and if that
    // fails too, never free the buffers the kernel may still write.
    while in_flight > 0 {
        if ring.submit_and_wait(1).is_err() {
            std::mem::forget(bufs);
            break;
        }
        in_flight -= ring.completion().count();
    }
    result
}

/// Keep `config.depth` reads of `work` in flight on `ring` until all are
/// done; `in_flight` says how many are submitted and not yet reaped.
fn drive(
    ring: &mut IoUring,
    bufs: &mut [AlignedBuf],
    in_flight: &mut usize,
    files: &[ReadFile],
    work: &[(usize, u64)],
    config: Config,
) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let mut free: Vec<usize> = (0..bufs.len()).collect();
    let (mut next, mut bytes) = (0usize, 0u64);
    loop {
        while next < work.len()
            && let Some(slot) = free.pop()
        {
            let (f, offset) = work[next];
            let buf = bufs[slot].as_mut_slice();
            let entry = opcode::Read::new(
                types::Fd(files[f].as_file().as_raw_fd()),
                buf.as_mut_ptr(),
                config.block as u32,
            )
            .offset(offset)
            .build()
            .user_data(slot as u64);
            // SAFETY: the buffer stays allocated and untouched until its
            // completion is reaped (`uring` reaps every read before the
            // buffers go, or leaks them), and the file stays open.
            unsafe { ring.submission().push(&entry) }.map_err(|_| anyhow::anyhow!("ring full"))?;
            next += 1;
            *in_flight += 1;
        }
        if *in_flight == 0 {
            return Ok(bytes);
        }
        ring.submit_and_wait(1).context("io_uring_enter")?;
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        *in_flight -= done.len();
        for (slot, res) in done {
            free.push(slot as usize);
            if res < 0 {
                bail!(
                    "{config}: read failed: {}",
                    std::io::Error::from_raw_os_error(-res)
                );
            }
            bytes += res as u64;
        }
    }
}

fn threads(files: &[ReadFile], work: &[(usize, u64)], config: Config, align: usize) -> Result<u64> {
    let next = AtomicUsize::new(0);
    let results: Vec<Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..config.depth)
            .map(|_| {
                s.spawn(|| -> Result<u64> {
                    let mut buf = AlignedBuf::zeroed(config.block, align)?;
                    let mut bytes = 0u64;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(f, offset)) = work.get(i) else {
                            return Ok(bytes);
                        };
                        bytes += files[f].read_at(buf.as_mut_slice(), offset)? as u64;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a reading thread panicked"))
            })
            .collect()
    });
    results.into_iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_round_trip_through_their_argument() {
        for c in sweep_configs() {
            assert_eq!(Config::parse(&c.arg()).unwrap(), c);
        }
        for bad in ["uring:4096", "disk:4096:1", "uring:100:1", "threads:4096:0"] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_way_reads_every_byte_once_and_stops_at_the_limit() {
        let dir = std::env::temp_dir().join(format!("wl-ceiling-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Two files whose sizes are not multiples of the read size.
        let files: Vec<PathBuf> = [3 << 20, (5 << 20) + 12345]
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let p = dir.join(format!("f{i}"));
                std::fs::write(&p, vec![7u8; len]).unwrap();
                p
            })
            .collect();
        let total = (8 << 20) + 12345;
        for way in [Way::Uring, Way::Threads, Way::Buffered] {
            let config = Config {
                way,
                block: 1 << 20,
                depth: 4,
            };
            match read(&files, config, u64::MAX) {
                Ok((bytes, _)) => assert_eq!(bytes, total, "{config}"),
                // A file system without O_DIRECT (tmpfs) refuses the direct ways.
                Err(e) if way != Way::Buffered => eprintln!("{config}: {e:#}"),
                Err(e) => panic!("{config}: {e:#}"),
            }
            if let Ok((bytes, _)) = read(&files, config, 2 << 20) {
                assert_eq!(bytes, 2 << 20, "{config}: the limit");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
