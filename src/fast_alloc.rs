//! Allocating `create_future()`'s futures and `create_task()`'s tasks
//! without an instance dict.
//!
//! Native futures support `__dict__`, as asyncio's C Future does, and
//! asyncio's creates that dict only when an attribute is first set.
//! pyo3 builds every instance through `object.__new__`, and on CPython 3.11
//! and 3.12 that eagerly creates an empty dict for any type with a dict slot:
//! one more allocation per future, and one more object counted towards the
//! garbage collector's next run (12% of `create_task` + `gather` of 100k
//! tasks; 6% of a future handoff).
//!
//! So the two hot constructors allocate with the type's `tp_alloc` (zeroed
//! memory, GC-tracked: what `object.__new__` does, minus the dict) and
//! move the Rust values into place, leaving the dict slot NULL, the state
//! CPython and pyo3 treat as "no dict yet".  That relies on pyo3's layout,
//! which is not public API, so nothing is assumed: at first use one object
//! is made both ways and compared byte by byte (everything but the Rust
//! values and the dict slot must match).  If the layout differs from what
//! this module expects, every allocation takes pyo3's own path.
//!
//! Python subclasses and `Future()`/`Task()` called from Python keep pyo3's
//! path; they are not on the hot path.

use std::mem::size_of;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::PyClassInitializer;
use pyo3::PyTypeInfo;

use crate::future::{Future, FutureState};
use crate::gil_cell::GilCell;
use crate::task::Task;

/// Where the Rust values live inside the objects, as byte offsets from the
/// object's start; None when the layout check failed.
#[derive(Clone, Copy)]
struct Layout {
    future_value: usize,
    task_future_value: usize,
    task_value: usize,
}

static LAYOUT: PyOnceLock<Option<Layout>> = PyOnceLock::new();

fn offset_of_value<T>(obj: &Bound<'_, PyAny>, value: &T) -> usize {
    (value as *const T as usize).wrapping_sub(obj.as_ptr() as usize)
}

/// A zeroed, GC-tracked instance of `tp` from its `tp_alloc`.
///
/// # Safety
/// `tp` must be a ready type object; the result is not yet a valid
/// instance (its Rust values are still to be written).
unsafe fn raw_alloc(py: Python<'_>, tp: *mut ffi::PyTypeObject) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: the caller passes a ready type; tp_alloc (PyType_GenericAlloc
    // for these types) returns zeroed memory with the type set and a
    // reference to it taken, or NULL with an exception set.
    let obj = unsafe {
        match (*tp).tp_alloc {
            Some(alloc) => alloc(tp, 0),
            None => ffi::PyType_GenericAlloc(tp, 0),
        }
    };
    if obj.is_null() {
        Err(PyErr::fetch(py))
    } else {
        Ok(obj)
    }
}

/// Free an object from `raw_alloc` whose Rust values were never written
/// (only after a failed layout check): no destructor may run on it.
///
/// # Safety
/// `obj` must come from `raw_alloc(tp)` and be referenced nowhere else.
unsafe fn raw_free(obj: *mut ffi::PyObject, tp: *mut ffi::PyTypeObject) {
    // SAFETY: per the contract, nothing else refers to `obj`; undo what
    // tp_alloc did (GC tracking, the reference to the heap type) and free
    // the memory with the type's own tp_free.
    unsafe {
        ffi::PyObject_GC_UnTrack(obj.cast());
        if let Some(free) = (*tp).tp_free {
            free(obj.cast());
        }
        ffi::Py_DecRef(tp.cast());
    }
}

/// Whether `made` (built by pyo3) and `raw` (from tp_alloc) hold the same
/// bytes outside the Rust values and the dict slot.
///
/// # Safety
/// Both must be live objects of type `tp`.
unsafe fn same_bytes_outside(
    made: *mut ffi::PyObject,
    raw: *mut ffi::PyObject,
    tp: *mut ffi::PyTypeObject,
    values: &[(usize, usize)],
) -> bool {
    // SAFETY: both objects are `tp_basicsize` bytes long (fixed-size types:
    // tp_itemsize is 0 for pyclasses) and readable.
    unsafe {
        let size = (*tp).tp_basicsize as usize;
        let dict = (*tp).tp_dictoffset;
        if (*tp).tp_itemsize != 0 || dict < 0 {
            return false;
        }
        let dict = dict as usize;
        let skipped = |i: usize| {
            // Skip the reference count (the first word): it differs while
            // both are referenced differently.
            i < size_of::<ffi::Py_ssize_t>()
                || (dict != 0 && i >= dict && i < dict + size_of::<*mut ffi::PyObject>())
                || values.iter().any(|&(start, len)| i >= start && i < start + len)
        };
        // Volatile reads: the bytes are compared as plain memory (padding
        // included), with no assumption about what the compiler knows of them.
        let a = made.cast::<u8>();
        let b = raw.cast::<u8>();
        (0..size).all(|i| skipped(i) || a.add(i).read_volatile() == b.add(i).read_volatile())
    }
}

