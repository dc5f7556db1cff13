//! `LoopCore`: the native half of `ferroloop.Loop`.
//!
//! It owns the ready queue, the timer heap and the poller, and runs asyncio's
//! `_run_once` contract in Rust:
//!
//! 1. drop cancelled timers at the head of the heap (compact when most are);
//! 2. timeout = 0 if callbacks are ready or stop() was requested, else the
//!    time to the next timer (none: wait forever);
//! 3. wait for I/O with the GIL released, queue the reader/writer handles
//!    of ready fds, run Python's signal handlers;
//! 4. queue every timer due before now + clock resolution, in (when, insertion)
//!    order;
//! 5. run exactly the callbacks queued so far; those they schedule run in the
//!    next iteration.
//!
//! Lifecycle, exception handling, executors and everything else cold lives in
//! the Python subclass (`python/ferroloop/_loop.py`).

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::Waker;
use rustc_hash::FxHashMap;
use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyTuple};
use smallvec::SmallVec;

use crate::callbacks::NativeCallback;
use crate::clock::monotonic;
use crate::future::Future;
use crate::gil_cell::GilCell;
use crate::handles::{
    new_untracked, pool_handle, take_pooled, trim_pool, CallArgs, Handle, LoopRef, TimerHandle,
};
use crate::hooks::{call_hook, repr_of};
use crate::poller::{FdInterest, Poller, Ready};
use crate::scheduler::TimerHeap;
use crate::task::Task;
use crate::transport::StreamTransport;
use crate::asyncio_api::api;
use crate::transport::io_error;

/// asyncio's cap on one wait for a timer (`MAXIMUM_SELECT_TIMEOUT`).
const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;
/// The handle pool (handles.rs) never shrinks below this; above it, it is
/// trimmed to twice the last batch, so the memory of one burst is not kept
/// for long.  Reusing handles saves an allocation and a deallocation per
/// call_soon (and, for big batches, the page faults of memory returned to
/// the OS and taken back).
const HANDLE_POOL_FLOOR: usize = 1024;
/// `time.get_clock_info('monotonic').resolution` on Linux.
const CLOCK_RESOLUTION: f64 = 1e-9;

/// What the ready queue holds.  An enum rather than only Python handles so
/// that native futures and tasks can enter it without a Python allocation.
pub enum Callback {
    Handle(Py<Handle>),
    Timer(Py<TimerHandle>),
    /// A native future's done callback or a native task's step/wakeup.
    Native(NativeCallback),
}

impl Callback {
    fn handle<'py>(&self, py: Python<'py>) -> Option<Bound<'py, Handle>> {
        match self {
            Callback::Handle(h) => Some(h.bind(py).clone()),
            Callback::Timer(t) => Some(t.bind(py).as_super().clone()),
            Callback::Native(_) => None,
        }
    }

    fn handle_ref<'a>(&'a self, py: Python<'a>) -> Option<&'a Handle> {
        match self {
            Callback::Handle(h) => Some(h.get()),
            Callback::Timer(t) => Some(t.bind(py).as_super().get()),
            Callback::Native(_) => None,
        }
    }
}

/// What a transport is owed at the next I/O dispatch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IoRetry {
    Read,
    Write,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Callback>,
    /// The previous batch's (empty) buffer, reused to avoid reallocating.
    spare: VecDeque<Callback>,
    timers: TimerHeap<Py<TimerHandle>>,
    readers: FxHashMap<RawFd, Py<Handle>>,
    writers: FxHashMap<RawFd, Py<Handle>>,
    /// The object each watched fd was last registered through (what
    /// selectors keeps as `key.fileobj`): a socket closed since has no
    /// fileno, and is found here by identity to remove its handlers.
    fileobjs: FxHashMap<RawFd, Py<PyAny>>,
    /// Native transports by fd (registered edge-triggered with the poller):
    /// one, or a read pipe and a write pipe sharing the fd (a pty master).
    transports: FxHashMap<RawFd, SmallVec<[Py<StreamTransport>; 1]>>,
    /// Transports owed a read attempt at the next I/O dispatch (reading
    /// started or resumed -- an edge may have passed meanwhile -- or a read
    /// cut short to let other callbacks run), or a write attempt (a
    /// datagram's send failed with data still queued).
    io_retry: Vec<(Py<StreamTransport>, IoRetry)>,
    io_events: Vec<Ready>,
}

impl State {
    /// The loop is letting go of every handle it holds without running
    /// them: those held elsewhere too become visible to the garbage
    /// collector (see `Handle::expose_unrun_to_gc`).
    fn expose_handles_to_gc(&self, py: Python<'_>) -> PyResult<()> {
        // Borrowed, not cloned: the check counts the references held
        // besides the loop's.
        for cb in self.ready.iter() {
            match cb {
                Callback::Handle(h) => Handle::expose_unrun_to_gc(h.bind(py))?,
                Callback::Timer(t) => Handle::expose_unrun_to_gc(t.bind(py).as_super())?,
                // A task that never ran still has its context off the list.
                Callback::Native(NativeCallback::Step { task, .. }) => task.get().expose_context_to_gc(py)?,
                Callback::Native(_) => {}
            }
        }
        for t in self.timers.iter() {
            Handle::expose_unrun_to_gc(t.bind(py).as_super())?;
        }
        for h in self.readers.values().chain(self.writers.values()) {
            Handle::expose_unrun_to_gc(h.bind(py))?;
        }
        Ok(())
    }

    fn interest(&self, fd: RawFd) -> FdInterest {
        FdInterest { read: self.readers.contains_key(&fd), write: self.writers.contains_key(&fd) }
    }

