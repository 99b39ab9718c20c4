//! Read backends: their names, the order they are tried in, and the probe
//! that decides whether one can read a set of files here.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::Rejected;
use crate::queue::QueueFile;
use crate::queue::aio::Aio;
use crate::queue::uring::Uring;
use crate::{Error, OpenMode, ReadFile, cache};

/// A way of reading files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring with `O_DIRECT`.
    Uring,
    /// io_uring through the page cache.
    UringBuffered,
    /// Linux AIO with `O_DIRECT`.
    Aio,
    /// Linux AIO through the page cache (the kernel reads inside
    /// `io_submit`: compatible, not asynchronous).
    AioBuffered,
    /// A pool of threads calling `pread` with `O_DIRECT`.
    Pread,
    /// A pool of threads calling `pread` through the page cache.
    PreadBuffered,
    /// Mapping the files: host tensors view a private copy-on-write mapping
    /// of the file; staged reads copy out of a shared mapping.
    Mmap,
    /// GPUDirect Storage (cuFile), straight into device memory. Provided by
    /// the GPU crate; this crate's engine rejects it.
    Cufile,
    /// Ranged reads of remote files ([`RemoteFiles`](crate::RemoteFiles)),
    /// on threads. Not chosen by name (and not in [`Backend::ALL`]): it is
    /// how files the options hold as remote are read, and only those.
    Remote,
}

/// A named group of backends, as accepted wherever backend names are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendPolicy {
    /// Through the page cache: `URING_BUFFERED`, `AIO_BUFFERED`,
    /// `PREAD_BUFFERED`, `MMAP`. Best when the same files are loaded again
    /// soon.
    Buffered,
    /// Bypassing the page cache: `URING`, `AIO`, `PREAD`. Best for a cold
    /// load of a model that is loaded once.
    Direct,
}

impl BackendPolicy {
    /// The backends the policy stands for, in the order they are tried.
    pub fn backends(self) -> &'static [Backend] {
        match self {
            BackendPolicy::Buffered => &[
                Backend::UringBuffered,
                Backend::AioBuffered,
                Backend::PreadBuffered,
                Backend::Mmap,
            ],
            BackendPolicy::Direct => &[Backend::Uring, Backend::Aio, Backend::Pread],
        }
    }

    /// The policy's name, as [`Backend::parse_list`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            BackendPolicy::Buffered => "BUFFERED",
            BackendPolicy::Direct => "DIRECT",
        }
    }
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 8] = [
        Backend::Uring,
        Backend::UringBuffered,
        Backend::Aio,
        Backend::AioBuffered,
        Backend::Pread,
        Backend::PreadBuffered,
        Backend::Mmap,
        Backend::Cufile,
    ];

    /// The name, as [`Backend::parse_list`] takes it (and InstantTensor's
    /// `Backend` spells it).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "URING",
            Backend::UringBuffered => "URING_BUFFERED",
            Backend::Aio => "AIO",
            Backend::AioBuffered => "AIO_BUFFERED",
            Backend::Pread => "PREAD",
            Backend::PreadBuffered => "PREAD_BUFFERED",
            Backend::Mmap => "MMAP",
            Backend::Cufile => "CUFILE",
            Backend::Remote => "REMOTE",
        }
    }

    /// Whether it bypasses the page cache (`O_DIRECT`).
    pub fn is_direct(self) -> bool {
        matches!(
            self,
            Backend::Uring | Backend::Aio | Backend::Pread | Backend::Cufile
        )
    }

    /// How it opens files.
    pub fn open_mode(self) -> OpenMode {
        if self.is_direct() {
            OpenMode::Direct
        } else {
            OpenMode::Buffered
        }
    }

    /// Parse a comma-separated list of backend and policy names
    /// (case-insensitive, spaces ignored); a policy expands to its backends.
    /// Repeats are dropped, keeping the first.
    pub fn parse_list(list: &str) -> Result<Vec<Backend>, Error> {
        let mut out: Vec<Backend> = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let upper = name.to_ascii_uppercase();
            let expanded: Vec<Backend> = match upper.as_str() {
                "BUFFERED" => BackendPolicy::Buffered.backends().to_vec(),
                "DIRECT" => BackendPolicy::Direct.backends().to_vec(),
                _ => vec![upper.parse()?],
            };
            for b in expanded {
                if !out.contains(&b) {
                    out.push(b);
                }
            }
        }
        if out.is_empty() {
            return Err(Error::UnknownBackend {
                name: list.to_string(),
            });
        }
        Ok(out)
    }
}