fn check_layout(py: Python<'_>) -> PyResult<Option<Layout>> {
    let future_tp = crate::native_types::future_type();
    let task_tp = crate::native_types::task_type();
    if future_tp != Future::type_object_raw(py) || task_tp != Task::type_object_raw(py) {
        return Ok(None);
    }

    let made_future = Bound::new(py, Future::empty())?;
    let future_value = offset_of_value(made_future.as_any(), made_future.get());
    let made_task = Bound::new(py, PyClassInitializer::from(Future::empty()).add_subclass(Task::empty()))?;
    let task_future_value = offset_of_value(made_task.as_any(), made_task.as_super().get());
    let task_value = offset_of_value(made_task.as_any(), made_task.get());
    let layout = Layout { future_value, task_future_value, task_value };
    let in_bounds = |tp: *mut ffi::PyTypeObject, end: usize| {
        // SAFETY: reading a field of a ready type object.
        end <= unsafe { (*tp).tp_basicsize } as usize
    };
    if !in_bounds(future_tp, future_value + size_of::<Future>())
        || !in_bounds(task_tp, task_future_value + size_of::<Future>())
        || !in_bounds(task_tp, task_value + size_of::<Task>())
    {
        return Ok(None);
    }

    // SAFETY: the types are ready; each raw object is compared while both
    // it and its twin are alive, then either completed with its values
    // (layout confirmed: it becomes a normal instance, dropped normally) or
    // freed without running any destructor.
    let ok = unsafe {
        let raw = raw_alloc(py, future_tp)?;
        let future_ok = same_bytes_outside(
            made_future.as_ptr(),
            raw,
            future_tp,
            &[(future_value, size_of::<Future>())],
        );
        raw_free(raw, future_tp);
        let raw = raw_alloc(py, task_tp)?;
        let task_ok = same_bytes_outside(
            made_task.as_ptr(),
            raw,
            task_tp,
            &[(task_future_value, size_of::<Future>()), (task_value, size_of::<Task>())],
        );
        raw_free(raw, task_tp);
        future_ok && task_ok
    };
    Ok(ok.then_some(layout))
}

fn layout(py: Python<'_>) -> PyResult<Option<Layout>> {
    LAYOUT.get_or_try_init(py, || check_layout(py)).copied()
}

/// A new exact `Future` holding `state`.
pub fn new_future(py: Python<'_>, state: FutureState) -> PyResult<Bound<'_, Future>> {
    let value = Future { st: GilCell::new(state) };
    let Some(layout) = layout(py)? else {
        return Bound::new(py, value);
    };
    let tp = crate::native_types::future_type();
    // SAFETY: the layout check confirmed that a tp_alloc'd object plus the
    // value at `future_value` is byte for byte what pyo3 builds (minus the
    // eager dict); the memory there is zeroed and unowned, so writing moves
    // the value in without dropping anything.
    unsafe {
        let obj = raw_alloc(py, tp)?;
        std::ptr::write(obj.cast::<u8>().add(layout.future_value).cast::<Future>(), value);
        Ok(Bound::from_owned_ptr(py, obj).cast_into_unchecked())
    }
}

/// A new exact `Task` whose Future part holds `state`.
pub fn new_task(py: Python<'_>, state: FutureState, task: Task) -> PyResult<Bound<'_, Task>> {
    let future = Future { st: GilCell::new(state) };
    let Some(layout) = layout(py)? else {
        return Bound::new(py, PyClassInitializer::from(future).add_subclass(task));
    };
    let tp = crate::native_types::task_type();
    // SAFETY: as in new_future, for both values of a Task.
    unsafe {
        let obj = raw_alloc(py, tp)?;
        let base = obj.cast::<u8>();
        std::ptr::write(base.add(layout.task_future_value).cast::<Future>(), future);
        std::ptr::write(base.add(layout.task_value).cast::<Task>(), task);
        Ok(Bound::from_owned_ptr(py, obj).cast_into_unchecked())
    }
}
