//! The one retry and end-of-file rule for positional reads, apart from any
//! way of reading: every read of the project (the engine's queues,
//! [`ReadFile::read_at`](crate::ReadFile::read_at), reads straight into
//! device memory) feeds its raw results to a [`ReadProgress`] and does
//! what it says.

use std::io;
use std::path::Path;

use crate::Error;

/// The progress of one positional read, and the rule that judges each raw
/// result of it.
///
/// Made for a read of `len` bytes at `offset` of a file whose size was
/// `size` when it was opened. Each result (bytes read, or the operating
/// system's error) fed to it gives a [`Verdict`]:
///
/// - `EINTR` and `EAGAIN` (also as [`io::ErrorKind::Interrupted`] and
///   [`io::ErrorKind::WouldBlock`]): read the same rest again.
/// - Any other error: [`ReadFailure::Read`], with it as the source.
/// - `n` bytes: they count (no more than the read asked for). Once the read
///   holds every byte the file held at open from `offset` (the whole read,
///   or up to the end of the file as it was), it is finished, with every
///   byte counted: a file that grew since gives more.
/// - A short result before that point: read the rest. With a resume
///   alignment above 1 ([`ReadProgress::resume_aligned`], for direct I/O,
///   which may start only at aligned points) the rest starts at the last
///   multiple of it into the read, so an unaligned tail is read again. A
///   short read that ends at the same unaligned point twice without
///   passing the next aligned one found where the file now ends:
///   [`ReadFailure::Truncated`] there.
/// - 0 bytes before that point: the file ends before the size it had at
///   open: [`ReadFailure::Truncated`] where that read started.
/// - More than [`ReadProgress::MAX_STALLS`] results in a row without
///   progress (interruptions, or short reads that end before the next
///   aligned point): [`ReadFailure::Stalled`].
///
/// It never reads: the caller does, where [`ReadProgress::rest`] says.
///
/// ```
/// use weightlift_io::{ReadProgress, Resume, Verdict};
///
/// // 10,000 bytes at offset 0 of a file of 6,000 bytes, read with O_DIRECT
/// // in blocks of 4,096.
/// let mut read = ReadProgress::new(0, 10_000, 6_000).resume_aligned(4096);
/// // Cut short inside the file: the rest from the last aligned point.
/// let Verdict::Resume(rest) = read.feed(Ok(5_000)) else { panic!() };
/// assert_eq!(rest, Resume { offset: 4096, at: 4096, len: 10_000 - 4096 });
/// // Interrupted: the same rest again.
/// let eintr = std::io::Error::from(std::io::ErrorKind::Interrupted);
/// assert!(matches!(read.feed(Err(eintr)), Verdict::Resume(r) if r == rest));
/// // The file's end as it was at open: done, short.
/// assert!(matches!(read.feed(Ok(6_000 - 4096)), Verdict::Finished(6_000)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadProgress {
    offset: u64,
    len: usize,
    /// The bytes of this read that the file held at open.
    expected: usize,
    size: u64,
    step: u64,
    /// Bytes confirmed so far, from the start of the read.
    done: usize,
    /// Where (into the read) the last short read that ended at an unaligned
    /// point ended.
    short_end: Option<usize>,
    /// Results in a row without progress.
    stalls: u32,
}

/// Where the rest of a read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The file offset to read from.
    pub offset: u64,
    /// Where its bytes go: bytes from the start of the read's buffer.
    pub at: usize,
    /// Bytes to ask for: the rest of the read.
    pub len: usize,
}

/// What a result of a read means: what to do next.
#[derive(Debug)]
#[must_use]
pub enum Verdict {
    /// The read is done: this many bytes from the start of its buffer are
    /// the file's (fewer than asked only where the file as it was at open
    /// ends first).
    Finished(usize),
    /// Read the rest, from here.
    Resume(Resume),
    /// The read failed.
    Failed(ReadFailure),
}

