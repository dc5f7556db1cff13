//! Type slots pyo3 cannot express, patched into the types after pyo3
//! created them: finalizers of native futures and tasks, their garbage
//! collector traversal, and the fast slots of `await future` (at the end).
//!
//! asyncio reports a failed future nobody looked at ("Future exception was
//! never retrieved") and a task freed while pending ("Task was destroyed but
//! it is pending!") from the objects' `tp_finalize`.  pyo3 offers no
//! `__del__`, so after the types are created we give them a `tp_finalize`
//! and a `tp_dealloc` that runs it first (as CPython's own `subtype_dealloc`
//! does) before pyo3's deallocation.  Python subclasses reach the same code
//! through `__del__`.  CPython runs a finalizer once per object (the GC
//! marks it finalized), whichever of collection or deallocation comes first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;

use crate::event_loop::LoopCore;
use crate::future::{Future, FutureIter, IterStep, ITER_POOL, ITER_POOL_MAX};
use crate::handles::CallArgs;
use crate::hooks::call_hook;
use crate::task::{report_if_destroyed_pending, Task};

/// pyo3's deallocators, called after our finalizer.
static FUTURE_DEALLOC: OnceLock<Option<ffi::destructor>> = OnceLock::new();
static TASK_DEALLOC: OnceLock<Option<ffi::destructor>> = OnceLock::new();
/// The slots are patched once per process (the type objects are too).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Run `f` so that no panic can unwind into CPython (which would abort the
/// process): a panic becomes a RuntimeError naming `what`.
fn no_unwind<T>(what: &str, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(pyo3::exceptions::PyRuntimeError::new_err(format!("ferroloop: panic in {what}"))))
}

/// A slot's return value: a new reference, or NULL with the error set.
fn into_slot_result<T>(py: Python<'_>, result: PyResult<Py<T>>) -> *mut ffi::PyObject {
    match result {
        Ok(obj) => obj.into_ptr(),
        Err(e) => {
            e.restore(py);
            std::ptr::null_mut()
        }
    }
}

pub fn install(py: Python<'_>) -> PyResult<()> {
    let future_type = py.get_type::<Future>();
    let task_type = py.get_type::<Task>();
    // SAFETY: both are live heap type objects created by pyo3 for our
    // classes; no instance exists yet while the module initialises (the
    // INSTALLED flag keeps a second initialisation from wrapping our own
    // deallocator).  Writing slots of a heap type is what CPython's own
    // type machinery does; PyType_Modified invalidates cached lookups.
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    // Python subclasses get their finalizer from a `__del__` found on the
    // MRO (CPython does not inherit tp_finalize into classes made by
    // `class`).  It goes straight into the type's dict, not through
    // setattr, which would also turn our own tp_finalize into a Python-level
    // `__del__` call.
    let report = future_type.getattr("_report_unfinished")?;
    // SAFETY: `tp_dict` of a ready heap type is its attribute dict (a live
    // dict object); PyDict_SetItemString does not steal references.
    unsafe {
        let dict = (*future_type.as_type_ptr()).tp_dict;
        if dict.is_null() || ffi::PyDict_SetItemString(dict, c"__del__".as_ptr(), report.as_ptr()) < 0 {
            return Err(PyErr::take(py).unwrap_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err("ferroloop: cannot install Future.__del__")
            }));
        }
        ffi::PyType_Modified(future_type.as_type_ptr());
    }
    install_iter_slots(py)?;
    install_fast_loop_methods(py)?;
    bind_native_methods(&task_type)?;
    unsafe {
        add_finalizer(future_type.as_type_ptr(), &FUTURE_DEALLOC, future_dealloc);
        add_finalizer(task_type.as_type_ptr(), &TASK_DEALLOC, task_dealloc);
        (*future_type.as_type_ptr()).tp_traverse = Some(future_traverse);
        (*task_type.as_type_ptr()).tp_traverse = Some(task_traverse);
        ffi::PyType_Modified(future_type.as_type_ptr());
        ffi::PyType_Modified(task_type.as_type_ptr());
    }
    Ok(())
}

