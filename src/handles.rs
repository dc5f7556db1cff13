//! `Handle` and `TimerHandle`: asyncio's callback handles, natively.
//!
//! A handle owns the callback, its positional arguments and the
//! `contextvars.Context` it runs in.  Cancelling drops the callback and
//! arguments at once (so they are freed even while a timer still sits in the
//! heap), as asyncio does.  Formatting (`repr`) and debug-mode stack capture are
//! cold and live in Python (`ferroloop._hooks`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::PyTuple;
use pyo3::types::PyWeakrefReference;

use crate::gil_cell::GilCell;
use crate::hooks::call_hook;

/// A callback's positional arguments.  One argument -- the common case,
/// `call_soon(fut.set_result, value)` -- is kept as it is: no tuple is
/// made for it, and it is passed by vectorcall.
pub enum CallArgs {
    Empty,
    One(Py<PyAny>),
    /// Like the handle that owns it, the tuple is taken off the GC's list:
    /// only the handle refers to it, and it is released once the callback
    /// ran or was cancelled.  CPython untracks tuples itself
    /// (`_PyTuple_MaybeUntrack`), so tuple deallocation expects it.
    Many(Py<PyTuple>),
}

impl CallArgs {
    pub fn from_tuple(args: Bound<'_, PyTuple>) -> PyResult<CallArgs> {
        Ok(match args.len() {
            0 => CallArgs::Empty,
            1 => CallArgs::One(args.get_item(0)?.unbind()),
            _ => {
                // SAFETY: `args` is a live tuple we hold a reference to;
                // untracking a tracked object is always allowed and tuples
                // are deallocated with PyObject_GC_UnTrack, a no-op when
                // untracked.
                unsafe { ffi::PyObject_GC_UnTrack(args.as_ptr().cast()) };
                CallArgs::Many(args.unbind())
            }
        })
    }

    /// From a vectorcall argument array.
    ///
    /// # Safety
    /// `items` points to `n` live object pointers (borrowed references).
    pub unsafe fn from_array(py: Python<'_>, items: *const *mut ffi::PyObject, n: usize) -> PyResult<CallArgs> {
        // SAFETY: see the function's contract.
        unsafe {
            Ok(match n {
                0 => CallArgs::Empty,
                1 => CallArgs::One(Borrowed::from_ptr(py, *items).to_owned().unbind()),
                _ => {
                    let slice = std::slice::from_raw_parts(items, n);
                    let tuple = PyTuple::new(py, slice.iter().map(|&o| Borrowed::from_ptr(py, o)))?;
                    CallArgs::from_tuple(tuple)?
                }
            })
        }
    }

    /// As asyncio's `handle._args`: a tuple.
    pub fn to_tuple<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        match self {
            CallArgs::Empty => Ok(PyTuple::empty(py)),
            CallArgs::One(a) => PyTuple::new(py, [a.clone_ref(py)]),
            CallArgs::Many(t) => Ok(t.bind(py).clone()),
        }
    }

    fn clone_ref(&self, py: Python<'_>) -> CallArgs {
        match self {
            CallArgs::Empty => CallArgs::Empty,
            CallArgs::One(a) => CallArgs::One(a.clone_ref(py)),
            CallArgs::Many(t) => CallArgs::Many(t.clone_ref(py)),
        }
    }

    /// `callback(*args)`.
    fn call<'py>(&self, callback: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = callback.py();
        match self {
            CallArgs::Empty => callback.call0(),
            CallArgs::One(a) => {
                let argv = [a.as_ptr()];
                // SAFETY: `callback` and the argument are live objects;
                // PyObject_Vectorcall returns a new reference or NULL with an
                // exception set.
                unsafe {
                    let r = ffi::PyObject_Vectorcall(callback.as_ptr(), argv.as_ptr(), 1, std::ptr::null_mut());
                    Bound::from_owned_ptr_or_err(py, r)
                }
            }
            CallArgs::Many(t) => callback.call1(t.bind(py)),
        }
    }
}

pub struct Callable {
    pub callback: Py<PyAny>,
    pub args: CallArgs,
}

