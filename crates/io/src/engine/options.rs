//! Settings of the engine, and their checks.

use crate::{Backend, Error, RemoteFiles};

/// Settings of the engine. Every field has a default measured on real
/// storage (see docs/ARCHITECTURE.md); `Default` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Backends to try, in order. `None`: the default for where the files
    /// are ([`Residence`](crate::Residence)).
    pub backends: Option<Vec<Backend>>,
    /// Reads in flight at most.
    pub queue_depth: usize,
    /// Largest read, and the size of a staging slot (a multiple of 4096).
    pub slot_size: usize,
    /// Staging memory for [`Engine::run`](super::Engine::run), in bytes (at least one slot).
    pub ring_bytes: usize,
    /// Threads for the `PREAD`, `PREAD_BUFFERED` and `MMAP` backends, and
    /// for populating mappings.
    pub threads: usize,
    /// Whether the `MMAP` backend may serve reads that are not staged (a
    /// staged read copies out of the mapping). Host tensors a mapping serves
    /// view the file (copy-on-write): another process's writes to it show
    /// through, and truncating it makes touching them raise `SIGBUS`.
    /// `false` reads into memory of the load's own, independent of the
    /// files once the load returns.
    pub map: bool,
    /// Files read by ranges from elsewhere: paths found here are read with
    /// [`Backend::Remote`] (whatever `backends` says, which is for local
    /// files), in ranges of `remote_range` bytes, `remote_in_flight` at a
    /// time.
    pub remote: Option<RemoteFiles>,
    /// Bytes per ranged read of a remote file (a multiple of 4096): its
    /// largest read and staging slot, in place of `slot_size` (shrunk to
    /// fit `ring_bytes`, as `slot_size` is).
    pub remote_range: usize,
    /// Ranged reads of remote files in flight (threads, one connection
    /// each), in place of `queue_depth`.
    pub remote_in_flight: usize,
    /// Test hook: make one read fail. Only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    pub fault: Option<InjectedFault>,
}

impl EngineOptions {
    /// Default reads in flight. With 16 MiB reads, 16 in flight (256 MiB)
    /// was the fastest cold setting measured on a virtual disk; 1 MiB reads
    /// at depth 4 were three times slower.
    pub const DEFAULT_QUEUE_DEPTH: usize = 16;
    /// Default read and slot size: large reads, which storage serves at
    /// full bandwidth with few requests.
    pub const DEFAULT_SLOT_SIZE: usize = 16 << 20;
    /// Default staging memory: one slot per read in flight.
    pub const DEFAULT_RING_BYTES: usize = Self::DEFAULT_QUEUE_DEPTH * Self::DEFAULT_SLOT_SIZE;
    /// Default range of a remote read. Against loopback servers (`cargo
    /// xtask bench --remote s3-range --remote-settings ...`, see
    /// docs/ARCHITECTURE.md), 8 and 16 MiB ranges could not be told apart
    /// and 1 MiB ranges were about 45% slower, 4 MiB 10 to 20%; of the two,
    /// 8 MiB is what S3's guidance and the Run:ai streamer use, and holds
    /// half the memory in flight.
    pub const DEFAULT_REMOTE_RANGE: usize = 8 << 20;
    /// Default remote reads in flight. Loopback on two cores cannot tell 4
    /// from 16 (its connections are not the limit); an object store's
    /// connections each deliver far less than a loopback's, so this keeps
    /// 16 (128 MiB in flight), twice the Run:ai streamer's 8.
    pub const DEFAULT_REMOTE_IN_FLIGHT: usize = 16;

    /// Check every setting: a queue depth from 1 to 4096, a slot size
    /// that is a multiple of 4096 up to 1 GiB, a ring holding at least one
    /// slot, at least one thread.
    pub fn check(&self) -> Result<(), Error> {
        check_options(self)
    }

