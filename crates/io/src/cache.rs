//! The page cache's view of a file: how much of it is resident, and
//! dropping it, so that benchmarks can load files truly cold.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::Error;

/// How much of a file the page cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Residency {
    /// Pages of the file in memory.
    pub resident_pages: u64,
    /// Pages the file spans.
    pub total_pages: u64,
    /// The page size, in bytes.
    pub page_size: u64,
}

impl Residency {
    /// Whether no page of the file is in memory.
    pub fn is_cold(&self) -> bool {
        self.resident_pages == 0
    }

    /// Whether every page of the file is in memory.
    pub fn is_warm(&self) -> bool {
        self.resident_pages == self.total_pages
    }
}

/// Count the pages of the file at `path` that are in the page cache
/// (`mincore` over a read-only mapping, which itself faults nothing in).
pub fn residency(path: &Path) -> Result<Residency, Error> {
    let page_size = page_size();
    let counted = with_probe_mapping(path, |addr, len, pages| {
        let mut vec = vec![0u8; pages as usize];
        // SAFETY: `addr..addr+len` is the probe mapping; `vec` has one byte
        // per page of it, as `mincore` requires.
        let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(vec.iter().filter(|&&b| b & 1 == 1).count() as u64)
    })?;
    let (resident_pages, total_pages) = counted.unwrap_or((0, 0));
    Ok(Residency {
        resident_pages,
        total_pages,
        page_size,
    })
}

/// Pages one `mincore` call of [`resident_fraction`] asks about. The system
/// call, not the pages, is what costs (about a microsecond each in a
/// virtual machine, against tens of nanoseconds a page), and neighbouring
/// pages are cached and evicted together (folios, readahead windows), so
/// runs of 16 tell about as much as single pages for a sixteenth of the
/// calls.
const SAMPLE_RUN: u64 = 16;

/// Estimate the fraction of the file at `path` in the page cache from at
/// most `samples` pages: runs of up to 16 neighbouring pages, one `mincore`
/// each, centred in equal stretches of the file. The cost does not grow
/// with the file (a full count walks every page and takes tens of
/// milliseconds for gigabytes). A file of at most `samples` pages is
/// counted exactly. Returns 1.0 for an empty file.
pub fn resident_fraction(path: &Path, samples: usize) -> Result<f64, Error> {
    let page = page_size();
    let sampled = with_probe_mapping(path, |addr, _, pages| {
        let samples = (samples.max(1) as u64).min(pages);
        let (runs, run) = if samples == pages {
            (1, pages)
        } else {
            let runs = samples.div_ceil(SAMPLE_RUN);
            (runs, samples / runs)
        };
        let mut flags = vec![0u8; run as usize];
        let mut resident = 0u64;
        for k in 0..runs {
            // Stretch k is pages lo..hi, at least `run` long (runs * run
            // <= pages); the run sits in its middle.
            let (lo, hi) = (k * pages / runs, (k + 1) * pages / runs);
            let first = lo + (hi - lo - run) / 2;
            // SAFETY: pages first..first + run lie inside the probe mapping,
            // which spans every page of the file (hi <= pages), and `flags`
            // has one byte for each.
            let rc = unsafe {
                libc::mincore(
                    addr.cast::<u8>().add((first * page) as usize).cast(),
                    (run * page) as usize,
                    flags.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            resident += flags.iter().filter(|&&b| b & 1 == 1).count() as u64;
        }
        Ok(resident as f64 / (runs * run) as f64)
    })?;
    Ok(sampled.map_or(1.0, |(fraction, _)| fraction))
}

/// Map the file at `path` read-only and shared, only to ask `mincore` about
/// it: `probe(address, length, pages)` runs with the mapping, which is
/// unmapped afterwards on every path. Nothing reads through it, so nothing
/// is faulted in. Returns the probe's result and the file's page count, or
/// `None` for an empty file.
fn with_probe_mapping<T>(
    path: &Path,
    probe: impl FnOnce(*mut libc::c_void, usize, u64) -> io::Result<T>,
) -> Result<Option<(T, u64)>, Error> {
    let file = open(path)?;
    let fail = |op, source| cache_error(path, op, source);
    let size = file.metadata().map_err(|e| fail("stat", e))?.len();
    let pages = size.div_ceil(page_size());
    if size == 0 {
        return Ok(None);
    }
    let len = usize::try_from(size).map_err(|_| fail("map", io::ErrorKind::FileTooLarge.into()))?;
    // SAFETY: a fresh shared read-only mapping of a valid descriptor; the
    // kernel picks the address. Nothing reads through it, and it is unmapped
    // below on every path.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(fail("map", io::Error::last_os_error()));
    }
    let result = probe(addr, len, pages);
    // SAFETY: unmapping exactly the mapping made above, once.
    unsafe { libc::munmap(addr, len) };
    result
        .map(|t| Some((t, pages)))
        .map_err(|e| fail("mincore", e))
}

/// Drop the file at `path` from the page cache: write back anything dirty,
/// then `posix_fadvise(POSIX_FADV_DONTNEED)`. Pages that another process
/// holds mapped may stay; [`residency`] tells.
pub fn evict(path: &Path) -> Result<(), Error> {
    let file = open(path)?;
    let fail = |op, source| cache_error(path, op, source);
    // Dirty pages are not dropped until written back. Read-only file systems
    // (squashfs, erofs, iso9660) have nothing dirty and refuse the call.
    if let Err(e) = file.sync_data()
        && !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EROFS))
    {
        return Err(fail("fdatasync", e));
    }
    // SAFETY: a valid descriptor; offset 0 and length 0 mean the whole file.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    // posix_fadvise returns the error number rather than setting errno.
    if rc != 0 {
        return Err(fail("posix_fadvise", io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// Whether the file at `path` lives on an in-memory file system (tmpfs,
/// ramfs), whose pages cannot be evicted: it is always warm.
pub fn in_memory(path: &Path) -> Result<bool, Error> {
    Ok(crate::file::in_memory_fs(&open(path)?))
}

fn open(path: &Path) -> Result<File, Error> {
    // Without blocking: a FIFO is refused, not waited on.
    weightlift_format::open_regular(path, 0).map_err(|source| Error::Open {
        file: path.to_path_buf(),
        source,
    })
}

fn cache_error(path: &Path, op: &'static str, source: io::Error) -> Error {
    Error::Cache {
        file: path.to_path_buf(),
        op,
        source,
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}