/// Give `tp` our finalizer and a deallocator that runs it first, keeping
/// pyo3's deallocator in `saved` for it to call.
///
/// # Safety
/// `tp` is a live heap type with no instances yet (see install()).
unsafe fn add_finalizer(
    tp: *mut ffi::PyTypeObject,
    saved: &OnceLock<Option<ffi::destructor>>,
    dealloc: ffi::destructor,
) {
    // SAFETY: see the function's contract.
    unsafe {
        let _ = saved.set((*tp).tp_dealloc);
        (*tp).tp_finalize = Some(finalize);
        (*tp).tp_flags |= ffi::Py_TPFLAGS_HAVE_FINALIZE;
        (*tp).tp_dealloc = Some(dealloc);
        ffi::PyType_Modified(tp);
    }
}

/// Run the finalizer, then pyo3's deallocation (unless it resurrected the
/// object).
///
/// # Safety
/// Called by CPython as `tp_dealloc`: `obj` is an instance of our type whose
/// reference count reached zero, with the GIL held.
unsafe fn dealloc_with(obj: *mut ffi::PyObject, inner: &OnceLock<Option<ffi::destructor>>) {
    // SAFETY: `obj` is being deallocated (refcount 0), which is what
    // PyObject_CallFinalizerFromDealloc requires; it returns -1 when the
    // finalizer resurrected the object, which must then not be freed.
    // Most futures have nothing to report: they skip the finalizer call
    // (and its exception save/restore) altogether.
    unsafe {
        if needs_finalizer(obj) && ffi::PyObject_CallFinalizerFromDealloc(obj) < 0 {
            return;
        }
        if let Some(Some(dealloc)) = inner.get() {
            dealloc(obj);
        }
    }
}

/// Whether the finalizer has anything to do for this future or task: an
/// unretrieved exception, or a task still pending.  A borrow in progress
/// (impossible at deallocation) counts as yes, the safe answer.
///
/// # Safety
/// `obj` is a live Future (or subclass) instance; the GIL is held.
unsafe fn needs_finalizer(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: see the function's contract.
    let py = unsafe { Python::assume_attached() };
    let fut = unsafe { Borrowed::from_ptr(py, obj).cast_unchecked::<Future>() };
    let Some(st) = fut.get().st.try_peek() else {
        return true;
    };
    if st.log_traceback {
        return true;
    }
    let pending = st.phase == crate::future::Phase::Pending && st.loop_.is_some();
    drop(st);
    pending && fut.cast::<Task>().is_ok()
}

unsafe extern "C" fn future_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: see dealloc_with; CPython calls this as Future's tp_dealloc.
    unsafe { dealloc_with(obj, &FUTURE_DEALLOC) }
}

unsafe extern "C" fn task_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: see dealloc_with; CPython calls this as Task's tp_dealloc.
    unsafe {
        if needs_finalizer(obj) && ffi::PyObject_CallFinalizerFromDealloc(obj) < 0 {
            return;
        }
        // A task freed while pending leaves the registry before its memory
        // goes (the registry holds borrowed pointers).
        let py = Python::assume_attached();
        let task = Borrowed::from_ptr(py, obj).cast_unchecked::<Task>();
        if crate::registry::unregister(py, task.get()).is_err() {
            // Only fails on re-entrant use of the registry, which its users
            // rule out.  Should it happen, the registry still points here:
            // keep the memory (leak it), off the GC's list, rather than free
            // it under that pointer (the registry skips objects whose
            // reference count is zero).
            ffi::PyObject_GC_UnTrack(obj.cast());
            return;
        }
        dealloc_with(obj, &TASK_DEALLOC)
    }
}

/// `tp_finalize`: never lets an error or a panic escape (both are reported
/// as unraisable) and keeps any exception already being raised.
unsafe extern "C" fn finalize(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_finalize with the GIL held and a live
    // object (temporarily resurrected when called from deallocation).
    let py = unsafe { Python::assume_attached() };
    // Save the exception being raised, if any, with the raw calls: pyo3's
    // PyErr::take would turn a pyo3 PanicException into a Rust panic here,
    // outside catch_unwind.
    let (mut ptype, mut pvalue, mut ptrace) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: PyErr_Fetch moves the current exception (if any) into the
    // three out-pointers, which PyErr_Restore below hands back.
    #[allow(deprecated)]
    unsafe {
        ffi::PyErr_Fetch(&mut ptype, &mut pvalue, &mut ptrace)
    };
    // SAFETY: `obj` is live for the duration of this call (see above).
    let object = unsafe { Bound::from_borrowed_ptr(py, obj) };
    if let Err(err) = no_unwind("a future's finalizer", || report_unfinished(&object)) {
        err.write_unraisable(py, Some(&object));
    }
    drop(object);
    // SAFETY: restores exactly what PyErr_Fetch took (possibly nothing).
    #[allow(deprecated)]
    unsafe {
        ffi::PyErr_Restore(ptype, pvalue, ptrace)
    };
}

