//! `ferroloop.Future`: asyncio's Future, natively.
//!
//! Behaviour follows CPython's C implementation (`_asyncio.Future`), which is
//! what asyncio programs get by default: the same states, errors and
//! messages, done callbacks run through the loop in their context, and the
//! "exception was never retrieved" report when a failed future is freed.
//!
//! What makes it faster than asyncio's: on a ferroloop loop, done callbacks
//! enter the loop's ready queue as Rust values (`callbacks::NativeCallback`)
//! instead of `loop.call_soon()` calls creating Handles, and a native Task
//! awaiting a native Future is woken without any Python callable at all.  On
//! any other loop (or in debug mode, where handles carry source tracebacks)
//! everything goes through `loop.call_soon()` as in asyncio.

use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};
use smallvec::SmallVec;

use crate::asyncio_api::api;
use crate::callbacks::{CallbackFn, NativeCallback};
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::handles::HandleContext;
use crate::hooks::call_hook;
use crate::task::Task;

#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    Pending,
    Cancelled,
    Finished,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Pending => "PENDING",
            Phase::Cancelled => "CANCELLED",
            Phase::Finished => "FINISHED",
        }
    }
}

/// A done callback waiting for the future.
pub enum DoneCallback {
    /// `add_done_callback(cb, context=ctx)`.
    /// The context: `context=` as given, or a private copy of the current
    /// one, kept off the GC's list while only this callback holds it (see
    /// `FutureState::refs`).
    Python { callback: CallbackFn, context: HandleContext },
    /// A native task awaiting this future (runs in the task's context).
    Wakeup(Py<Task>),
}

#[derive(Default)]
pub struct FutureState {
    /// None until `__init__` ran ("uninitialized" in asyncio's words).
    pub loop_: Option<Py<PyAny>>,
    pub phase: Phase,
    pub result: Option<Py<PyAny>>,
    pub exception: Option<Py<PyAny>>,
    pub exception_tb: Option<Py<PyAny>>,
    pub callbacks: SmallVec<[DoneCallback; 1]>,
    pub cancel_message: Option<Py<PyAny>>,
    pub cancelled_exc: Option<Py<PyAny>>,
    pub source_traceback: Option<Py<PyAny>>,
    pub blocking: bool,
    pub log_traceback: bool,
}

#[pyclass(module = "ferroloop", name = "Future", subclass, frozen, weakref, dict)]
pub struct Future {
    pub(crate) st: GilCell<FutureState>,
}

fn not_initialized() -> PyErr {
    PyRuntimeError::new_err("Future object is not initialized.")
}

pub fn invalid_state(py: Python<'_>, msg: &str) -> PyErr {
    match api(py) {
        Ok(a) => PyErr::from_type(a.invalid_state_error.bind(py).clone(), msg.to_owned()),
        Err(e) => e,
    }
}

/// Schedule a future's or task's callback: into a ferroloop loop's queue
/// when it takes it (see `LoopCore::push_native`), else through
/// `loop.call_soon()`.
pub(crate) fn queue_native(loop_: &Bound<'_, PyAny>, cb: NativeCallback) -> PyResult<()> {
    let cb = match loop_.cast::<LoopCore>() {
        Ok(core) => match LoopCore::push_native(core, cb)? {
            None => return Ok(()),
            Some(back) => back,
        },
        Err(_) => cb,
    };
    cb.call_soon(loop_.py(), loop_)
}

impl Future {
    pub fn empty() -> Future {
        Future { st: GilCell::new(FutureState::default()) }
    }

    /// A pending future of `loop_` (what `__init__` does).
    pub fn init_state(py: Python<'_>, loop_: Bound<'_, PyAny>) -> PyResult<FutureState> {
        let debug = match loop_.cast::<LoopCore>() {
            Ok(core) => core.get().is_debug(),
            Err(_) => loop_.call_method0(pyo3::intern!(py, "get_debug"))?.is_truthy()?,
        };
        let source_traceback = if debug && !is_finalizing(py) {
            Some(call_hook(py, "extract_stack", ())?.unbind())
        } else {
            None
        };
        Ok(FutureState { loop_: Some(loop_.unbind()), source_traceback, ..Default::default() })
    }

