//! ferroloop's native core.  This file only wires the Python module; each
//! concern lives in its own module (see ARCHITECTURE.md).

use pyo3::prelude::*;

mod clock;
mod event_loop;
mod gil_cell;
mod handles;
mod hooks;
mod poller;
pub mod scheduler;

/// The loop's state is protected by the GIL (see gil_cell.rs), so the module
/// declares that it needs it.
#[pymodule(gil_used = true)]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopCore>()?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
