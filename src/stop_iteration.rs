//! How a future's iterator hands the awaited result back from `tp_iternext`.
//!
//! An iterator's `tp_iternext` can only return a value by raising
//! StopIteration(value).  On 3.11 the interpreter's SEND goes through
//! `am_send` instead, and `PyErr_SetObject` stores a bare value without
//! building an exception, so this costs nothing there.  From 3.12 SEND calls
//! `tp_iternext` and every raised exception is normalised: each finished
//! `await fut` allocated a GC-tracked exception, which
//! `_PyGen_FetchStopIterationValue` read the value from and freed at once
//! (about 70 of the 490 ns of a future handoff on 3.12).
//!
//! On 3.12+ one StopIteration object is recycled instead, as CPython's free
//! lists recycle objects.  It is a plain StopIteration (so `type(e) is
//! StopIteration`, which debuggers' bdb checks, pickling and repr are
//! CPython's own).  StopIteration's deallocator is wrapped: when that one
//! object's last reference goes and Python code never touched it (no
//! traceback, context, cause, notes or attribute dict), it is kept as the
//! spare -- untracked by the GC, its value and args released at once, so no
//! result lives longer than under asyncio -- instead of being freed.  Every
//! other StopIteration is freed by CPython's deallocator as before (one
//! pointer comparison more).  While the spare is in use elsewhere (kept by
//! a sys.monitoring tool, say), raises build exceptions the ordinary way.
//! The recycled one carries no `__context__` from an enclosing `except`
//! block (nothing sees it: SEND drops it at once).

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// StopIteration's own deallocator (set on 3.12+ only; on 3.11
/// `raise_stop_iteration` keeps the bare-value path).
static BASE_DEALLOC: OnceLock<ffi::destructor> = OnceLock::new();

/// The one recycled StopIteration, or null until the next raise picks one.
/// Only touched with the GIL held; atomics only to be a `static`.
static RECYCLED: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

/// RECYCLED is the idle spare: alive, untracked, holding only this
/// reference, value NULL and args ().
static SPARE_IDLE: AtomicBool = AtomicBool::new(false);

/// A 1-tuple for the next raise's args, owned here alone, untracked and
/// holding None (the recycled object's last args, when nobody else kept
/// them), or null.
static SPARE_ARGS: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

/// Wrap StopIteration's deallocator (3.12+).  Runs once, at module
/// initialisation.
pub fn install(py: Python<'_>) {
    if py.version_info() < (3, 12) || BASE_DEALLOC.get().is_some() {
        return;
    }
    // SAFETY: PyExc_StopIteration is CPython's static exception type, live
    // for the whole process; its tp_dealloc is a plain function pointer that
    // CPython reads at each deallocation (subclasses made by `class` look it
    // up through their base at that time).  The GIL is held, and the
    // wrapper calls the saved original for every object but ours.
    unsafe {
        let tp = ffi::PyExc_StopIteration.cast::<ffi::PyTypeObject>();
        if let Some(base) = (*tp).tp_dealloc {
            let _ = BASE_DEALLOC.set(base);
            (*tp).tp_dealloc = Some(stop_iteration_dealloc);
        }
    }
}

/// Raise StopIteration(value), as CPython's own future iterator does.
pub fn raise_stop_iteration(py: Python<'_>, value: Py<PyAny>) {
    if BASE_DEALLOC.get().is_none() || !raise_recycled(py, &value) {
        raise_ordinary(py, value);
    }
}

/// The same as a `PyErr`, for pyo3 methods that end an iteration.
pub fn stop_iteration_err(py: Python<'_>, value: Py<PyAny>) -> PyErr {
    if BASE_DEALLOC.get().is_none() {
        return pyo3::exceptions::PyStopIteration::new_err((value,));
    }
    raise_stop_iteration(py, value);
    PyErr::take(py).unwrap_or_else(|| pyo3::exceptions::PyStopIteration::new_err(()))
}