    pub fn loop_of<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.st.borrow_mut(py)?.loop_ {
            Some(l) => Ok(l.bind(py).clone()),
            None => Err(not_initialized()),
        }
    }

    pub fn phase(&self, py: Python<'_>) -> PyResult<Phase> {
        Ok(self.st.borrow_mut(py)?.phase)
    }

    /// asyncio's `_make_cancelled_error`.
    pub fn make_cancelled_error<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (saved, msg) = {
            let mut st = self.st.borrow_mut(py)?;
            (st.cancelled_exc.take(), st.cancel_message.as_ref().map(|m| m.clone_ref(py)))
        };
        if let Some(exc) = saved {
            return Ok(exc.into_bound(py));
        }
        let cls = api(py)?.cancelled_error.bind(py);
        match msg {
            Some(m) if !m.is_none(py) => cls.call1((m,)),
            _ => cls.call0(),
        }
    }

    /// What result() and exception() raise unless the future finished:
    /// its CancelledError, or InvalidStateError(`not_done`).
    fn check_finished(&self, py: Python<'_>, not_done: &str) -> PyResult<()> {
        let phase = {
            let st = self.st.borrow_mut(py)?;
            if st.loop_.is_none() {
                return Err(invalid_state(py, "Future object is not initialized."));
            }
            st.phase
        };
        match phase {
            Phase::Cancelled => Err(PyErr::from_value(self.make_cancelled_error(py)?)),
            Phase::Pending => Err(invalid_state(py, not_done)),
            Phase::Finished => Ok(()),
        }
    }

    /// `result()`: the value, or the error it raises.
    pub fn result_impl(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        {
            // The common case, a value, in one borrow.
            let mut st = self.st.borrow_mut(py)?;
            if st.phase == Phase::Finished && st.exception.is_none() && st.loop_.is_some() {
                st.log_traceback = false;
                return Ok(st.result.as_ref().map_or_else(|| py.None(), |r| r.clone_ref(py)));
            }
        }
        self.check_finished(py, "Result is not set.")?;
        let (exc, tb, result) = {
            let mut st = self.st.borrow_mut(py)?;
            st.log_traceback = false;
            (
                st.exception.as_ref().map(|e| e.clone_ref(py)),
                st.exception_tb.take(),
                st.result.as_ref().map(|r| r.clone_ref(py)),
            )
        };
        let Some(exc) = exc else {
            return Ok(result.unwrap_or_else(|| py.None()));
        };
        let tb = tb.unwrap_or_else(|| py.None());
        // SAFETY: `exc` is a live exception instance (checked by
        // set_exception) and `tb` a traceback or None, which is what
        // PyException_SetTraceback accepts.
        if unsafe { ffi::PyException_SetTraceback(exc.as_ptr(), tb.as_ptr()) } < 0 {
            return Err(PyErr::fetch(py));
        }
        Err(PyErr::from_value(exc.into_bound(py)))
    }

    /// Mark done and queue the callbacks (asyncio's `__schedule_callbacks`).
    fn schedule_callbacks(slf: &Bound<'_, Future>) -> PyResult<()> {
        let py = slf.py();
        let (callbacks, loop_) = {
            let mut st = slf.get().st.borrow_mut(py)?;
            let loop_ = st.loop_.as_ref().map(|l| l.bind(py).clone()).ok_or_else(not_initialized)?;
            (std::mem::take(&mut st.callbacks), loop_)
        };
        if !crate::native_types::is_exact_future(slf.as_any()) {
            if let Ok(task) = slf.cast::<Task>() {
                // A done task is never listed by all_tasks().
                crate::registry::unregister(py, task.get())?;
            }
        }
        for cb in callbacks {
            queue_native(&loop_, NativeCallback::from_done(cb, slf.clone().into_any().unbind()))?;
        }
        Ok(())
    }

    pub fn set_result_impl(slf: &Bound<'_, Future>, result: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = slf.get().st.borrow_mut(py)?;
            if st.loop_.is_none() {
                return Err(not_initialized());
            }
            if st.phase != Phase::Pending {
                return Err(invalid_state(py, "invalid state"));
            }
            st.result = Some(result);
            st.phase = Phase::Finished;
        }
        Self::schedule_callbacks(slf)
    }

    pub fn set_exception_impl(slf: &Bound<'_, Future>, exception: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let pending = || -> PyResult<()> {
            let st = slf.get().st.borrow_mut(py)?;
            if st.loop_.is_none() {
                return Err(not_initialized());
            }
            if st.phase != Phase::Pending {
                return Err(invalid_state(py, "invalid state"));
            }
            Ok(())
        };
        pending()?;
        let mut exc = exception.clone();
        if let Ok(cls) = exception.cast::<PyType>() {
            if cls.is_subclass_of::<pyo3::exceptions::PyBaseException>()? {
                exc = cls.call0()?;
                pending()?;
            }
        }
        if !exc.is_instance_of::<pyo3::exceptions::PyBaseException>() {
            return Err(PyTypeError::new_err("invalid exception object"));
        }
        let wraps = api(py)?.wraps_stop_iteration;
        if !wraps && exc.is_exact_instance_of::<PyStopIteration>() {
            return Err(PyTypeError::new_err(
                "StopIteration interacts badly with generators and cannot be raised into a Future",
            ));
        }
        if wraps && exc.is_instance_of::<PyStopIteration>() {
            let err = PyRuntimeError::new_err(
                "StopIteration interacts badly with generators and cannot be raised into a Future",
            )
            .into_value(py)
            .into_bound(py);
            // SAFETY: both are live exception instances; SetCause and
            // SetContext steal a reference each, which we give them.
            unsafe {
                ffi::PyException_SetCause(err.as_ptr(), exc.clone().into_ptr());
                ffi::PyException_SetContext(err.as_ptr(), exc.clone().into_ptr());
            }
            exc = err.into_any();
        }
        // SAFETY: `exc` is an exception instance; PyException_GetTraceback
        // returns a new reference or NULL (no traceback), without error.
        let tb = unsafe {
            Bound::from_owned_ptr_or_opt(py, ffi::PyException_GetTraceback(exc.as_ptr()))
        };
        {
            let mut st = slf.get().st.borrow_mut(py)?;
            st.exception = Some(exc.unbind());
            st.exception_tb = tb.map(Bound::unbind);
            st.phase = Phase::Finished;
        }
        Self::schedule_callbacks(slf)?;
        slf.get().st.borrow_mut(py)?.log_traceback = true;
        Ok(())
    }

    pub fn cancel_impl(slf: &Bound<'_, Future>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
        let py = slf.py();
        {
            let mut st = slf.get().st.borrow_mut(py)?;
            if st.loop_.is_none() {
                return Err(not_initialized());
            }
            st.log_traceback = false;
            if st.phase != Phase::Pending {
                return Ok(false);
            }
            st.phase = Phase::Cancelled;
            let old = std::mem::replace(&mut st.cancel_message, msg);
            drop(st);
            drop(old);
        }
        Self::schedule_callbacks(slf)?;
        Ok(true)
    }

    /// `add_done_callback` for a callback already in native form.
    pub fn add_done(slf: &Bound<'_, Future>, cb: DoneCallback) -> PyResult<()> {
        let py = slf.py();
        let loop_ = {
            let mut st = slf.get().st.borrow_mut(py)?;
            let Some(loop_) = st.loop_.as_ref() else {
                return Err(PyRuntimeError::new_err("uninitialized Future object"));
            };
            if st.phase == Phase::Pending {
                st.callbacks.push(cb);
                return Ok(());
            }
            loop_.bind(py).clone()
        };
        queue_native(&loop_, NativeCallback::from_done(cb, slf.clone().into_any().unbind()))
    }

    /// Whether `obj` is exactly a native Future or Task (not a subclass):
    /// only then may its methods be bypassed, as asyncio's C code does.
    #[inline]
    pub fn is_exact_native(obj: &Bound<'_, PyAny>) -> bool {
        crate::native_types::is_exact_future(obj) || crate::native_types::is_exact_task(obj)
    }
}

