//! How a future's iterator hands the awaited result back from `tp_iternext`.
//!
//! An iterator's `tp_iternext` can only return a value by raising
//! StopIteration(value).  On 3.11 the interpreter's SEND goes through
//! `am_send` instead, and `PyErr_SetObject` stores a bare value without
//! building an exception, so this costs nothing there.  From 3.12 SEND calls
//! `tp_iternext` and every raised exception is normalised: each finished
//! `await fut` allocated an args tuple and a GC-tracked exception, which
//! `_PyGen_FetchStopIterationValue` read the value from and freed at once
//! (about 70 of the 490 ns of a future handoff on 3.12).
//!
//! On 3.12+ one exception object is recycled instead, as CPython's free lists
//! recycle objects.  It is an instance of a private subclass of
//! StopIteration whose deallocator keeps it as the spare (value and args
//! released first, so no result lives longer than it would under asyncio)
//! rather than freeing it.  An instance Python code has touched (it carries a
//! traceback, context, cause, notes or attribute dict) is freed normally.
//! The subclass is named `builtins.StopIteration`, so `except StopIteration`,
//! repr and tracebacks read as asyncio's do; `type(exc) is StopIteration` is
//! the one thing that tells them apart, and an `except` block around `next()`
//! does not become the exception's `__context__`.

use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::gil_cell::GilCell;

struct Recycled {
    /// The private StopIteration subclass.
    ty: Py<PyType>,
    /// StopIteration's own deallocator, for instances that are not kept.
    base_dealloc: Option<ffi::destructor>,
}

/// Set on 3.12+ only; on 3.11 `raise_stop_iteration` keeps the bare-value path.
static RECYCLED: OnceLock<Recycled> = OnceLock::new();

/// The instance waiting to be raised again (reference count 1: this one).
static SPARE: GilCell<Option<Py<PyAny>>> = GilCell::new(None);

/// Create the recycled type (3.12+).  Runs once, at module initialisation.
pub fn install(py: Python<'_>) -> PyResult<()> {
    if py.version_info() < (3, 12) || RECYCLED.get().is_some() {
        return Ok(());
    }
    let namespace = PyDict::new(py);
    // No __weakref__ slot: StopIteration has none, and without one the
    // subclass adds nothing its base deallocator does not release.
    namespace.set_item("__slots__", PyTuple::empty(py))?;
    // SAFETY: the name is a NUL-terminated literal, the base a live
    // exception class and the namespace a live dict; a new reference (a
    // heap type) or NULL with an exception set comes back.
    let ty = unsafe {
        let raw = ffi::PyErr_NewException(c"builtins.StopIteration".as_ptr(), ffi::PyExc_StopIteration, namespace.as_ptr());
        Bound::from_owned_ptr_or_err(py, raw)?.cast_into::<PyType>()?
    };
    // SAFETY: `ty` is the live heap type just created, of which no instance
    // exists yet; StopIteration is a static type whose tp_dealloc never
    // changes.  Replacing a heap type's slot is what the type machinery
    // itself does (PyType_Modified drops cached lookups).
    let base_dealloc = unsafe {
        let tp = ty.as_type_ptr();
        (*tp).tp_dealloc = Some(recycle_dealloc);
        ffi::PyType_Modified(tp);
        (*(ffi::PyExc_StopIteration as *mut ffi::PyTypeObject)).tp_dealloc
    };
    let _ = RECYCLED.set(Recycled { ty: ty.unbind(), base_dealloc });
    Ok(())
}

/// Raise StopIteration(value), as CPython's own future iterator does.
pub fn raise_stop_iteration(py: Python<'_>, value: Py<PyAny>) {
    match RECYCLED.get() {
        Some(recycled) => raise_recycled(py, recycled, value),
        None => raise_plain(py, value),
    }
}

/// The same as a `PyErr`, for pyo3 methods that end an iteration.
pub fn stop_iteration_err(py: Python<'_>, value: Py<PyAny>) -> PyErr {
    match RECYCLED.get() {
        Some(recycled) => {
            raise_recycled(py, recycled, value);
            PyErr::take(py).unwrap_or_else(|| pyo3::exceptions::PyStopIteration::new_err(()))
        }
        None => pyo3::exceptions::PyStopIteration::new_err((value,)),
    }
}

/// 3.11: the bare value when that is unambiguous (no exception is built),
/// an instance otherwise.
fn raise_plain(py: Python<'_>, value: Py<PyAny>) {
    let v = value.bind(py);
    if v.is_instance_of::<PyTuple>() || v.is_instance_of::<pyo3::exceptions::PyBaseException>() {
        pyo3::exceptions::PyStopIteration::new_err((value,)).restore(py);
    } else {
        // SAFETY: both are live objects; PyErr_SetObject takes new
        // references of its own.
        unsafe { ffi::PyErr_SetObject(ffi::PyExc_StopIteration, v.as_ptr()) };
    }
}

