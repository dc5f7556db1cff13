//! `ferroloop.Task`: asyncio's Task, natively.
//!
//! A step drives the coroutine with `PyIter_Send` (or `throw()` to deliver
//! a cancellation or an awaited future's exception), then looks at what the
//! coroutine yielded, exactly as CPython's `task_step_impl` does: a future
//! to wait for (the task's wakeup is added to its done callbacks), None
//! (bare `yield`: step again next iteration) or something invalid (the task
//! fails with asyncio's RuntimeError).  Steps and wakeups enter the loop's
//! ready queue as Rust values (see callbacks.rs), and a native task waiting
//! on a native future needs no Python callable.
//!
//! asyncio.current_task() and asyncio.all_tasks() see native tasks: a step
//! runs with the task in asyncio's current-task table, and pending tasks
//! are listed in ferroloop's registry (registry.rs), which asyncio's own
//! registry iterates too.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::asyncio_api::api;
use crate::callbacks::NativeCallback;
use crate::future::{queue_native, DoneCallback, Future, FutureState, Phase};
use crate::gil_cell::GilCell;
use crate::handles::{is_fatal, run_in_context, HandleContext};
use crate::hooks::{call_hook, repr_of};

/// asyncio numbers unnamed tasks `Task-1`, `Task-2`, ...
static TASK_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
enum TaskName {
    #[default]
    Unset,
    /// Formatted only when someone asks for it.
    Counter(u64),
    Named(Py<PyAny>),
}

#[derive(Default)]
pub struct TaskState {
    coro: Option<Py<PyAny>>,
    /// The task's own copy of its creator's context stays off the GC's list
    /// until the first step (see `HandleContext`): nothing has run in it yet,
    /// and tasks created in bulk (gather, TaskGroup) before any runs made the
    /// collector walk a third more objects.  `context()` tracks it again.
    context: Option<HandleContext>,
    name: TaskName,
    fut_waiter: Option<Py<PyAny>>,
    must_cancel: bool,
    log_destroy_pending: bool,
    num_cancels_requested: u64,
}

#[pyclass(module = "ferroloop", name = "Task", extends = Future, subclass, frozen)]
pub struct Task {
    t: GilCell<TaskState>,
    /// Position + 1 in the registry of pending tasks, 0 when not listed.
    pub(crate) registry_slot: AtomicUsize,
}

/// What one `send`/`throw` into the coroutine gave.
enum Sent<'py> {
    Yielded(Bound<'py, PyAny>),
    Returned(Bound<'py, PyAny>),
    Raised(PyErr),
}

fn send_none<'py>(coro: &Bound<'py, PyAny>) -> Sent<'py> {
    let py = coro.py();
    let mut out: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: `coro` is a live object; PyIter_Send stores a new reference in
    // `out` for PYGEN_NEXT/PYGEN_RETURN and sets an exception for PYGEN_ERROR.
    let status = unsafe { ffi::PyIter_Send(coro.as_ptr(), ffi::Py_None(), &mut out) };
    match status {
        // SAFETY: see above: `out` is an owned, non-NULL reference here.
        ffi::PySendResult::PYGEN_NEXT => Sent::Yielded(unsafe { Bound::from_owned_ptr(py, out) }),
        ffi::PySendResult::PYGEN_RETURN => Sent::Returned(unsafe { Bound::from_owned_ptr(py, out) }),
        ffi::PySendResult::PYGEN_ERROR => Sent::Raised(PyErr::fetch(py)),
    }
}

fn throw_into<'py>(coro: &Bound<'py, PyAny>, exc: &Bound<'py, PyAny>) -> Sent<'py> {
    let py = coro.py();
    match coro.call_method1(pyo3::intern!(py, "throw"), (exc,)) {
        Ok(v) => Sent::Yielded(v),
        Err(e) if e.is_instance_of::<PyStopIteration>(py) => {
            match e.value(py).getattr(pyo3::intern!(py, "value")) {
                Ok(v) => Sent::Returned(v),
                Err(e2) => Sent::Raised(e2),
            }
        }
        Err(e) => Sent::Raised(e),
    }
}

/// Cancel any future-like object: natively for exact native classes, else
/// through its `cancel` method, as asyncio's C Task does.
fn cancel_any(obj: &Bound<'_, PyAny>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
    let py = obj.py();
    if crate::native_types::is_exact_task(obj) {
        return Task::cancel_impl(obj.cast::<Task>()?, msg);
    }
    if crate::native_types::is_exact_future(obj) {
        return Future::cancel_impl(obj.cast::<Future>()?, msg);
    }
    let msg = msg.unwrap_or_else(|| py.None());
    obj.call_method1(pyo3::intern!(py, "cancel"), (msg,))?.is_truthy()
}