/// What a handle runs, in which context, for which loop.  `context` and
/// `loop_` are None only while the handle sits unused in the pool.
#[derive(Default)]
pub struct Slot {
    callable: Option<Callable>,
    context: Option<HandleContext>,
    loop_: Option<LoopRef>,
}

/// Emptied one-shot handles, shared by every loop of the process (like
/// CPython's own free lists), so a new loop starts with warm handles too.
/// Only touched with the GIL held (see gil_cell.rs).
static HANDLE_POOL: GilCell<Vec<Py<Handle>>> = GilCell::new(Vec::new());

/// The most handles the pool holds.
const HANDLE_POOL_MAX: usize = 65536;

/// A pooled handle, if any.
#[inline]
pub fn take_pooled(py: Python<'_>) -> PyResult<Option<Py<Handle>>> {
    Ok(HANDLE_POOL.borrow_mut(py)?.pop())
}

/// Put a recycled handle in the pool; returns it back when the pool is full.
#[inline]
pub fn pool_handle(py: Python<'_>, handle: Py<Handle>) -> PyResult<Option<Py<Handle>>> {
    let mut pool = HANDLE_POOL.borrow_mut(py)?;
    if pool.len() < HANDLE_POOL_MAX {
        pool.push(handle);
        Ok(None)
    } else {
        Ok(Some(handle))
    }
}

/// Shrink the pool to `keep` handles; the caller drops what is returned,
/// outside the borrow.
pub fn trim_pool(py: Python<'_>, keep: usize) -> PyResult<Vec<Py<Handle>>> {
    let mut pool = HANDLE_POOL.borrow_mut(py)?;
    Ok(if pool.len() > keep { pool.split_off(keep) } else { Vec::new() })
}

/// The current `contextvars.Context`, copied (what asyncio does for `context=None`).
pub fn copy_current_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: PyContext_CopyCurrent returns a new reference or NULL with an
    // exception set; Bound::from_owned_ptr_or_err handles both.
    unsafe {
        let ptr = ffi::PyContext_CopyCurrent();
        Ok(Bound::from_owned_ptr_or_err(py, ptr)?.unbind())
    }
}

/// The context a handle runs in.
///
/// The copy a handle makes for itself (`context=None`, nearly always) is
/// reachable only through the handle until someone asks for it
/// (`get_context()`/`_context`), and the handle is untracked by the GC
/// (see `Handle`); a context can only join a reference cycle if code holds
/// it.  So the copy is kept off the GC's list too (walking tens of
/// thousands of queued contexts was the main cost of collections during
/// bursts of `call_soon`), and put back on it before it is shared and
/// before the last reference goes (CPython deallocates contexts assuming
/// they are tracked).  A context given by the caller is left as it is.
pub struct HandleContext {
    ctx: Py<PyAny>,
    /// Set while our own copy is off the GC's list: the flag (not a GC
    /// query) is what every step of a task checks before it shares.
    untracked: AtomicBool,
}

impl HandleContext {
    /// `context` if given (not None), else a private copy of the current one.
    pub fn new(py: Python<'_>, context: Option<Py<PyAny>>) -> PyResult<HandleContext> {
        match context {
            Some(c) if !c.is_none(py) => Ok(HandleContext { ctx: c, untracked: AtomicBool::new(false) }),
            _ => {
                let copy = copy_current_context(py)?;
                // SAFETY: `copy` is a fresh, live Context that only we
                // reference; untracking a tracked object is allowed, and
                // `Drop`/`share` track it again before anyone else sees it
                // or it is deallocated.
                unsafe { ffi::PyObject_GC_UnTrack(copy.as_ptr().cast()) };
                Ok(HandleContext { ctx: copy, untracked: AtomicBool::new(true) })
            }
        }
    }

    /// The context itself, for the GC's traversal and for running code in
    /// it without handing it out (no tracking change: the collector
    /// ignores untracked objects it is shown).
    pub fn peek(&self) -> &Py<PyAny> {
        &self.ctx
    }

