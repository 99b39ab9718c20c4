//! The settings of a load, with their defaults, and the one place the
//! environment is read ([`LoadOptions::from_env`]).

use weightlift_io::{Backend, EngineOptions};

use crate::Error;

/// The variables [`LoadOptions::with_env`] reads: each with the setting it
/// overrides and what that is.
pub const ENV_VARS: [(&str, &str, &str); 10] = [
    (
        "WEIGHTLIFT_BACKEND",
        "backends",
        "backends to try, in order: names or the policies BUFFERED, DIRECT, comma-separated",
    ),
    (
        "WEIGHTLIFT_QUEUE_DEPTH",
        "queue_depth",
        "reads in flight at most",
    ),
    (
        "WEIGHTLIFT_SLOT_SIZE",
        "slot_size",
        "largest read, in bytes",
    ),
    (
        "WEIGHTLIFT_REMOTE_RANGE",
        "remote_range",
        "bytes per ranged read of a remote (s3://, http://) file",
    ),
    (
        "WEIGHTLIFT_REMOTE_IN_FLIGHT",
        "remote_in_flight",
        "ranged reads of remote files in flight",
    ),
    (
        "WEIGHTLIFT_RING_BYTES",
        "ring_bytes",
        "staging memory of a host load's staged reads, in bytes",
    ),
    (
        "WEIGHTLIFT_THREADS",
        "threads",
        "threads of the pread backends and of populating mappings",
    ),
    (
        "WEIGHTLIFT_PINNED_BYTES",
        "pinned_bytes",
        "page-locked staging memory of a device load, in bytes",
    ),
    (
        "WEIGHTLIFT_FILL_THREADS",
        "fill_threads",
        "threads copying mapped files into a device load's staging",
    ),
    (
        "WEIGHTLIFT_CACHE_DIR",
        "cache_dir",
        "a directory keeping local copies of remote shards, read instead of the remote objects while they are unchanged",
    ),
];

/// How a device load stages its bytes on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagingOptions {
    /// Page-locked host memory the reads land in, in bytes (at least 4096).
    /// It bounds the host memory a device load uses, whatever the size of
    /// the files.
    pub pinned_bytes: usize,
    /// Threads copying files in the page cache or on tmpfs into the
    /// staging memory (1 to 256).
    pub fill_threads: usize,
    /// Streams the copies to the device are spread over (1 to 64).
    pub streams: usize,
}

impl StagingOptions {
    /// Default staging: 128 MiB of pinned memory.
    pub const DEFAULT_PINNED_BYTES: usize = 128 << 20;
    /// Largest staging slot: the largest read and the largest single copy.
    pub const MAX_SLOT: usize = 16 << 20;

    /// Check every setting.
    pub fn check(&self) -> Result<(), Error> {
        check_range("pinned_bytes", self.pinned_bytes, 4096, usize::MAX)?;
        check_range("fill_threads", self.fill_threads, 1, 256)?;
        check_range("streams", self.streams, 1, 64)
    }

    /// The size of one staging slot: 16 MiB, or less so that the budget
    /// holds at least four (reading, copying and waiting then overlap), a
    /// multiple of 4096.
    pub fn slot_size(&self) -> usize {
        (Self::MAX_SLOT.min(self.pinned_bytes / 4) / 4096 * 4096).max(4096)
    }

    /// The number of staging slots.
    pub fn slots(&self) -> usize {
        (self.pinned_bytes / self.slot_size()).max(1)
    }
}

impl Default for StagingOptions {
    /// 128 MiB of pinned memory, filled by half the cores (at most 8), two
    /// streams.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        StagingOptions {
            pinned_bytes: Self::DEFAULT_PINNED_BYTES,
            fill_threads: (cores / 2).clamp(1, 8),
            streams: 2,
        }
    }
}