/// `sys.is_finalizing()`: no tracebacks are captured during shutdown, as
/// in asyncio (the traceback module may already be gone).
fn is_finalizing(py: Python<'_>) -> bool {
    py.import("sys")
        .and_then(|sys| sys.call_method0("is_finalizing"))
        .and_then(|r| r.is_truthy())
        .unwrap_or(true)
}

#[pymethods]
impl Future {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Future::empty()
    }

    #[pyo3(signature = (*, r#loop = None))]
    fn __init__(slf: &Bound<'_, Self>, r#loop: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let loop_ = match r#loop {
            Some(l) if !l.is_none() => l,
            _ => api(py)?.get_event_loop(py)?,
        };
        let fresh = Future::init_state(py, loop_)?;
        let old = std::mem::replace(&mut *slf.get().st.borrow_mut(py)?, fresh);
        drop(old);
        Ok(())
    }

    fn result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.result_impl(py)
    }

    fn exception(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.check_finished(py, "Exception is not set.")?;
        let mut st = self.st.borrow_mut(py)?;
        Ok(match &st.exception {
            Some(e) => {
                let e = e.clone_ref(py);
                st.log_traceback = false;
                e
            }
            None => py.None(),
        })
    }

    fn set_result(slf: &Bound<'_, Self>, result: Py<PyAny>) -> PyResult<()> {
        Future::set_result_impl(slf, result)
    }

    fn set_exception(slf: &Bound<'_, Self>, exception: &Bound<'_, PyAny>) -> PyResult<()> {
        Future::set_exception_impl(slf, exception)
    }

    #[pyo3(signature = (r#fn, *, context = None))]
    fn add_done_callback(
        slf: &Bound<'_, Self>,
        r#fn: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let context = HandleContext::new(py, context)?;
        Future::add_done(slf, DoneCallback::Python { callback: CallbackFn::new(r#fn.into_bound(py)), context })
    }

    fn remove_done_callback(slf: &Bound<'_, Self>, r#fn: &Bound<'_, PyAny>) -> PyResult<usize> {
        let py = slf.py();
        let this = slf.get();
        let callbacks = {
            let mut st = this.st.borrow_mut(py)?;
            if st.loop_.is_none() {
                return Err(not_initialized());
            }
            std::mem::take(&mut st.callbacks)
        };
        // Compare outside the borrow (== may run Python code), then put the
        // survivors back ahead of anything added meanwhile.
        let mut kept: SmallVec<[DoneCallback; 1]> = SmallVec::new();
        let mut removed = 0;
        let mut failure = None;
        for cb in callbacks {
            if failure.is_some() {
                kept.push(cb);
                continue;
            }
            let equal = match &cb {
                DoneCallback::Python { callback, .. } => callback.matches(r#fn),
                DoneCallback::Wakeup(task) => {
                    Task::wakeup_callable(task.bind(py)).and_then(|m| m.eq(r#fn))
                }
            };
            match equal {
                Ok(true) => removed += 1,
                Ok(false) => kept.push(cb),
                Err(e) => {
                    failure = Some(e);
                    kept.push(cb);
                }
            }
        }
        {
            let mut st = this.st.borrow_mut(py)?;
            let added = std::mem::take(&mut st.callbacks);
            kept.extend(added);
            st.callbacks = kept;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    #[pyo3(signature = (msg = None))]
    fn cancel(slf: &Bound<'_, Self>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
        Future::cancel_impl(slf, msg)
    }

    fn cancelled(&self, py: Python<'_>) -> PyResult<bool> {
        let st = self.st.borrow_mut(py)?;
        Ok(st.loop_.is_some() && st.phase == Phase::Cancelled)
    }

    fn done(&self, py: Python<'_>) -> PyResult<bool> {
        let st = self.st.borrow_mut(py)?;
        Ok(st.loop_.is_some() && st.phase != Phase::Pending)
    }

    /// What `isinstance()` consults when the real type is not a subclass:
    /// asyncio's Future (or Task) for an exact native future (or task), so
    /// that `isinstance(fut, asyncio.Future)` holds, as libraries check it
    /// (anyio decides so whether a task's awaited future already finished).
    /// `type(fut)` is still the native class.  Subclasses report themselves.
    #[getter(__class__)]
    fn class_for_isinstance<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if crate::native_types::is_exact_future(slf.as_any()) {
            return Ok(api(py)?.future_class.bind(py).clone());
        }
        if crate::native_types::is_exact_task(slf.as_any()) {
            return Ok(api(py)?.task_class.bind(py).clone());
        }
        Ok(slf.get_type().into_any())
    }

    fn get_loop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.loop_of(py)
    }

    fn _make_cancelled_error<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.make_cancelled_error(py)
    }

    fn __await__(slf: &Bound<'_, Self>) -> PyResult<Py<FutureIter>> {
        FutureIter::over(slf)
    }

    fn __iter__(slf: &Bound<'_, Self>) -> PyResult<Py<FutureIter>> {
        FutureIter::over(slf)
    }

    #[classmethod]
    fn __class_getitem__<'py>(cls: &Bound<'py, PyType>, item: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = cls.py();
        api(py)?.generic_alias.bind(py).call1((cls, item))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(call_hook(slf.py(), "future_repr", (slf,))?.unbind())
    }

    fn _repr_info(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(call_hook(slf.py(), "future_repr_info", (slf,))?.unbind())
    }

    #[getter]
    fn _state(&self, py: Python<'_>) -> PyResult<&'static str> {
        Ok(self.st.borrow_mut(py)?.phase.name())
    }

    #[getter]
    fn _result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.st.borrow_mut(py)?.result.as_ref().map_or_else(|| py.None(), |r| r.clone_ref(py)))
    }

    #[getter]
    fn _exception(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.st.borrow_mut(py)?.exception.as_ref().map_or_else(|| py.None(), |r| r.clone_ref(py)))
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.st.borrow_mut(py)?.loop_.as_ref().map_or_else(|| py.None(), |r| r.clone_ref(py)))
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self
            .st
            .borrow_mut(py)?
            .source_traceback
            .as_ref()
            .map_or_else(|| py.None(), |r| r.clone_ref(py)))
    }

    #[getter]
    fn _cancel_message(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.st.borrow_mut(py)?.cancel_message.as_ref().map_or_else(|| py.None(), |r| r.clone_ref(py)))
    }

    #[setter(_cancel_message)]
    fn set_cancel_message_attr(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let old = std::mem::replace(&mut self.st.borrow_mut(py)?.cancel_message, value);
        drop(old);
        Ok(())
    }

    #[getter]
    fn _log_traceback(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.st.borrow_mut(py)?.log_traceback)
    }

    #[setter(_log_traceback)]
    fn set_log_traceback_attr(&self, py: Python<'_>, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let Some(value) = value else {
            return Err(pyo3::exceptions::PyAttributeError::new_err("cannot delete attribute"));
        };
        if value.is_truthy()? {
            return Err(PyValueError::new_err("_log_traceback can only be set to False"));
        }
        self.st.borrow_mut(py)?.log_traceback = false;
        Ok(())
    }

    #[getter]
    fn _asyncio_future_blocking(&self, py: Python<'_>) -> PyResult<bool> {
        let st = self.st.borrow_mut(py)?;
        Ok(st.loop_.is_some() && st.blocking)
    }

    /// Any value, by its truth (None included), as asyncio's C future.
    #[setter(_asyncio_future_blocking)]
    fn set_asyncio_future_blocking_attr(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let blocking = value.is_truthy()?;
        let mut st = self.st.borrow_mut(py)?;
        if st.loop_.is_none() {
            return Err(not_initialized());
        }
        st.blocking = blocking;
        Ok(())
    }

    #[deleter(_asyncio_future_blocking)]
    fn del_asyncio_future_blocking_attr(&self) -> PyResult<()> {
        Err(pyo3::exceptions::PyAttributeError::new_err("cannot delete attribute"))
    }

    /// `[(callback, context), ...]` or None, as asyncio shows them.
    #[getter]
    fn _callbacks(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let entries: Vec<(Py<PyAny>, Py<PyAny>)> = {
            let st = slf.get().st.borrow_mut(py)?;
            let mut out = Vec::with_capacity(st.callbacks.len());
            for cb in &st.callbacks {
                match cb {
                    DoneCallback::Python { callback, context } => out.push((callback.to_object(py)?, context.share(py))),
                    DoneCallback::Wakeup(task) => out.push((task.clone_ref(py).into_any(), py.None())),
                }
            }
            out
        };
        if entries.is_empty() {
            return Ok(py.None());
        }
        let list = PyList::empty(py);
        for (cb, ctx) in entries {
            let (cb, ctx) = match cb.bind(py).cast::<Task>() {
                Ok(task) => (
                    Task::wakeup_callable(task)?.unbind(),
                    task.get().context(py)?,
                ),
                Err(_) => (cb, ctx),
            };
            list.append((cb, ctx))?;
        }
        Ok(list.into_any().unbind())
    }

    /// The finalizer's report, installed as `__del__` for Python subclasses
    /// (see slots.rs).
    fn _report_unfinished(slf: &Bound<'_, Self>) -> PyResult<()> {
        crate::slots::report_unfinished(slf.as_any())
    }

    /// pyo3's traversal; at run time slots.rs installs a faster tp_traverse
    /// visiting the same references.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self.st.try_peek() {
            // (Replaced at run time by slots.rs's traversal, which reports
            // an untracked context's references; here it is just visited.)
            Some(st) => st.refs(&mut |o| visit.call(o), &mut |o| visit.call(o)),
            None => Ok(()),
        }
    }

    fn __clear__(&self) {
        self.st.replace_for_clear(FutureState::default());
    }
}