    /// Bound staging memory to `bytes` (InstantTensor's `buffer_size`):
    /// the ring gets `bytes`, and reads shrink to fit it when it holds less
    /// than one slot (to a multiple of 4096; less than 4096 is refused).
    pub fn with_buffer_size(mut self, bytes: usize) -> Result<Self, Error> {
        if bytes < 4096 {
            return Err(Error::Setting {
                name: "buffer_size",
                value: bytes as u64,
                reason: "must be at least 4096 bytes (one aligned read)",
            });
        }
        if bytes > isize::MAX as usize {
            return Err(Error::Setting {
                name: "buffer_size",
                value: bytes as u64,
                reason: "must be at most 2^63 - 1 bytes (the most one allocation can hold)",
            });
        }
        self.ring_bytes = bytes;
        self.slot_size = self.slot_size.min(bytes / 4096 * 4096);
        check_options(&self)?;
        Ok(self)
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            backends: None,
            queue_depth: Self::DEFAULT_QUEUE_DEPTH,
            slot_size: Self::DEFAULT_SLOT_SIZE,
            ring_bytes: Self::DEFAULT_RING_BYTES,
            threads: std::thread::available_parallelism().map_or(4, |n| n.get().clamp(2, 16)),
            map: true,
            remote: None,
            remote_range: Self::DEFAULT_REMOTE_RANGE,
            remote_in_flight: Self::DEFAULT_REMOTE_IN_FLIGHT,
            #[cfg(feature = "test-hooks")]
            fault: None,
        }
    }
}

/// A read error to inject, for testing error paths: the `nth` read
/// (counting from 0) submitted for file `file` completes, then reports
/// `errno` instead of its result. Only with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectedFault {
    /// Index of the file in the engine's list.
    pub file: usize,
    /// Which of its reads.
    pub nth: usize,
    /// The error number to report (`libc::EIO`, say).
    pub errno: i32,
}

/// The checks of [`EngineOptions::check`].
pub(super) fn check_options(o: &EngineOptions) -> Result<(), Error> {
    let bad = |name, value: usize, reason| {
        Err(Error::Setting {
            name,
            value: value as u64,
            reason,
        })
    };
    if o.queue_depth == 0 || o.queue_depth > 4096 {
        return bad("queue_depth", o.queue_depth, "must be 1 to 4096");
    }
    if o.slot_size == 0 || !o.slot_size.is_multiple_of(4096) || o.slot_size > (1 << 30) {
        return bad(
            "slot_size",
            o.slot_size,
            "must be a multiple of 4096, at most 1 GiB",
        );
    }
    if o.remote_in_flight == 0 || o.remote_in_flight > 4096 {
        return bad("remote_in_flight", o.remote_in_flight, "must be 1 to 4096");
    }
    if o.remote_range == 0 || !o.remote_range.is_multiple_of(4096) || o.remote_range > (1 << 30) {
        return bad(
            "remote_range",
            o.remote_range,
            "must be a multiple of 4096, at most 1 GiB",
        );
    }
    if o.ring_bytes < o.slot_size {
        return bad("ring_bytes", o.ring_bytes, "must hold at least one slot");
    }
    if o.ring_bytes > isize::MAX as usize {
        return bad(
            "ring_bytes",
            o.ring_bytes,
            "must be at most 2^63 - 1 bytes (the most one allocation can hold)",
        );
    }
    if o.threads == 0 {
        return bad("threads", 0, "must be at least 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{EngineOptions, Error};

    #[test]
    fn remote_settings_are_checked() {
        let ok = EngineOptions::default();
        assert_eq!((ok.remote_range, ok.remote_in_flight), (8 << 20, 16));
        assert!(ok.check().is_ok());
        for (range, in_flight, name) in [
            (0, 16, "remote_range"),
            (5000, 16, "remote_range"),
            ((1 << 30) + 4096, 16, "remote_range"),
            (8 << 20, 0, "remote_in_flight"),
            (8 << 20, 5000, "remote_in_flight"),
        ] {
            let o = EngineOptions {
                remote_range: range,
                remote_in_flight: in_flight,
                ..EngineOptions::default()
            };
            assert!(
                matches!(o.check(), Err(Error::Setting { name: n, .. }) if n == name),
                "{range} × {in_flight}"
            );
        }
    }

    #[test]
    fn a_small_buffer_size_shrinks_reads_to_fit() {
        let o = EngineOptions::default().with_buffer_size(5 << 20).unwrap();
        assert_eq!((o.ring_bytes, o.slot_size), (5 << 20, 5 << 20));
        let o = EngineOptions::default().with_buffer_size(10_000).unwrap();
        assert_eq!((o.ring_bytes, o.slot_size), (10_000, 8192));
        let o = EngineOptions::default().with_buffer_size(1 << 30).unwrap();
        assert_eq!(o.slot_size, EngineOptions::DEFAULT_SLOT_SIZE);
        assert!(matches!(
            EngineOptions::default().with_buffer_size(1 << 63),
            Err(Error::Setting {
                name: "buffer_size",
                ..
            })
        ));
        assert!(matches!(
            EngineOptions::default().with_buffer_size(4095),
            Err(Error::Setting {
                name: "buffer_size",
                ..
            })
        ));
    }
}