    /// Keep `fileobj` as the fd's registering object while it is watched.
    fn note_fileobj(&mut self, fd: RawFd, fileobj: &Bound<'_, PyAny>) -> Option<Py<PyAny>> {
        let interest = self.interest(fd);
        if interest.read || interest.write {
            self.fileobjs.insert(fd, fileobj.clone().unbind())
        } else {
            self.fileobjs.remove(&fd)
        }
    }
}

#[pyclass(module = "ferroloop._ferroloop", subclass, frozen)]
pub struct LoopCore {
    state: GilCell<State>,
    poller: GilCell<Option<Poller>>,
    waker: GilCell<Option<Waker>>,
    closed: AtomicBool,
    stopping: AtomicBool,
    debug: AtomicBool,
    /// `threading.get_ident()` of the thread running the loop, 0 when idle.
    thread_id: AtomicU64,
    /// Set while the loop waits in the poller, so call_soon_threadsafe knows
    /// whether it must wake it.
    sleeping: AtomicBool,
    /// True while asyncio-style signal handlers are installed: their signal
    /// numbers arrive through the poller's wake-up pipe.
    watching_signals: AtomicBool,
    /// Cancelled timers still in the heap; shared with every TimerHandle.
    cancelled_timers: Arc<AtomicUsize>,
    /// A weak reference to this loop, shared by all its handles.
    self_ref: std::sync::OnceLock<LoopRef>,
    /// create_future()/create_task() make ferroloop's native Future and
    /// Task (else asyncio's own classes).
    native_futures: AtomicBool,
    /// `loop._task_factory` (BaseEventLoop's set/get_task_factory use it).
    task_factory: GilCell<Option<Py<PyAny>>>,
    /// Whether native futures may queue their callbacks directly (0: not
    /// known yet, 1: yes, 2: no -- the loop's class overrides call_soon).
    native_callbacks: std::sync::atomic::AtomicU8,
    /// `time` was replaced: ask `self.time()` (see `now`).
    custom_clock: AtomicBool,
}

fn current_thread_ident() -> u64 {
    // SAFETY: pthread_self has no preconditions; it is what
    // threading.get_ident() returns on Linux.
    unsafe { libc::pthread_self() as u64 }
}

/// selectors' `_fileobj_to_fd`: an int, or an object with fileno().
fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let as_int = if obj.is_instance_of::<PyInt>() {
        obj.clone()
    } else {
        let invalid = || PyValueError::new_err(format!("Invalid file object: {}", repr_of(obj)));
        let raw = obj.call_method0("fileno").map_err(|_| invalid())?;
        obj.py().get_type::<PyInt>().call1((raw,)).map_err(|_| invalid())?
    };
    if as_int.lt(0)? {
        return Err(PyValueError::new_err(format!("Invalid file descriptor: {as_int}")));
    }
    // selectors passes the fd on to epoll, which takes a C int.
    as_int.extract::<RawFd>().map_err(|_| PyOverflowError::new_err("Python int too large to convert to C int"))
}


fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

impl LoopCore {
    /// Schedule a coroutine as a Task.  The common case (native tasks, no
    /// task factory, not debug mode) is handled here; everything else by
    /// the Python `_create_task_py`, which passes further keywords
    /// (eager_start...) on to the Task or the task factory.
    ///
    /// `loop.create_task(coro, *, name=None, context=None, **kwargs)`,
    /// installed by slots.rs as a METH_FASTCALL method: declared through
    /// pyo3 with `**kwargs`, it would be METH_VARARGS, a tuple and a keyword
    /// dict per call (TaskGroup passes `name=`).
    pub fn create_task_impl(
        slf: &Bound<'_, Self>,
        coro: Bound<'_, PyAny>,
        name: Option<Bound<'_, PyAny>>,
        context: Option<Py<PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let plain_kwargs = kwargs.is_none_or(|k| k.is_empty());
        if !plain_kwargs && py.version_info() < (3, 13, 3) {
            // Further keywords reach the Task or the task factory from
            // CPython 3.13.3 on; before, create_task takes name and context.
            if let Some(key) = kwargs.and_then(|k| k.keys().iter().next()) {
                return Err(PyTypeError::new_err(format!(
                    "create_task() got an unexpected keyword argument '{key}'"
                )));
            }
        }
        let name = name.filter(|n| !n.is_none());
        let factory = this.task_factory.borrow_mut(py)?.as_ref().map(|f| f.clone_ref(py).into_bound(py));
        if plain_kwargs && !this.is_debug() {
            let native = this.native_futures.load(Ordering::Relaxed);
            match factory {
                None if native => {
                    return Ok(Task::create(py, slf.clone().into_any(), coro, name, context, None)?.into_any());
                }
                // A factory's task is named once it is made, as asyncio
                // names it (so after an eager task's first step).
                Some(f) => {
                    let task = if native && Self::is_asyncio_eager_factory(py, &f)? {
                        // asyncio.eager_task_factory: a native eager task,
                        // without the factory's Python frame and keyword dicts.
                        Task::create(py, slf.clone().into_any(), coro, None, context, Some(true))?.into_bound(py).into_any()
                    } else {
                        // Any other factory, called as asyncio's create_task calls it.
                        match context.filter(|c| !c.is_none(py)) {
                            None => f.call1((slf, coro))?,
                            Some(c) => {
                                let kw = PyDict::new(py);
                                kw.set_item(intern!(py, "context"), c)?;
                                f.call((slf, coro), Some(&kw))?
                            }
                        }
                    };
                    if let Some(name) = name {
                        match task.getattr_opt(intern!(py, "set_name"))? {
                            Some(set_name) => drop(set_name.call1((name,))?),
                            // 3.11/3.12 only warn about a task without it.
                            None if py.version_info() < (3, 13) => PyErr::warn(
                                py,
                                &py.get_type::<pyo3::exceptions::PyDeprecationWarning>(),
                                c"Task.set_name() was added in Python 3.8, the method support will be mandatory \
                                  for third-party task implementations since 3.13.",
                                1,
                            )?,
                            None => drop(task.getattr(intern!(py, "set_name"))?),
                        }
                    }
                    return Ok(task.unbind());
                }
                None => {}
            }
        }
        let all = PyDict::new(py);
        if let Some(k) = kwargs {
            all.update(k.as_mapping())?;
        }
        all.set_item(intern!(py, "name"), name)?;
        all.set_item(intern!(py, "context"), context)?;
        Ok(slf.call_method(intern!(py, "_create_task_py"), (coro,), Some(&all))?.unbind())
    }