/// Why a read failed, apart from the file's name
/// ([`ReadFailure::into_error`] adds it).
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadFailure {
    /// The file ends before the size it had at open.
    Truncated {
        /// Where it ends: where the read that met its end started, or
        /// where a direct read ended short twice.
        at: u64,
        /// Its size at open.
        size: u64,
    },
    /// The read failed with an error other than `EINTR` or `EAGAIN`.
    Read {
        /// Where the failed part started.
        offset: u64,
        /// Bytes of the read still unread.
        len: usize,
        /// The operating system's error.
        source: io::Error,
    },
    /// More than [`ReadProgress::MAX_STALLS`] results in a row made no
    /// progress.
    Stalled {
        /// Where the read stood.
        offset: u64,
        /// Bytes of the read still unread.
        len: usize,
        /// The results in a row without progress.
        tries: u32,
        /// The last of them, if it was an error (`EINTR`, `EAGAIN`); `None`
        /// if it was a short read.
        last: Option<io::Error>,
    },
}

impl ReadFailure {
    /// The [`Error`] about `file` this failure is: [`Error::Truncated`] or
    /// [`Error::Read`]. A stalled read is a read error with its last error,
    /// or `EIO` when that was a short read.
    pub fn into_error(self, file: &Path) -> Error {
        let file = file.to_path_buf();
        match self {
            ReadFailure::Truncated { at, size } => Error::Truncated { file, at, size },
            ReadFailure::Read {
                offset,
                len,
                source,
            } => Error::Read {
                file,
                offset,
                len,
                source,
            },
            ReadFailure::Stalled {
                offset, len, last, ..
            } => Error::Read {
                file,
                offset,
                len,
                source: last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EIO)),
            },
        }
    }
}

impl ReadProgress {
    /// Results in a row without progress a read goes through; the next one
    /// fails it.
    pub const MAX_STALLS: u32 = 100;

    /// A read of `len` bytes at `offset` of a file that was `size` bytes
    /// long when it was opened, resuming after a short read from wherever
    /// it ended (as buffered reads and reads into device memory may).
    pub fn new(offset: u64, len: usize, size: u64) -> Self {
        let expected = usize::try_from(size.saturating_sub(offset)).map_or(len, |n| n.min(len));
        ReadProgress {
            offset,
            len,
            expected,
            size,
            step: 1,
            done: 0,
            short_end: None,
            stalls: 0,
        }
    }

    /// Resume after a short read from the last multiple of `step` bytes
    /// into the read (direct I/O's alignment, for a read that starts
    /// aligned); 0 counts as 1.
    pub fn resume_aligned(mut self, step: u64) -> Self {
        self.step = step.max(1);
        self
    }

    /// Where the read starts in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes confirmed so far, from the start of the read.
    pub fn done(&self) -> usize {
        self.done
    }

    /// What is left to read, and where: all of the read until a result
    /// says otherwise.
    pub fn rest(&self) -> Resume {
        Resume {
            offset: self.offset.saturating_add(self.done as u64),
            at: self.done,
            len: self.len - self.done,
        }
    }

    /// Judge the result of reading [`ReadProgress::rest`] as the kernel
    /// reports it: the bytes read, or a negated `errno`.
    pub fn feed_raw(&mut self, res: i64) -> Verdict {
        if res < 0 {
            let errno = i32::try_from(res.unsigned_abs()).unwrap_or(libc::EIO);
            return self.feed(Err(io::Error::from_raw_os_error(errno)));
        }
        self.feed(Ok(usize::try_from(res).unwrap_or(usize::MAX)))
    }

    /// Judge the result of reading [`ReadProgress::rest`]: the bytes read,
    /// or the error the read returned.
    pub fn feed(&mut self, result: io::Result<usize>) -> Verdict {
        let n = match result {
            Ok(n) => n,
            Err(e) if retried(&e) => return self.stall(Some(e)),
            Err(source) => {
                let rest = self.rest();
                return Verdict::Failed(ReadFailure::Read {
                    offset: rest.offset,
                    len: rest.len,
                    source,
                });
            }
        };
        if n == 0 {
            if self.done >= self.expected {
                return Verdict::Finished(self.done);
            }
            return Verdict::Failed(ReadFailure::Truncated {
                at: self.rest().offset,
                size: self.size,
            });
        }
        let end = self.done.saturating_add(n).min(self.len);
        if end >= self.expected {
            self.done = end;
            return Verdict::Finished(end);
        }
        // Short inside the file as it was at open: go on from the last
        // aligned point, which is `end` itself for buffered reads.
        let aligned = end - (end as u64 % self.step) as usize;
        if aligned > self.done {
            self.done = aligned;
            self.short_end = (aligned < end).then_some(end);
            self.stalls = 0;
            return Verdict::Resume(self.rest());
        }
        // From the last aligned point, short of the next one: twice at the
        // same place is where the file now ends.
        if self.short_end == Some(end) {
            return Verdict::Failed(ReadFailure::Truncated {
                at: self.offset.saturating_add(end as u64),
                size: self.size,
            });
        }
        self.short_end = Some(end);
        self.stall(None)
    }

