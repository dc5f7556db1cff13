//! The pieces of CPython's asyncio that native futures and tasks share with
//! asyncio's own: its exception classes, the current-task table read by
//! `asyncio.current_task()`, and the set of eagerly starting tasks (3.12+)
//! read by `asyncio.all_tasks()`.  Looked up once per process.

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

use crate::hooks::repr_of;

pub struct AsyncioApi {
    /// asyncio's own classes, which native futures and tasks report as
    /// their `__class__` (see `Future.__class__`).
    pub future_class: Py<PyAny>,
    pub task_class: Py<PyAny>,
    pub cancelled_error: Py<PyType>,
    pub invalid_state_error: Py<PyType>,
    /// `asyncio.tasks._current_tasks`: loop -> running task.
    pub current_tasks: Py<PyDict>,
    /// `asyncio.eager_task_factory` (3.12+), which create_task recognises.
    pub eager_task_factory: Option<Py<PyAny>>,
    pub iscoroutine: Py<PyAny>,
    pub get_running_loop_or_none: Py<PyAny>,
    pub get_event_loop_policy: Py<PyAny>,
    pub generic_alias: Py<PyAny>,
    /// 3.12+: eager tasks exist.
    pub has_eager: bool,
    /// 3.13+: `uncancel()` reaching zero also clears a pending cancellation.
    pub uncancel_clears_must_cancel: bool,
    /// 3.13+: `set_exception(StopIteration())` stores a RuntimeError caused
    /// by it; before, it raised TypeError.
    pub wraps_stop_iteration: bool,
}

extern "C" {
    /// `dict.pop(key, default)`.  Private, but exported with this signature
    /// by every CPython ferroloop supports (3.13 added the public
    /// `PyDict_Pop` and kept this one).
    fn _PyDict_Pop(dict: *mut ffi::PyObject, key: *mut ffi::PyObject, default: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

static API: PyOnceLock<AsyncioApi> = PyOnceLock::new();

pub fn api(py: Python<'_>) -> PyResult<&AsyncioApi> {
    API.get_or_try_init(py, || {
        let exceptions = py.import("asyncio.exceptions")?;
        let tasks = py.import("asyncio.tasks")?;
        let events = py.import("asyncio.events")?;
        let version = py.version_info();
        let has_eager = (version.major, version.minor) >= (3, 12);
        let eager_task_factory = if has_eager {
            Some(tasks.getattr("eager_task_factory")?.unbind())
        } else {
            None
        };
        Ok::<_, PyErr>(AsyncioApi {
            future_class: py.import("asyncio.futures")?.getattr("Future")?.unbind(),
            task_class: tasks.getattr("Task")?.unbind(),
            cancelled_error: exceptions.getattr("CancelledError")?.cast_into::<PyType>()?.unbind(),
            invalid_state_error: exceptions
                .getattr("InvalidStateError")?
                .cast_into::<PyType>()?
                .unbind(),
            current_tasks: tasks.getattr("_current_tasks")?.cast_into::<PyDict>()?.unbind(),
            eager_task_factory,
            iscoroutine: py.import("asyncio.coroutines")?.getattr("iscoroutine")?.unbind(),
            get_running_loop_or_none: events.getattr("_get_running_loop")?.unbind(),
            get_event_loop_policy: events.getattr("get_event_loop_policy")?.unbind(),
            generic_alias: py.import("types")?.getattr("GenericAlias")?.unbind(),
            has_eager,
            uncancel_clears_must_cancel: (version.major, version.minor) >= (3, 13),
            wraps_stop_iteration: (version.major, version.minor) >= (3, 13),
        })
    })
}

impl AsyncioApi {
    /// `asyncio.events.get_event_loop()` as asyncio's C Future does it: the
    /// running loop, else the policy's loop.
    pub fn get_event_loop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let running = self.get_running_loop_or_none.bind(py).call0()?;
        if !running.is_none() {
            return Ok(running);
        }
        self.get_event_loop_policy.bind(py).call0()?.call_method0("get_event_loop")
    }

    /// asyncio's `_enter_task`, in one dict lookup (it runs every step):
    /// `setdefault` stores the task unless the loop already has one, and the
    /// dict's size tells whether it did.
    pub fn enter_task(&self, loop_: &Bound<'_, PyAny>, task: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = loop_.py();
        let dict = self.current_tasks.as_ptr();
        // SAFETY: `dict` is a live dict and `loop_`/`task` live objects;
        // PyDict_SetDefault returns a borrowed reference (NULL with an
        // exception set on error) and does not steal its arguments.
        unsafe {
            let size_before = ffi::PyDict_Size(dict);
            let current = ffi::PyDict_SetDefault(dict, loop_.as_ptr(), task.as_ptr());
            if current.is_null() {
                return Err(PyErr::fetch(py));
            }
            if current == task.as_ptr() && ffi::PyDict_Size(dict) > size_before {
                return Ok(());
            }
            let running = Borrowed::from_ptr(py, current).to_owned();
            Err(PyRuntimeError::new_err(format!(
                "Cannot enter into task {} while another task {} is being executed.",
                repr_of(task),
                repr_of(&running)
            )))
        }
    }

    /// asyncio's `_leave_task`, in one dict lookup: pop the loop's entry,
    /// and put it back should it not be `task`.
    pub fn leave_task(&self, loop_: &Bound<'_, PyAny>, task: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = loop_.py();
        let dict = self.current_tasks.as_ptr();
        // SAFETY: `dict`, `loop_`, `task` and None are live objects;
        // _PyDict_Pop (exported by CPython 3.11-3.13 with this signature)
        // returns a new reference to the removed value or to the default,
        // or NULL with an exception set.
        let popped = unsafe {
            let popped = _PyDict_Pop(dict, loop_.as_ptr(), ffi::Py_None());
            if popped.is_null() {
                return Err(PyErr::fetch(py));
            }
            Bound::from_owned_ptr(py, popped)
        };
        if popped.is(task) {
            return Ok(());
        }
        if !popped.is_none() {
            self.current_tasks.bind(py).set_item(loop_, &popped)?;
        }
        Err(PyRuntimeError::new_err(format!(
            "Leaving task {} does not match the current task {}.",
            repr_of(task),
            repr_of(&popped)
        )))
    }

    /// asyncio's `_swap_current_task` (3.12+): make `task` (or nobody, for
    /// None) current and return who was.
    pub fn swap_current_task<'py>(
        &self,
        loop_: &Bound<'py, PyAny>,
        task: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = loop_.py();
        let current = self.current_tasks.bind(py);
        let previous = current.get_item(loop_)?.unwrap_or_else(|| py.None().into_bound(py));
        if task.is_none() {
            if current.contains(loop_)? {
                current.del_item(loop_)?;
            }
        } else {
            current.set_item(loop_, task)?;
        }
        Ok(previous)
    }
}