pub fn report_unfinished(object: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = object.py();
    let mut task_outcome = Ok(());
    if let Ok(task) = object.cast::<Task>() {
        // As asyncio's weak reference is cleared before the finalizer runs:
        // a task that is being destroyed is no longer listed, even if the
        // report resurrects it (an exception handler keeping the context).
        // Whatever happens here, the Future part's report still runs.
        task_outcome = crate::registry::unregister(py, task.get()).and_then(|()| report_if_destroyed_pending(task));
    }
    let fut = object.cast::<Future>()?;
    let unretrieved = {
        let mut st = fut.get().st.borrow_mut(py)?;
        let unretrieved = st.log_traceback && st.exception.is_some() && st.loop_.is_some();
        st.log_traceback = false;
        unretrieved
    };
    if unretrieved {
        call_hook(py, "report_never_retrieved", (fut,))?;
    }
    task_outcome
}

// -- `await future` ----------------------------------------------------------
//
// A coroutine awaiting a future calls the iterator's `tp_iternext` (3.12+)
// or `am_send` (3.11's SEND opcode goes through PyIter_Send).  pyo3's
// `__next__` can only end an iteration by raising a StopIteration it
// builds as an instance (~400 ns per await); CPython's own FutureIter
// returns the value through `am_send`, or sets StopIteration from the bare
// value, which the interpreter reads back without instantiating anything
// (3.11).  These slots do the same, and on 3.12+ (which builds the
// exception regardless) raise a recycled one (stop_iteration.rs).

/// CPython's Py_TPFLAGS_HAVE_AM_SEND (3.10+; pyo3-ffi leaves it out).
const PY_TPFLAGS_HAVE_AM_SEND: std::ffi::c_ulong = 1 << 21;

fn install_iter_slots(py: Python<'_>) -> PyResult<()> {
    let tp = py.get_type::<FutureIter>().as_type_ptr();
    // SAFETY: `tp` is FutureIter's live heap type, created by pyo3 with a
    // `__next__`, so it is an iterator type; heap types always point
    // tp_as_async at their own embedded PyAsyncMethods.  No instance exists
    // yet while the module initialises (install() runs once).
    unsafe {
        let _ = ITER_DEALLOC.set((*tp).tp_dealloc);
        (*tp).tp_dealloc = Some(future_iter_dealloc);
        (*tp).tp_iternext = Some(future_iter_next);
        let as_async = (*tp).tp_as_async;
        if !as_async.is_null() {
            (*as_async).am_send = Some(future_iter_send);
            (*tp).tp_flags |= PY_TPFLAGS_HAVE_AM_SEND;
        }
        ffi::PyType_Modified(tp);
        // `await fut` / `iter(fut)` straight into FutureIter::over, without
        // pyo3's method trampoline.  Task copied Future's slots when pyo3
        // created it, so it is patched too.
        for tp in [py.get_type::<Future>().as_type_ptr(), py.get_type::<Task>().as_type_ptr()] {
            let as_async = (*tp).tp_as_async;
            if !as_async.is_null() {
                (*as_async).am_await = Some(future_await);
            }
            (*tp).tp_iter = Some(future_await);
            ffi::PyType_Modified(tp);
        }
    }
    Ok(())
}

unsafe extern "C" fn future_await(obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls am_await/tp_iter with the GIL held on a live
    // instance of Future or a subclass (the slots are Future's).
    let py = unsafe { Python::assume_attached() };
    let fut = unsafe { Bound::from_borrowed_ptr(py, obj).cast_into_unchecked::<Future>() };
    into_slot_result(py, no_unwind("__await__", || FutureIter::over(&fut)))
}

static ITER_DEALLOC: OnceLock<Option<ffi::destructor>> = OnceLock::new();