/// CPython's `_PyGen_SetStopIterationValue`: the bare value when that is
/// unambiguous (3.11 keeps it unnormalised; 3.12+ builds StopIteration(value),
/// or StopIteration() for None), an instance otherwise.  On 3.12+ the
/// instance built becomes the recycled one when there is none.
fn raise_ordinary(py: Python<'_>, value: Py<PyAny>) {
    let v = value.bind(py);
    if BASE_DEALLOC.get().is_some() && RECYCLED.load(Ordering::Relaxed).is_null() {
        let built = if v.is_none() {
            py.get_type::<pyo3::exceptions::PyStopIteration>().call0()
        } else {
            py.get_type::<pyo3::exceptions::PyStopIteration>().call1((v,))
        };
        match built {
            Ok(exc) => {
                RECYCLED.store(exc.as_ptr(), Ordering::Relaxed);
                PyErr::from_value(exc).restore(py);
            }
            Err(e) => e.restore(py),
        }
    } else if v.is_instance_of::<PyTuple>() || v.is_instance_of::<pyo3::exceptions::PyBaseException>() {
        pyo3::exceptions::PyStopIteration::new_err((value,)).restore(py);
    } else {
        // SAFETY: both are live objects; PyErr_SetObject takes new
        // references of its own.
        unsafe { ffi::PyErr_SetObject(ffi::PyExc_StopIteration, v.as_ptr()) };
    }
}

/// Raise `value` in the idle spare; false (nothing raised) if there is none.
fn raise_recycled(py: Python<'_>, value: &Py<PyAny>) -> bool {
    let exc = RECYCLED.load(Ordering::Relaxed);
    if exc.is_null() || !SPARE_IDLE.load(Ordering::Relaxed) {
        return false;
    }
    // SAFETY: an idle spare is a live exact StopIteration whose only
    // reference is this module's (see SPARE_IDLE), untracked, with value
    // NULL and args the immortal (); so its fields are ours to set, and
    // that reference is handed to the error indicator below.
    unsafe {
        let mut old_item = std::ptr::null_mut();
        let args = if value.is_none(py) {
            ffi::PyTuple_New(0) // StopIteration(): args (), value None
        } else {
            let spare_args = SPARE_ARGS.swap(std::ptr::null_mut(), Ordering::Relaxed);
            if spare_args.is_null() {
                let args = ffi::PyTuple_New(1);
                if !args.is_null() {
                    ffi::PyTuple_SET_ITEM(args, 0, value.clone_ref(py).into_ptr());
                }
                args
            } else {
                // Ours alone (see SPARE_ARGS): filled, and back on the GC's
                // list as any new tuple is.
                old_item = ffi::PyTuple_GET_ITEM(spare_args, 0);
                ffi::PyTuple_SET_ITEM(spare_args, 0, value.clone_ref(py).into_ptr());
                track(spare_args);
                spare_args
            }
        };
        if args.is_null() {
            ffi::PyErr_Clear();
            return false;
        }
        SPARE_IDLE.store(false, Ordering::Relaxed);
        let e = exc.cast::<ffi::PyStopIterationObject>();
        let old_args = std::mem::replace(&mut (*e).args, args);
        let old_value = std::mem::replace(&mut (*e).value, value.clone_ref(py).into_ptr());
        track(exc);
        // Already normalised (the type is exactly the instance's), so CPython
        // raises this very object.  (PyErr_SetRaisedException is 3.12+ only,
        // and this file is built for 3.11 too.)
        #[allow(deprecated)]
        ffi::PyErr_Restore(ffi::Py_NewRef(ffi::PyExc_StopIteration), exc, std::ptr::null_mut());
        ffi::Py_XDECREF(old_args); // () : nothing runs
        ffi::Py_XDECREF(old_value); // NULL
        ffi::Py_XDECREF(old_item); // None
    }
    true
}

