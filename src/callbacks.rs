//! Callbacks of native futures and tasks, as they sit in the ready queue.
//!
//! asyncio schedules a future's done callbacks, a task's steps and its
//! wakeups with `loop.call_soon()`, one Handle each.  On a ferroloop loop
//! they are these Rust values instead; they run exactly like the handle
//! would (in their contextvars context, errors to the exception handler,
//! SystemExit and KeyboardInterrupt out of the loop).  Everywhere else --
//! another loop, or debug mode, whose handles carry source tracebacks and
//! slow-callback timing -- `call_soon` turns them back into asyncio's calls.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::future::DoneCallback;
use crate::handles::{
    call_in_context, is_context, is_fatal, run_in_context, run_like_handle, CallArgs, Handle, HandleContext, LoopRef,
};
use crate::hooks::call_hook;
use crate::task::Task;
use crate::transport::StreamTransport;

/// A done callback's callable.  A bound method (`types.MethodType`, as in
/// TaskGroup's `task.add_done_callback(self._on_task_done)`) is kept as its
/// function and instance: the method object itself would be one more object
/// on the garbage collector's list per pending callback, which every full
/// collection walks, and calling `func(instance, future)` is what the
/// method's own vectorcall does.  It is rebuilt (an equal method) wherever
/// Python code gets to see the callback.
pub enum CallbackFn {
    Plain(Py<PyAny>),
    Method { func: Py<PyAny>, instance: Py<PyAny> },
}

fn method_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    TYPE.import(py, "types", "MethodType")
}

impl CallbackFn {
    pub fn new(callback: Bound<'_, PyAny>) -> CallbackFn {
        let py = callback.py();
        let is_method = method_type(py).is_ok_and(|t| callback.get_type().is(t));
        if is_method {
            if let (Ok(func), Ok(instance)) =
                (callback.getattr(intern!(py, "__func__")), callback.getattr(intern!(py, "__self__")))
            {
                return CallbackFn::Method { func: func.unbind(), instance: instance.unbind() };
            }
        }
        CallbackFn::Plain(callback.unbind())
    }

    /// The callable as Python code would see it.
    pub fn to_object(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self {
            CallbackFn::Plain(f) => Ok(f.clone_ref(py)),
            CallbackFn::Method { func, instance } => Ok(method_type(py)?.call1((func, instance))?.unbind()),
        }
    }

    /// `callback == other`, as remove_done_callback compares (identity
    /// first, as PyObject_RichCompareBool).
    pub fn matches(&self, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = other.py();
        match self {
            CallbackFn::Plain(f) => Ok(f.bind(py).is(other) || f.bind(py).eq(other)?),
            CallbackFn::Method { .. } => self.to_object(py)?.bind(py).eq(other),
        }
    }

    pub fn visit<E>(&self, visit: &mut dyn FnMut(&Py<PyAny>) -> Result<(), E>) -> Result<(), E> {
        match self {
            CallbackFn::Plain(f) => visit(f),
            CallbackFn::Method { func, instance } => {
                visit(func)?;
                visit(instance)
            }
        }
    }

    /// Call it with `arg` in `context`.
    fn call_in(&self, py: Python<'_>, context: &Py<PyAny>, arg: &Py<PyAny>) -> PyResult<()> {
        match self {
            CallbackFn::Plain(f) => call_in_context(py, context, f.bind(py), &CallArgs::One(arg.clone_ref(py))),
            CallbackFn::Method { func, instance } if is_context(context.bind(py)) => {
                run_in_context(py, context, || func.bind(py).call1((instance, arg)).map(drop))
            }
            CallbackFn::Method { .. } => {
                call_in_context(py, context, self.to_object(py)?.bind(py), &CallArgs::One(arg.clone_ref(py)))
            }
        }
    }
}

pub enum NativeCallback {
    /// `callback(future)` in `context`.
    Done { callback: CallbackFn, future: Py<PyAny>, context: HandleContext },
    /// A task's awaited future is done.
    Wakeup { task: Py<Task>, future: Py<PyAny> },
    /// A task's next step, optionally throwing `exc` into the coroutine.
    Step { task: Py<Task>, exc: Option<Py<PyAny>> },
    /// A native transport's fd is ready (or owed a read attempt); `drain`:
    /// read until EAGAIN or EOF even after a short read.
    Io { transport: Py<StreamTransport>, readable: bool, writable: bool, drain: bool },
}