    #[inline]
    pub fn is_debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    /// Whether native futures of this loop may put their callbacks straight
    /// into the ready queue: yes unless a subclass overrides `call_soon` or
    /// it is replaced on the instance (`_route_callbacks_through_call_soon`),
    /// since asyncio's futures would call it (the class is checked once).
    pub fn accepts_native_callbacks(slf: &Bound<'_, Self>) -> bool {
        let this = slf.get();
        match this.native_callbacks.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                let py = slf.py();
                let name = intern!(py, "call_soon");
                let ours = py.get_type::<LoopCore>().getattr(name);
                let theirs = slf.get_type().getattr(name);
                // The class's own copy of our descriptor (slots.rs gives
                // ferroloop.Loop one) is still ours.
                let same = matches!((ours, theirs), (Ok(a), Ok(b)) if crate::slots::same_native_method(&a, &b));
                this.native_callbacks.store(if same { 1 } else { 2 }, Ordering::Relaxed);
                same
            }
        }
    }

    /// Queue a native future/task callback, as `call_soon` would a handle.
    /// In debug mode, or once `call_soon` was replaced (see
    /// `accepts_native_callbacks`), the callback is handed back: it must go
    /// through `call_soon` (in debug mode, for a Handle with its traceback
    /// and timing).
    #[inline]
    pub fn push_native(slf: &Bound<'_, Self>, cb: NativeCallback) -> PyResult<Option<NativeCallback>> {
        let this = slf.get();
        this.check_closed()?;
        if this.is_debug() || !Self::accepts_native_callbacks(slf) {
            return Ok(Some(cb));
        }
        this.state.borrow_mut(slf.py())?.ready.push_back(Callback::Native(cb));
        Ok(None)
    }

    /// `call_soon` (and, with `threadsafe`, `call_soon_threadsafe`).  The
    /// Python methods are raw vectorcall functions (slots.rs) that parse the
    /// arguments and call this: a single argument then needs no tuple.
    pub fn schedule_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: CallArgs,
        context: Option<Py<PyAny>>,
        threadsafe: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        if threadsafe {
            this.check_callback(py, &callback, "call_soon_threadsafe")?;
        } else {
            if this.debug.load(Ordering::Relaxed) {
                this.check_thread()?;
            }
            this.check_callback(py, &callback, "call_soon")?;
        }
        let handle = Self::oneshot_handle(slf, callback, args, context)?;
        // For threadsafe: every thread holds the GIL here, so the push
        // cannot race with the loop thread deciding to sleep: it either sees
        // this callback when it computes its timeout, or it is already asleep
        // and we wake it.
        this.state.borrow_mut(py)?.ready.push_back(Callback::Handle(handle.clone_ref(py)));
        // The plain load keeps the common case (loop awake) free of a locked
        // instruction; the GIL orders it against the loop thread's store.
        if threadsafe && this.sleeping.load(Ordering::Relaxed) && this.sleeping.swap(false, Ordering::SeqCst) {
            this.wake(py)?;
        }
        Ok(handle)
    }

    #[inline]
    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(closed_error());
        }
        Ok(())
    }

    /// asyncio's argument checks.  The full check (coroutine functions too)
    /// costs a Python call, so like asyncio it runs in debug mode only; a
    /// non-callable is rejected always since it can never run.
    fn check_callback(&self, py: Python<'_>, callback: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
        if self.debug.load(Ordering::Relaxed) || !callback.is_callable() {
            call_hook(py, "check_callback", (callback, method))?;
        }
        Ok(())
    }

    /// asyncio's `_check_thread`, for debug mode.
    fn check_thread(&self) -> PyResult<()> {
        let owner = self.thread_id.load(Ordering::Relaxed);
        if owner != 0 && owner != current_thread_ident() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// The weak reference to this loop that its handles share (made on
    /// first use: the Python object must exist first).
    #[inline]
    fn loop_ref(slf: &Bound<'_, Self>) -> PyResult<LoopRef> {
        let py = slf.py();
        if let Some(r) = slf.get().self_ref.get() {
            return Ok(r.clone_ref(py));
        }
        // Made outside the cell: creating the weak reference can run the GC
        // and so Python code, which may call back into this loop (or let
        // another thread do so) -- get_or_init would deadlock then.
        let fresh = LoopRef::new(slf.as_any());
        let _ = slf.get().self_ref.set(fresh.clone_ref(py));
        Ok(slf.get().self_ref.get().map_or(fresh, |r| r.clone_ref(py)))
    }

    fn new_handle(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: CallArgs,
        context: Option<Py<PyAny>>,
        oneshot: bool,
    ) -> PyResult<Handle> {
        Handle::create(
            slf.py(),
            callback.unbind(),
            args,
            Self::loop_ref(slf)?,
            context,
            slf.get().debug.load(Ordering::Relaxed),
            oneshot,
        )
    }

    /// A handle for call_soon: a pooled one refilled, or a new one.
    #[inline]
    fn oneshot_handle(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: CallArgs,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        if !this.debug.load(Ordering::Relaxed) {
            if let Some(handle) = take_pooled(py)? {
                let loop_ref = Self::loop_ref(slf)?;
                handle.get().reuse(py, callback.unbind(), args, loop_ref, context)?;
                return Ok(handle);
            }
        }
        new_untracked(py, Self::new_handle(slf, callback, args, context, true)?)
    }

    /// After a callback ran: keep its handle for reuse when nobody else can
    /// see it, else let it go.
    #[inline]
    fn retire(py: Python<'_>, cb: Callback) -> PyResult<()> {
        match cb {
            Callback::Handle(handle) if Handle::can_recycle(&handle, py) => {
                let emptied = handle.get().recycle(py)?;
                let unkept = pool_handle(py, handle)?;
                drop(emptied);
                drop(unkept);
            }
            Callback::Handle(handle) => Handle::expose_to_gc(handle.bind(py))?,
            Callback::Timer(timer) => Handle::expose_to_gc(timer.bind(py).as_super())?,
            Callback::Native(_) => {}
        }
        Ok(())
    }

    /// A timer at `when`, a loop-clock reading: a float, or any number
    /// (kept as given for `TimerHandle.when()`, as asyncio keeps it).
    fn schedule_at(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
        method: &'static str,
    ) -> PyResult<Py<TimerHandle>> {
        let (deadline, given) = match when.cast_exact::<PyFloat>() {
            Ok(f) => (f.value(), None),
            Err(_) => (when.extract::<f64>()?, Some(when.clone().unbind())),
        };
        Self::schedule_timer(slf, deadline, given, callback, args, context, method)
    }

    fn schedule_timer(
        slf: &Bound<'_, Self>,
        when: f64,
        when_given: Option<Py<PyAny>>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
        method: &str,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        if this.debug.load(Ordering::Relaxed) {
            this.check_thread()?;
        }
        this.check_callback(py, &callback, method)?;
        let base = Self::new_handle(slf, callback, CallArgs::from_tuple(args)?, context, true)?;
        let timer = new_untracked(
            py,
            PyClassInitializer::from(base)
                .add_subclass(TimerHandle::new(when, when_given, this.cancelled_timers.clone())),
        )?;
        // NaN never compares due in a heap; asyncio's heapq ends up running
        // such a timer at once, so order it first.
        let key = if when.is_nan() { f64::NEG_INFINITY } else { when };
        this.state.borrow_mut(py)?.timers.push(key, timer.clone_ref(py));
        Ok(timer)
    }

    /// Whether `factory` is `asyncio.eager_task_factory` itself.
    fn is_asyncio_eager_factory(py: Python<'_>, factory: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(api(py)?.eager_task_factory.as_ref().is_some_and(|f| factory.is(f.bind(py))))
    }

    /// The current loop time: `monotonic()`, or `self.time()` once `time`
    /// was replaced (see `_custom_clock`).
    fn now(slf: &Bound<'_, Self>) -> PyResult<f64> {
        if slf.get().custom_clock.load(Ordering::Relaxed) {
            slf.call_method0(intern!(slf.py(), "time"))?.extract()
        } else {
            Ok(monotonic())
        }
    }

    /// `now()` if the clock was replaced, else None (and `monotonic()` is read
    /// later, where needed): lets the run loop read a Python clock before
    /// borrowing its state.
    fn custom_now(slf: &Bound<'_, Self>) -> PyResult<Option<f64>> {
        if slf.get().custom_clock.load(Ordering::Relaxed) {
            Self::now(slf).map(Some)
        } else {
            Ok(None)
        }
    }

    /// One iteration of the loop (see the module docs).
    fn run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();

        // 1 and 2: drop cancelled timers, decide how long to wait.  (With
        // no timers, nothing is allocated or dropped for them: this runs for
        // every callback of a call_soon chain.)
        let mut removed: Option<Vec<Py<TimerHandle>>> = None;
        let custom_now = Self::custom_now(slf)?;
        let timeout = {
            let mut st = this.state.borrow_mut(py)?;
            if !st.timers.is_empty() {
                let cancelled = this.cancelled_timers.load(Ordering::Relaxed);
                let pruned = removed.get_or_insert_with(Vec::new);
                let n = st.timers.prune(
                    cancelled,
                    |t| t.bind(py).as_super().get().is_cancelled(),
                    pruned,
                );
                if n > 0 {
                    this.cancelled_timers.fetch_sub(n.min(cancelled), Ordering::Relaxed);
                }
            }
            if !st.ready.is_empty() || !st.io_retry.is_empty() || this.stopping.load(Ordering::Relaxed) {
                Some(Duration::ZERO)
            } else if let Some(when) = st.timers.next_deadline() {
                let now = custom_now.unwrap_or_else(monotonic);
                let secs = (when - now).clamp(0.0, MAXIMUM_SELECT_TIMEOUT);
                Some(Duration::from_secs_f64(secs))
            } else {
                None
            }
        };
        if let Some(pruned) = removed.as_mut() {
            for t in pruned.drain(..) {
                t.get().unschedule();
                drop(t);
            }
        }

        // 3: wait for I/O without the GIL.  A zero-timeout wait on a loop
        // that watches no fd and no signal can report nothing, so it is
        // skipped: chains of callbacks then cost no syscall per iteration.
        let must_wait = timeout != Some(Duration::ZERO)
            || this.watching_signals.load(Ordering::Relaxed)
            || this.poller.borrow_mut(py)?.as_ref().is_some_and(|p| p.has_registrations());
        let mut signals_pending = false;
        if must_wait {
            let mut events = std::mem::take(&mut this.state.borrow_mut(py)?.io_events);
            {
                let mut guard = this.poller.borrow_mut(py)?;
                let poller = guard.as_mut().ok_or_else(closed_error)?;
                if timeout == Some(Duration::ZERO) {
                    // Does not block: no need to release the GIL.
                    poller.wait(timeout, &mut events).map_err(|e| io_error(py, e))?;
                } else {
                    this.sleeping.store(true, Ordering::SeqCst);
                    let waited = py.detach(|| poller.wait(timeout, &mut events));
                    this.sleeping.store(false, Ordering::SeqCst);
                    waited.map_err(|e| io_error(py, e))?;
                }
            }
            let mut st = this.state.borrow_mut(py)?;
            let st = &mut *st;
            for ev in events.drain(..) {
                match ev {
                    Ready::Wake => {}
                    Ready::Signal => signals_pending = true,
                    Ready::Fd { fd, readable, writable } => {
                        let handlers = [(readable, &st.readers), (writable, &st.writers)];
                        for (ready, map) in handlers {
                            if let Some(h) = map.get(&fd).filter(|_| ready) {
                                if !h.get().is_cancelled() {
                                    st.ready.push_back(Callback::Handle(h.clone_ref(py)));
                                }
                            }
                        }
                    }
                    Ready::Edge { fd, readable, writable, closed } => {
                        for t in st.transports.get(&fd).into_iter().flatten() {
                            // Only what asyncio's selector would report now:
                            // reads if a reader is registered, writes if
                            // data waits (else nothing to run at all).
                            let (reading, writing) = t.get().watching(py);
                            let (readable, writable) = (readable && reading, writable && writing);
                            if readable || writable {
                                let transport = t.clone_ref(py);
                                let cb = NativeCallback::Io { transport, readable, writable, drain: closed };
                                st.ready.push_back(Callback::Native(cb));
                            }
                        }
                    }
                }
            }
            st.io_events = events;
        }
        {
            // Read retries join the I/O callbacks, in the order asked for.
            let mut st = this.state.borrow_mut(py)?;
            if !st.io_retry.is_empty() {
                let st = &mut *st;
                for (transport, retry) in st.io_retry.drain(..) {
                    st.ready.push_back(Callback::Native(NativeCallback::Io {
                        transport,
                        readable: retry == IoRetry::Read,
                        writable: retry == IoRetry::Write,
                        drain: true,
                    }));
                }
            }
        }
        if signals_pending {
            let mut signums: SmallVec<[u8; 8]> = SmallVec::new();
            if let Some(poller) = this.poller.borrow_mut(py)?.as_ref() {
                poller.drain_signals(&mut signums);
            }
            for signum in signums {
                slf.call_method1("_handle_signal", (signum,))?;
            }
        }
        // Python-level handlers (KeyboardInterrupt for Ctrl-C) run here, so a
        // signal that woke us takes effect at once.  Without a wait, the
        // callbacks' own Python code checks for signals, as any Python code.
        if must_wait {
            py.check_signals()?;
        }

        // 4: timers that are due join the ready queue; 5 starts by taking
        // the whole queue as this iteration's batch.
        let due_now = Self::custom_now(slf)?;
        let mut batch = {
            let mut st = this.state.borrow_mut(py)?;
            let st = &mut *st;
            if !st.timers.is_empty() {
                let end = due_now.unwrap_or_else(monotonic) + CLOCK_RESOLUTION;
                while let Some(timer) = st.timers.pop_due(end) {
                    timer.get().unschedule();
                    if timer.bind(py).as_super().get().is_cancelled() {
                        this.cancelled_timers.fetch_sub(1, Ordering::Relaxed);
                        removed.get_or_insert_with(Vec::new).push(timer);
                    } else {
                        st.ready.push_back(Callback::Timer(timer));
                    }
                }
            }
            let spare = std::mem::take(&mut st.spare);
            std::mem::replace(&mut st.ready, spare)
        };
        drop(removed);

        // 5: run what is ready now.
        let batch_len = batch.len();
        let debug = this.debug.load(Ordering::Relaxed);
        while let Some(cb) = batch.pop_front() {
            let outcome = match &cb {
                Callback::Native(native) => native.run(py, slf.as_any()),
                _ if debug => Self::run_debug(slf, &cb),
                _ => Self::run_callback(py, &cb),
            };
            let released = match cb.handle_ref(py) {
                Some(h) => h.release_after_run(py),
                None => Ok(()),
            };
            let retired = Self::retire(py, cb);
            let outcome = outcome.and(released).and(retired);
            if let Err(err) = outcome {
                // Leave the rest of the batch to run next time, as asyncio does.
                let mut st = this.state.borrow_mut(py)?;
                while let Some(rest) = batch.pop_back() {
                    st.ready.push_front(rest);
                }
                return Err(err);
            }
        }
        let emptied = std::mem::replace(&mut this.state.borrow_mut(py)?.spare, batch);
        if emptied.capacity() == 0 {
            // The default VecDeque taken at step 4 owns no memory: skip its
            // (out-of-line) drop glue, run once per iteration.
            std::mem::forget(emptied);
        }
        let trimmed = trim_pool(py, HANDLE_POOL_FLOOR.max(2 * batch_len))?;
        drop(trimmed);
        Ok(())
    }

    /// Run one callback; errors other than SystemExit/KeyboardInterrupt go
    /// to the exception handler (asyncio's `Handle._run`).
    #[inline]
    fn run_callback(py: Python<'_>, cb: &Callback) -> PyResult<()> {
        match cb {
            Callback::Handle(h) => h.get().run_reporting(py, || h.bind(py).clone()),
            Callback::Timer(t) => {
                let base = t.bind(py).as_super();
                base.get().run_reporting(py, || base.clone())
            }
            Callback::Native(_) => Ok(()),
        }
    }

    /// Debug mode: expose the running handle as `_current_handle` and warn
    /// about callbacks slower than `slow_callback_duration`, as asyncio does.
    /// Done here rather than in a Python method so that no Python frame
    /// holding the handle sits under the callback: frames kept alive by a
    /// traceback would otherwise tie the (GC-untracked) handle into a cycle.
    fn run_debug(slf: &Bound<'_, Self>, cb: &Callback) -> PyResult<()> {
        let py = slf.py();
        let Some(handle) = cb.handle(py) else {
            return Ok(());
        };
        slf.setattr(intern!(py, "_current_handle"), &handle)?;
        let t0 = Self::now(slf)?;
        let outcome = Self::run_callback(py, cb);
        let dt = Self::now(slf)? - t0;
        slf.setattr(intern!(py, "_current_handle"), py.None())?;
        outcome?;
        let slow: f64 = slf.getattr(intern!(py, "slow_callback_duration"))?.extract()?;
        if dt >= slow {
            call_hook(py, "warn_slow_callback", (handle, dt))?;
        }
        Ok(())
    }

    fn set_fd_handler(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        writer: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let fileobj = fd;
        let fd = fileobj_to_fd(fileobj)?;
        if fileobj.is_instance_of::<pyo3::types::PyBool>() && py.version_info() >= (3, 13) {
            // What 3.13's epoll.register() says of it (selectors passes it on).
            PyErr::warn(py, &py.get_type::<pyo3::exceptions::PyRuntimeWarning>(), c"bool is used as a file descriptor", 1)?;
        }
        let handle = new_untracked(py, Self::new_handle(slf, callback, CallArgs::from_tuple(args)?, None, false)?)?;
        let (old, interest, old_fileobj) = {
            let mut st = this.state.borrow_mut(py)?;
            let map = if writer { &mut st.writers } else { &mut st.readers };
            let old = map.insert(fd, handle.clone_ref(py));
            let old_fileobj = st.note_fileobj(fd, fileobj);
            (old, st.interest(fd), old_fileobj)
        };
        drop(old_fileobj);
        let registered = match this.poller.borrow_mut(py)?.as_mut() {
            Some(p) => p.set_interest(fd, interest).map_err(|e| io_error(py, e)),
            None => Err(closed_error()),
        };
        if let Err(err) = registered {
            let undone = {
                let mut st = this.state.borrow_mut(py)?;
                let map = if writer { &mut st.writers } else { &mut st.readers };
                let handle = map.remove(&fd);
                (handle, st.note_fileobj(fd, fileobj))
            };
            drop(undone);
            if let Some(old) = old {
                old.bind(py).call_method0("cancel")?;
            }
            return Err(err);
        }
        if let Some(old) = old {
            old.bind(py).call_method0("cancel")?;
        }
        Ok(handle)
    }

    /// selectors' `_fileobj_lookup`: the object's fd or, when it has none
    /// (a socket closed since), the fd it was registered under, found by
    /// identity; else the ValueError.
    fn lookup_fd(slf: &Bound<'_, Self>, fileobj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
        let py = slf.py();
        match fileobj_to_fd(fileobj) {
            Ok(fd) => Ok(fd),
            Err(err) if err.is_instance_of::<PyValueError>(py) => {
                let st = slf.get().state.borrow_mut(py)?;
                st.fileobjs.iter().find(|(_, obj)| obj.is(fileobj)).map(|(fd, _)| *fd).ok_or(err)
            }
            Err(err) => Err(err),
        }
    }

    fn clear_fd_handler(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>, writer: bool) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if this.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let fileobj = fd;
        let fd = match Self::lookup_fd(slf, fileobj) {
            Ok(fd) => fd,
            // Beyond a C int: never registered (asyncio's selector lookup
            // finds no key and the answer is False).
            Err(err) if err.is_instance_of::<PyOverflowError>(py) => return Ok(false),
            Err(err) => return Err(err),
        };
        let (old, interest, old_fileobj) = {
            let mut st = this.state.borrow_mut(py)?;
            let map = if writer { &mut st.writers } else { &mut st.readers };
            let old = map.remove(&fd);
            let old_fileobj = if old.is_some() { st.note_fileobj(fd, fileobj) } else { None };
            (old, st.interest(fd), old_fileobj)
        };
        drop(old_fileobj);
        let Some(old) = old else {
            return Ok(false);
        };
        if let Some(p) = this.poller.borrow_mut(py)?.as_mut() {
            p.set_interest(fd, interest).map_err(|e| io_error(py, e))?;
        }
        old.bind(py).call_method0("cancel")?;
        Ok(true)
    }

    /// Watch a native transport's fd; its readiness reaches
    /// `StreamTransport::on_io` through the ready queue.
    pub fn watch_transport(slf: &Bound<'_, Self>, fd: RawFd, transport: Py<StreamTransport>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        // A read pipe and a write pipe may share an fd; anything else on it
        // is left over from a closed fd whose number was reused.
        let join = {
            let st = this.state.borrow_mut(py)?;
            st.transports
                .get(&fd)
                .is_some_and(|list| list.iter().all(|t| t.get().may_share_fd_with(py, transport.get())))
        };
        if join {
            if let Some(list) = this.state.borrow_mut(py)?.transports.get_mut(&fd) {
                list.push(transport);
            }
            return Ok(());
        }
        match this.poller.borrow_mut(py)?.as_mut() {
            Some(p) => p.register_edge(fd).map_err(|e| io_error(py, e))?,
            None => return Err(closed_error()),
        }
        // The transport owns the fd now: stale readers/writers on it (a
        // sock_* call on a socket closed since) must not unregister it later.
        let (old, reader, writer) = {
            let mut st = this.state.borrow_mut(py)?;
            let old = st.transports.insert(fd, smallvec::smallvec![transport]);
            let old_fileobj = st.fileobjs.remove(&fd);
            ((old, old_fileobj), st.readers.remove(&fd), st.writers.remove(&fd))
        };
        drop(old);
        for handle in [reader, writer].into_iter().flatten() {
            handle.bind(py).call_method0("cancel")?;
        }
        Ok(())
    }

    /// Stop watching `fd` for the transport at `owner` (a transport that
    /// took the same fd number since is left alone).
    pub fn unwatch_transport(slf: &Bound<'_, Self>, fd: RawFd, owner: *mut pyo3::ffi::PyObject) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (removed, last) = {
            let mut st = this.state.borrow_mut(py)?;
            let Some(list) = st.transports.get_mut(&fd) else {
                return Ok(());
            };
            let Some(i) = list.iter().position(|t| t.as_ptr() == owner) else {
                return Ok(());
            };
            let removed = list.remove(i);
            let last = list.is_empty();
            if last {
                st.transports.remove(&fd);
            }
            (removed, last)
        };
        if last {
            if let Some(p) = this.poller.borrow_mut(py)?.as_mut() {
                p.deregister_edge(fd).map_err(|e| io_error(py, e))?;
            }
        }
        drop(removed);
        Ok(())
    }

    /// Give `transport` a read attempt at the next I/O dispatch.
    pub fn retry_io(slf: &Bound<'_, Self>, transport: Py<StreamTransport>) -> PyResult<()> {
        Self::retry(slf, transport, IoRetry::Read)
    }

    /// Give `transport` a write attempt at the next I/O dispatch (the fd
    /// is writable already, so no edge would report it).
    pub fn retry_write(slf: &Bound<'_, Self>, transport: Py<StreamTransport>) -> PyResult<()> {
        Self::retry(slf, transport, IoRetry::Write)
    }

    fn retry(slf: &Bound<'_, Self>, transport: Py<StreamTransport>, retry: IoRetry) -> PyResult<()> {
        let this = slf.get();
        if this.closed.load(Ordering::Relaxed) {
            return Ok(());
        }
        this.state.borrow_mut(slf.py())?.io_retry.push((transport, retry));
        Ok(())
    }

    fn wake(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(w) = self.waker.borrow_mut(py)?.as_ref() {
            // A failed wake (eventfd counter full) means a wake is pending anyway.
            let _ = w.wake();
        }
        Ok(())
    }
}