    /// A result that made no progress: `last`, if it was an error.
    fn stall(&mut self, last: Option<io::Error>) -> Verdict {
        self.stalls += 1;
        if self.stalls > Self::MAX_STALLS {
            let rest = self.rest();
            return Verdict::Failed(ReadFailure::Stalled {
                offset: rest.offset,
                len: rest.len,
                tries: self.stalls,
                last,
            });
        }
        Verdict::Resume(self.rest())
    }
}

/// Whether a read that failed with `e` is tried again: `EINTR`, `EAGAIN`.
fn retried(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(code: i32) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(code))
    }

    fn resume(v: Verdict) -> Resume {
        match v {
            Verdict::Resume(r) => r,
            other => panic!("expected to resume, got {other:?}"),
        }
    }

    fn finished(v: Verdict) -> usize {
        match v {
            Verdict::Finished(n) => n,
            other => panic!("expected to finish, got {other:?}"),
        }
    }

    fn failure(v: Verdict) -> ReadFailure {
        match v {
            Verdict::Failed(f) => f,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_whole_read_finishes_at_once() {
        let mut r = ReadProgress::new(100, 50, 1000);
        assert_eq!(
            r.rest(),
            Resume {
                offset: 100,
                at: 0,
                len: 50
            }
        );
        assert_eq!(finished(r.feed(Ok(50))), 50);
        assert_eq!(r.done(), 50);
    }

    #[test]
    fn short_reads_resume_where_they_ended() {
        let mut r = ReadProgress::new(100, 50, 1000);
        assert_eq!(
            resume(r.feed(Ok(20))),
            Resume {
                offset: 120,
                at: 20,
                len: 30
            }
        );
        assert_eq!(
            resume(r.feed(Ok(1))),
            Resume {
                offset: 121,
                at: 21,
                len: 29
            }
        );
        assert_eq!(finished(r.feed(Ok(29))), 50);
    }

    #[test]
    fn direct_short_reads_resume_from_the_last_aligned_point() {
        let mut r = ReadProgress::new(4096, 4 * 4096, 1 << 20).resume_aligned(4096);
        // 1.5 blocks: the half block is read again.
        assert_eq!(
            resume(r.feed(Ok(6144))),
            Resume {
                offset: 8192,
                at: 4096,
                len: 3 * 4096
            }
        );
        assert_eq!(r.done(), 4096);
        // An aligned short read keeps all it read.
        assert_eq!(resume(r.feed(Ok(4096))).at, 8192);
        assert_eq!(finished(r.feed(Ok(2 * 4096))), 4 * 4096);
    }

    #[test]
    fn a_short_direct_read_short_of_an_aligned_point_is_tried_again() {
        let mut r = ReadProgress::new(0, 8192, 1 << 20).resume_aligned(4096);
        // Short of the first aligned point: no progress, the same rest.
        let rest = r.rest();
        assert_eq!(resume(r.feed(Ok(100))), rest);
        // A different end: still no proof of where the file ends.
        assert_eq!(resume(r.feed(Ok(200))), rest);
        assert_eq!(finished(r.feed(Ok(8192))), 8192);
    }

    #[test]
    fn a_read_that_ends_at_the_files_end_finishes_short() {
        // Buffered: the end of the file as it was at open.
        let mut r = ReadProgress::new(900, 200, 1000);
        assert_eq!(finished(r.feed(Ok(100))), 100);
        // In two parts.
        let mut r = ReadProgress::new(900, 200, 1000);
        assert_eq!(resume(r.feed(Ok(60))).offset, 960);
        assert_eq!(finished(r.feed(Ok(40))), 100);
        // Direct: inside the file's last aligned block.
        let mut r = ReadProgress::new(8192, 8192, 10_000).resume_aligned(4096);
        assert_eq!(finished(r.feed(Ok(10_000 - 8192))), 10_000 - 8192);
    }

    #[test]
    fn zero_bytes_exactly_at_the_files_end_finish() {
        // A file whose size is a multiple of the alignment: the read ends
        // at it, and a last read returns nothing.
        let mut r = ReadProgress::new(0, 8192, 4096).resume_aligned(4096);
        assert_eq!(finished(r.feed(Ok(4096))), 4096);
        // Past the end of the file: nothing, and no error.
        let mut r = ReadProgress::new(5000, 100, 4096);
        assert_eq!(finished(r.feed(Ok(0))), 0);
        let mut r = ReadProgress::new(4096, 100, 4096).resume_aligned(4096);
        assert_eq!(finished(r.feed_raw(0)), 0);
    }

    #[test]
    fn zero_bytes_before_the_files_end_is_truncated_where_the_read_started() {
        let mut r = ReadProgress::new(100, 500, 1000);
        assert!(matches!(
            failure(r.feed(Ok(0))),
            ReadFailure::Truncated {
                at: 100,
                size: 1000
            }
        ));
        let mut r = ReadProgress::new(100, 500, 1000);
        assert_eq!(resume(r.feed(Ok(150))).offset, 250);
        assert!(matches!(
            failure(r.feed(Ok(0))),
            ReadFailure::Truncated {
                at: 250,
                size: 1000
            }
        ));
        // Direct: where the read from the last aligned point started.
        let mut r = ReadProgress::new(0, 16_384, 65_536).resume_aligned(4096);
        assert_eq!(resume(r.feed(Ok(5000))).offset, 4096);
        assert!(matches!(
            failure(r.feed(Ok(0))),
            ReadFailure::Truncated {
                at: 4096,
                size: 65_536
            }
        ));
    }

    #[test]
    fn a_direct_read_ending_twice_at_one_unaligned_point_is_truncated_there() {
        // The file was 65,536 bytes at open and is now 10,000.
        let mut r = ReadProgress::new(0, 128 * 1024, 65_536).resume_aligned(4096);
        assert_eq!(resume(r.feed(Ok(10_000))).offset, 8192);
        assert!(matches!(
            failure(r.feed(Ok(10_000 - 8192))),
            ReadFailure::Truncated {
                at: 10_000,
                size: 65_536
            }
        ));
        // The same from an aligned point with no progress at all.
        let mut r = ReadProgress::new(4096, 8192, 65_536).resume_aligned(4096);
        assert_eq!(resume(r.feed(Ok(100))).offset, 4096);
        assert!(matches!(
            failure(r.feed(Ok(100))),
            ReadFailure::Truncated {
                at: 4196,
                size: 65_536
            }
        ));
    }

    #[test]
    fn eintr_and_eagain_read_the_same_rest_again() {
        let mut r = ReadProgress::new(0, 100, 1000);
        assert_eq!(resume(r.feed(Ok(30))).at, 30);
        for e in [libc::EINTR, libc::EAGAIN] {
            assert_eq!(
                resume(r.feed(errno(e))),
                Resume {
                    offset: 30,
                    at: 30,
                    len: 70
                }
            );
            assert_eq!(resume(r.feed_raw(-i64::from(e))).at, 30);
        }
        let interrupted = io::Error::new(io::ErrorKind::Interrupted, "signal");
        assert_eq!(resume(r.feed(Err(interrupted))).at, 30);
        assert_eq!(finished(r.feed(Ok(70))), 100);
    }

    #[test]
    fn other_errors_fail_with_their_source_and_where_the_read_stood() {
        let mut r = ReadProgress::new(1000, 100, 10_000);
        assert_eq!(resume(r.feed(Ok(40))).at, 40);
        match failure(r.feed_raw(-i64::from(libc::EIO))) {
            ReadFailure::Read {
                offset: 1040,
                len: 60,
                source,
            } => assert_eq!(source.raw_os_error(), Some(libc::EIO)),
            other => panic!("{other:?}"),
        }
        // A cuFile status, say: an error with no errno.
        let mut r = ReadProgress::new(0, 10, 100);
        let custom = io::Error::other("cuFileRead failed");
        match failure(r.feed(Err(custom))) {
            ReadFailure::Read {
                offset: 0,
                len: 10,
                source,
            } => {
                assert_eq!(source.to_string(), "cuFileRead failed")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_nonsense_errno_is_an_io_error_not_a_panic() {
        let mut r = ReadProgress::new(0, 10, 100);
        match failure(r.feed_raw(i64::MIN)) {
            ReadFailure::Read { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::EIO)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn too_many_tries_without_progress_fail() {
        let mut r = ReadProgress::new(0, 100, 1000);
        assert_eq!(resume(r.feed(Ok(10))).at, 10);
        for _ in 0..ReadProgress::MAX_STALLS {
            assert_eq!(resume(r.feed(errno(libc::EAGAIN))).at, 10);
        }
        match failure(r.feed(errno(libc::EINTR))) {
            ReadFailure::Stalled {
                offset: 10,
                len: 90,
                tries,
                last: Some(last),
            } => {
                assert_eq!(tries, ReadProgress::MAX_STALLS + 1);
                assert_eq!(last.raw_os_error(), Some(libc::EINTR));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn progress_resets_the_count_of_tries() {
        let mut r = ReadProgress::new(0, 1000, 1000);
        for i in 1..=5 {
            for _ in 0..ReadProgress::MAX_STALLS {
                assert!(matches!(r.feed(errno(libc::EINTR)), Verdict::Resume(_)));
            }
            assert_eq!(resume(r.feed(Ok(1))).at, i);
        }
    }

    #[test]
    fn short_direct_reads_that_never_settle_stall_as_eio() {
        let mut r = ReadProgress::new(0, 8192, 1 << 20).resume_aligned(4096);
        for i in 0..ReadProgress::MAX_STALLS {
            // Alternating ends: never the same twice in a row.
            assert_eq!(resume(r.feed(Ok(100 + (i as usize % 2)))).at, 0);
        }
        let f = failure(r.feed(Ok(100 + (ReadProgress::MAX_STALLS as usize % 2))));
        assert!(
            matches!(f, ReadFailure::Stalled { last: None, tries, .. } if tries == ReadProgress::MAX_STALLS + 1),
            "{f:?}"
        );
        match f.into_error(Path::new("/m/a.safetensors")) {
            Error::Read { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::EIO)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_read_past_the_files_end_takes_what_it_returns() {
        // The file grew after open: bytes past its size at open count.
        let mut r = ReadProgress::new(900, 200, 1000);
        assert_eq!(finished(r.feed(Ok(200))), 200);
        let mut r = ReadProgress::new(900, 200, 1000);
        assert_eq!(finished(r.feed(Ok(150))), 150);
        // Wholly past the end at open.
        let mut r = ReadProgress::new(2000, 100, 1000);
        assert_eq!(finished(r.feed(Ok(30))), 30);
        // More than asked for is the read's length, not more.
        let mut r = ReadProgress::new(0, 100, 1000);
        assert_eq!(finished(r.feed(Ok(1 << 20))), 100);
        let mut r = ReadProgress::new(0, 100, 1000);
        assert_eq!(finished(r.feed_raw(i64::MAX)), 100);
    }

    #[test]
    fn an_empty_read_finishes_on_any_result() {
        let mut r = ReadProgress::new(0, 0, 1000);
        assert_eq!(r.rest().len, 0);
        assert_eq!(finished(r.feed(Ok(0))), 0);
    }

    /// A file that is `now` bytes long (it was `size` at open), read by a
    /// kernel that interrupts a read now and then and cuts transfers to
    /// `caps` (in blocks of `step` for direct reads).
    struct Sim {
        now: u64,
        step: u64,
        caps: Vec<u16>,
        calls: usize,
        interrupted: u32,
    }

    impl Sim {
        fn byte(i: u64) -> u8 {
            (i.wrapping_mul(2_654_435_761) >> 7) as u8
        }

        fn read(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let c = self.caps[self.calls % self.caps.len()];
            self.calls += 1;
            if c.is_multiple_of(5) && self.interrupted < 3 {
                self.interrupted += 1;
                return errno(if c.is_multiple_of(2) {
                    libc::EINTR
                } else {
                    libc::EAGAIN
                });
            }
            self.interrupted = 0;
            let cap = if self.step > 1 {
                (u64::from(c % 4) + 1) * self.step
            } else {
                u64::from(c) + 1
            };
            let n = (buf.len() as u64)
                .min(cap)
                .min(self.now.saturating_sub(offset)) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = Self::byte(offset + i as u64);
            }
            Ok(n)
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        #[test]
        fn every_read_ends_as_the_file_says(
            direct in proptest::bool::ANY,
            blocks in 0u64..8,
            len_blocks in 1usize..6,
            size in 0u64..40_000,
            now in 0u64..40_000,
            caps in proptest::collection::vec(0u16..5000, 1..8),
        ) {
            let step = if direct { 4096 } else { 1 };
            // Direct reads start aligned and ask for whole blocks.
            let (offset, len) = if direct {
                (blocks * 4096, len_blocks * 4096)
            } else {
                (blocks * 3001, len_blocks * 2999)
            };
            let mut sim = Sim { now, step, caps, calls: 0, interrupted: 0 };
            let mut buf = vec![0u8; len];
            let mut read = ReadProgress::new(offset, len, size).resume_aligned(step);
            let mut result = sim.read(&mut buf, offset);
            let verdict = loop {
                match read.feed(result) {
                    Verdict::Resume(rest) => {
                        proptest::prop_assert_eq!(rest.len, len - rest.at);
                        proptest::prop_assert_eq!(rest.offset, offset + rest.at as u64);
                        proptest::prop_assert_eq!(rest.at as u64 % step, 0);
                        result = sim.read(&mut buf[rest.at..], rest.offset);
                    }
                    v => break v,
                }
            };
            let end = offset + len as u64;
            // The bytes the read needs: up to its end or the file's at open.
            let needed = end.min(size.max(offset));
            let holds = needed == offset || now >= needed;
            match verdict {
                Verdict::Finished(n) => {
                    proptest::prop_assert!(holds, "finished though the file ends at {}", now);
                    proptest::prop_assert!(offset + n as u64 >= needed);
                    proptest::prop_assert!(offset + n as u64 <= end.min(now.max(offset)));
                    for (i, &b) in buf[..n].iter().enumerate() {
                        proptest::prop_assert_eq!(b, Sim::byte(offset + i as u64));
                    }
                }
                Verdict::Failed(ReadFailure::Truncated { at, size: s }) => {
                    proptest::prop_assert!(!holds, "truncated though the file holds the read");
                    proptest::prop_assert_eq!(at, now.max(offset));
                    proptest::prop_assert_eq!(s, size);
                }
                other => proptest::prop_assert!(false, "{:?}", other),
            }
        }
    }

    #[test]
    fn failures_become_errors_naming_the_file() {
        let path = Path::new("/m/a.safetensors");
        let e = ReadFailure::Truncated { at: 7, size: 9 }.into_error(path);
        assert!(matches!(&e, Error::Truncated { file, at: 7, size: 9 } if file == path));
        let e = ReadFailure::Read {
            offset: 3,
            len: 4,
            source: io::Error::from_raw_os_error(libc::EIO),
        }
        .into_error(path);
        assert!(matches!(&e, Error::Read { file, offset: 3, len: 4, .. } if file == path));
        let e = ReadFailure::Stalled {
            offset: 5,
            len: 6,
            tries: 101,
            last: Some(io::Error::from_raw_os_error(libc::EAGAIN)),
        }
        .into_error(path);
        match e {
            Error::Read {
                offset: 5,
                len: 6,
                source,
                ..
            } => assert_eq!(source.raw_os_error(), Some(libc::EAGAIN)),
            other => panic!("{other:?}"),
        }
    }
}