impl NativeCallback {
    pub fn from_done(cb: DoneCallback, future: Py<PyAny>) -> NativeCallback {
        match cb {
            DoneCallback::Python { callback, context } => NativeCallback::Done { callback, future, context },
            DoneCallback::Wakeup(task) => NativeCallback::Wakeup { task, future },
        }
    }

    /// The callable, argument and context `call_soon` would be given.
    fn as_call<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>, Py<PyAny>)> {
        Ok(match self {
            NativeCallback::Done { callback, future, context } => (
                callback.to_object(py)?.into_bound(py),
                PyTuple::new(py, [future.clone_ref(py)])?,
                context.share(py),
            ),
            NativeCallback::Wakeup { task, future } => (
                Task::wakeup_callable(task.bind(py))?,
                PyTuple::new(py, [future.clone_ref(py)])?,
                task.get().context(py)?,
            ),
            NativeCallback::Step { task, exc } => (
                task.bind(py).getattr(intern!(py, "_Task__step"))?,
                match exc {
                    Some(e) => PyTuple::new(py, [e.clone_ref(py)])?,
                    None => PyTuple::empty(py),
                },
                task.get().context(py)?,
            ),
            NativeCallback::Io { transport, readable, writable, drain } => (
                transport.bind(py).getattr(intern!(py, "_io_ready"))?,
                PyTuple::new(py, [*readable, *writable, *drain])?,
                match transport.get().context(py)? {
                    Some(c) => c,
                    None => crate::handles::copy_current_context(py)?,
                },
            ),
        })
    }

    /// Hand the callback to `loop.call_soon(..., context=...)`.
    pub fn call_soon(self, py: Python<'_>, loop_: &Bound<'_, PyAny>) -> PyResult<()> {
        let (callable, args, context) = self.as_call(py)?;
        let mut all = vec![callable];
        all.extend(args.iter());
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "context"), context)?;
        loop_
            .call_method(intern!(py, "call_soon"), PyTuple::new(py, all)?, Some(&kwargs))
            .map(drop)
    }

    /// Run it (from the loop's ready queue), like `Handle._run`.
    pub fn run(&self, py: Python<'_>, loop_: &Bound<'_, PyAny>) -> PyResult<()> {
        let outcome = match self {
            // Running code in the copy hands it to no one: it stays off the
            // GC's list until it is dropped (see FutureState::refs).
            NativeCallback::Done { callback, future, context } => callback.call_in(py, context.peek(), future),
            // The contexts as Bound: dropping a Py consults a thread-local
            // first, and these run every step.
            NativeCallback::Wakeup { task, future } => {
                let ctx = task.get().context(py)?.into_bound(py);
                run_like_handle(py, ctx.as_unbound(), || Task::wakeup(task.bind(py), future.bind(py)))
            }
            NativeCallback::Step { task, exc } => {
                let ctx = task.get().context(py)?.into_bound(py);
                run_like_handle(py, ctx.as_unbound(), || {
                    Task::step(task.bind(py), exc.as_ref().map(|e| e.bind(py).clone()))
                })
            }
            NativeCallback::Io { transport, readable, writable, drain } => match transport.get().context(py)? {
                Some(ctx) => run_in_context(py, &ctx, || {
                    StreamTransport::on_io(transport.bind(py), *readable, *writable, *drain)
                }),
                None => Ok(()), // released: nothing left to do
            },
        };
        match outcome {
            Err(err) if !is_fatal(py, &err) => self.report(py, loop_, err),
            other => other,
        }
    }

    /// The callback raised: report it with a handle describing it, as
    /// asyncio's exception handler expects ("Exception in callback ...").
    fn report(&self, py: Python<'_>, loop_: &Bound<'_, PyAny>, err: PyErr) -> PyResult<()> {
        let (callable, args, context) = self.as_call(py)?;
        let handle = Handle::create(
            py,
            callable.unbind(),
            CallArgs::from_tuple(args)?,
            LoopRef::new(loop_),
            Some(context),
            false,
            true,
        )?;
        let handle = Py::new(py, handle)?;
        call_hook(py, "report_callback_error", (handle, err.into_value(py))).map(drop)
    }
}