    /// Our own copy, currently off the GC's list.
    pub fn is_untracked(&self) -> bool {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Put our copy back on the GC's list (once code may have set
    /// variables in it, or before anyone else may hold it).
    pub fn expose_to_gc(&self) {
        // A load and a store, not a swap: every task step passes here, and
        // the GIL already orders these accesses (a swap is a locked
        // instruction).
        if self.untracked.load(Ordering::Relaxed) {
            self.untracked.store(false, Ordering::Relaxed);
            retrack(self.ctx.as_ptr());
        }
    }

    /// A reference for someone else: the context is tracked again first.
    pub fn share(&self, py: Python<'_>) -> Py<PyAny> {
        self.expose_to_gc();
        self.ctx.clone_ref(py)
    }
}

/// Put an object we untracked back on the GC's list (no-op if tracked).
///
/// A handle's context may be any object the caller passed as `context=`
/// (asyncio stores it and fails when it calls its `run`), not necessarily
/// of a GC type: those are left alone.
fn retrack(obj: *mut ffi::PyObject) {
    // SAFETY: `obj` is a live object and the GIL is held (every handle
    // operation holds it); PyObject_GC_Track may only be called on an
    // untracked object of a GC type, which the checks guarantee.
    unsafe {
        if ffi::PyObject_IS_GC(obj) != 0 && ffi::PyObject_GC_IsTracked(obj) == 0 {
            ffi::PyObject_GC_Track(obj.cast());
        }
    }
}

impl Drop for HandleContext {
    fn drop(&mut self) {
        if *self.untracked.get_mut() {
            // Handles and tasks are only dropped with the GIL held (they
            // are Python objects' contents or the loop's state); attach()
            // is then free.
            Python::attach(|_| retrack(self.ctx.as_ptr()));
        }
    }
}

/// Allocate a handle and take it off the garbage collector's list.
///
/// pyo3 makes every class GC-aware, but a handle's traversal reports nothing
/// (see `Handle`), so tracking it only costs: it made collections the main
/// cost of `call_soon`.
pub fn new_untracked<T: pyo3::PyClass>(py: Python<'_>, init: impl Into<PyClassInitializer<T>>) -> PyResult<Py<T>> {
    let obj = Py::new(py, init)?;
    // SAFETY: `obj` is a live object we just created; untracking an object
    // that is tracked is always allowed, and pyo3's dealloc only untracks
    // (a no-op for untracked objects) before freeing.
    unsafe { ffi::PyObject_GC_UnTrack(obj.as_ptr().cast()) };
    Ok(obj)
}

/// Run `f` inside the contextvars context `ctx` (what `Context.run` does
/// for a handle's callback): an error from entering or leaving it is
/// returned too, after `f`'s own.
///
/// A `context=` that is not a `contextvars.Context` fails with
/// PyContext_Enter's TypeError (as in asyncio's eager start); see
/// `run_like_handle` and `call_in_context` for what asyncio's handles do.
pub fn run_in_context<T>(py: Python<'_>, ctx: &Py<PyAny>, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    // SAFETY: `ctx` is a live object; PyContext_Enter checks its type and
    // fails with an exception set (TypeError, or RuntimeError when already
    // entered) without side effects.
    if unsafe { ffi::PyContext_Enter(ctx.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    let result = f();
    // SAFETY: we entered `ctx` above on this thread and `f` cannot leave it
    // entered-by-someone-else: Context.run/enter calls nest.
    if unsafe { ffi::PyContext_Exit(ctx.as_ptr()) } < 0 {
        let exit_err = PyErr::fetch(py);
        return result.and(Err(exit_err));
    }
    result
}

pub fn is_context(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `obj` is a live object; the check only reads its type.
    unsafe { ffi::PyContext_CheckExact(obj.as_ptr()) != 0 }
}

/// `run_in_context` for what asyncio runs through a handle
/// (`context.run(callback)`): a `context=` object without a `run` method
/// fails with that AttributeError first, as it would there.
pub fn run_like_handle<T>(py: Python<'_>, ctx: &Py<PyAny>, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    if !is_context(ctx.bind(py)) {
        ctx.bind(py).getattr(pyo3::intern!(py, "run"))?;
    }
    run_in_context(py, ctx, f)
}

/// `ctx.run(callback, *args)`, as asyncio's `Handle._run` does it: natively
/// for a `contextvars.Context`, through the object's own `run` method for
/// anything else given as `context=` (which fails there, as in asyncio, if
/// it has none).
pub fn call_in_context(py: Python<'_>, ctx: &Py<PyAny>, callback: &Bound<'_, PyAny>, args: &CallArgs) -> PyResult<()> {
    if is_context(ctx.bind(py)) {
        return run_in_context(py, ctx, || args.call(callback).map(drop));
    }
    let run = ctx.bind(py).getattr(pyo3::intern!(py, "run"))?;
    let mut all = vec![callback.clone()];
    all.extend(args.to_tuple(py)?.iter());
    run.call1(PyTuple::new(py, all)?).map(drop)
}

/// True for the exceptions that must leave the loop instead of going to the
/// exception handler.
pub(crate) fn is_fatal(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

/// How a handle refers to its loop: weakly, so that a loop and the handles
/// queued in it never form a reference cycle (handles are not tracked by the
/// garbage collector, which keeps them cheap to create).
pub enum LoopRef {
    Weak(Py<PyWeakrefReference>),
    /// For loop objects that do not support weak references.
    Strong(Py<PyAny>),
}

impl LoopRef {
    pub fn new(loop_: &Bound<'_, PyAny>) -> LoopRef {
        match PyWeakrefReference::new(loop_) {
            Ok(w) => LoopRef::Weak(w.unbind()),
            Err(_) => LoopRef::Strong(loop_.clone().unbind()),
        }
    }

    pub fn clone_ref(&self, py: Python<'_>) -> LoopRef {
        match self {
            LoopRef::Weak(w) => LoopRef::Weak(w.clone_ref(py)),
            LoopRef::Strong(s) => LoopRef::Strong(s.clone_ref(py)),
        }
    }

    fn get(&self, py: Python<'_>) -> Py<PyAny> {
        match self {
            LoopRef::Weak(w) => w.bind(py).upgrade().map_or_else(|| py.None(), |l| l.unbind()),
            LoopRef::Strong(s) => s.clone_ref(py),
        }
    }
}

/// Handles are deliberately not GC-tracked while queued: tracking made the
/// collector the main cost of `call_soon`.  To keep user-level cycles (an
/// object holding its own timer handle whose callback is one of its
/// methods) collectable, a one-shot handle drops its callback and
/// arguments once it has run, as every handle does when cancelled; and a
/// one-shot handle someone still holds after it ran is put on the GC's
/// list then (`expose_to_gc`), with its context, since its callback may
/// have set context variables that lead back to it.
#[pyclass(module = "ferroloop", subclass, frozen, weakref)]
pub struct Handle {
    slot: GilCell<Slot>,
    /// call_soon/call_later handles run once; reader, writer and signal
    /// handles run every time their event fires.
    oneshot: bool,
    cancelled: AtomicBool,
    debug: bool,
    source_traceback: Option<Py<PyAny>>,
    /// In debug mode the repr is kept on cancel, when the callback is dropped.
    saved_repr: GilCell<Option<Py<PyAny>>>,
}

impl Handle {
    pub fn create(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: CallArgs,
        loop_: LoopRef,
        context: Option<Py<PyAny>>,
        debug: bool,
        oneshot: bool,
    ) -> PyResult<Handle> {
        let context = HandleContext::new(py, context)?;
        let source_traceback = if debug {
            Some(call_hook(py, "extract_stack", ())?.unbind())
        } else {
            None
        };
        Ok(Handle {
            slot: GilCell::new(Slot {
                callable: Some(Callable { callback, args }),
                context: Some(context),
                loop_: Some(loop_),
            }),
            oneshot,
            cancelled: AtomicBool::new(false),
            debug,
            source_traceback,
            saved_repr: GilCell::new(None),
        })
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Run the callback in its context.  Errors are returned to the caller,
    /// which decides between the exception handler and propagation.
    ///
    /// A one-shot handle outside debug mode gives its callback up for the
    /// call (no reference traffic; it would be dropped after the run
    /// anyway) and takes it back if the call fails, for the error report.
    #[inline]
    pub fn invoke(&self, py: Python<'_>) -> PyResult<()> {
        let give_up = self.oneshot && !self.debug;
        let (callable, context) = {
            let mut slot = self.slot.borrow_mut(py)?;
            let Some(context) = slot.context.as_ref().map(|c| c.peek().clone_ref(py)) else {
                return Ok(());
            };
            let callable = if give_up {
                slot.callable.take()
            } else {
                slot.callable.as_ref().map(|c| Callable {
                    callback: c.callback.clone_ref(py),
                    args: c.args.clone_ref(py),
                })
            };
            match callable {
                Some(c) => (c, context),
                None => return Ok(()),
            }
        };
        let result = call_in_context(py, &context, callable.callback.bind(py), &callable.args);
        if give_up && result.is_err() {
            let mut slot = self.slot.borrow_mut(py)?;
            if slot.callable.is_none() && !self.is_cancelled() {
                slot.callable = Some(callable);
                return result;
            }
        }
        drop(callable);
        result
    }

    /// A one-shot handle that ran and that someone else still holds (so it
    /// is not recycled): track it and its own context copy, whose
    /// variables the callback may have set to objects leading back to the
    /// handle -- a cycle the collector must see whole.
    pub fn expose_to_gc(slf: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // SAFETY: reading the refcount of a live object we hold.
        let kept = unsafe { ffi::Py_REFCNT(slf.as_ptr()) } > 1;
        if !this.oneshot || !kept {
            return Ok(());
        }
        if let Some(ctx) = this.slot.borrow_mut(py)?.context.as_ref() {
            ctx.expose_to_gc();
        }
        // (The same check-then-track as for contexts.)
        retrack(slf.as_ptr());
        Ok(())
    }

    /// A handle the loop let go of without running it (the loop closed)
    /// that someone else still holds: track it, its arguments tuple and its
    /// context, so that a cycle through it -- an object keeping its own
    /// timer, `self._timer = loop.call_later(delay, self._on_timeout)` --
    /// is collected, as it is with asyncio's Python handles.
    pub fn expose_unrun_to_gc(slf: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        // SAFETY: reading the refcount of a live object we hold.
        if unsafe { ffi::Py_REFCNT(slf.as_ptr()) } <= 1 {
            return Ok(());
        }
        {
            let slot = slf.get().slot.borrow_mut(py)?;
            if let Some(ctx) = slot.context.as_ref() {
                ctx.expose_to_gc();
            }
            if let Some(CallArgs::Many(args)) = slot.callable.as_ref().map(|c| &c.args) {
                retrack(args.as_ptr());
            }
        }
        retrack(slf.as_ptr());
        Ok(())
    }

    /// After a one-shot handle ran (and any slow-callback report used its
    /// repr): free the callback and arguments (see the type docs).
    #[inline]
    pub fn release_after_run(&self, py: Python<'_>) -> PyResult<()> {
        if self.oneshot {
            let dropped = self.slot.borrow_mut(py)?.callable.take();
            drop(dropped);
        }
        Ok(())
    }

    /// Whether the loop may keep this handle for reuse once it has run: a
    /// one-shot, non-debug, exact `Handle` that nobody else references,
    /// strongly or weakly, so the reuse cannot be observed.
    pub fn can_recycle(handle: &Py<Handle>, py: Python<'_>) -> bool {
        let this = handle.get();
        if !this.oneshot || this.debug {
            return false;
        }
        let obj = handle.as_ptr();
        // SAFETY: `obj` is a live object (we hold a reference); reading its
        // refcount and type, and the weak-reference list pointer at the
        // offset its type declares, does not modify anything.
        unsafe {
            if ffi::Py_REFCNT(obj) != 1 {
                return false;
            }
            let tp = ffi::Py_TYPE(obj);
            if tp != py.get_type::<Handle>().as_type_ptr() {
                return false;
            }
            let offset = (*tp).tp_weaklistoffset;
            if offset <= 0 {
                return false;
            }
            let weaklist = obj.cast::<u8>().offset(offset).cast::<*mut ffi::PyObject>();
            (*weaklist).is_null()
        }
    }

    /// Empty a handle that `can_recycle` accepted, for the pool.  The
    /// returned slot is dropped by the caller outside any borrow.
    pub fn recycle(&self, py: Python<'_>) -> PyResult<Slot> {
        self.cancelled.store(false, Ordering::Relaxed);
        Ok(std::mem::take(&mut *self.slot.borrow_mut(py)?))
    }

    /// Refill a pooled handle, as `create` fills a new one (non-debug).
    pub fn reuse(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        args: CallArgs,
        loop_: LoopRef,
        context: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let context = HandleContext::new(py, context)?;
        let fresh = Slot {
            callable: Some(Callable { callback, args }),
            context: Some(context),
            loop_: Some(loop_),
        };
        let old = std::mem::replace(&mut *self.slot.borrow_mut(py)?, fresh);
        drop(old);
        Ok(())
    }

    fn do_cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if this.cancelled.load(Ordering::Relaxed) {
            return Ok(());
        }
        this.cancelled.store(true, Ordering::Relaxed);
        if this.debug {
            // Keep a readable repr for debugging before the callback goes
            // (taken once cancelled, so it says so, as asyncio's does).
            let r = slf.repr()?.into_any().unbind();
            let old = this.saved_repr.borrow_mut(slf.py())?.replace(r);
            drop(old);
        }
        let dropped = this.slot.borrow_mut(slf.py())?.callable.take();
        drop(dropped);
        Ok(())
    }

    /// Run like asyncio's `Handle._run`: errors other than SystemExit and
    /// KeyboardInterrupt go to the loop's exception handler.  `this` gives
    /// the handle object for the report (only built when there is an error).
    #[inline]
    pub fn run_reporting<'py>(
        &self,
        py: Python<'py>,
        this: impl FnOnce() -> Bound<'py, Handle>,
    ) -> PyResult<()> {
        match self.invoke(py) {
            Err(err) if !is_fatal(py, &err) => {
                call_hook(py, "report_callback_error", (this(), err.into_value(py))).map(drop)
            }
            other => other,
        }
    }
}

#[pymethods]
impl Handle {
    /// What a tracked handle (see `expose_to_gc`) refers to.
    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        let Some(slot) = self.slot.try_peek() else {
            return Ok(());
        };
        if let Some(c) = &slot.callable {
            visit.call(&c.callback)?;
            match &c.args {
                CallArgs::Empty => {}
                CallArgs::One(a) => visit.call(a)?,
                CallArgs::Many(t) => visit.call(t)?,
            }
        }
        if let Some(ctx) = &slot.context {
            visit.call(ctx.peek())?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Some(mut slot) = self.slot.try_borrow_for_clear() {
            let callable = slot.callable.take();
            let context = slot.context.take();
            drop(slot);
            drop((callable, context));
        }
    }

    #[new]
    #[pyo3(signature = (callback, args, r#loop, context=None))]
    fn py_new(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Option<Bound<'_, PyAny>>,
        r#loop: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let args = match args {
            Some(a) if !a.is_none() => PyTuple::new(py, a.try_iter()?.collect::<PyResult<Vec<_>>>()?)?,
            _ => PyTuple::empty(py),
        };
        let loop_ = r#loop.bind(py);
        let debug = loop_.call_method0("get_debug")?.is_truthy()?;
        Handle::create(py, callback, CallArgs::from_tuple(args)?, LoopRef::new(loop_), context, debug, false)
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        Handle::do_cancel(slf)
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self._context(py)
    }

    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().run_reporting(slf.py(), || slf.clone())
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match &self.slot.borrow_mut(py)?.callable {
            Some(c) => c.callback.clone_ref(py),
            None => py.None(),
        })
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let args = self.slot.borrow_mut(py)?.callable.as_ref().map(|c| c.args.clone_ref(py));
        Ok(match args {
            Some(a) => a.to_tuple(py)?.into_any().unbind(),
            None => py.None(),
        })
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match &self.slot.borrow_mut(py)?.context {
            Some(c) => c.share(py),
            None => py.None(),
        })
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match &self.slot.borrow_mut(py)?.loop_ {
            Some(l) => l.get(py),
            None => py.None(),
        })
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Py<PyAny> {
        match &self.source_traceback {
            Some(tb) => tb.clone_ref(py),
            None => py.None(),
        }
    }

    #[getter]
    fn _repr(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match &*self.saved_repr.borrow_mut(py)? {
            Some(r) => r.clone_ref(py),
            None => py.None(),
        })
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(call_hook(slf.py(), "handle_repr", (slf,))?.unbind())
    }
}

