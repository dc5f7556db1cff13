//! The registry of pending native tasks, which `asyncio.all_tasks()` reads.
//!
//! asyncio lists tasks in a `weakref.WeakSet`: every task costs a weak
//! reference object (one more object for the garbage collector to track)
//! and, through `WeakSet.add`, a Python-level call.  Native tasks are listed
//! here instead: a vector of borrowed pointers, each task knowing its slot,
//! so adding and removing are O(1) with no allocation.  A task leaves when
//! it finishes, or at the latest when it is deallocated (slots.rs), so
//! every pointer here is a live task.  ferroloop's Python package lets
//! asyncio's WeakSet iterate these too (`ferroloop._registry`).

use std::sync::atomic::Ordering;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::gil_cell::GilCell;
use crate::task::Task;

/// A borrowed pointer to a registered task.
struct TaskPtr(*mut ffi::PyObject);

// SAFETY: the pointer is only dereferenced with the GIL held (all access to
// the registry goes through GilCell), and the task it points to stays
// alive while registered (it unregisters itself before it is freed).
unsafe impl Send for TaskPtr {}

static TASKS: GilCell<Vec<TaskPtr>> = GilCell::new(Vec::new());

/// List a pending task.
pub fn register(task: &Bound<'_, Task>) -> PyResult<()> {
    let py = task.py();
    let slot = &task.get().registry_slot;
    if slot.load(Ordering::Relaxed) != 0 {
        return Ok(());
    }
    let mut tasks = TASKS.borrow_mut(py)?;
    tasks.push(TaskPtr(task.as_ptr()));
    slot.store(tasks.len(), Ordering::Relaxed);
    Ok(())
}

/// Take a task off the list (no-op when it is not on it).
pub fn unregister(py: Python<'_>, task: &Task) -> PyResult<()> {
    if task.registry_slot.load(Ordering::Relaxed) == 0 {
        return Ok(());
    }
    // Borrow first: should the borrow fail, the task keeps its slot and
    // stays consistently listed (see finalizers in slots.rs).
    let mut tasks = TASKS.borrow_mut(py)?;
    let index = task.registry_slot.swap(0, Ordering::Relaxed) - 1;
    if index >= tasks.len() {
        return Ok(());
    }
    tasks.swap_remove(index);
    if let Some(moved) = tasks.get(index) {
        // SAFETY: registered pointers are live Task instances (see the
        // module docs), and we hold the GIL.
        let moved = unsafe { Borrowed::from_ptr(py, moved.0) };
        // SAFETY: only Task instances (exact or subclasses) are registered.
        let moved = unsafe { moved.cast_unchecked::<Task>() };
        moved.get().registry_slot.store(index + 1, Ordering::Relaxed);
    }
    Ok(())
}

/// Every registered task (of every loop), as strong references.
#[pyfunction]
pub fn _native_tasks(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    // Take strong references while the registry is borrowed (an incref
    // allocates nothing, so no collection can run and unregister a task
    // meanwhile), then build the list -- which may collect -- without it.
    let items: Vec<Py<PyAny>> = {
        let tasks = TASKS.borrow_mut(py)?;
        tasks
            .iter()
            // SAFETY: registered pointers are live objects (see the module
            // docs); one whose reference count already reached zero is being
            // destroyed (a subclass's own deallocation runs before ours) and
            // must not be revived.
            .filter(|t| unsafe { ffi::Py_REFCNT(t.0) } > 0)
            .map(|t| unsafe { Borrowed::from_ptr(py, t.0) }.to_owned().unbind())
            .collect()
    };
    PyList::new(py, items)
}

/// How many tasks are registered.
#[pyfunction]
pub fn _native_task_count(py: Python<'_>) -> PyResult<usize> {
    Ok(TASKS.borrow_mut(py)?.len())
}

/// Whether `task` is registered.
#[pyfunction]
pub fn _is_registered(task: &Bound<'_, PyAny>) -> bool {
    task.cast::<Task>().is_ok_and(|t| t.get().registry_slot.load(Ordering::Relaxed) != 0)
}