/// Every setting of a load. `Default` gives the defaults, which read
/// nothing from the environment; [`LoadOptions::from_env`] applies the
/// `WEIGHTLIFT_*` variables ([`ENV_VARS`]) over them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// How files are read: backends, queue depth, read size, host staging,
    /// threads.
    pub engine: EngineOptions,
    /// How a device load stages its bytes.
    pub staging: StagingOptions,
    /// Where local copies of remote shards are kept
    /// ([`weightlift_remote::Cache`]): opening a remote checkpoint fetches
    /// each shard not held there whole into it, and loads read the copies.
    /// `None`: remote shards are read remotely.
    pub cache_dir: Option<std::path::PathBuf>,
}

impl LoadOptions {
    /// The defaults with the `WEIGHTLIFT_*` variables applied.
    pub fn from_env() -> Result<Self, Error> {
        LoadOptions::default().with_env()
    }

    /// These options with every `WEIGHTLIFT_*` variable that is set applied
    /// over them. A value that does not parse or is out of range is an
    /// [`Error::Setting`] naming the variable.
    pub fn with_env(mut self) -> Result<Self, Error> {
        self.apply_env(|name| std::env::var(name).ok())?;
        Ok(self)
    }

    /// As [`LoadOptions::with_env`], with the variables from `var`.
    pub(crate) fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), Error> {
        if let Some(v) = var("WEIGHTLIFT_BACKEND").filter(|v| !v.trim().is_empty()) {
            let list = Backend::parse_list(&v).map_err(|_| Error::Setting {
                name: "WEIGHTLIFT_BACKEND",
                value: v.clone(),
                reason: "not a comma-separated list of backend or policy names",
            })?;
            self.engine.backends = Some(list);
        }
        if let Some(v) = var("WEIGHTLIFT_CACHE_DIR").filter(|v| !v.is_empty()) {
            self.cache_dir = Some(v.into());
        }
        let e = &mut self.engine;
        let s = &mut self.staging;
        for (name, field) in [
            ("WEIGHTLIFT_QUEUE_DEPTH", &mut e.queue_depth),
            ("WEIGHTLIFT_SLOT_SIZE", &mut e.slot_size),
            ("WEIGHTLIFT_REMOTE_RANGE", &mut e.remote_range),
            ("WEIGHTLIFT_REMOTE_IN_FLIGHT", &mut e.remote_in_flight),
            ("WEIGHTLIFT_RING_BYTES", &mut e.ring_bytes),
            ("WEIGHTLIFT_THREADS", &mut e.threads),
            ("WEIGHTLIFT_PINNED_BYTES", &mut s.pinned_bytes),
            ("WEIGHTLIFT_FILL_THREADS", &mut s.fill_threads),
        ] {
            if let Some(v) = var(name) {
                *field = parse_amount(&v).ok_or(Error::Setting {
                    name,
                    value: v.clone(),
                    reason: "not a whole number (with an optional K, M or G suffix)",
                })?;
            }
        }
        self.check_env(&var)
    }

    /// Check every setting; a failure names the variable that set it, when
    /// one did.
    fn check_env(&self, var: &impl Fn(&str) -> Option<String>) -> Result<(), Error> {
        self.check().map_err(|e| match e {
            Error::Setting {
                name,
                value,
                reason,
            } => {
                let set = ENV_VARS
                    .iter()
                    .find(|(_, field, _)| *field == name)
                    .and_then(|&(variable, ..)| var(variable).map(|v| (variable, v)));
                match set {
                    Some((name, value)) => Error::Setting {
                        name,
                        value,
                        reason,
                    },
                    None => Error::Setting {
                        name,
                        value,
                        reason,
                    },
                }
            }
            e => e,
        })
    }

    /// Check every setting.
    pub fn check(&self) -> Result<(), Error> {
        self.engine.check().map_err(|e| match e {
            weightlift_io::Error::Setting {
                name,
                value,
                reason,
            } => Error::Setting {
                name,
                value: value.to_string(),
                reason,
            },
            e => Error::Io(e),
        })?;
        self.staging.check()
    }

    /// Bound staging memory to `bytes` (InstantTensor's `buffer_size`):
    /// see [`EngineOptions::with_buffer_size`].
    pub fn with_buffer_size(mut self, bytes: usize) -> Result<Self, Error> {
        self.engine = self
            .engine
            .with_buffer_size(bytes)
            .map_err(|_| Error::Setting {
                name: "buffer_size",
                value: bytes.to_string(),
                reason: "must be at least 4096 bytes (one aligned read)",
            })?;
        Ok(self)
    }
}

