//! Native transports.  They depend on the loop's small interface
//! (`LoopCore::watch_transport`, `unwatch_transport`, `retry_io`, the ready
//! queue); the loop knows them only as the receivers of readiness reports.

mod buffer;
mod stream;
mod sys;

pub use stream::StreamTransport;
