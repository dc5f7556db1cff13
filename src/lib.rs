//! ferroloop's native core.  This file only wires the Python module; each
//! concern lives in its own module (see ARCHITECTURE.md).

use pyo3::prelude::*;

mod asyncio_api;
mod callbacks;
mod clock;
mod event_loop;
mod fast_alloc;
mod future;
mod gil_cell;
mod handles;
mod hooks;
mod native_types;
mod poller;
mod registry;
mod slots;
mod stop_iteration;
mod task;
mod transport;
pub mod scheduler;

/// The loop's state is protected by the GIL (see gil_cell.rs), so the module
/// declares that it needs it.
#[pymodule(gil_used = true)]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopCore>()?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add_class::<future::Future>()?;
    m.add_class::<future::FutureIter>()?;
    m.add_class::<task::Task>()?;
    m.add_class::<transport::StreamTransport>()?;
    m.add_class::<transport::SockOp>()?;
    m.add_class::<transport::SslProtocol>()?;
    m.add_function(wrap_pyfunction!(registry::_native_tasks, m)?)?;
    m.add_function(wrap_pyfunction!(registry::_native_task_count, m)?)?;
    m.add_function(wrap_pyfunction!(registry::_is_registered, m)?)?;
    m.add_function(wrap_pyfunction!(slots::_bind_native_methods, m)?)?;
    transport::adapt_malloc_thresholds();
    native_types::init(m.py());
    slots::install(m.py())?;
    stop_iteration::install(m.py());
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