fn raise_recycled(py: Python<'_>, recycled: &Recycled, value: Py<PyAny>) {
    let spare = SPARE.borrow_mut(py).ok().and_then(|mut spare| spare.take());
    // SAFETY (refcount read): a live object.  Anyone else holding it (found
    // through gc.get_objects()) makes it theirs: a new one is built instead.
    let exc = match spare {
        Some(exc) if unsafe { ffi::Py_REFCNT(exc.as_ptr()) } == 1 => exc,
        _ => {
            // The ordinary way: StopIteration's __init__ sets args and value.
            match recycled.ty.bind(py).call1((value,)) {
                Ok(exc) => PyErr::from_value(exc).restore(py),
                Err(e) => e.restore(py),
            }
            return;
        }
    };
    let raw = exc.as_ptr();
    // SAFETY: `raw` is an instance of the recycled subclass (only such
    // instances become the spare), so it has StopIteration's layout; only
    // this code holds it (checked above).  The args tuple is filled in place only while the exception is
    // its sole owner, as CPython reuses tuples nobody else can see.
    unsafe {
        let e = raw as *mut ffi::PyStopIterationObject;
        let args = (*e).args;
        let old = if !args.is_null()
            && ffi::PyTuple_CheckExact(args) != 0
            && ffi::PyTuple_GET_SIZE(args) == 1
            && ffi::Py_REFCNT(args) == 1
        {
            let old = ffi::PyTuple_GET_ITEM(args, 0);
            ffi::PyTuple_SET_ITEM(args, 0, value.clone_ref(py).into_ptr());
            old
        } else {
            let fresh = ffi::PyTuple_New(1);
            if fresh.is_null() {
                return; // MemoryError is set
            }
            ffi::PyTuple_SET_ITEM(fresh, 0, value.clone_ref(py).into_ptr());
            (*e).args = fresh;
            args
        };
        let old_value = std::mem::replace(&mut (*e).value, value.into_ptr()); // NULL (see recycle_dealloc)
        // Already normalised (type is exactly the instance's), so CPython
        // raises this very object; both references are handed over.
        // (PyErr_SetRaisedException is 3.12+ only, and this file is built
        // for 3.11 too.)
        #[allow(deprecated)]
        ffi::PyErr_Restore(recycled.ty.clone_ref(py).into_ptr().cast(), exc.into_ptr(), std::ptr::null_mut());
        // The old args item (None, or a tuple's previous value) goes last:
        // dropping it may run code.
        ffi::Py_XDECREF(old);
        ffi::Py_XDECREF(old_value);
    }
}

/// The recycled type's deallocator: keep an untouched instance as the spare,
/// free any other as StopIteration's deallocator would.
unsafe extern "C" fn recycle_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_dealloc with the GIL held, for an instance of
    // the recycled type whose reference count reached zero; RECYCLED is set
    // before such an instance can exist.
    unsafe {
        let py = Python::assume_attached();
        let Some(recycled) = RECYCLED.get() else { return };
        let e = obj as *mut ffi::PyStopIterationObject;
        let base = &*e;
        // A collection's tp_clear leaves args NULL: such an instance is freed.
        let untouched = !base.args.is_null()
            && base.dict.is_null()
            && base.notes.is_null()
            && base.traceback.is_null()
            && base.context.is_null()
            && base.cause.is_null()
            // A C `char` (pyo3-ffi declares it a Rust char): its first byte.
            && *std::ptr::addr_of!(base.suppress_context).cast::<u8>() == 0;
        if untouched {
            if let Ok(mut spare) = SPARE.borrow_mut(py) {
                if spare.is_none() {
                    // 0 -> 1: the spare's reference revives it as an
                    // ordinary live object (still tracked by the GC, which
                    // sees its args tuple through StopIteration's traverse).
                    ffi::Py_IncRef(obj);
                    let value = std::mem::replace(&mut (*e).value, std::ptr::null_mut());
                    let args = (*e).args;
                    let released = if ffi::PyTuple_CheckExact(args) != 0
                        && ffi::PyTuple_GET_SIZE(args) == 1
                        && ffi::Py_REFCNT(args) == 1
                    {
                        // Kept for the next raise, holding None meanwhile.
                        let item = ffi::PyTuple_GET_ITEM(args, 0);
                        ffi::PyTuple_SET_ITEM(args, 0, ffi::Py_NewRef(ffi::Py_None()));
                        item
                    } else {
                        // Shared or odd-sized: let it go (never NULL: str()
                        // of the spare, found through the GC, reads args).
                        (*e).args = ffi::PyTuple_New(0);
                        if (*e).args.is_null() {
                            // () is a singleton: this does not happen.
                            (*e).args = args;
                            std::ptr::null_mut()
                        } else {
                            args
                        }
                    };
                    *spare = Some(Bound::from_owned_ptr(py, obj).unbind());
                    drop(spare);
                    // Releasing the result may run code (a __del__ that
                    // awaits again finds the spare ready).
                    ffi::Py_XDECREF(value);
                    ffi::Py_XDECREF(released);
                    return;
                }
            }
        }
        // A heap type's instance holds a reference to its type, which
        // CPython's subtype_dealloc would drop after the base deallocator.
        let tp = ffi::Py_TYPE(obj);
        if let Some(dealloc) = recycled.base_dealloc {
            dealloc(obj);
        }
        ffi::Py_DECREF(tp.cast());
    }
}