/// FutureIter's deallocator: an exact FutureIter goes back to the pool
/// (future.rs) instead of being freed, as CPython's own FutureIter does.
unsafe extern "C" fn future_iter_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_dealloc with the GIL held, for a FutureIter
    // (or subclass; there are none, the type is final) whose reference count
    // reached zero.  Setting it back to one and keeping that reference in the
    // pool revives it as an ordinary live object: it has no weak references
    // (the type does not support them), stays tracked by the GC (traversal
    // visits its now empty slot) and nothing else refers to it.
    unsafe {
        let py = Python::assume_attached();
        let exact = crate::native_types::is_future_iter_type(ffi::Py_TYPE(obj));
        if exact {
            if let Ok(mut pool) = ITER_POOL.borrow_mut(py) {
                if pool.len() < ITER_POOL_MAX {
                    ffi::Py_IncRef(obj); // 0 -> 1: the pool's reference
                    let it = Bound::from_owned_ptr(py, obj).cast_into_unchecked::<FutureIter>().unbind();
                    let fut = it.get().take_future();
                    pool.push(it);
                    drop(pool);
                    drop(fut); // may run Python code: after the pool borrow ends
                    return;
                }
            }
        }
        if let Some(Some(dealloc)) = ITER_DEALLOC.get() {
            dealloc(obj);
        }
    }
}

fn advance(obj: *mut ffi::PyObject) -> PyResult<IterStep> {
    // SAFETY: CPython calls the slots with the GIL held and `obj` a live
    // instance of FutureIter (the slots belong to that type only).
    let py = unsafe { Python::assume_attached() };
    let it = unsafe { Bound::from_borrowed_ptr(py, obj) };
    // SAFETY: these slots are FutureIter's, a final type (no subclasses).
    let it = unsafe { it.cast_unchecked::<FutureIter>() };
    no_unwind("await", || it.get().advance(py))
}

unsafe extern "C" fn future_iter_next(obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY (for assume_attached): called by CPython with the GIL held.
    let py = unsafe { Python::assume_attached() };
    match advance(obj) {
        Ok(IterStep::Yield(v)) => v.into_ptr(),
        Ok(IterStep::Return(v)) => {
            crate::stop_iteration::raise_stop_iteration(py, v);
            std::ptr::null_mut()
        }
        Err(e) => {
            e.restore(py);
            std::ptr::null_mut()
        }
    }
}

unsafe extern "C" fn future_iter_send(
    obj: *mut ffi::PyObject,
    _arg: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY (for assume_attached): called by CPython with the GIL held;
    // `result` is a valid out-pointer (PyIter_Send's contract).
    let py = unsafe { Python::assume_attached() };
    match advance(obj) {
        Ok(IterStep::Yield(v)) => {
            unsafe { *result = v.into_ptr() };
            ffi::PySendResult::PYGEN_NEXT
        }
        Ok(IterStep::Return(v)) => {
            unsafe { *result = v.into_ptr() };
            ffi::PySendResult::PYGEN_RETURN
        }
        Err(e) => {
            e.restore(py);
            unsafe { *result = std::ptr::null_mut() };
            ffi::PySendResult::PYGEN_ERROR
        }
    }
}

// -- garbage collector traversal --------------------------------------------
//
// pyo3's generic tp_traverse finds the base type's traverse by walking the
// MRO and guards against Python use on every call; with a task being two
// pyclass levels that made a full collection over many pending tasks about a
// third slower than over asyncio's C tasks.  These visit the same references
// directly: the (heap) type, the instance dict, the Future state and, for
// tasks, the Task state.  A Python subclass's own slots and dict are
// visited by CPython's subtype_traverse before it calls these.

