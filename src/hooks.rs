//! Python helpers the native code calls on cold paths (repr formatting, debug
//! stack capture), imported once from `ferroloop._hooks`.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

static HOOKS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

pub fn hooks(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    HOOKS
        .get_or_try_init(py, || Ok::<_, PyErr>(py.import("ferroloop._hooks")?.unbind()))
        .map(|m| m.bind(py))
}

/// Call `ferroloop._hooks.<name>(*args)`.
pub fn call_hook<'py, A>(py: Python<'py>, name: &str, args: A) -> PyResult<Bound<'py, PyAny>>
where
    A: pyo3::call::PyCallArgs<'py>,
{
    hooks(py)?.getattr(name)?.call1(args)
}

/// `repr(obj)` for an error message, or a placeholder if repr itself fails.
pub fn repr_of(obj: &Bound<'_, PyAny>) -> String {
    obj.repr().map(|r| r.to_string()).unwrap_or_else(|_| "<object>".to_owned())
}
