//! Native transports, and the loop's native `sock_*` coroutines.  They depend on the loop's small interface
//! (`LoopCore::watch_transport`, `unwatch_transport`, `retry_io`, the ready
//! queue); the loop knows them only as the receivers of readiness reports.

mod buffer;
mod sock_ops;
mod sockaddr;
mod stream;
mod sys;
mod tls;

pub use sock_ops::SockOp;
pub use stream::StreamTransport;
pub use tls::SslProtocol;
pub use sys::{adapt_malloc_thresholds, io_error, os_error};

use std::os::fd::{IntoRawFd, RawFd};

use pyo3::prelude::*;

/// Accept a connection on the listening socket `fd`: the new descriptor
/// (non-blocking, close-on-exec) and the peer's address as
/// `socket.accept()` gives it.  Ok(None) when none is waiting; other errors
/// are the OSError the socket module raises.
pub fn accept_connection(py: Python<'_>, fd: RawFd) -> PyResult<Option<(RawFd, Py<PyAny>)>> {
    match sys::accept_nonblocking(fd) {
        Ok((conn, addr)) => {
            // An address that cannot be converted closes the connection
            // (`conn` is dropped) and raises.
            let addr = sockaddr::to_python(py, &addr)?;
            Ok(Some((conn.into_raw_fd(), addr)))
        }
        Err(libc::EAGAIN) => Ok(None),
        Err(errno) => Err(sys::os_error(py, errno)),
    }
}