/// # Safety
/// Called by the garbage collector (GIL held) with a live instance of
/// Future (or a subclass) and the collector's `visit`/`arg` pair.
unsafe fn traverse(
    obj: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut std::ffi::c_void,
    is_task: bool,
) -> std::ffi::c_int {
    // SAFETY: see the function's contract; nothing here changes a reference
    // count or calls into Python: it only reads pointers and calls `visit`
    // (directly, or through a Context's own tp_traverse, which does the
    // same for the context copies only this future holds).
    unsafe {
        let raw = |o: *mut ffi::PyObject| match if o.is_null() { 0 } else { visit(o, arg) } {
            0 => Ok(()),
            r => Err(r),
        };
        let mut call = |o: &Py<PyAny>| raw(o.as_ptr());
        // An untracked context copy only a done callback holds: report its
        // references as its own traversal would (see FutureState::refs).
        let mut through = |o: &Py<PyAny>| match (*ffi::Py_TYPE(o.as_ptr())).tp_traverse {
            Some(traverse_ctx) => match traverse_ctx(o.as_ptr(), visit, arg) {
                0 => Ok(()),
                r => Err(r),
            },
            None => Ok(()),
        };
        let outcome = (|| {
            raw(ffi::Py_TYPE(obj).cast())?;
            let dict_offset = (*crate::native_types::future_type()).tp_dictoffset;
            if dict_offset > 0 {
                raw(*obj.cast::<u8>().offset(dict_offset).cast::<*mut ffi::PyObject>())?;
            }
            let py = Python::assume_attached();
            let fut = Borrowed::from_ptr(py, obj).cast_unchecked::<Future>();
            if let Some(st) = fut.get().st.try_peek() {
                st.refs(&mut call, &mut through)?;
            }
            if is_task {
                fut.cast_unchecked::<Task>().get().refs(&mut call)?;
            }
            Ok(())
        })();
        outcome.err().unwrap_or(0)
    }
}

unsafe extern "C" fn future_traverse(
    obj: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut std::ffi::c_void,
) -> std::ffi::c_int {
    // SAFETY: Future's tp_traverse, called by the GC (see traverse()).
    unsafe { traverse(obj, visit, arg, false) }
}

unsafe extern "C" fn task_traverse(
    obj: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut std::ffi::c_void,
) -> std::ffi::c_int {
    // SAFETY: Task's tp_traverse, called by the GC (see traverse()).
    unsafe { traverse(obj, visit, arg, true) }
}

// -- call_soon / call_soon_threadsafe / create_task ---------------------------
//
// pyo3 collects `*args` into a tuple; asyncio's most common call,
// `call_soon(callback, one_arg)`, then pays for a tuple it does not need.
// These are METH_FASTCALL|METH_KEYWORDS methods that read the argument array
// directly (see handles::CallArgs) and hand over to LoopCore::schedule_soon.
// create_task's `**kwargs` would likewise make pyo3 build a tuple and a dict
// for every call; here a dict is made only for keywords besides name and
// context (which only task factories and 3.13.3+'s Task take).

fn install_fast_loop_methods(py: Python<'_>) -> PyResult<()> {
    let tp = py.get_type::<LoopCore>().as_type_ptr();
    let methods: [(&'static std::ffi::CStr, ffi::PyCFunctionFastWithKeywords, &'static std::ffi::CStr); 3] = [
        (
            c"create_task",
            create_task_fast,
            c"create_task(coro, *, name=None, context=None, **kwargs)\n--\n\nSchedule a coroutine object; return a Task.",
        ),
        (
            c"call_soon",
            call_soon_fast,
            c"call_soon(callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called soon, in FIFO order.",
        ),
        (
            c"call_soon_threadsafe",
            call_soon_threadsafe_fast,
            c"call_soon_threadsafe(callback, *args, context=None)\n--\n\nLike call_soon(), from any thread; wakes the loop if it sleeps.",
        ),
    ];
    for (name, func, doc) in methods {
        // The method table entry must outlive the type (forever): leaked
        // once per process (install() runs once).
        let def: &'static mut ffi::PyMethodDef = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: func },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: doc.as_ptr(),
        }));
        // SAFETY: `tp` is LoopCore's live heap type with no subclasses yet;
        // PyDescr_NewMethod returns a new reference or NULL with an
        // exception; its tp_dict is the type's attribute dict.
        unsafe {
            let descr = Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(tp, def))?;
            let dict = (*tp).tp_dict;
            if dict.is_null() || ffi::PyDict_SetItemString(dict, name.as_ptr(), descr.as_ptr()) < 0 {
                return Err(PyErr::take(py).unwrap_or_else(|| {
                    pyo3::exceptions::PyRuntimeError::new_err("ferroloop: cannot install a fast loop method")
                }));
            }
        }
    }
    // SAFETY: `tp` is a live type whose dict we changed.
    unsafe { ffi::PyType_Modified(tp) };
    Ok(())
}

