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
pub use sys::{adapt_malloc_thresholds, io_error};