impl FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| Error::UnknownBackend {
                name: s.to_string(),
            })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every accepted name, for error messages.
pub(crate) fn known_names() -> String {
    let mut names: Vec<&str> = Backend::ALL.iter().map(|b| b.name()).collect();
    names.extend([BackendPolicy::Buffered.name(), BackendPolicy::Direct.name()]);
    names.join(", ")
}

/// Where the files are, as far as choosing a backend goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residence {
    /// On tmpfs or ramfs: memory already.
    InMemory,
    /// At least nine pages in ten in the page cache (virtual machines can
    /// drop idle cached pages within seconds, so "every page" would misjudge
    /// files read a moment ago).
    Cached,
    /// Less than that: reads go to storage.
    Storage,
}

impl Residence {
    /// Inspect `paths` (`fstatfs`, and `mincore` on up to 1,024 pages per
    /// file, in runs of 16; nothing is read).
    pub fn of(paths: &[PathBuf]) -> Result<Residence, Error> {
        let found = paths
            .iter()
            .map(|p| {
                if cache::in_memory(p)? {
                    return Ok(Found::InMemory);
                }
                let size = std::fs::metadata(p)
                    .map_err(|source| Error::Open {
                        file: p.clone(),
                        source,
                    })?
                    .len();
                let cached = cache::resident_fraction(p, RESIDENCY_SAMPLES)?;
                Ok(Found::OnDisk { size, cached })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Residence::judge(&found))
    }

    /// Where files are, from what was found of each: in memory when every
    /// file is (and there is one), cached when at least nine bytes in ten
    /// of those on disk are in the page cache, weighing each file by its
    /// size.
    fn judge(found: &[Found]) -> Residence {
        let (mut cached, mut total) = (0.0, 0.0);
        for f in found {
            if let Found::OnDisk { size, cached: c } = *f {
                cached += c * size as f64;
                total += size as f64;
            }
        }
        let all_in_memory = !found.is_empty() && found.iter().all(|f| *f == Found::InMemory);
        if all_in_memory {
            Residence::InMemory
        } else if cached >= CACHED_SHARE * total {
            Residence::Cached
        } else {
            Residence::Storage
        }
    }

    /// The default candidates, best first.
    ///
    /// In memory or cached, mapping copies nothing and wins (see
    /// docs/ARCHITECTURE.md for the measurements); from storage, direct
    /// reads at a deep queue reach the device's bandwidth without filling
    /// the page cache, and buffered reads come last for file systems that
    /// refuse `O_DIRECT`.
    pub fn default_candidates(self) -> Vec<Backend> {
        match self {
            Residence::InMemory | Residence::Cached => vec![
                Backend::Mmap,
                Backend::UringBuffered,
                Backend::PreadBuffered,
            ],
            Residence::Storage => vec![
                Backend::Uring,
                Backend::Aio,
                Backend::Pread,
                Backend::UringBuffered,
                Backend::AioBuffered,
                Backend::PreadBuffered,
                Backend::Mmap,
            ],
        }
    }

    /// The default candidates for reads into staging slots ([`choose`]'s
    /// `staged`), best first. From storage, as
    /// [`Residence::default_candidates`]; in memory or cached, a copy into
    /// the slots is needed whatever the backend, and threads `pread`ing
    /// out of the page cache made it as fast as copying out of a mapping
    /// with `process_vm_readv` (medians 9.9 against 8.5 GB/s on one
    /// thread, 11.4 against 10.8 on two, on the development machine)
    /// without mapping the files into the process, so they come first.
    pub fn staged_candidates(self) -> Vec<Backend> {
        match self {
            Residence::InMemory | Residence::Cached => vec![
                Backend::PreadBuffered,
                Backend::Mmap,
                Backend::UringBuffered,
            ],
            Residence::Storage => self.default_candidates(),
        }
    }
}

/// Pages of each file [`Residence::of`] asks `mincore` about.
const RESIDENCY_SAMPLES: usize = 1024;

/// The share of the files' bytes in the page cache from which they count
/// as [`Residence::Cached`].
const CACHED_SHARE: f64 = 0.9;

/// What [`Residence::of`] found of one file.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Found {
    /// On an in-memory file system.
    InMemory,
    /// On storage: its size, and the share of its pages in the page cache.
    OnDisk { size: u64, cached: f64 },
}