/// Parse `(callback, *args, context=None)` from a vectorcall and schedule.
///
/// # Safety
/// Called by CPython as a METH_FASTCALL|METH_KEYWORDS method of LoopCore:
/// GIL held, `slf` a LoopCore instance (the method descriptor checked it),
/// `args` holding `nargs` positional then `len(kwnames)` keyword values.
unsafe fn schedule_fast(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    threadsafe: bool,
) -> *mut ffi::PyObject {
    let name = if threadsafe { "call_soon_threadsafe" } else { "call_soon" };
    // SAFETY: see the function's contract.
    let py = unsafe { Python::assume_attached() };
    let run = || -> PyResult<Py<crate::handles::Handle>> {
        // SAFETY: see the function's contract.
        unsafe {
            let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
            if nargs == 0 {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "{name}() missing 1 required positional argument: 'callback'"
                )));
            }
            let mut context = None;
            if !kwnames.is_null() {
                let names = Borrowed::from_ptr(py, kwnames).cast_unchecked::<pyo3::types::PyTuple>();
                for (i, key) in names.iter().enumerate() {
                    if key.eq("context")? {
                        context = Some(Borrowed::from_ptr(py, *args.add(nargs + i)).to_owned().unbind());
                    } else {
                        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                            "{name}() got an unexpected keyword argument '{key}'"
                        )));
                    }
                }
            }
            let callback = Borrowed::from_ptr(py, *args).to_owned();
            let call_args = CallArgs::from_array(py, args.add(1), nargs - 1)?;
            let core = Borrowed::from_ptr(py, slf).cast_unchecked::<LoopCore>();
            LoopCore::schedule_soon(&core, callback, call_args, context, threadsafe)
        }
    };
    into_slot_result(py, no_unwind(name, run))
}

/// Parse `(coro, *, name=None, context=None, **kwargs)` from a vectorcall
/// and create the task.
///
/// # Safety
/// Called by CPython as a METH_FASTCALL|METH_KEYWORDS method of LoopCore:
/// GIL held, `slf` a LoopCore instance (the method descriptor checked it),
/// `args` holding `nargs` positional then `len(kwnames)` keyword values.
unsafe extern "C" fn create_task_fast(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    let py = unsafe { Python::assume_attached() };
    let run = || -> PyResult<Py<PyAny>> {
        // SAFETY: see the function's contract.
        unsafe {
            let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
            if nargs > 1 {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "create_task() takes 1 positional argument but {nargs} were given"
                )));
            }
            let mut coro = (nargs == 1).then(|| Borrowed::from_ptr(py, *args).to_owned());
            let (mut name, mut context, mut extra) = (None, None, None::<Bound<'_, pyo3::types::PyDict>>);
            if !kwnames.is_null() {
                let names = Borrowed::from_ptr(py, kwnames).cast_unchecked::<pyo3::types::PyTuple>();
                for (i, key) in names.iter().enumerate() {
                    let value = Borrowed::from_ptr(py, *args.add(nargs + i)).to_owned();
                    if key.eq("name")? {
                        name = Some(value);
                    } else if key.eq("context")? {
                        context = Some(value.unbind());
                    } else if key.eq("coro")? && coro.is_none() {
                        coro = Some(value);
                    } else if key.eq("coro")? {
                        return Err(pyo3::exceptions::PyTypeError::new_err(
                            "create_task() got multiple values for argument 'coro'",
                        ));
                    } else {
                        extra.get_or_insert_with(|| pyo3::types::PyDict::new(py)).set_item(key, value)?;
                    }
                }
            }
            let coro = coro.ok_or_else(|| {
                pyo3::exceptions::PyTypeError::new_err("create_task() missing 1 required positional argument: 'coro'")
            })?;
            let core = Borrowed::from_ptr(py, slf).cast_unchecked::<LoopCore>();
            LoopCore::create_task_impl(&core, coro, name, context, extra.as_ref())
        }
    };
    into_slot_result(py, no_unwind("create_task", run))
}

unsafe extern "C" fn call_soon_fast(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: LoopCore.call_soon, called by CPython (see schedule_fast).
    unsafe { schedule_fast(slf, args, nargsf, kwnames, false) }
}

unsafe extern "C" fn call_soon_threadsafe_fast(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: LoopCore.call_soon_threadsafe, called by CPython.
    unsafe { schedule_fast(slf, args, nargsf, kwnames, true) }
}

