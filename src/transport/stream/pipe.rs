//! Where pipes differ from sockets: asyncio's `_UnixReadPipeTransport` and
//! `_UnixWritePipeTransport` (CPython's unix_events.py), whose behaviour
//! `StreamTransport` follows when its kind is `ReadPipe` or `WritePipe`.
//!
//! * A read pipe's EOF closes it: eof_received() (its answer ignored), then
//!   connection_lost(None), each through `call_soon`.
//! * An exception from a read pipe's data_received() is the read callback's
//!   error (the loop's exception handler reports it); the pipe stays open.
//! * A write pipe learns that its reader went away from a readiness-to-read
//!   report (EPOLLERR on a FIFO, or data on a socket): it closes, with
//!   BrokenPipeError if data was still waiting to be written.
//! * A write pipe's close() is write_eof(), which closes once the buffer is
//!   flushed; writes after it are counted, not sent.

use pyo3::exceptions::{PyAssertionError, PyBrokenPipeError, PyPermissionError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{Kind, StreamState, StreamTransport};
use crate::event_loop::LoopCore;
use crate::hooks::call_hook;

impl StreamTransport {
    pub(super) fn attach_pipe(
        slf: &Bound<'_, Self>,
        loop_: &Bound<'_, PyAny>,
        pipe: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        writable: bool,
        watch_reader: bool,
    ) -> PyResult<()> {
        let py = slf.py();
        let kind = if writable { Kind::WritePipe } else { Kind::ReadPipe };
        let (loop_, fd) = Self::bind(slf, loop_, pipe, protocol, |st| StreamState {
            kind,
            // A write pipe watches for its reader going away from the
            // start: a report is queued behind connection_made.
            reader_on: writable && watch_reader,
            ..st
        })?;
        match LoopCore::watch_transport(&loop_, fd, slf.clone().unbind()) {
            // epoll refuses devices it cannot poll (EPERM): writing to
            // those never waits, so a write pipe needs no watch; a read
            // pipe is made, as asyncio makes it, but cannot start reading
            // (see `unpollable`).
            Err(err) if err.is_instance_of::<PyPermissionError>(py) => {
                let mut st = slf.get().st.borrow_mut(py)?;
                st.reader_on = false;
                st.unpollable = !writable;
                Ok(())
            }
            Err(err) => {
                // Not ours after all: neither warn about nor close the pipe.
                let old = slf.get().st.borrow_mut(py)?.sock.take();
                drop(old);
                Err(err)
            }
            Ok(()) => Ok(()),
        }
    }

    /// data_received() on a read pipe: its exception goes to the loop's
    /// handler as the read callback's (asyncio's reader handle raised it),
    /// and the pipe stays open -- the rest is read next iteration.
    pub(super) fn pipe_data_received(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        data: Bound<'_, PyBytes>,
        more: bool,
    ) -> PyResult<super::Read> {
        let py = slf.py();
        match Self::deliver(slf, protocol, |st| &st.on_data, intern!(py, "data_received"), (data,)) {
            Ok(_) => Ok(super::Read::Data { more }),
            Err(err) => {
                Self::retry_read(slf)?;
                Err(err)
            }
        }
    }

    /// End of file on a read pipe.
    pub(super) fn pipe_eof(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let Some(loop_) = slf.get().loop_of(py)? else {
            return Ok(());
        };
        let loop_ = loop_.bind(py);
        if loop_.get().is_debug() {
            call_hook(py, "transport_info", (slf, "%r was closed by peer"))?;
        }
        {
            let mut st = slf.get().st.borrow_mut(py)?;
            st.closing = true;
            st.reader_on = false;
        }
        let eof_received = protocol.getattr(intern!(py, "eof_received"))?;
        loop_.call_method1(intern!(py, "call_soon"), (eof_received,))?;
        Self::schedule_connection_lost(slf, py.None())
    }

    /// A write pipe's reader went away (asyncio's `_read_ready`).
    pub(super) fn pipe_reader_gone(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (pending, debug) = {
            let st = slf.get().st.borrow_mut(py)?;
            if !st.reader_on {
                return Ok(());
            }
            (!st.buffer.is_empty(), st.loop_.as_ref().is_some_and(|l| l.get().is_debug()))
        };
        if debug {
            call_hook(py, "transport_info", (slf, "%r was closed by peer"))?;
        }
        let exc = if pending { PyBrokenPipeError::new_err(()).into_value(py).into_any() } else { py.None() };
        Self::pipe_close(slf, exc)
    }

    /// asyncio's `_close(exc)` for pipes.
    pub(super) fn pipe_close(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let dropped = {
            let mut st = slf.get().st.borrow_mut(py)?;
            st.closing = true;
            st.reader_on = false;
            std::mem::take(&mut st.buffer)
        };
        drop(dropped);
        Self::schedule_connection_lost(slf, exc)
    }

    /// A write pipe's write_eof(): close once the buffer is flushed.
    pub(super) fn pipe_write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = slf.get().st.borrow_mut(py)?;
            if st.closing {
                return Ok(());
            }
            st.closing = true;
            if !st.buffer.is_empty() {
                return Ok(()); // write_ready closes once it is flushed
            }
            st.reader_on = false;
        }
        Self::schedule_connection_lost(slf, py.None())
    }

    /// asyncio's pipes assert the type of what they are given to write.
    pub(super) fn check_pipe_data(data: &Bound<'_, PyAny>) -> PyResult<()> {
        if Self::is_bytes_like(data) {
            return Ok(());
        }
        Err(PyAssertionError::new_err(data.repr()?.unbind()))
    }
}