impl Task {
    pub(crate) fn empty() -> Task {
        Task { t: GilCell::new(TaskState::default()), registry_slot: AtomicUsize::new(0) }
    }

    /// Call `visit` on every object the task part refers to (the GC's
    /// traversal protocol); nothing while the state is borrowed.
    pub fn refs<E>(&self, visit: &mut dyn FnMut(&Py<PyAny>) -> Result<(), E>) -> Result<(), E> {
        let Some(t) = self.t.try_peek() else {
            return Ok(());
        };
        let name = match &t.name {
            TaskName::Named(n) => Some(n),
            _ => None,
        };
        for obj in [t.coro.as_ref(), t.context.as_ref().map(HandleContext::peek), t.fut_waiter.as_ref(), name].into_iter().flatten() {
            visit(obj)?;
        }
        Ok(())
    }

    /// Put the task's own context copy back on the GC's list (the loop lets
    /// go of a task that never ran).
    pub fn expose_context_to_gc(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(ctx) = self.t.borrow_mut(py)?.context.as_ref() {
            ctx.expose_to_gc();
        }
        Ok(())
    }

    /// The bound `task_wakeup` method: the callable asyncio sees where a
    /// native task waits on a future (see `wakeup_method`).
    pub fn wakeup_callable<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.getattr(pyo3::intern!(slf.py(), "task_wakeup"))
    }

    pub fn context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.t.borrow_mut(py)?.context.as_ref().map_or_else(|| py.None(), |c| c.share(py)))
    }

    /// A new task of `loop_` (the fast path of `loop.create_task`).
    pub fn create(
        py: Python<'_>,
        loop_: Bound<'_, PyAny>,
        coro: Bound<'_, PyAny>,
        name: Option<Bound<'_, PyAny>>,
        context: Option<Py<PyAny>>,
        eager_start: Option<bool>,
    ) -> PyResult<Py<Task>> {
        let fut = Future::init_state(py, loop_)?;
        let task = crate::fast_alloc::new_task(py, fut, Task::empty())?;
        Task::initialize(&task, coro, name, context, eager_start)?;
        Ok(task.unbind())
    }

    /// Everything `Task.__init__` does once the Future part is set up.
    fn initialize(
        slf: &Bound<'_, Task>,
        coro: Bound<'_, PyAny>,
        name: Option<Bound<'_, PyAny>>,
        context: Option<Py<PyAny>>,
        eager_start: Option<bool>,
    ) -> PyResult<()> {
        let py = slf.py();
        let api = api(py)?;
        if eager_start.is_some() && !api.has_eager {
            return Err(PyTypeError::new_err("Task.__init__() got an unexpected keyword argument 'eager_start'"));
        }
        let fut = slf.as_super();
        // SAFETY: PyCoro_CheckExact only reads the object's type.
        let is_coro = unsafe { ffi::PyCoro_CheckExact(coro.as_ptr()) } != 0
            || api.iscoroutine.bind(py).call1((&coro,))?.is_truthy()?;
        if !is_coro {
            slf.get().t.borrow_mut(py)?.log_destroy_pending = false;
            return Err(PyTypeError::new_err(format!("a coroutine was expected, got {}", repr_of(&coro))));
        }
        let name = match name {
            Some(n) if !n.is_none() => {
                if n.is_exact_instance_of::<PyString>() {
                    TaskName::Named(n.unbind())
                } else {
                    TaskName::Named(n.str()?.into_any().unbind())
                }
            }
            _ => TaskName::Counter(TASK_COUNTER.fetch_add(1, Ordering::Relaxed) + 1),
        };
        let context = HandleContext::new(py, context)?;
        let old = std::mem::replace(
            &mut *slf.get().t.borrow_mut(py)?,
            TaskState {
                coro: Some(coro.unbind()),
                context: Some(context),
                name,
                fut_waiter: None,
                must_cancel: false,
                log_destroy_pending: true,
                num_cancels_requested: 0,
            },
        );
        drop(old);
        if eager_start == Some(true) {
            let loop_ = fut.get().loop_of(py)?;
            // A method call, as asyncio's Task makes it: a loop subclass may
            // override is_running().
            if loop_.call_method0(pyo3::intern!(py, "is_running"))?.is_truthy()? {
                return Task::eager_start(slf);
            }
        }
        Task::call_step_soon(slf, None)?;
        Task::register(slf)
    }

    fn register(slf: &Bound<'_, Task>) -> PyResult<()> {
        crate::registry::register(slf)
    }

    /// 3.12's eager start: run the first step now, inside create_task.
    fn eager_start(slf: &Bound<'_, Task>) -> PyResult<()> {
        let py = slf.py();
        let api = api(py)?;
        let loop_ = slf.as_super().get().loop_of(py)?;
        let previous = api.swap_current_task(&loop_, slf.as_any())?;
        // Listed for all_tasks() while its first step runs, as asyncio lists
        // it in `_eager_tasks`: in the native registry, which the task leaves
        // by itself if that step finishes it (schedule_callbacks).
        Task::register(slf)?;
        let outcome = run_in_context(py, &slf.get().context(py)?, || {
            let stepped = Task::step_impl(slf, None);
            let swapped = api.swap_current_task(&loop_, &previous);
            stepped.and(swapped.map(drop))
        });
        if slf.as_super().get().phase(py)? != Phase::Pending {
            let coro = slf.get().t.borrow_mut(py)?.coro.take();
            drop(coro);
        }
        outcome
    }

    /// Queue a step (with an exception to throw in, or None).
    pub fn call_step_soon(slf: &Bound<'_, Task>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let loop_ = slf.as_super().get().loop_of(py)?;
        queue_native(&loop_, NativeCallback::Step { task: slf.clone().unbind(), exc })
    }

    fn set_error_soon(slf: &Bound<'_, Task>, msg: String) -> PyResult<()> {
        let exc = PyRuntimeError::new_err(msg).into_value(slf.py()).into_any();
        Task::call_step_soon(slf, Some(exc))
    }

    /// One step, with the task as asyncio's current task.
    pub fn step(slf: &Bound<'_, Task>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let api = api(py)?;
        let loop_ = slf.as_super().get().loop_of(py)?;
        api.enter_task(&loop_, slf.as_any())?;
        let outcome = Task::step_impl(slf, exc);
        let left = api.leave_task(&loop_, slf.as_any());
        match outcome {
            Err(e) => Err(e),
            Ok(()) => left,
        }
    }

    fn step_impl(slf: &Bound<'_, Task>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let fut = slf.as_super();
        if fut.get().phase(py)? != Phase::Pending {
            let exc_repr = exc.as_ref().map_or_else(|| "None".to_owned(), repr_of);
            return Err(crate::future::invalid_state(
                py,
                &format!("_step(): already done: {} {}", repr_of(slf.as_any()), exc_repr),
            ));
        }
        let mut exc = exc;
        let (must_cancel, coro, waiter) = {
            let mut t = slf.get().t.borrow_mut(py)?;
            let must_cancel = std::mem::replace(&mut t.must_cancel, false);
            (must_cancel, t.coro.as_ref().map(|c| c.bind(py).clone()), t.fut_waiter.take())
        };
        // As Bound: dropping a Py consults a thread-local first (every step).
        drop(waiter.map(|w| w.into_bound(py)));
        if must_cancel {
            let cancelled_cls = api(py)?.cancelled_error.bind(py);
            let is_cancel = match &exc {
                Some(e) => e.is_instance(cancelled_cls)?,
                None => false,
            };
            if !is_cancel {
                exc = Some(fut.get().make_cancelled_error(py)?);
            }
        }
        let Some(coro) = coro else {
            return Err(PyRuntimeError::new_err("uninitialized Task object"));
        };
        let sent = match &exc {
            None => send_none(&coro),
            Some(e) => throw_into(&coro, e),
        };
        drop(exc);
        match sent {
            Sent::Returned(value) => {
                let cancel = {
                    let mut t = slf.get().t.borrow_mut(py)?;
                    std::mem::replace(&mut t.must_cancel, false)
                };
                if cancel {
                    // Cancelled right before the coroutine returned.
                    let msg = fut.get().st.borrow_mut(py)?.cancel_message.as_ref().map(|m| m.clone_ref(py));
                    Future::cancel_impl(fut, msg).map(drop)
                } else {
                    Future::set_result_impl(fut, value.unbind())
                }
            }
            Sent::Raised(err) => {
                if err.is_instance(py, api(py)?.cancelled_error.bind(py)) {
                    let old = fut.get().st.borrow_mut(py)?.cancelled_exc.replace(err.into_value(py).into_any());
                    drop(old);
                    return Future::cancel_impl(fut, None).map(drop);
                }
                // into_value attaches the traceback (kept apart on 3.11).
                let value = err.clone_ref(py).into_value(py).into_bound(py).into_any();
                Future::set_exception_impl(fut, &value)?;
                if is_fatal(py, &err) {
                    return Err(err);
                }
                Ok(())
            }
            Sent::Yielded(result) => Task::handle_yield(slf, result),
        }
    }

    /// What the coroutine yielded (asyncio's `task_step_handle_result_impl`).
    fn handle_yield(slf: &Bound<'_, Task>, result: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if result.is(slf) {
            return Task::set_error_soon(slf, format!("Task cannot await on itself: {}", repr_of(slf.as_any())));
        }
        let task_loop = slf.as_super().get().loop_of(py)?;
        if Future::is_exact_native(&result) {
            let awaited = result.cast::<Future>()?;
            {
                let mut st = awaited.get().st.borrow_mut(py)?;
                let same_loop = st.loop_.as_ref().is_some_and(|l| l.bind(py).is(&task_loop));
                if !same_loop {
                    drop(st);
                    return Task::different_loop(slf, &result);
                }
                if !st.blocking {
                    drop(st);
                    return Task::yield_instead_of_yield_from(slf, &result);
                }
                st.blocking = false;
            }
            Future::add_done(awaited, DoneCallback::Wakeup(slf.clone().unbind()))?;
            return Task::wait_on(slf, result);
        }
        if result.is_none() {
            // A bare `yield` gives up one loop iteration.
            return Task::call_step_soon(slf, None);
        }
        let blocking = match result.getattr_opt(pyo3::intern!(py, "_asyncio_future_blocking"))? {
            Some(b) if !b.is_none() => b.is_truthy()?,
            _ => {
                // SAFETY: PyGen_Check only reads the object's type.
                if unsafe { ffi::PyGen_Check(result.as_ptr()) } != 0 {
                    return Task::set_error_soon(
                        slf,
                        format!(
                            "yield was used instead of yield from for generator in task {} with {}",
                            repr_of(slf.as_any()),
                            repr_of(&result)
                        ),
                    );
                }
                return Task::set_error_soon(slf, format!("Task got bad yield: {}", repr_of(&result)));
            }
        };
        let other_loop = future_loop(&result)?;
        if !other_loop.is(&task_loop) {
            return Task::different_loop(slf, &result);
        }
        if !blocking {
            return Task::yield_instead_of_yield_from(slf, &result);
        }
        result.setattr(pyo3::intern!(py, "_asyncio_future_blocking"), false)?;
        let wakeup = Task::wakeup_callable(slf)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item(pyo3::intern!(py, "context"), slf.get().context(py)?)?;
        result.call_method(pyo3::intern!(py, "add_done_callback"), (wakeup,), Some(&kwargs))?;
        Task::wait_on(slf, result)
    }

    /// Remember the awaited future, and pass on a cancellation that arrived
    /// before the task got to wait on it.
    fn wait_on(slf: &Bound<'_, Task>, awaited: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let must_cancel = {
            let mut t = slf.get().t.borrow_mut(py)?;
            let old = t.fut_waiter.replace(awaited.clone().unbind());
            let must = t.must_cancel;
            drop(t);
            drop(old);
            must
        };
        if must_cancel {
            let msg = slf.as_super().get().st.borrow_mut(py)?.cancel_message.as_ref().map(|m| m.clone_ref(py));
            if cancel_any(&awaited, msg)? {
                slf.get().t.borrow_mut(py)?.must_cancel = false;
            }
        }
        Ok(())
    }

    fn different_loop(slf: &Bound<'_, Task>, result: &Bound<'_, PyAny>) -> PyResult<()> {
        Task::set_error_soon(
            slf,
            format!("Task {} got Future {} attached to a different loop", repr_of(slf.as_any()), repr_of(result)),
        )
    }

    fn yield_instead_of_yield_from(slf: &Bound<'_, Task>, result: &Bound<'_, PyAny>) -> PyResult<()> {
        Task::set_error_soon(
            slf,
            format!("yield was used instead of yield from in task {} with {}", repr_of(slf.as_any()), repr_of(result)),
        )
    }

    /// The awaited future is done: step with its outcome.
    pub fn wakeup(slf: &Bound<'_, Task>, awaited: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let outcome = if Future::is_exact_native(awaited) {
            awaited.cast::<Future>()?.get().result_impl(py).map(|r| drop(r.into_bound(py)))
        } else {
            awaited.call_method0(pyo3::intern!(py, "result")).map(drop)
        };
        match outcome {
            Ok(()) => Task::step(slf, None),
            Err(e) => Task::step(slf, Some(e.into_value(py).into_bound(py).into_any())),
        }
    }

    pub fn cancel_impl(slf: &Bound<'_, Task>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
        let py = slf.py();
        {
            let mut st = slf.as_super().get().st.borrow_mut(py)?;
            st.log_traceback = false;
            if st.phase != Phase::Pending {
                return Ok(false);
            }
        }
        let waiter = {
            let mut t = slf.get().t.borrow_mut(py)?;
            t.num_cancels_requested += 1;
            t.fut_waiter.as_ref().map(|w| w.clone_ref(py))
        };
        if let Some(waiter) = waiter {
            let msg = msg.as_ref().map(|m| m.clone_ref(py));
            if cancel_any(waiter.bind(py), msg)? {
                // Keep the waiter: it may be a task that swallows the
                // cancellation and must be cancelled again later.
                return Ok(true);
            }
        }
        slf.get().t.borrow_mut(py)?.must_cancel = true;
        let old = std::mem::replace(&mut slf.as_super().get().st.borrow_mut(py)?.cancel_message, msg);
        drop(old);
        Ok(true)
    }
}