/// The backend chosen for a set of files, with the files opened for it.
#[derive(Debug)]
pub struct Chosen {
    /// The backend.
    pub backend: Backend,
    /// The files, opened in the backend's mode, in the order given.
    pub files: Vec<ReadFile>,
    /// Candidates tried before it, with the reasons they were rejected.
    pub rejected: Vec<Rejected>,
    /// Where the files were found to be, when the candidates were the default.
    pub residence: Option<Residence>,
}

/// Choose the first of `candidates` that can read every file in `paths`
/// (when `None`, the default order for where the files are, and for
/// `staged` reads: see [`Residence`]), and open the files for it.
///
/// `staged` says whether reads go to staging memory through the engine (a
/// mapping then serves by copying, which needs `process_vm_readv`); `map`
/// whether `MMAP` may serve reads that are not staged (see
/// [`EngineOptions::map`](crate::EngineOptions::map)).
pub fn choose(
    paths: &[PathBuf],
    candidates: Option<&[Backend]>,
    staged: bool,
    map: bool,
) -> Result<Chosen, Error> {
    let (candidates, residence) = match candidates {
        Some(c) => (c.to_vec(), None),
        None => {
            let r = Residence::of(paths)?;
            let candidates = if staged {
                r.staged_candidates()
            } else {
                r.default_candidates()
            };
            (candidates, Some(r))
        }
    };
    let mut rejected = Vec::new();
    // Opening is shared by candidates of the same mode.
    let mut opened: [Option<Result<Vec<ReadFile>, Error>>; 2] = [None, None];
    for backend in candidates {
        if backend == Backend::Cufile {
            rejected.push(Rejected {
                backend,
                reason: CUFILE_REASON.into(),
            });
            continue;
        }
        // Staged reads copy out of a mapping: nothing views the file there.
        if backend == Backend::Mmap && !map && !staged {
            rejected.push(Rejected {
                backend,
                reason: "mapping is turned off: tensors must own their memory".into(),
            });
            continue;
        }
        let slot = &mut opened[usize::from(backend.is_direct())];
        let files = slot.get_or_insert_with(|| open_all(paths, backend.open_mode()));
        let reason = match files {
            Err(e) => Some(crate::error::chain(e)),
            Ok(files) => probe(backend, files, staged).err(),
        };
        match reason {
            None => {
                let Some(Ok(files)) = slot.take() else {
                    unreachable!("probed files are open")
                };
                return Ok(Chosen {
                    backend,
                    files,
                    rejected,
                    residence,
                });
            }
            Some(reason) => rejected.push(Rejected { backend, reason }),
        }
    }
    // A missing or unreadable file is the same for every candidate: report
    // it as itself.
    for files in opened.into_iter().flatten() {
        if let Err(e @ Error::Open { .. }) = files {
            return Err(e);
        }
    }
    Err(Error::NoBackend { rejected })
}

/// Why `CUFILE` is refused, wherever it is asked for.
pub(crate) const CUFILE_REASON: &str =
    "cuFile reads straight into GPU memory: it serves GPU devices, not loads into host memory";

fn open_all(paths: &[PathBuf], mode: OpenMode) -> Result<Vec<ReadFile>, Error> {
    paths.iter().map(|p| ReadFile::open(p, mode)).collect()
}