/// Put `obj` (a GC type's instance, untracked by this module) back on the
/// collector's list.  (PyObject_GC_Track on a tracked object is fatal.)
///
/// # Safety
/// `obj` is a live object of a GC type; the GIL is held.
unsafe fn track(obj: *mut ffi::PyObject) {
    // SAFETY: see the contract.
    unsafe {
        if ffi::PyObject_GC_IsTracked(obj) == 0 {
            ffi::PyObject_GC_Track(obj.cast());
        }
    }
}

/// StopIteration's deallocator on 3.12+: the recycled object, untouched,
/// becomes the idle spare; everything else goes to CPython's.
unsafe extern "C" fn stop_iteration_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_dealloc with the GIL held, for a
    // StopIteration (or subclass, through subtype_dealloc) whose reference
    // count reached zero; BASE_DEALLOC is set before this is installed.
    unsafe {
        if obj == RECYCLED.load(Ordering::Relaxed) {
            if keep_as_spare(obj) {
                return;
            }
            // Python code touched it: freed, and the next raise picks anew.
            RECYCLED.store(std::ptr::null_mut(), Ordering::Relaxed);
        }
        if let Some(base) = BASE_DEALLOC.get() {
            base(obj);
        }
    }
}

/// Revive the recycled object as the idle spare if nothing but its value
/// and args was ever set on it.
///
/// # Safety
/// `obj` is the recycled StopIteration, being deallocated (GIL held).
unsafe fn keep_as_spare(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: see the contract.  Only the first byte of `suppress_context`
    // is read: it is a C `char` (pyo3-ffi declares a Rust char).  A
    // collection's tp_clear leaves args NULL: such an object is freed.
    unsafe {
        let e = obj.cast::<ffi::PyStopIterationObject>();
        let untouched = (*e).ob_base.ob_type == ffi::PyExc_StopIteration.cast()
            && !(*e).args.is_null()
            && (*e).dict.is_null()
            && (*e).notes.is_null()
            && (*e).traceback.is_null()
            && (*e).context.is_null()
            && (*e).cause.is_null()
            && *std::ptr::addr_of!((*e).suppress_context).cast::<u8>() == 0;
        if !untouched || SPARE_IDLE.load(Ordering::Relaxed) {
            return false;
        }
        let empty = ffi::PyTuple_New(0); // the immortal (): cannot fail
        if empty.is_null() {
            return false;
        }
        // 0 -> 1: the module's reference revives it.  Off the GC's lists
        // while idle (a collection running now must not clear it, and
        // gc.get_objects() does not hand it out).
        ffi::Py_IncRef(obj);
        ffi::PyObject_GC_UnTrack(obj.cast());
        let value = std::mem::replace(&mut (*e).value, std::ptr::null_mut());
        let mut args = std::mem::replace(&mut (*e).args, empty);
        // A 1-tuple nobody else holds is kept for the next raise (untracked,
        // holding None); the result it held is released below.
        let mut item = std::ptr::null_mut();
        if ffi::PyTuple_CheckExact(args) != 0
            && ffi::PyTuple_GET_SIZE(args) == 1
            && ffi::Py_REFCNT(args) == 1
            && SPARE_ARGS.load(Ordering::Relaxed).is_null()
        {
            item = ffi::PyTuple_GET_ITEM(args, 0);
            ffi::PyTuple_SET_ITEM(args, 0, ffi::Py_NewRef(ffi::Py_None()));
            ffi::PyObject_GC_UnTrack(args.cast());
            SPARE_ARGS.store(args, Ordering::Relaxed);
            args = std::ptr::null_mut();
        }
        SPARE_IDLE.store(true, Ordering::Relaxed);
        // Releasing the result may run code (a __del__ that awaits again
        // finds the spare ready).
        ffi::Py_XDECREF(value);
        ffi::Py_XDECREF(item);
        ffi::Py_XDECREF(args);
        true
    }
}