fn check_range(name: &'static str, value: usize, low: usize, high: usize) -> Result<(), Error> {
    if (low..=high).contains(&value) {
        return Ok(());
    }
    Err(Error::Setting {
        name,
        value: value.to_string(),
        reason: match (low, high) {
            (4096, usize::MAX) => "must be at least 4096 bytes",
            (1, 256) => "must be a whole number from 1 to 256",
            _ => "must be a whole number from 1 to 64",
        },
    })
}

/// `123`, `64K`, `4M`, `1G` (binary multiples; `KiB`, `MiB`, `GiB` too).
fn parse_amount(s: &str) -> Option<usize> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: usize = s[..digits].parse().ok()?;
    let shift = match s[digits..].trim().to_ascii_uppercase().as_str() {
        "" => 0,
        "K" | "KIB" => 10,
        "M" | "MIB" => 20,
        "G" | "GIB" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<LoadOptions, Error> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut o = LoadOptions::default();
        o.apply_env(|k| vars.get(k).cloned())?;
        Ok(o)
    }

    #[test]
    fn amounts() {
        assert_eq!(parse_amount("4096"), Some(4096));
        assert_eq!(parse_amount("4M"), Some(4 << 20));
        assert_eq!(parse_amount(" 64 KiB "), Some(64 << 10));
        assert_eq!(parse_amount("1g"), Some(1 << 30));
        assert_eq!(parse_amount("4X"), None);
        assert_eq!(parse_amount("M"), None);
        assert_eq!(parse_amount("99999999999999999999G"), None);
    }

    #[test]
    fn variables_apply_over_the_defaults() {
        let o = with(&[
            ("WEIGHTLIFT_BACKEND", "uring, mmap"),
            ("WEIGHTLIFT_QUEUE_DEPTH", "4"),
            ("WEIGHTLIFT_PINNED_BYTES", "64M"),
            ("WEIGHTLIFT_FILL_THREADS", "3"),
        ])
        .unwrap();
        assert_eq!(o.engine.backends, Some(vec![Backend::Uring, Backend::Mmap]));
        assert_eq!(o.engine.queue_depth, 4);
        assert_eq!(o.staging.pinned_bytes, 64 << 20);
        assert_eq!(o.staging.fill_threads, 3);
        assert_eq!(with(&[]).unwrap(), LoadOptions::default());
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("WEIGHTLIFT_PINNED_BYTES", "12"),
            ("WEIGHTLIFT_PINNED_BYTES", "lots"),
            ("WEIGHTLIFT_FILL_THREADS", "0"),
            ("WEIGHTLIFT_QUEUE_DEPTH", "0"),
            ("WEIGHTLIFT_BACKEND", "NOPE"),
        ] {
            match with(&[(var, value)]) {
                Err(Error::Setting { name, value: v, .. }) => {
                    assert_eq!((name, v.as_str()), (var, value));
                }
                other => panic!("{var}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn staging_keeps_four_slots_where_the_budget_allows() {
        let s = |pinned_bytes| StagingOptions {
            pinned_bytes,
            ..StagingOptions::default()
        };
        assert_eq!(
            (s(128 << 20).slot_size(), s(128 << 20).slots()),
            (16 << 20, 8)
        );
        assert_eq!((s(8 << 20).slot_size(), s(8 << 20).slots()), (2 << 20, 4));
        assert_eq!((s(4096).slot_size(), s(4096).slots()), (4096, 1));
        assert_eq!((s(10_000).slot_size(), s(10_000).slots()), (4096, 2));
    }
}