// -- Methods bound to the subclass that calls them ----------------------------
//
// CPython specialises `obj.method(...)` for a C method only while `obj` is
// *exactly* of the type that defines the method (the descriptor's
// `d_type`); on an instance of a subclass every call falls back to the
// generic path (measured: `task.done()` 41 ns against `future.done()`'s
// 23-31 ns).  Our hot objects are all subclasses of the class defining
// their methods: tasks (Future's methods), loops (`ferroloop.Loop` over
// LoopCore) and transports (Python classes over StreamTransport).  So, as
// asyncio's C Task repeats Future's methods in its own table, each such
// class gets its own descriptors for the native methods it inherits: the
// same C functions, with `d_type` the subclass.

/// The C method definition behind `obj`, if it is exactly a method
/// descriptor (a `method_descriptor`, as pyo3's and our methods are).
fn method_def(obj: &Bound<'_, PyAny>) -> Option<*mut ffi::PyMethodDef> {
    // SAFETY: reading the type of a live object; d_method is only read from
    // an object whose type is exactly the method descriptor type.
    unsafe {
        if ffi::Py_TYPE(obj.as_ptr()) != std::ptr::addr_of_mut!(ffi::PyMethodDescr_Type) {
            return None;
        }
        Some((*obj.as_ptr().cast::<ffi::PyMethodDescrObject>()).d_method)
    }
}

/// Whether `a` and `b` are the same native method: the same object, or
/// method descriptors (such as those `bind_native_methods` makes) of the
/// same C function.
pub fn same_native_method(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> bool {
    a.is(b) || matches!((method_def(a), method_def(b)), (Some(x), Some(y)) if x == y)
}

/// Give `cls` its own descriptor for each native method it inherits
/// unchanged from ferroloop's classes (names starting with `_` excepted:
/// dunders are slots, and private helpers are not hot).  Returns how many.
#[pyfunction]
pub fn _bind_native_methods(cls: &Bound<'_, pyo3::types::PyType>) -> PyResult<usize> {
    bind_native_methods(cls)
}

fn bind_native_methods(cls: &Bound<'_, pyo3::types::PyType>) -> PyResult<usize> {
    let py = cls.py();
    let ours = [
        py.get_type::<Future>().as_type_ptr(),
        py.get_type::<Task>().as_type_ptr(),
        py.get_type::<LoopCore>().as_type_ptr(),
        py.get_type::<crate::transport::StreamTransport>().as_type_ptr(),
    ];
    let tp = cls.as_type_ptr();
    let mro = cls.mro();
    // SAFETY: `tp` is a live, ready type; its tp_dict is its attribute dict.
    let own = unsafe { (*tp).tp_dict };
    if own.is_null() {
        return Ok(0);
    }
    // SAFETY: `own` is a live dict (see above), borrowed for this call.
    let own = unsafe { Bound::from_borrowed_ptr(py, own) };
    let own = own.cast::<pyo3::types::PyDict>()?;
    let mut bound = 0;
    for base in mro.iter().skip(1) {
        let base = base.cast::<pyo3::types::PyType>()?;
        if !ours.contains(&base.as_type_ptr()) {
            continue;
        }
        let items: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)> =
            base.getattr("__dict__")?.call_method0("items")?.try_iter()?.map(|item| item?.extract()).collect::<PyResult<_>>()?;
        for (name, descr) in items {
            let Some(def) = method_def(&descr) else {
                continue;
            };
            let private = match name.cast::<pyo3::types::PyString>() {
                Ok(n) => n.to_str()?.starts_with('_'),
                Err(_) => true,
            };
            if private || own.contains(&name)? {
                continue;
            }
            // Only where the class would find this very descriptor (no
            // class in between overrides the name).
            let found = mro.iter().find_map(|k| {
                k.getattr("__dict__").ok().and_then(|d| d.get_item(&name).ok())
            });
            if !found.is_some_and(|f| f.is(&descr)) {
                continue;
            }
            // SAFETY: `def` is a method descriptor's PyMethodDef, which lives
            // as long as the defining type, which every subclass keeps
            // alive; PyDescr_NewMethod returns a new reference or NULL with
            // an exception set.
            let rebound = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(tp, def))? };
            own.set_item(&name, rebound)?;
            bound += 1;
        }
    }
    // SAFETY: `tp` is a live type whose dict we changed.
    unsafe { ffi::PyType_Modified(tp) };
    Ok(bound)
}