impl FutureState {
    /// Call `visit` on every object this state refers to, stopping at the
    /// first error (the garbage collector's traversal protocol).
    ///
    /// A done callback's private context copy is off the GC's list (one
    /// object less per pending callback for every collection to walk; it
    /// made full collections the main cost of TaskGroup fan-out).  The
    /// collector would then never see what that copy refers to, and a cycle
    /// through a context variable back to this future would leak; so
    /// `through` is called with it instead of `visit`: the real traversal
    /// (slots.rs) reports the copy's own references on its behalf.  That is
    /// exact because only this callback holds the copy while it is
    /// untracked (it is tracked again before it is shared).
    pub fn refs<E>(
        &self,
        visit: &mut dyn FnMut(&Py<PyAny>) -> Result<(), E>,
        through: &mut dyn FnMut(&Py<PyAny>) -> Result<(), E>,
    ) -> Result<(), E> {
        let singles = [
            &self.loop_,
            &self.result,
            &self.exception,
            &self.exception_tb,
            &self.cancel_message,
            &self.cancelled_exc,
            &self.source_traceback,
        ];
        for obj in singles.into_iter().flatten() {
            visit(obj)?;
        }
        for cb in &self.callbacks {
            match cb {
                DoneCallback::Python { callback, context } => {
                    callback.visit(visit)?;
                    if context.is_untracked() {
                        through(context.peek())?;
                    } else {
                        visit(context.peek())?;
                    }
                }
                DoneCallback::Wakeup(task) => visit(task.as_any())?,
            }
        }
        Ok(())
    }
}

