//! Memory mappings: anonymous regions that reads land in, and mappings of
//! files.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
#[cfg(feature = "test-hooks")]
use std::sync::atomic::{AtomicUsize, Ordering};

/// Non-empty regions mapped and not yet unmapped, in this process (a test
/// hook: leak tests count them).
#[cfg(feature = "test-hooks")]
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Size of a transparent huge page on x86-64 and most arm64 kernels.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// A memory mapping, unmapped when dropped.
///
/// Anonymous regions are faulted in lazily: a page costs nothing until
/// first written, by a read landing in it, by the CPU, or ahead of both by
/// [`Region::populate_write`].
///
/// A mapping of a file ([`Region::map_file`]) is the file's pages, not a
/// copy: its bytes are only as stable as the file. Bytes another process
/// writes to the file can show through it, and touching a page the file no
/// longer has (it was truncated) raises `SIGBUS`. A slice of it
/// ([`Region::slice`]) is sound only while the file stays as it is; that is
/// what `map_file`'s caller promises or accepts.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Region` is a plain range of process memory; it hands out raw
// pointers and `unsafe` slices only, whose callers uphold aliasing rules.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// `len` bytes of zero-filled memory, page aligned, faulted in lazily.
    pub fn anonymous(len: usize) -> io::Result<Self> {
        if len == 0 {
            return Ok(Self::empty());
        }
        // SAFETY: a fresh private anonymous mapping; the kernel picks the
        // address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        Self::from_mmap(ptr, len)
    }

    /// Ask for transparent huge pages (`MADV_HUGEPAGE`), for memory that is
    /// touched all at once (pinned or registered): one fault per 2 MiB
    /// instead of 512. Advice only; where THP is off, small pages serve.
    /// (Not for memory that direct reads fault in piecemeal: there huge pages
    /// measured slower.)
    pub fn advise_huge(&self) {
        if self.len >= HUGE_PAGE {
            // SAFETY: advice on this mapping, which lives as long as `self`.
            unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_HUGEPAGE) };
        }
    }

    /// Map the first `len` bytes of `file`.
    ///
    /// `private`: a copy-on-write mapping, readable and writable (writes
    /// stay in this process, as with `safetensors`' own loader); otherwise
    /// shared and read-only. Either way, pages come from the page cache;
    /// if the file is truncated later, touching the lost pages raises
    /// `SIGBUS`, as for any mapping of a file.
    ///
    /// # Safety
    ///
    /// While the mapping is read through a slice ([`Region::slice`]) or
    /// through [`Region::as_ptr`], the file must not be modified or
    /// truncated, by this process or another: a page this process has not
    /// written shows the file's current bytes (even in a private mapping),
    /// so bytes would change under a shared reference, and a page past a
    /// truncated end raises `SIGBUS` when touched. The caller either
    /// ensures that (file permissions, a file no one else has) or reads the
    /// mapping only in ways that tolerate it (copies by the kernel, such as
    /// `process_vm_readv`, which report a lost page as `EFAULT`), or accepts
    /// the consequence and documents it, as `memmap2` and `safetensors` do.
    pub unsafe fn map_file(file: &File, len: usize, private: bool) -> io::Result<Self> {
        if len == 0 {
            return Ok(Self::empty());
        }
        let (prot, flags) = if private {
            (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE)
        } else {
            (libc::PROT_READ, libc::MAP_SHARED)
        };
        // SAFETY: a fresh mapping of a valid descriptor at offset 0; the
        // kernel picks the address.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, file.as_raw_fd(), 0) };
        Self::from_mmap(ptr, len)
    }

    fn empty() -> Self {
        Self {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }

    fn from_mmap(ptr: *mut libc::c_void, len: usize) -> io::Result<Self> {
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        #[cfg(feature = "test-hooks")]
        LIVE.fetch_add(1, Ordering::Relaxed);
        Ok(Self { ptr, len })
    }

    /// How many regions are mapped in this process right now (for leak
    /// tests). Only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    pub fn live() -> usize {
        LIVE.load(Ordering::Relaxed)
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes at `offset..offset + len`.
    ///
    /// # Safety
    ///
    /// The range must lie inside the region, and nothing may write to it
    /// while the slice lives. For a mapping of a file, that includes the
    /// file: see [`Region::map_file`].
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &[u8] {
        debug_assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds and not written concurrently (the caller's
        // guarantee); the memory lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) }
    }

    /// Fault in `offset..offset + len` for reading without copying
    /// (`MADV_POPULATE_READ`, Linux 5.14): one system call maps what would
    /// otherwise take a fault per page. Fails with `EFAULT` where the file
    /// no longer backs the range (it was truncated).
    pub fn populate_read(&self, offset: usize, len: usize) -> io::Result<()> {
        self.advise(offset, len, libc::MADV_POPULATE_READ)
    }

    /// Fault in `offset..offset + len` for writing (`MADV_POPULATE_WRITE`).
    pub fn populate_write(&self, offset: usize, len: usize) -> io::Result<()> {
        self.advise(offset, len, libc::MADV_POPULATE_WRITE)
    }

    fn advise(&self, offset: usize, len: usize, advice: libc::c_int) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // madvise wants a page-aligned start.
        let page = page_size();
        let start = offset - offset % page;
        loop {
            // SAFETY: `start..end` lies inside this mapping; the advice
            // only faults pages in.
            let rc =
                unsafe { libc::madvise(self.ptr.as_ptr().add(start).cast(), end - start, advice) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) {
                return Err(e);
            }
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: unmapping exactly the mapping made at construction, once.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
            #[cfg(feature = "test-hooks")]
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}