/// A handle scheduled at an absolute loop time.
#[pyclass(module = "ferroloop", extends = Handle, frozen)]
pub struct TimerHandle {
    when: f64,
    /// `call_at`'s argument when it was not a float (an int, say): asyncio's
    /// `when()` gives back what it was given (aiohttp rounds deadlines to
    /// ints and checks for one).
    when_given: Option<Py<PyAny>>,
    scheduled: AtomicBool,
    /// The owning loop's count of cancelled timers still in its heap.
    cancelled_in_heap: Arc<AtomicUsize>,
}

impl TimerHandle {
    pub fn new(when: f64, when_given: Option<Py<PyAny>>, cancelled_in_heap: Arc<AtomicUsize>) -> Self {
        TimerHandle { when, when_given, scheduled: AtomicBool::new(true), cancelled_in_heap }
    }

    /// The deadline as Python sees it.
    fn when_object(&self, py: Python<'_>) -> Py<PyAny> {
        match &self.when_given {
            Some(given) => given.clone_ref(py),
            None => pyo3::types::PyFloat::new(py, self.when).into_any().unbind(),
        }
    }

    /// Called when the loop takes the timer out of its heap.
    pub fn unschedule(&self) {
        self.scheduled.store(false, Ordering::Relaxed);
    }

    pub fn when_(&self) -> f64 {
        self.when
    }
}