/// What `await future` iterates: yields the future once while it is
/// pending, then returns its result (asyncio's `FutureIter`).
#[pyclass(module = "ferroloop", frozen)]
pub struct FutureIter {
    future: GilCell<Option<Py<Future>>>,
}

/// One step of `await future`.
pub enum IterStep {
    /// Suspend the awaiting coroutine on this (the future itself).
    Yield(Py<PyAny>),
    /// The await is over, with this value.
    Return(Py<PyAny>),
}

/// Finished iterators kept for reuse (see slots.rs, which fills it
/// from FutureIter's deallocator), like CPython's own free list of them:
/// an `await` then costs no allocation.  GIL-protected (gil_cell.rs).
pub static ITER_POOL: GilCell<Vec<Py<FutureIter>>> = GilCell::new(Vec::new());
pub const ITER_POOL_MAX: usize = 256;

impl FutureIter {
    /// An iterator over `fut`, from the pool when it has one.
    pub fn over(fut: &Bound<'_, Future>) -> PyResult<Py<FutureIter>> {
        let py = fut.py();
        if fut.get().st.borrow_mut(py)?.loop_.is_none() {
            return Err(not_initialized());
        }
        let pooled = ITER_POOL.borrow_mut(py)?.pop();
        if let Some(it) = pooled {
            let old = it.get().future.borrow_mut(py)?.replace(fut.clone().unbind());
            drop(old);
            return Ok(it);
        }
        Py::new(py, FutureIter { future: GilCell::new(Some(fut.clone().unbind())) })
    }