/// asyncio's `futures._get_loop`.
fn future_loop<'py>(fut: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = fut.py();
    match fut.getattr_opt(pyo3::intern!(py, "get_loop"))? {
        Some(get_loop) => get_loop.call0(),
        None => fut.getattr(pyo3::intern!(py, "_loop")),
    }
}

#[pymethods]
impl Task {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyClassInitializer<Task> {
        PyClassInitializer::from(Future::empty()).add_subclass(Task::empty())
    }

    #[pyo3(signature = (coro, *, r#loop = None, name = None, context = None, eager_start = None))]
    fn __init__(
        slf: &Bound<'_, Self>,
        coro: Bound<'_, PyAny>,
        r#loop: Option<Bound<'_, PyAny>>,
        name: Option<Bound<'_, PyAny>>,
        context: Option<Py<PyAny>>,
        eager_start: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        // Any truthy value starts eagerly, as in asyncio.
        let eager_start = eager_start.map(|e| e.is_truthy()).transpose()?;
        let py = slf.py();
        let loop_ = match r#loop {
            Some(l) if !l.is_none() => l,
            _ => api(py)?.get_event_loop(py)?,
        };
        let fresh: FutureState = Future::init_state(py, loop_)?;
        let old = std::mem::replace(&mut *slf.as_super().get().st.borrow_mut(py)?, fresh);
        drop(old);
        Task::initialize(slf, coro, name, context, eager_start)
    }

    fn get_coro(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.t.borrow_mut(py)?.coro.as_ref().map_or_else(|| py.None(), |c| c.clone_ref(py)))
    }

    fn get_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.context(py)
    }

    fn get_name(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let mut t = self.t.borrow_mut(py)?;
        Ok(match &t.name {
            TaskName::Named(n) => n.clone_ref(py),
            TaskName::Counter(n) => {
                let name = PyString::new(py, &format!("Task-{n}")).into_any().unbind();
                t.name = TaskName::Named(name.clone_ref(py));
                name
            }
            TaskName::Unset => py.None(),
        })
    }

    fn set_name(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let name = if value.is_exact_instance_of::<PyString>() {
            value.clone()
        } else {
            value.str()?.into_any()
        };
        let old = std::mem::replace(&mut self.t.borrow_mut(py)?.name, TaskName::Named(name.unbind()));
        drop(old);
        Ok(())
    }

    #[pyo3(signature = (msg = None))]
    fn cancel(slf: &Bound<'_, Self>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
        Task::cancel_impl(slf, msg)
    }

    fn cancelling(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.t.borrow_mut(py)?.num_cancels_requested)
    }

    fn uncancel(&self, py: Python<'_>) -> PyResult<u64> {
        let clears = api(py)?.uncancel_clears_must_cancel;
        let mut t = self.t.borrow_mut(py)?;
        if t.num_cancels_requested > 0 {
            t.num_cancels_requested -= 1;
            if t.num_cancels_requested == 0 && clears {
                t.must_cancel = false;
            }
        }
        Ok(t.num_cancels_requested)
    }

    #[pyo3(signature = (*, limit = None))]
    fn get_stack<'py>(slf: &Bound<'py, Self>, limit: Option<Py<PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        call_hook(py, "task_get_stack", (slf, limit.unwrap_or_else(|| py.None())))
    }

    #[pyo3(signature = (*, limit = None, file = None))]
    fn print_stack(slf: &Bound<'_, Self>, limit: Option<Py<PyAny>>, file: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        call_hook(py, "task_print_stack", (slf, limit.unwrap_or_else(|| py.None()), file.unwrap_or_else(|| py.None())))
            .map(drop)
    }

    fn set_result(&self, _result: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(PyRuntimeError::new_err("Task does not support set_result operation"))
    }

    fn set_exception(&self, _exception: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(PyRuntimeError::new_err("Task does not support set_exception operation"))
    }

    /// The step, as a callable (for loops that are not ferroloop's, and for
    /// debug mode, where steps go through `call_soon`).
    #[pyo3(name = "_Task__step", signature = (exc = None))]
    fn step_method(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        Task::step(slf, exc.filter(|e| !e.is_none()))
    }

    /// The wakeup, as a callable (added to futures that are not native,
    /// and what `_callbacks` shows): named as asyncio's C Task names its
    /// own, so a future's repr reads `cb=[Task.task_wakeup()]` as there.
    #[pyo3(name = "task_wakeup")]
    fn wakeup_method(slf: &Bound<'_, Self>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        Task::wakeup(slf, future)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(call_hook(slf.py(), "task_repr", (slf,))?.unbind())
    }

    fn _repr_info(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(call_hook(slf.py(), "task_repr_info", (slf,))?.unbind())
    }

    #[getter]
    fn _coro(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.get_coro(py)
    }

    #[getter]
    fn _fut_waiter(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.t.borrow_mut(py)?.fut_waiter.as_ref().map_or_else(|| py.None(), |w| w.clone_ref(py)))
    }

    #[getter]
    fn _must_cancel(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.t.borrow_mut(py)?.must_cancel)
    }

    #[getter]
    fn _num_cancels_requested(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.t.borrow_mut(py)?.num_cancels_requested)
    }

    /// Writable, as on asyncio's Tasks (some TaskGroup and timeout
    /// backports reset it).
    #[setter(_num_cancels_requested)]
    fn set_num_cancels_requested_attr(&self, py: Python<'_>, value: u64) -> PyResult<()> {
        self.t.borrow_mut(py)?.num_cancels_requested = value;
        Ok(())
    }

    #[getter]
    fn _log_destroy_pending(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.t.borrow_mut(py)?.log_destroy_pending)
    }

    #[setter(_log_destroy_pending)]
    fn set_log_destroy_pending_attr(&self, py: Python<'_>, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let Some(value) = value else {
            return Err(pyo3::exceptions::PyAttributeError::new_err("cannot delete attribute"));
        };
        self.t.borrow_mut(py)?.log_destroy_pending = value.is_truthy()?;
        Ok(())
    }

    /// pyo3's traversal; at run time slots.rs installs a faster tp_traverse
    /// visiting the same references (and the Future part's).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.refs(&mut |o| visit.call(o))
    }

    fn __clear__(&self) {
        // A task being collected leaves the registry (as asyncio's weak
        // reference is cleared) even if a subclass's __del__ skipped ours.
        Python::attach(|py| {
            let _ = crate::registry::unregister(py, self);
        });
        if let Some(mut t) = self.t.try_borrow_for_clear() {
            let coro = t.coro.take();
            let ctx = t.context.take();
            let waiter = t.fut_waiter.take();
            drop(t);
            drop((coro, ctx, waiter));
        }
    }
}

/// Called by the finalizer (lib.rs) for a task being freed: asyncio's
/// "Task was destroyed but it is pending!" report.
pub fn report_if_destroyed_pending(task: &Bound<'_, Task>) -> PyResult<()> {
    let py = task.py();
    let pending = task.as_super().get().st.try_peek().is_some_and(|st| st.phase == Phase::Pending && st.loop_.is_some());
    let log = task.get().t.try_peek().is_some_and(|t| t.log_destroy_pending);
    if pending && log {
        call_hook(py, "report_destroyed_pending", (task,))?;
    }
    Ok(())
}
