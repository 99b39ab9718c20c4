//! Python objects built fallibly.
//!
//! pyo3's own constructors (`PyString::new`, `PyList::new`, `PyTuple::new`)
//! and its conversions of return values panic when Python cannot allocate,
//! and a panic with no memory left can abort the process or hang it (the
//! panic's report allocates while holding a lock that the report of a
//! failed allocation then waits for). Every object this crate hands to
//! Python that allocates is built here instead, so a failed allocation is
//! the `MemoryError` Python raised. (Small integers, `None` and booleans
//! are Python's own and allocate nothing.)

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

/// An owned reference from a CPython call that returns one or NULL with an
/// exception set.
///
/// # Safety
///
/// `ptr` must be NULL or a new reference to a valid object, as a CPython
/// call returning a new reference gives it.
unsafe fn owned(py: Python<'_>, ptr: *mut ffi::PyObject) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: the caller's promise.
    unsafe { Bound::from_owned_ptr_or_err(py, ptr) }
}

/// A `str`, typed as one (for names of modules and attributes).
pub(crate) fn string<'py>(py: Python<'py>, s: &str) -> PyResult<Bound<'py, PyString>> {
    PyString::from_bytes(py, s.as_bytes())
}

/// A `str`.
pub(crate) fn str<'py>(py: Python<'py>, s: &str) -> PyResult<Bound<'py, PyAny>> {
    string(py, s).map(Bound::into_any)
}

/// A `str` of a path, decoded as Python decodes file names.
pub(crate) fn path<'py>(py: Python<'py>, p: &Path) -> PyResult<Bound<'py, PyAny>> {
    let bytes = p.as_os_str().as_bytes();
    // A length in memory fits isize.
    let len = bytes.len() as ffi::Py_ssize_t;
    // SAFETY: a valid buffer of `len` bytes; the call returns a new
    // reference or NULL with an exception set.
    unsafe {
        owned(
            py,
            ffi::PyUnicode_DecodeFSDefaultAndSize(bytes.as_ptr().cast(), len),
        )
    }
}

/// An `int`.
pub(crate) fn int(py: Python<'_>, n: u64) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: the call returns a new reference or NULL with an exception set.
    unsafe { owned(py, ffi::PyLong_FromUnsignedLongLong(n)) }
}

/// `None`, or what `f` makes of the value.
pub(crate) fn option<'py, T>(
    py: Python<'py>,
    value: Option<T>,
    f: impl FnOnce(T) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    match value {
        Some(v) => f(v),
        None => Ok(py.None().into_bound(py)),
    }
}

/// A `list` of `items`, made as they come; the first that fails is the
/// error.
pub(crate) fn list<'py>(
    py: Python<'py>,
    items: impl ExactSizeIterator<Item = PyResult<Bound<'py, PyAny>>>,
) -> PyResult<Bound<'py, PyAny>> {
    let len = ffi::Py_ssize_t::try_from(items.len())
        .map_err(|_| pyo3::exceptions::PyMemoryError::new_err(()))?;
    // SAFETY: the call returns a new reference or NULL with an exception set.
    let list = unsafe { owned(py, ffi::PyList_New(len))? };
    for (i, item) in (0..len).zip(items) {
        // On an error the list is dropped with the slots not yet set empty,
        // which a list allows.
        let item = item?;
        // SAFETY: `list` is a list of `len` slots and `i` is one of them,
        // still empty; the call takes over the reference to `item`.
        unsafe { ffi::PyList_SetItem(list.as_ptr(), i, item.into_ptr()) };
    }
    Ok(list)
}

/// A `list` of `int`s: a shape.
pub(crate) fn ints<'py>(py: Python<'py>, values: &[u64]) -> PyResult<Bound<'py, PyAny>> {
    list(py, values.iter().map(|&n| int(py, n)))
}

/// A `list` of `str`s.
pub(crate) fn strs<'py, 's>(
    py: Python<'py>,
    values: impl ExactSizeIterator<Item = &'s str>,
) -> PyResult<Bound<'py, PyAny>> {
    list(py, values.map(|s| str(py, s)))
}

/// A `tuple` of `items`.
pub(crate) fn tuple<'py, const N: usize>(
    py: Python<'py>,
    items: [Bound<'py, PyAny>; N],
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the call returns a new reference or NULL with an exception set.
    let tuple = unsafe { owned(py, ffi::PyTuple_New(N as ffi::Py_ssize_t))? };
    for (i, item) in items.into_iter().enumerate() {
        // SAFETY: `tuple` is a new tuple of N slots and `i` is one of them,
        // still empty; the call takes over the reference to `item`.
        unsafe { ffi::PyTuple_SetItem(tuple.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr()) };
    }
    Ok(tuple)
}

/// A `dict` of `str` to `str`.
pub(crate) fn str_dict<'py, 's>(
    py: Python<'py>,
    entries: impl Iterator<Item = (&'s str, &'s str)>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the call returns a new reference or NULL with an exception set.
    let dict = unsafe { owned(py, ffi::PyDict_New())? };
    let d = dict.cast::<PyDict>()?;
    for (k, v) in entries {
        d.set_item(str(py, k)?, str(py, v)?)?;
    }
    Ok(dict)
}

/// A new Python object of the class `T` holding `value`.
pub(crate) fn object<T>(py: Python<'_>, value: T) -> PyResult<Bound<'_, PyAny>>
where
    T: pyo3::PyClass + Into<pyo3::PyClassInitializer<T>>,
{
    Bound::new(py, value).map(Bound::into_any)
}