/// An fd's reader and writer handles, each None when not watched.
type FdHandlers = (Option<Py<Handle>>, Option<Py<Handle>>);

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let (poller, waker) = Poller::new().map_err(|e| io_error(_args.py(), e))?;
        Ok(LoopCore {
            state: GilCell::new(State::default()),
            poller: GilCell::new(Some(poller)),
            waker: GilCell::new(Some(waker)),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            thread_id: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            watching_signals: AtomicBool::new(false),
            cancelled_timers: Arc::new(AtomicUsize::new(0)),
            self_ref: std::sync::OnceLock::new(),
            native_futures: AtomicBool::new(true),
            task_factory: GilCell::new(None),
            native_callbacks: std::sync::atomic::AtomicU8::new(0),
            custom_clock: AtomicBool::new(false),
        })
    }

    /// The loop's clock, the same as `time.monotonic()`.
    fn time(&self) -> f64 {
        monotonic()
    }

    /// Whether `time` was replaced (on the instance, or by a subclass):
    /// then the scheduler asks `self.time()` for the current time, as
    /// asyncio's does, so that a patched clock decides which timers are due.
    #[getter(_custom_clock)]
    fn custom_clock_attr(&self) -> bool {
        self.custom_clock.load(Ordering::Relaxed)
    }

    #[setter(_custom_clock)]
    fn set_custom_clock_attr(&self, value: bool) {
        self.custom_clock.store(value, Ordering::Relaxed);
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let now = Self::now(slf)?;
        if let Ok(f) = delay.cast_exact::<PyFloat>() {
            return Self::schedule_timer(slf, now + f.value(), None, callback, args, context, "call_later");
        }
        if let Ok(i) = delay.cast_exact::<PyInt>() {
            let delay: f64 = i.extract()?;
            return Self::schedule_timer(slf, now + delay, None, callback, args, context, "call_later");
        }
        // Anything else is added as asyncio adds it (`self.time() + delay`):
        // a Fraction or a numpy number works, a Decimal or a str raises
        // that addition's TypeError.
        let when = PyFloat::new(slf.py(), now).add(delay)?;
        Self::schedule_at(slf, &when, callback, args, context, "call_later")
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        Self::schedule_at(slf, when, callback, args, context, "call_at")
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::set_fd_handler(slf, fd, callback, args, false)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::set_fd_handler(slf, fd, callback, args, true)
    }

    /// Accept a connection on the listening socket `fd` (watched by a
    /// reader): `(conn_fd, address)`, the descriptor already non-blocking.
    /// BlockingIOError when none is waiting; the listener then needs no
    /// re-arm, its next connection is a new edge.
    fn _accept_connection_fd(slf: &Bound<'_, Self>, fd: RawFd) -> PyResult<(RawFd, Py<PyAny>)> {
        let py = slf.py();
        match crate::transport::accept_connection(py, fd)? {
            Some(accepted) => Ok(accepted),
            None => {
                if let Some(poller) = slf.get().poller.borrow_mut(py)?.as_mut() {
                    poller.read_drained(fd);
                }
                Err(crate::transport::os_error(py, libc::EAGAIN))
            }
        }
    }

    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::clear_fd_handler(slf, fd, false)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::clear_fd_handler(slf, fd, true)
    }

    /// Whether native futures' callbacks skip `call_soon` on this loop
    /// (see `accepts_native_callbacks`; for tests).
    fn _native_callbacks_enabled(slf: &Bound<'_, Self>) -> bool {
        Self::accepts_native_callbacks(slf)
    }

    /// The fd `fileobj` is registered under (see `lookup_fd`), for the
    /// selector view's `get_key`.
    fn _lookup_fd(slf: &Bound<'_, Self>, fileobj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
        Self::lookup_fd(slf, fileobj)
    }

    /// (reader handle or None, writer handle or None) for `fd`, for the
    /// selector view that asyncio's transports use in their repr.
    fn _fd_handlers(&self, py: Python<'_>, fd: RawFd) -> PyResult<FdHandlers> {
        let st = self.state.borrow_mut(py)?;
        Ok((
            st.readers.get(&fd).map(|h| h.clone_ref(py)),
            st.writers.get(&fd).map(|h| h.clone_ref(py)),
        ))
    }

    /// Every fd with a reader or writer.
    fn _fds(&self, py: Python<'_>) -> PyResult<Vec<RawFd>> {
        let st = self.state.borrow_mut(py)?;
        let mut fds: Vec<RawFd> = st.readers.keys().chain(st.writers.keys()).copied().collect();
        fds.sort_unstable();
        fds.dedup();
        Ok(fds)
    }

    /// Queue an existing handle (signal handlers), waking the loop if needed.
    fn _queue_handle(&self, py: Python<'_>, handle: Py<Handle>) -> PyResult<()> {
        self.state.borrow_mut(py)?.ready.push_back(Callback::Handle(handle));
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.wake(py)?;
        }
        Ok(())
    }

    /// Wake the loop if it is waiting for I/O (asyncio's `_write_to_self`).
    fn _write_to_self(&self, py: Python<'_>) -> PyResult<()> {
        self.wake(py)
    }

    /// The fd CPython's signal handler should write to (`signal.set_wakeup_fd`).
    fn _signal_wakeup_fd(&self, py: Python<'_>) -> PyResult<RawFd> {
        Ok(self.poller.borrow_mut(py)?.as_ref().map_or(-1, |p| p.signal_wakeup_fd()))
    }

    /// Tell the loop whether signal handlers are installed (see
    /// `watching_signals`).
    fn _watch_signals(&self, on: bool) {
        self.watching_signals.store(on, Ordering::Relaxed);
    }

    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::run_once(slf)
    }

    /// The body of run_forever: iterate until stop() is called.  The Python
    /// side does the setup and the cleanup around it.
    fn _run_forever_native(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let result = loop {
            if let Err(e) = Self::run_once(slf) {
                break Err(e);
            }
            if this.stopping.load(Ordering::Relaxed) {
                break Ok(());
            }
        };
        this.stopping.store(false, Ordering::Relaxed);
        result
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn is_running(&self) -> bool {
        self.thread_id.load(Ordering::Relaxed) != 0
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn get_debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    /// Drop every queued callback, timer and fd registration and close the
    /// poller's descriptors.  The Python close() calls this last.
    fn _close_native(&self, py: Python<'_>) -> PyResult<()> {
        self.closed.store(true, Ordering::Relaxed);
        let dropped = {
            let mut st = self.state.borrow_mut(py)?;
            std::mem::take(&mut *st)
        };
        let poller = self.poller.borrow_mut(py)?.take();
        let waker = self.waker.borrow_mut(py)?.take();
        drop(waker);
        drop(poller);
        for timer in dropped.timers.iter() {
            timer.get().unschedule();
        }
        dropped.expose_handles_to_gc(py)?;
        drop(dropped);
        self.cancelled_timers.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// A new future attached to this loop: ferroloop's native Future, or
    /// asyncio's when the loop was made with `native_futures=False`.
    fn create_future(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if !slf.get().native_futures.load(Ordering::Relaxed) {
            return Ok(slf.call_method0(intern!(py, "_create_future_py"))?.unbind());
        }
        let state = Future::init_state(py, slf.clone().into_any())?;
        Ok(crate::fast_alloc::new_future(py, state)?.into_any().unbind())
    }

    /// Called when `call_soon` is replaced on this loop (Loop.__setattr__):
    /// from now on native futures call it, as asyncio's futures would.
    fn _route_callbacks_through_call_soon(&self) {
        self.native_callbacks.store(2, Ordering::Relaxed);
    }

    #[getter(_task_factory)]
    fn task_factory_attr(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.task_factory.borrow_mut(py)?.as_ref().map_or_else(|| py.None(), |f| f.clone_ref(py)))
    }

    #[setter(_task_factory)]
    fn set_task_factory_attr(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let value = value.filter(|v| !v.is_none(py));
        let old = std::mem::replace(&mut *self.task_factory.borrow_mut(py)?, value);
        drop(old);
        Ok(())
    }

    #[getter(_native_futures)]
    fn native_futures_attr(&self) -> bool {
        self.native_futures.load(Ordering::Relaxed)
    }

    #[setter(_native_futures)]
    fn set_native_futures_attr(&self, value: bool) {
        self.native_futures.store(value, Ordering::Relaxed);
    }

    #[getter(_closed)]
    fn closed_attr(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    #[setter(_closed)]
    fn set_closed_attr(&self, value: bool) {
        self.closed.store(value, Ordering::Relaxed);
    }

    #[getter(_stopping)]
    fn stopping_attr(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    #[setter(_stopping)]
    fn set_stopping_attr(&self, value: bool) {
        self.stopping.store(value, Ordering::Relaxed);
    }

    #[getter(_debug)]
    fn debug_attr(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    /// asyncio's `set_debug(enabled)` stores whatever it is given and
    /// tests its truth, so `set_debug(1)` works.
    #[setter(_debug)]
    fn set_debug_attr(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.debug.store(value.is_truthy()?, Ordering::Relaxed);
        Ok(())
    }

    #[getter(_thread_id)]
    fn thread_id_attr(&self) -> Option<u64> {
        match self.thread_id.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    #[setter(_thread_id)]
    fn set_thread_id_attr(&self, value: Option<u64>) {
        self.thread_id.store(value.unwrap_or(0), Ordering::Relaxed);
    }

    #[getter(_timer_cancelled_count)]
    fn timer_cancelled_count_attr(&self) -> usize {
        self.cancelled_timers.load(Ordering::Relaxed)
    }

    #[setter(_timer_cancelled_count)]
    fn set_timer_cancelled_count_attr(&self, value: usize) {
        self.cancelled_timers.store(value, Ordering::Relaxed);
    }
}