    /// Empty the iterator for the pool; the caller drops the future.
    pub fn take_future(&self) -> Option<Py<Future>> {
        self.future.try_borrow_for_clear().and_then(|mut f| f.take())
    }

    pub fn advance(&self, py: Python<'_>) -> PyResult<IterStep> {
        // Bound, not Py, references throughout: dropping a Py first asks a
        // thread-local whether the GIL is held, and this runs every await.
        let Some(fut) = self.future.borrow_mut(py)?.as_ref().map(|f| f.bind(py).clone()) else {
            return Err(PyStopIteration::new_err(()));
        };
        {
            let mut st = fut.get().st.borrow_mut(py)?;
            if st.phase == Phase::Pending {
                if !st.blocking {
                    st.blocking = true;
                    drop(st);
                    return Ok(IterStep::Yield(fut.into_any().unbind()));
                }
                return Err(PyRuntimeError::new_err("await wasn't used with future"));
            }
        }
        let old = self.future.borrow_mut(py)?.take();
        drop(old.map(|f| f.into_bound(py)));
        Ok(IterStep::Return(fut.get().result_impl(py)?))
    }

    /// For the Python-level methods: the return value as StopIteration.
    fn step(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.advance(py)? {
            IterStep::Yield(v) => Ok(v),
            IterStep::Return(v) => Err(PyStopIteration::new_err((v,))),
        }
    }
}

