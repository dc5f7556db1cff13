//! `GilCell`: a `RefCell` that may be shared between threads because every
//! access happens with the GIL held.
//!
//! pyo3 requires `#[pyclass]` types to be `Sync`.  The loop's state is only ever
//! touched by code holding the GIL (each accessor takes a `Python` token), and the
//! GIL serialises those threads and orders their memory accesses, exactly like a
//! mutex would.  Re-entrancy (a Python callback calling back into the loop while a
//! borrow is live) is still caught by the `RefCell` flag and surfaces as a
//! `RuntimeError` instead of undefined behaviour.  Callers keep borrows short and
//! never call into Python (or drop a Python object) while one is live.
//!
//! This reasoning only holds on GIL-enabled CPython builds, which is why the
//! module does not declare free-threading support.

use std::cell::{Ref, RefCell, RefMut};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

pub struct GilCell<T>(RefCell<T>);

// SAFETY: see the module docs: all access goes through `borrow_mut`, which takes a
// `Python` token, so it happens with the GIL held; the GIL provides mutual
// exclusion and the happens-before ordering between threads.  `T: Send` is
// required because the value may be dropped or used by another thread.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub const fn new(value: T) -> Self {
        GilCell(RefCell::new(value))
    }

    /// Borrow the value mutably.  Fails (instead of aliasing) when a borrow is
    /// already live, which only happens on re-entrant use.
    #[inline]
    pub fn borrow_mut<'a>(&'a self, _py: Python<'_>) -> PyResult<RefMut<'a, T>> {
        self.0
            .try_borrow_mut()
            .map_err(|_| PyRuntimeError::new_err("ferroloop: re-entrant use of loop state"))
    }

    /// Read access for the garbage collector's traversal, which runs with the
    /// GIL held but without a `Python` token.  None while a borrow is live:
    /// skipping the visit then only makes the collector more conservative.
    #[inline]
    pub fn try_peek(&self) -> Option<Ref<'_, T>> {
        self.0.try_borrow().ok()
    }

    /// Write access for `__clear__` (GIL held, no token); None while a borrow
    /// is live (the object is then in use, so not garbage).
    #[inline]
    pub fn try_borrow_for_clear(&self) -> Option<RefMut<'_, T>> {
        self.0.try_borrow_mut().ok()
    }

    /// `__clear__`'s usual work: put `value` in and drop the old contents
    /// once the borrow has ended (dropping Python objects may run code that
    /// comes back to this cell).  Nothing happens while a borrow is live.
    pub fn replace_for_clear(&self, value: T) {
        if let Some(mut current) = self.try_borrow_for_clear() {
            let old = std::mem::replace(&mut *current, value);
            drop(current);
            drop(old);
        }
    }
}
