//! Making a device current on the calling thread, and putting back what
//! was current before: CUDA's retained primary contexts, HIP's current
//! device.

use std::ffi::c_int;
use std::sync::Arc;

use super::loading::{Api, Ctx, CurrentCalls};
use super::results::CuResult;

/// A device made current: for CUDA its retained primary context, shared by
/// everything made in it so that it outlives all of them; for HIP the
/// device number.
pub(super) struct Context {
    pub(super) api: Arc<Api>,
    pub(super) device: c_int,
    /// The primary context (CUDA); null for HIP.
    pub(super) raw: Ctx,
}

// SAFETY: a context handle may be made current on any thread; the driver
// API is thread-safe.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

/// What was current before [`Context::enter`], to put back.
enum Previous {
    Context(Ctx),
    Device(c_int),
}

impl Context {
    /// Make it current on the calling thread (the calls act on the current
    /// context or device) until the guard is dropped, which puts back what
    /// was current before: torch takes its current device from it, so a
    /// load onto device 1 must not leave device 1 current.
    pub(super) fn enter(&self) -> (Entered<'_>, CuResult) {
        let (previous, rc) = match &self.api.current {
            CurrentCalls::Contexts { set, get, .. } => {
                // SAFETY: the runtime's calls for contexts; `raw` is a
                // retained primary context.
                let (p, rc) = unsafe { swap_current(*get, *set, self.raw, std::ptr::null_mut()) };
                (p.map(Previous::Context), rc)
            }
            CurrentCalls::Devices { set, get } => {
                // SAFETY: the runtime's calls for the current device;
                // `device` is below the runtime's count.
                let (p, rc) = unsafe { swap_current(*get, *set, self.device, -1) };
                (p.map(Previous::Device), rc)
            }
        };
        (
            Entered {
                api: &self.api,
                previous,
            },
            rc,
        )
    }
}

/// Make `target` current with `set` unless `get` says it is already:
/// what was current before, to put back (`None`: nothing to put back), and
/// `set`'s result.
///
/// # Safety
///
/// `get` and `set` must be the runtime's calls for `T`, and `target` valid
/// for `set`.
unsafe fn swap_current<T: Copy + PartialEq>(
    get: unsafe extern "C" fn(*mut T) -> CuResult,
    set: unsafe extern "C" fn(T) -> CuResult,
    target: T,
    unset: T,
) -> (Option<T>, CuResult) {
    let mut previous = unset;
    // SAFETY: writes one value through a valid pointer.
    let got = unsafe { get(&mut previous) };
    if got == 0 && previous == target {
        return (None, 0);
    }
    // SAFETY: the caller vouches for `target`.
    let rc = unsafe { set(target) };
    ((got == 0 && rc == 0).then_some(previous), rc)
}

impl Drop for Context {
    fn drop(&mut self) {
        if let CurrentCalls::Contexts { release, .. } = &self.api.current {
            // SAFETY: releases the retain made in `GpuDriver::device`;
            // nothing made in the context is left (each holds this `Arc`).
            unsafe { release(self.device) };
        }
    }
}

/// A device made current for a scope; see [`Context::enter`].
pub(super) struct Entered<'a> {
    api: &'a Api,
    previous: Option<Previous>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        match (&self.previous, &self.api.current) {
            (Some(Previous::Context(c)), CurrentCalls::Contexts { set, .. }) => {
                // SAFETY: the context current before, still alive (its
                // owner made it current and has not returned), or null.
                unsafe { set(*c) };
            }
            (Some(Previous::Device(d)), CurrentCalls::Devices { set, .. }) => {
                // SAFETY: the device current before, a valid number.
                unsafe { set(*d) };
            }
            _ => {}
        }
    }
}