#[pymethods]
impl TimerHandle {
    fn when(&self, py: Python<'_>) -> Py<PyAny> {
        self.when_object(py)
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let base = slf.as_super();
        if !base.get().is_cancelled() && slf.get().scheduled.load(Ordering::Relaxed) {
            slf.get().cancelled_in_heap.fetch_add(1, Ordering::Relaxed);
        }
        Handle::do_cancel(base)
    }

    #[getter]
    fn _when(&self, py: Python<'_>) -> Py<PyAny> {
        self.when_object(py)
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        // Hash like asyncio's: hash(self._when).
        self.when_object(py).bind(py).hash()
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, other.get().when);
        let result = match op {
            CompareOp::Lt => a < b,
            CompareOp::Le => a < b || slf.is(other) || a == b && handles_equal(slf, other)?,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a > b || slf.is(other) || a == b && handles_equal(slf, other)?,
            CompareOp::Eq => slf.is(other) || a == b && handles_equal(slf, other)?,
            CompareOp::Ne => !(slf.is(other) || a == b && handles_equal(slf, other)?),
        };
        Ok(pyo3::types::PyBool::new(py, result).to_owned().into_any().unbind())
    }
}

/// asyncio's TimerHandle equality beyond the deadline: same callback, same
/// arguments and same cancelled state.
fn handles_equal(a: &Bound<'_, TimerHandle>, b: &Bound<'_, TimerHandle>) -> PyResult<bool> {
    let (ha, hb) = (a.as_super(), b.as_super());
    if ha.get().is_cancelled() != hb.get().is_cancelled() {
        return Ok(false);
    }
    let ca = ha.getattr("_callback")?;
    let cb = hb.getattr("_callback")?;
    if !ca.eq(&cb)? {
        return Ok(false);
    }
    ha.getattr("_args")?.eq(hb.getattr("_args")?)
}
