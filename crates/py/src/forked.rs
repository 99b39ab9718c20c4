//! State that belongs to the process that made it.
//!
//! A load runs on threads, and `fork()` copies only the thread that called
//! it: in a child, a handle's reading threads are gone, a lock they held
//! stays locked forever, and joining them fails. [`InProcess`] wraps such
//! state with the id of the process that made it. In any other process
//! [`InProcess::get`] refuses, before any lock is taken, and dropping it
//! leaks the value rather than run destructors that would wait for
//! threads that do not exist (the parent still owns and frees the real
//! resources).

use std::mem::ManuallyDrop;

/// The state was made in process `parent`, and this is `child`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forked {
    pub(crate) parent: u32,
    pub(crate) child: u32,
}

/// A value usable only in the process that made it.
pub(crate) struct InProcess<T> {
    pid: u32,
    value: ManuallyDrop<T>,
}

impl<T> InProcess<T> {
    pub(crate) fn new(value: T) -> Self {
        InProcess {
            pid: std::process::id(),
            value: ManuallyDrop::new(value),
        }
    }

    /// The value, in the process that made it.
    pub(crate) fn get(&self) -> Result<&T, Forked> {
        let now = std::process::id();
        if now == self.pid {
            Ok(&self.value)
        } else {
            Err(Forked {
                parent: self.pid,
                child: now,
            })
        }
    }
}

impl<T> Drop for InProcess<T> {
    fn drop(&mut self) {
        if std::process::id() == self.pid {
            // SAFETY: dropped once, here, and never used again.
            unsafe { ManuallyDrop::drop(&mut self.value) };
        }
    }
}