#[pymethods]
impl FutureIter {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.step(py)
    }

    fn send(&self, py: Python<'_>, _value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.step(py)
    }

    #[pyo3(signature = (r#type, *rest))]
    fn throw(&self, py: Python<'_>, r#type: &Bound<'_, PyAny>, rest: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        if rest.len() > 2 {
            return Err(PyTypeError::new_err(format!(
                "throw expected at most 3 arguments, got {}",
                rest.len() + 1
            )));
        }
        if !rest.is_empty() && py.version_info() >= (3, 12) {
            // What generators' throw() says since 3.12.
            PyErr::warn(
                py,
                &py.get_type::<pyo3::exceptions::PyDeprecationWarning>(),
                c"the (type, exc, tb) signature of throw() is deprecated, use the single-arg signature instead.",
                1,
            )?;
        }
        let old = self.future.borrow_mut(py)?.take();
        drop(old);
        let value = rest.get_item(0).ok().filter(|v| !v.is_none());
        let traceback = rest.get_item(1).ok().filter(|t| !t.is_none());
        let value = value.as_ref();
        let traceback = traceback.as_ref();
        if let Some(tb) = traceback {
            if !tb.is_instance_of::<pyo3::types::PyTraceback>() {
                return Err(PyTypeError::new_err("throw() third argument must be a traceback"));
            }
        }
        let exc = if let Ok(cls) = r#type.cast::<PyType>() {
            if !cls.is_subclass_of::<pyo3::exceptions::PyBaseException>()? {
                return Err(PyTypeError::new_err(
                    "exceptions must be classes deriving BaseException or instances of such a class",
                ));
            }
            match value {
                Some(v) if v.is_instance(cls)? => v.clone(),
                Some(v) if v.is_instance_of::<PyTuple>() => cls.call1(v.cast::<PyTuple>()?)?,
                Some(v) => cls.call1((v,))?,
                None => cls.call0()?,
            }
        } else if r#type.is_instance_of::<pyo3::exceptions::PyBaseException>() {
            if value.is_some() {
                return Err(PyTypeError::new_err("instance exception may not have a separate value"));
            }
            r#type.clone()
        } else {
            return Err(PyTypeError::new_err(format!(
                "exceptions must be classes deriving BaseException or instances of such a class, not {}",
                r#type.get_type().name()?
            )));
        };
        if let Some(tb) = traceback {
            // SAFETY: `exc` is an exception instance, `tb` a traceback (checked).
            if unsafe { ffi::PyException_SetTraceback(exc.as_ptr(), tb.as_ptr()) } < 0 {
                return Err(PyErr::fetch(py));
            }
        }
        Err(PyErr::from_value(exc))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let old = self.future.borrow_mut(py)?.take();
        drop(old);
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(f) = self.future.try_peek() {
            visit.call(&*f)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.future.replace_for_clear(None);
    }
}