/// Whether `backend` works here for `files`; the reason when it does not.
fn probe(backend: Backend, files: &[ReadFile], staged: bool) -> Result<(), String> {
    let qfiles = queue_files(files);
    match backend {
        Backend::Uring | Backend::UringBuffered => Uring::new(qfiles, 1)
            .map(drop)
            .map_err(|e| uring_refusal(&e)),
        Backend::Aio | Backend::AioBuffered => Aio::new(qfiles, 1)
            .map(drop)
            .map_err(|e| format!("io_setup: {e}")),
        Backend::Pread | Backend::PreadBuffered => Ok(()),
        Backend::Mmap => {
            if let Some(f) = files.iter().find(|f| usize::try_from(f.size()).is_err()) {
                return Err(format!("{}: too large to map", f.path().display()));
            }
            if staged { probe_vm_readv() } else { Ok(()) }
        }
        Backend::Cufile => Err(CUFILE_REASON.into()),
        Backend::Remote => Err("reads remote files only".into()),
    }
}

pub(crate) fn queue_files(files: &[ReadFile]) -> Vec<QueueFile> {
    use std::os::fd::AsRawFd;
    files
        .iter()
        .map(|f| QueueFile {
            fd: f.as_file().as_raw_fd(),
            size: f.size(),
        })
        .collect()
}

fn uring_refusal(e: &io::Error) -> String {
    let disabled = std::fs::read_to_string(Path::new("/proc/sys/kernel/io_uring_disabled"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| s != "0");
    match (e.raw_os_error(), disabled) {
        (Some(libc::EPERM), Some(d)) => {
            format!("io_uring_setup: {e} (kernel.io_uring_disabled = {d})")
        }
        (Some(libc::EPERM), None) => {
            format!("io_uring_setup: {e} (forbidden by a seccomp filter?)")
        }
        (Some(libc::ENOSYS), _) => format!("io_uring_setup: {e} (the kernel has no io_uring)"),
        _ => format!("io_uring_setup: {e}"),
    }
}

/// Copying out of a mapping uses `process_vm_readv` on this process, which
/// a seccomp filter may forbid.
fn probe_vm_readv() -> Result<(), String> {
    let src = [7u8; 8];
    let mut dst = [0u8; 8];
    let local = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: dst.len(),
    };
    let remote = libc::iovec {
        iov_base: src.as_ptr() as *mut libc::c_void,
        iov_len: src.len(),
    };
    // SAFETY: both iovecs describe live local arrays of 8 bytes.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == 8 && dst == src {
        Ok(())
    } else {
        Err(format!("process_vm_readv: {}", io::Error::last_os_error()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(size: u64, cached: f64) -> Found {
        Found::OnDisk { size, cached }
    }

    #[test]
    fn files_are_cached_from_nine_bytes_in_ten() {
        use Residence::*;
        assert_eq!(Residence::judge(&[disk(1 << 30, 1.0)]), Cached);
        assert_eq!(Residence::judge(&[disk(1 << 30, 0.9)]), Cached);
        assert_eq!(Residence::judge(&[disk(1 << 30, 0.89)]), Storage);
        assert_eq!(Residence::judge(&[disk(1 << 30, 0.0)]), Storage);
        // Weighed by size: a small cold file beside a large cached one.
        assert_eq!(
            Residence::judge(&[disk(1 << 30, 1.0), disk(100 << 20, 0.0)]),
            Cached
        );
        assert_eq!(
            Residence::judge(&[disk(1 << 30, 0.0), disk(100 << 20, 1.0)]),
            Storage
        );
        // Empty files count for nothing.
        assert_eq!(
            Residence::judge(&[disk(0, 0.0), disk(1 << 20, 1.0)]),
            Cached
        );
    }

    #[test]
    fn files_in_memory_are_in_memory_only_all_together() {
        use Residence::*;
        assert_eq!(
            Residence::judge(&[Found::InMemory, Found::InMemory]),
            InMemory
        );
        // Files in memory are not storage: the others decide.
        assert_eq!(
            Residence::judge(&[Found::InMemory, disk(1 << 30, 0.95)]),
            Cached
        );
        assert_eq!(
            Residence::judge(&[Found::InMemory, disk(1 << 30, 0.5)]),
            Storage
        );
        // No files: nothing to read from storage.
        assert_eq!(Residence::judge(&[]), Cached);
    }
}
