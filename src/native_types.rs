//! The native type objects, cached as raw pointers so that the hot paths
//! can test an object's exact type with one comparison (pyo3's
//! `get_type::<T>()` goes through a lazy type lookup every time).

use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;

use crate::future::{Future, FutureIter};
use crate::task::Task;

static FUTURE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());
static TASK: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());
static FUTURE_ITER: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());

/// Record the type objects (module initialisation).  pyo3 creates each
/// type once per process and never frees it, so the pointers stay valid.
pub fn init(py: Python<'_>) {
    FUTURE.store(py.get_type::<Future>().as_type_ptr(), Ordering::Relaxed);
    TASK.store(py.get_type::<Task>().as_type_ptr(), Ordering::Relaxed);
    FUTURE_ITER.store(py.get_type::<FutureIter>().as_type_ptr(), Ordering::Relaxed);
}

fn type_of(obj: &Bound<'_, PyAny>) -> *mut ffi::PyTypeObject {
    // SAFETY: reading the type of a live object.
    unsafe { ffi::Py_TYPE(obj.as_ptr()) }
}

/// Exactly ferroloop.Task (not a subclass).
#[inline]
pub fn is_exact_task(obj: &Bound<'_, PyAny>) -> bool {
    type_of(obj) == TASK.load(Ordering::Relaxed)
}

/// Exactly ferroloop.Future (not a subclass).
#[inline]
pub fn is_exact_future(obj: &Bound<'_, PyAny>) -> bool {
    type_of(obj) == FUTURE.load(Ordering::Relaxed)
}

/// Exactly ferroloop's FutureIter.
#[inline]
pub fn is_future_iter_type(tp: *mut ffi::PyTypeObject) -> bool {
    tp == FUTURE_ITER.load(Ordering::Relaxed)
}

/// ferroloop.Future's type object (valid once init() ran).
#[inline]
pub fn future_type() -> *mut ffi::PyTypeObject {
    FUTURE.load(Ordering::Relaxed)
}

/// ferroloop.Task's type object (valid once init() ran).
#[inline]
pub fn task_type() -> *mut ffi::PyTypeObject {
    TASK.load(Ordering::Relaxed)
}
