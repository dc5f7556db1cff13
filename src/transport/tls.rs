//! `SslProtocol`: TLS over a transport, natively.  It behaves as asyncio's
//! `sslproto.SSLProtocol` (CPython's `asyncio/sslproto.py`, the same state
//! machine uvloop has in Cython): a BufferedProtocol below, an
//! `ssl.SSLObject` over two `ssl.MemoryBIO`s in the middle, and asyncio's
//! `_SSLProtocolTransport` (subclassed in `ferroloop._tls`) above, for the
//! application's protocol.
//!
//! What makes it cheaper than asyncio's Python class, per TLS record:
//! - the state lives in Rust fields, and the SSL object's C methods (read,
//!   write, pending) are bound once per connection;
//! - a read loop stops once neither the incoming BIO nor OpenSSL holds
//!   anything more, instead of calling `read()` until it raises
//!   SSLWantReadError: building that exception (its message is formatted,
//!   its attributes set) costs more than the record's decryption.
//!
//! Everything else follows asyncio's order of calls, states, errors and
//! messages; the cold paths (handshake, shutdown, errors) call the same
//! Python objects asyncio's would.

use std::collections::VecDeque;

use pyo3::exceptions::{PyAssertionError, PyAttributeError, PyException, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyMemoryView, PyString, PyTuple, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};
use smallvec::SmallVec;

use super::sys::slice_of;
use super::stream::buffered_protocol_type;
use crate::gil_cell::GilCell;
use crate::handles::is_fatal;

/// asyncio's `SSLProtocol.max_size`: the buffer the transport reads into, and
/// the most one `SSLObject.read()` returns.
const MAX_SIZE: usize = 256 * 1024;

/// `SSLProtocolState`: where the TLS session is.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Unwrapped,
    DoHandshake,
    Wrapped,
    Flushing,
    Shutdown,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Unwrapped => "UNWRAPPED",
            State::DoHandshake => "DO_HANDSHAKE",
            State::Wrapped => "WRAPPED",
            State::Flushing => "FLUSHING",
            State::Shutdown => "SHUTDOWN",
        }
    }

    /// The transitions asyncio's `_set_state` allows.
    fn may_become(self, new: State) -> bool {
        matches!(
            (self, new),
            (_, State::Unwrapped)
                | (State::Unwrapped, State::DoHandshake)
                | (State::DoHandshake, State::Wrapped)
                | (State::Wrapped, State::Flushing)
                | (State::Flushing, State::Shutdown)
        )
    }
}

/// `AppProtocolState`: which of the application protocol's callbacks ran.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum AppState {
    #[default]
    Init,
    ConMade,
    Eof,
    ConLost,
}

impl AppState {
    fn name(self) -> &'static str {
        match self {
            AppState::Init => "STATE_INIT",
            AppState::ConMade => "STATE_CON_MADE",
            AppState::Eof => "STATE_EOF",
            AppState::ConLost => "STATE_CON_LOST",
        }
    }
}

/// A flow-control limit: the value as given (what the getters return) and
/// as a number to compare buffer sizes with.
#[derive(Default)]
struct Limit {
    value: Option<Py<PyAny>>,
    num: f64,
}

impl Limit {
    fn from(value: Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Limit { num: value.extract::<f64>()?, value: Some(value.unbind()) })
    }
}

/// The ssl module's and asyncio's objects this module uses, imported once.
struct Api {
    want_read: Py<PyType>,
    syscall_error: Py<PyType>,
    ssl_error: Py<PyType>,
    certificate_error: Py<PyType>,
    memory_bio: Py<PyType>,
    ssl_object: Py<PyType>,
    sslproto: Py<PyModule>,
    constants: Py<PyModule>,
    exceptions: Py<PyModule>,
    logger: Py<PyAny>,
    /// 3.13 changed `_abort()` to `_abort(exc)` and has it force-close the
    /// transport with that exception (asyncio 3.11/3.12 call abort()).
    abort_force_closes: bool,
}

fn api(py: Python<'_>) -> PyResult<&Api> {
    static API: PyOnceLock<Api> = PyOnceLock::new();
    API.get_or_try_init(py, || {
        let ssl = py.import("ssl")?;
        let ty = |name: &str| -> PyResult<Py<PyType>> { Ok(ssl.getattr(name)?.cast_into::<PyType>()?.unbind()) };
        Ok(Api {
            want_read: ty("SSLWantReadError")?,
            syscall_error: ty("SSLSyscallError")?,
            ssl_error: ty("SSLError")?,
            certificate_error: ty("CertificateError")?,
            memory_bio: ty("MemoryBIO")?,
            ssl_object: ty("SSLObject")?,
            sslproto: py.import("asyncio.sslproto")?.unbind(),
            constants: py.import("asyncio.constants")?.unbind(),
            exceptions: py.import("asyncio.exceptions")?.unbind(),
            logger: py.import("asyncio.log")?.getattr("logger")?.unbind(),
            abort_force_closes: py.version_info() >= (3, 13),
        })
    })
}

/// asyncio's `SSLAgainErrors`: the SSL object needs more input.
fn is_again(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    let api = api(py)?;
    Ok(err.is_instance(py, api.want_read.bind(py)) || err.is_instance(py, api.syscall_error.bind(py)))
}

/// An `except Exception` clause would catch it (not SystemExit,
/// KeyboardInterrupt, GeneratorExit or another BaseException).
fn is_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyException>(py)
}

/// What asyncio raises where it calls a method on a field that is None
/// (the connection was lost meanwhile).
fn none_has_no(attr: &str) -> PyErr {
    PyAttributeError::new_err(format!("'NoneType' object has no attribute '{attr}'"))
}

/// A BufferedProtocol's get_buffer and buffer_updated, as asyncio's
/// `_set_app_protocol` tells one (None: data goes to data_received).
fn buffered_methods(protocol: &Bound<'_, PyAny>) -> PyResult<Option<(Py<PyAny>, Py<PyAny>)>> {
    let py = protocol.py();
    if !(protocol.hasattr(intern!(py, "get_buffer"))? && protocol.is_instance(buffered_protocol_type(py)?)?) {
        return Ok(None);
    }
    Ok(Some((
        protocol.getattr(intern!(py, "get_buffer"))?.unbind(),
        protocol.getattr(intern!(py, "buffer_updated"))?.unbind(),
    )))
}

/// A zeroed receive buffer of `size` bytes and the memoryview handed out.
fn new_buffer(py: Python<'_>, size: usize) -> PyResult<(Py<PyByteArray>, Py<PyAny>)> {
    let buffer = PyByteArray::new_with(py, size, |_| Ok(()))?;
    let view = PyMemoryView::from(&buffer)?.into_any().unbind();
    Ok((buffer.unbind(), view))
}

#[derive(Default)]
struct TlsState {
    loop_: Option<Py<PyAny>>,
    app_protocol: Option<Py<PyAny>>,
    /// The application protocol is a BufferedProtocol: its get_buffer and
    /// buffer_updated, bound when it was set.
    app_buffered: Option<(Py<PyAny>, Py<PyAny>)>,
    app_transport: Option<Py<PyAny>>,
    app_transport_created: bool,
    /// The transport below (a socket transport).
    transport: Option<Py<PyAny>>,
    sslcontext: Option<Py<PyAny>>,
    sslobj: Option<Py<PyAny>>,
    /// The SSL object's read, write and pending: the C object's own for an
    /// `ssl.SSLObject` (its Python methods only forward to them), else the
    /// object's methods (a context's `sslobject_class` may override them).
    ssl_read: Option<Py<PyAny>>,
    ssl_write: Option<Py<PyAny>>,
    ssl_pending: Option<Py<PyAny>>,
    incoming: Option<Py<PyAny>>,
    outgoing: Option<Py<PyAny>>,
    incoming_write: Option<Py<PyAny>>,
    outgoing_read: Option<Py<PyAny>>,
    buffer: Option<Py<PyByteArray>>,
    buffer_view: Option<Py<PyAny>>,
    extra: Option<Py<PyDict>>,
    waiter: Option<Py<PyAny>>,
    server_side: bool,
    server_hostname: Option<Py<PyAny>>,
    handshake_timeout: Option<Py<PyAny>>,
    shutdown_timeout: Option<Py<PyAny>>,
    handshake_timeout_handle: Option<Py<PyAny>>,
    shutdown_timeout_handle: Option<Py<PyAny>>,
    handshake_start_time: Option<Py<PyAny>>,
    state: State,
    app_state: AppState,
    conn_lost: u64,
    eof_received: bool,
    /// Application data not yet given to the SSL object.
    write_backlog: VecDeque<Py<PyAny>>,
    write_buffer_size: isize,
    ssl_writing_paused: bool,
    app_reading_paused: bool,
    ssl_reading_paused: bool,
    app_writing_paused: bool,
    incoming_high: Limit,
    incoming_low: Limit,
    outgoing_high: Limit,
    outgoing_low: Limit,
}

impl TlsState {
    fn refs(&self, visit: &mut dyn FnMut(&Py<PyAny>) -> Result<(), PyTraverseError>) -> Result<(), PyTraverseError> {
        let singles = [
            &self.loop_,
            &self.app_protocol,
            &self.app_transport,
            &self.transport,
            &self.sslcontext,
            &self.sslobj,
            &self.ssl_read,
            &self.ssl_write,
            &self.ssl_pending,
            &self.incoming,
            &self.outgoing,
            &self.incoming_write,
            &self.outgoing_read,
            &self.buffer_view,
            &self.waiter,
            &self.server_hostname,
            &self.handshake_timeout,
            &self.shutdown_timeout,
            &self.handshake_timeout_handle,
            &self.shutdown_timeout_handle,
            &self.handshake_start_time,
            &self.incoming_high.value,
            &self.incoming_low.value,
            &self.outgoing_high.value,
            &self.outgoing_low.value,
        ];
        for obj in singles.into_iter().flatten() {
            visit(obj)?;
        }
        if let Some((get_buffer, buffer_updated)) = &self.app_buffered {
            visit(get_buffer)?;
            visit(buffer_updated)?;
        }
        if let Some(buffer) = &self.buffer {
            visit(buffer.as_any())?;
        }
        if let Some(extra) = &self.extra {
            visit(extra.as_any())?;
        }
        for data in &self.write_backlog {
            visit(data)?;
        }
        Ok(())
    }
}

fn cloned(py: Python<'_>, obj: &Option<Py<PyAny>>) -> Option<Py<PyAny>> {
    obj.as_ref().map(|o| o.clone_ref(py))
}

#[pyclass(module = "ferroloop._ferroloop", subclass, frozen, weakref)]
pub struct SslProtocol {
    st: GilCell<TlsState>,
}

impl SslProtocol {
    /// A clone of one field (so no borrow is live while Python runs).
    fn field<'py>(
        slf: &Bound<'py, Self>,
        pick: impl FnOnce(&TlsState) -> &Option<Py<PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        let st = slf.get().st.borrow_mut(py)?;
        Ok(pick(&st).as_ref().map(|o| o.bind(py).clone()))
    }

    /// A field that must be set (it is from construction on).
    fn required<'py>(
        slf: &Bound<'py, Self>,
        what: &str,
        pick: impl FnOnce(&TlsState) -> &Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::field(slf, pick)?.ok_or_else(|| PyRuntimeError::new_err(format!("SSLProtocol has no {what}")))
    }

    fn state(slf: &Bound<'_, Self>) -> PyResult<State> {
        Ok(slf.get().st.borrow_mut(slf.py())?.state)
    }

    fn loop_of<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::required(slf, "loop", |st| &st.loop_)
    }

    /// The transport below, or asyncio's AttributeError on None.
    fn transport_or_error<'py>(slf: &Bound<'py, Self>, attr: &str) -> PyResult<Bound<'py, PyAny>> {
        Self::field(slf, |st| &st.transport)?.ok_or_else(|| none_has_no(attr))
    }

    /// The application protocol, or asyncio's AttributeError on None.
    fn app_protocol_or_error<'py>(slf: &Bound<'py, Self>, attr: &str) -> PyResult<Bound<'py, PyAny>> {
        Self::field(slf, |st| &st.app_protocol)?.ok_or_else(|| none_has_no(attr))
    }

    fn debug(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        Self::loop_of(slf)?.call_method0(intern!(py, "get_debug"))?.is_truthy()
    }

    fn log<'py>(py: Python<'py>, level: &str, args: impl pyo3::call::PyCallArgs<'py>) -> PyResult<()> {
        api(py)?.logger.bind(py).call_method1(level, args).map(drop)
    }

    fn set_state(slf: &Bound<'_, Self>, new: State) -> PyResult<()> {
        let mut st = slf.get().st.borrow_mut(slf.py())?;
        if st.state.may_become(new) {
            st.state = new;
            Ok(())
        } else {
            Err(PyRuntimeError::new_err(format!(
                "cannot switch state from SSLProtocolState.{} to SSLProtocolState.{}",
                st.state.name(),
                new.name()
            )))
        }
    }

    /// `incoming.pending` or `outgoing.pending`.
    fn pending_of(bio: &Bound<'_, PyAny>) -> PyResult<isize> {
        bio.getattr(intern!(bio.py(), "pending"))?.extract()
    }

    fn read_buffer_size(slf: &Bound<'_, Self>) -> PyResult<isize> {
        Self::pending_of(&Self::required(slf, "incoming BIO", |st| &st.incoming)?)
    }

    fn write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<isize> {
        let outgoing = Self::required(slf, "outgoing BIO", |st| &st.outgoing)?;
        let pending = Self::pending_of(&outgoing)?;
        Ok(pending + slf.get().st.borrow_mut(slf.py())?.write_buffer_size)
    }

    /// More decrypted data could come out of the SSL object without new
    /// input: bytes wait in the incoming BIO or inside OpenSSL.  When
    /// neither holds any, `read()` would raise SSLWantReadError.
    /// Anything but a count (a stand-in SSL object's) means "try reading",
    /// which is what asyncio does.
    fn more_to_read(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let incoming = Self::required(slf, "incoming BIO", |st| &st.incoming)?;
        let waiting = incoming.getattr(intern!(slf.py(), "pending"))?.extract::<isize>();
        if waiting.as_ref().map_or(true, |&n| n > 0) {
            return Ok(true);
        }
        let pending = Self::required(slf, "SSL object", |st| &st.ssl_pending)?;
        Ok(pending.call0()?.extract::<isize>().map_or(true, |n| n > 0))
    }

    fn wakeup_waiter(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let Some(waiter) = slf.get().st.borrow_mut(py)?.waiter.take() else {
            return Ok(());
        };
        let waiter = waiter.into_bound(py);
        if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            match exc {
                Some(exc) if !exc.is_none() => waiter.call_method1(intern!(py, "set_exception"), (exc,))?,
                _ => waiter.call_method1(intern!(py, "set_result"), (py.None(),))?,
            };
        }
        Ok(())
    }

    fn cancel_handle(py: Python<'_>, handle: Option<Py<PyAny>>) -> PyResult<()> {
        if let Some(handle) = handle {
            handle.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        Ok(())
    }

    fn set_app_protocol_inner(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let buffered = buffered_methods(protocol)?;
        let old = {
            let mut st = slf.get().st.borrow_mut(py)?;
            (st.app_protocol.replace(protocol.clone().unbind()), std::mem::replace(&mut st.app_buffered, buffered))
        };
        drop(old);
        Ok(())
    }

    fn flow_limits<'py>(
        py: Python<'py>,
        high: Option<Bound<'py, PyAny>>,
        low: Option<Bound<'py, PyAny>>,
        kib_constant: &str,
    ) -> PyResult<(Limit, Limit)> {
        let api = api(py)?;
        let kib = api.constants.bind(py).getattr(kib_constant)?;
        let pair = api.sslproto.bind(py).getattr(intern!(py, "add_flowcontrol_defaults"))?.call1((high, low, kib))?;
        Ok((Limit::from(pair.get_item(0)?)?, Limit::from(pair.get_item(1)?)?))
    }

    // -- Handshake ---------------------------------------------------------

    fn start_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let loop_ = Self::loop_of(slf)?;
        let start = if Self::debug(slf)? {
            Self::log(py, "debug", ("%r starts SSL handshake", slf))?;
            Some(loop_.call_method0(intern!(py, "time"))?.unbind())
        } else {
            None
        };
        slf.get().st.borrow_mut(py)?.handshake_start_time = start;
        Self::set_state(slf, State::DoHandshake)?;
        let timeout = Self::required(slf, "handshake timeout", |st| &st.handshake_timeout)?;
        let check = slf.getattr(intern!(py, "_check_handshake_timeout"))?;
        let handle = loop_.call_method1(intern!(py, "call_later"), (timeout, check))?.unbind();
        let old = slf.get().st.borrow_mut(py)?.handshake_timeout_handle.replace(handle);
        drop(old);
        Self::do_handshake(slf)
    }

    fn do_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let sslobj = Self::required(slf, "SSL object", |st| &st.sslobj)?;
        match sslobj.call_method0(intern!(py, "do_handshake")) {
            Ok(_) => Self::on_handshake_complete(slf, None),
            Err(err) if is_again(py, &err)? => Self::process_outgoing(slf),
            Err(err) if err.is_instance(py, api(py)?.ssl_error.bind(py)) => {
                Self::on_handshake_complete(slf, Some(err.into_value(py).into_bound(py).into_any()))
            }
            Err(err) => Err(err),
        }
    }

    fn on_handshake_complete(slf: &Bound<'_, Self>, handshake_exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let handle = slf.get().st.borrow_mut(py)?.handshake_timeout_handle.take();
        Self::cancel_handle(py, handle)?;
        let sslobj = Self::required(slf, "SSL object", |st| &st.sslobj)?;
        let outcome = (|| -> PyResult<Bound<'_, PyAny>> {
            match &handshake_exc {
                None => Self::set_state(slf, State::Wrapped)?,
                // `raise exc`: an exception class is instantiated first.
                Some(exc) if exc.is_instance_of::<PyType>() => return Err(PyErr::from_value(exc.call0()?)),
                Some(exc) => return Err(PyErr::from_value(exc.clone())),
            }
            sslobj.call_method0(intern!(py, "getpeercert"))
        })();
        let peercert = match outcome {
            Ok(peercert) => peercert,
            Err(err) if is_exception(py, &err) => {
                Self::set_state(slf, State::Unwrapped)?;
                let message = if err.is_instance(py, api(py)?.certificate_error.bind(py)) {
                    "SSL handshake failed on verifying the certificate"
                } else {
                    "SSL handshake failed"
                };
                let exc = err.into_value(py).into_bound(py).into_any();
                Self::fatal_error(slf, &exc, message)?;
                return Self::wakeup_waiter(slf, Some(exc));
            }
            Err(err) => return Err(err),
        };
        if Self::debug(slf)? {
            let loop_ = Self::loop_of(slf)?;
            if let Some(start) = Self::field(slf, |st| &st.handshake_start_time)? {
                let took = loop_.call_method0(intern!(py, "time"))?.sub(start)?.mul(1e3)?;
                Self::log(py, "debug", ("%r: SSL handshake took %.1f ms", slf, took))?;
            }
        }
        let extra = slf.get().st.borrow_mut(py)?.extra.as_ref().map(|e| e.clone_ref(py));
        if let Some(extra) = extra {
            let extra = extra.bind(py);
            extra.set_item("peercert", peercert)?;
            extra.set_item("cipher", sslobj.call_method0(intern!(py, "cipher"))?)?;
            extra.set_item("compression", sslobj.call_method0(intern!(py, "compression"))?)?;
            extra.set_item("ssl_object", &sslobj)?;
        }
        let made = {
            let mut st = slf.get().st.borrow_mut(py)?;
            let init = st.app_state == AppState::Init;
            if init {
                st.app_state = AppState::ConMade;
            }
            init
        };
        if made {
            let protocol = Self::app_protocol_or_error(slf, "connection_made")?;
            let app_transport = Self::get_app_transport_inner(slf)?;
            protocol.call_method1(intern!(py, "connection_made"), (app_transport,))?;
        }
        Self::wakeup_waiter(slf, None)?;
        Self::do_read(slf)
    }

    fn get_app_transport_inner<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let (existing, created) = {
            let st = slf.get().st.borrow_mut(py)?;
            (cloned(py, &st.app_transport), st.app_transport_created)
        };
        if let Some(existing) = existing {
            return Ok(existing.into_bound(py));
        }
        if created {
            return Err(PyRuntimeError::new_err("Creating _SSLProtocolTransport twice"));
        }
        let class = slf.getattr(intern!(py, "_app_transport_class"))?;
        let transport = class.call1((Self::loop_of(slf)?, slf))?;
        let mut st = slf.get().st.borrow_mut(py)?;
        st.app_transport = Some(transport.clone().unbind());
        st.app_transport_created = true;
        Ok(transport)
    }

    // -- Shutdown ----------------------------------------------------------

    fn start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (state, app_transport) = {
            let st = slf.get().st.borrow_mut(py)?;
            (st.state, cloned(py, &st.app_transport))
        };
        if matches!(state, State::Flushing | State::Shutdown | State::Unwrapped) {
            return Ok(());
        }
        if let Some(app_transport) = app_transport {
            app_transport.bind(py).setattr(intern!(py, "_closed"), true)?;
        }
        if state == State::DoHandshake {
            return Self::abort(slf, None);
        }
        Self::set_state(slf, State::Flushing)?;
        let timeout = Self::required(slf, "shutdown timeout", |st| &st.shutdown_timeout)?;
        let check = slf.getattr(intern!(py, "_check_shutdown_timeout"))?;
        let handle = Self::loop_of(slf)?.call_method1(intern!(py, "call_later"), (timeout, check))?.unbind();
        let old = slf.get().st.borrow_mut(py)?.shutdown_timeout_handle.replace(handle);
        drop(old);
        Self::do_flush(slf)
    }

    fn do_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)?;
        Self::set_state(slf, State::Shutdown)?;
        Self::do_shutdown(slf)
    }

    fn do_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let eof = slf.get().st.borrow_mut(py)?.eof_received;
        let unwrapped = if eof {
            Ok(())
        } else {
            Self::required(slf, "SSL object", |st| &st.sslobj)?.call_method0(intern!(py, "unwrap")).map(drop)
        };
        match unwrapped {
            Ok(()) => {
                Self::process_outgoing(slf)?;
                Self::call_eof_received(slf)?;
                Self::on_shutdown_complete(slf, None)
            }
            Err(err) if is_again(py, &err)? => Self::process_outgoing(slf),
            Err(err) if err.is_instance(py, api(py)?.ssl_error.bind(py)) => {
                Self::on_shutdown_complete(slf, Some(err.into_value(py).into_bound(py).into_any()))
            }
            Err(err) => Err(err),
        }
    }

    fn on_shutdown_complete(slf: &Bound<'_, Self>, shutdown_exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let handle = slf.get().st.borrow_mut(py)?.shutdown_timeout_handle.take();
        Self::cancel_handle(py, handle)?;
        match shutdown_exc {
            Some(exc) => Self::fatal_error(slf, &exc, "Fatal error on transport"),
            None => {
                let close = Self::transport_or_error(slf, "close")?.getattr(intern!(py, "close"))?;
                Self::loop_of(slf)?.call_method1(intern!(py, "call_soon"), (close,)).map(drop)
            }
        }
    }

    fn abort(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        Self::set_state(slf, State::Unwrapped)?;
        if let Some(transport) = Self::field(slf, |st| &st.transport)? {
            if api(py)?.abort_force_closes {
                transport.call_method1(intern!(py, "_force_close"), (exc,))?;
            } else {
                transport.call_method0(intern!(py, "abort"))?;
            }
        }
        Ok(())
    }

    // -- Outgoing data -----------------------------------------------------

    fn do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let write = Self::required(slf, "SSL object", |st| &st.ssl_write)?;
        loop {
            let Some(data) = slf.get().st.borrow_mut(py)?.write_backlog.front().map(|d| d.clone_ref(py)) else {
                break;
            };
            let data = data.into_bound(py);
            let count: isize = match write.call1((&data,)) {
                Ok(count) => count.extract()?,
                Err(err) if is_again(py, &err)? => break,
                Err(err) => return Err(err),
            };
            let data_len = data.len()? as isize;
            if count < data_len {
                let rest = slice_of(&data, count, None)?.unbind();
                let mut st = slf.get().st.borrow_mut(py)?;
                let old = st.write_backlog.front_mut().map(|front| std::mem::replace(front, rest));
                st.write_buffer_size -= count;
                drop(st);
                drop(old);
            } else {
                let mut st = slf.get().st.borrow_mut(py)?;
                let old = st.write_backlog.pop_front();
                st.write_buffer_size -= data_len;
                drop(st);
                drop(old);
            }
        }
        Self::process_outgoing(slf)
    }

    fn process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (paused, read) = {
            let st = slf.get().st.borrow_mut(py)?;
            (st.ssl_writing_paused, cloned(py, &st.outgoing_read))
        };
        if !paused {
            let read = read.ok_or_else(|| PyRuntimeError::new_err("SSLProtocol has no outgoing BIO"))?;
            let data = read.bind(py).call0()?;
            if data.len()? > 0 {
                Self::transport_or_error(slf, "write")?.call_method1(intern!(py, "write"), (data,))?;
            }
        }
        Self::control_app_writing(slf)
    }

    // -- Incoming data -----------------------------------------------------

    /// asyncio's `_do_read`: hand decrypted data to the application, send
    /// what the SSL object produced, adjust reading from the transport.
    fn do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (state, app_paused, buffered) = {
            let st = slf.get().st.borrow_mut(py)?;
            (st.state, st.app_reading_paused, st.app_buffered.is_some())
        };
        if !matches!(state, State::Wrapped | State::Flushing) {
            return Ok(());
        }
        let outcome = (|| -> PyResult<()> {
            if !app_paused {
                if buffered {
                    Self::do_read_buffered(slf)?;
                } else {
                    Self::do_read_copied(slf)?;
                }
                if slf.get().st.borrow_mut(py)?.write_backlog.is_empty() {
                    Self::process_outgoing(slf)?;
                } else {
                    Self::do_write(slf)?;
                }
            }
            Self::control_ssl_reading(slf)
        })();
        match outcome {
            Err(err) if is_exception(py, &err) => {
                Self::fatal_error(slf, &err.into_value(py).into_bound(py).into_any(), "Fatal error on SSL protocol")
            }
            other => other,
        }
    }

    fn do_read_buffered(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (get_buffer, buffer_updated) = {
            let st = slf.get().st.borrow_mut(py)?;
            match &st.app_buffered {
                Some((g, b)) => (g.clone_ref(py), b.clone_ref(py)),
                None => return Ok(()),
            }
        };
        let read = Self::required(slf, "SSL object", |st| &st.ssl_read)?;
        let buf = get_buffer.bind(py).call1((Self::read_buffer_size(slf)?,))?;
        let wants = buf.len()? as isize;
        let mut offset: isize = 0;
        let mut count: isize = 1;
        let outcome = (|| -> PyResult<()> {
            count = read.call1((wants, &buf))?.extract()?;
            if count > 0 {
                offset = count;
                while offset < wants {
                    if !Self::more_to_read(slf)? {
                        // read() would raise SSLWantReadError.
                        return Ok(());
                    }
                    let rest = slice_of(&buf, offset, None)?;
                    count = read.call1((wants - offset, rest))?.extract()?;
                    if count > 0 {
                        offset += count;
                    } else {
                        return Ok(());
                    }
                }
                // The application's buffer is full: read the rest later.
                let again = slf.getattr(intern!(py, "_do_read"))?;
                Self::loop_of(slf)?.call_method1(intern!(py, "call_soon"), (again,))?;
            }
            Ok(())
        })();
        match outcome {
            Err(err) if is_again(py, &err)? => {}
            other => other?,
        }
        if offset > 0 {
            buffer_updated.bind(py).call1((offset,))?;
        }
        if count == 0 {
            // close_notify
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    fn do_read_copied(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let read = Self::required(slf, "SSL object", |st| &st.ssl_read)?;
        let mut chunks: SmallVec<[Bound<'_, PyAny>; 2]> = SmallVec::new();
        let mut eof = false;
        loop {
            match read.call1((MAX_SIZE,)) {
                Ok(chunk) => {
                    if chunk.len()? == 0 {
                        eof = true;
                        break;
                    }
                    chunks.push(chunk);
                    if !Self::more_to_read(slf)? {
                        // read() would raise SSLWantReadError.
                        break;
                    }
                }
                Err(err) if is_again(py, &err)? => break,
                Err(err) => return Err(err),
            }
        }
        if !chunks.is_empty() {
            let data = if chunks.len() == 1 {
                chunks.swap_remove(0)
            } else {
                PyBytes::new(py, b"").call_method1(intern!(py, "join"), (PyList::new(py, chunks)?,))?
            };
            Self::app_protocol_or_error(slf, "data_received")?.call_method1(intern!(py, "data_received"), (data,))?;
        }
        if eof {
            // close_notify
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    fn call_eof_received(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let outcome = (|| -> PyResult<()> {
            let protocol = {
                let mut st = slf.get().st.borrow_mut(py)?;
                if st.app_state != AppState::ConMade {
                    return Ok(());
                }
                st.app_state = AppState::Eof;
                cloned(py, &st.app_protocol)
            };
            let protocol = protocol.ok_or_else(|| none_has_no("eof_received"))?;
            let keep_open = protocol.bind(py).call_method0(intern!(py, "eof_received"))?;
            if keep_open.is_truthy()? {
                Self::log(py, "warning", ("returning true from eof_received() has no effect when using ssl",))?;
            }
            Ok(())
        })();
        match outcome {
            Err(err) if !is_fatal(py, &err) => {
                Self::fatal_error(slf, &err.into_value(py).into_bound(py).into_any(), "Error calling eof_received()")
            }
            other => other,
        }
    }

    // -- Flow control ------------------------------------------------------

    /// Call the application protocol's pause_writing/resume_writing; an
    /// error goes to the loop's exception handler.
    fn call_app_flow(slf: &Bound<'_, Self>, method: &Bound<'_, PyString>, message: &str) -> PyResult<()> {
        let py = slf.py();
        let protocol = Self::field(slf, |st| &st.app_protocol)?;
        let outcome = match &protocol {
            Some(p) => p.call_method0(method).map(drop),
            None => Err(none_has_no(&method.to_string())),
        };
        match outcome {
            Err(err) if !is_fatal(py, &err) => {
                let context = PyDict::new(py);
                context.set_item("message", message)?;
                context.set_item("exception", err.into_value(py))?;
                context.set_item("transport", Self::field(slf, |st| &st.app_transport)?)?;
                context.set_item("protocol", slf)?;
                Self::loop_of(slf)?.call_method1(intern!(py, "call_exception_handler"), (context,)).map(drop)
            }
            other => other,
        }
    }

    fn control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let size = Self::write_buffer_size(slf)? as f64;
        let action = {
            let mut st = slf.get().st.borrow_mut(py)?;
            if size >= st.outgoing_high.num && !st.app_writing_paused {
                st.app_writing_paused = true;
                Some(true)
            } else if size <= st.outgoing_low.num && st.app_writing_paused {
                st.app_writing_paused = false;
                Some(false)
            } else {
                None
            }
        };
        match action {
            Some(true) => Self::call_app_flow(slf, intern!(py, "pause_writing"), "protocol.pause_writing() failed"),
            Some(false) => Self::call_app_flow(slf, intern!(py, "resume_writing"), "protocol.resume_writing() failed"),
            None => Ok(()),
        }
    }

    fn control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let size = Self::read_buffer_size(slf)? as f64;
        let action = {
            let mut st = slf.get().st.borrow_mut(py)?;
            if size >= st.incoming_high.num && !st.ssl_reading_paused {
                st.ssl_reading_paused = true;
                Some(intern!(py, "pause_reading"))
            } else if size <= st.incoming_low.num && st.ssl_reading_paused {
                st.ssl_reading_paused = false;
                Some(intern!(py, "resume_reading"))
            } else {
                None
            }
        };
        match action {
            Some(method) => Self::transport_or_error(slf, &method.to_string())?.call_method0(method).map(drop),
            None => Ok(()),
        }
    }

    /// asyncio's `_fatal_error`, called where asyncio calls it inside an
    /// `except` clause handling `exc` (its debug log's `exc_info=True`
    /// then shows `exc`).
    fn fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error_logging(slf, exc, message, Some(exc))
    }

    /// `_fatal_error`; `handling`: the exception asyncio's `exc_info=True`
    /// would find being handled (None: whatever Python code is handling).
    fn fatal_error_logging(
        slf: &Bound<'_, Self>,
        exc: &Bound<'_, PyAny>,
        message: &str,
        handling: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let transport = Self::field(slf, |st| &st.transport)?;
        if let Some(transport) = &transport {
            if transport.is_truthy()? {
                transport.call_method1(intern!(py, "_force_close"), (exc,))?;
            }
        }
        if exc.is_instance_of::<PyOSError>() {
            if Self::debug(slf)? {
                let kwargs = PyDict::new(py);
                match handling {
                    Some(handled) => kwargs.set_item("exc_info", handled)?,
                    None => kwargs.set_item("exc_info", true)?,
                }
                api(py)?.logger.bind(py).call_method(intern!(py, "debug"), ("%r: %s", slf, message), Some(&kwargs))?;
            }
        } else if !exc.is_instance(&api(py)?.exceptions.bind(py).getattr(intern!(py, "CancelledError"))?)? {
            let context = PyDict::new(py);
            context.set_item("message", message)?;
            context.set_item("exception", exc)?;
            context.set_item("transport", Self::field(slf, |st| &st.transport)?)?;
            context.set_item("protocol", slf)?;
            Self::loop_of(slf)?.call_method1(intern!(py, "call_exception_handler"), (context,))?;
        }
        Ok(())
    }
}

#[pymethods]
impl SslProtocol {
    #[new]
    #[pyo3(signature = (r#loop, app_protocol, sslcontext, waiter, server_side=None, server_hostname=None,
                        call_connection_made=None, ssl_handshake_timeout=None, ssl_shutdown_timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        r#loop: &Bound<'_, PyAny>,
        app_protocol: &Bound<'_, PyAny>,
        sslcontext: &Bound<'_, PyAny>,
        waiter: &Bound<'_, PyAny>,
        server_side: Option<&Bound<'_, PyAny>>,
        server_hostname: Option<&Bound<'_, PyAny>>,
        call_connection_made: Option<&Bound<'_, PyAny>>,
        ssl_handshake_timeout: Option<&Bound<'_, PyAny>>,
        ssl_shutdown_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let api = api(py)?;
        let constants = api.constants.bind(py);
        let timeout = |given: Option<&Bound<'_, PyAny>>, name: &str, default: &str| -> PyResult<Py<PyAny>> {
            match given {
                None => Ok(constants.getattr(default)?.unbind()),
                Some(t) if t.le(0)? => {
                    Err(PyValueError::new_err(format!("{name} should be a positive number, got {}", t.str()?)))
                }
                Some(t) => Ok(t.clone().unbind()),
            }
        };
        let handshake_timeout = timeout(ssl_handshake_timeout, "ssl_handshake_timeout", "SSL_HANDSHAKE_TIMEOUT")?;
        let shutdown_timeout = timeout(ssl_shutdown_timeout, "ssl_shutdown_timeout", "SSL_SHUTDOWN_TIMEOUT")?;
        let server_side_flag = match server_side {
            Some(flag) => flag.is_truthy()?,
            None => false,
        };
        let sslcontext = if sslcontext.is_truthy()? {
            sslcontext.clone()
        } else {
            api.sslproto
                .bind(py)
                .getattr(intern!(py, "_create_transport_context"))?
                .call1((server_side, server_hostname))?
        };
        let server_hostname = match server_hostname {
            Some(h) if h.is_truthy()? && !server_side_flag => Some(h.clone().unbind()),
            _ => None,
        };
        let extra = PyDict::new(py);
        extra.set_item("sslcontext", &sslcontext)?;
        let (buffer, buffer_view) = new_buffer(py, MAX_SIZE)?;

        let mut st = TlsState {
            loop_: Some(r#loop.clone().unbind()),
            sslcontext: Some(sslcontext.clone().unbind()),
            extra: Some(extra.unbind()),
            waiter: if waiter.is_none() { None } else { Some(waiter.clone().unbind()) },
            server_side: server_side_flag,
            server_hostname,
            handshake_timeout: Some(handshake_timeout),
            shutdown_timeout: Some(shutdown_timeout),
            buffer: Some(buffer),
            buffer_view: Some(buffer_view),
            app_state: if call_connection_made.map_or(Ok(true), |c| c.is_truthy())? { AppState::Init } else { AppState::ConMade },
            ..Default::default()
        };
        // _set_app_protocol, without a Python object for self yet.
        st.app_buffered = buffered_methods(app_protocol)?;
        st.app_protocol = Some(app_protocol.clone().unbind());

        let incoming = api.memory_bio.bind(py).call0()?;
        let outgoing = api.memory_bio.bind(py).call0()?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("server_side", st.server_side)?;
        kwargs.set_item("server_hostname", cloned(py, &st.server_hostname))?;
        let sslobj = sslcontext.call_method(intern!(py, "wrap_bio"), (&incoming, &outgoing), Some(&kwargs))?;
        // An ssl.SSLObject's read/write/pending only forward to its C
        // object's: call those directly.  A subclass's may do more.
        let methods_of = if sslobj.get_type().is(api.ssl_object.bind(py)) {
            sslobj.getattr(intern!(py, "_sslobj")).unwrap_or_else(|_| sslobj.clone())
        } else {
            sslobj.clone()
        };
        st.ssl_read = Some(methods_of.getattr(intern!(py, "read"))?.unbind());
        st.ssl_write = Some(methods_of.getattr(intern!(py, "write"))?.unbind());
        st.ssl_pending = Some(methods_of.getattr(intern!(py, "pending"))?.unbind());
        st.incoming_write = Some(incoming.getattr(intern!(py, "write"))?.unbind());
        st.outgoing_read = Some(outgoing.getattr(intern!(py, "read"))?.unbind());
        st.incoming = Some(incoming.unbind());
        st.outgoing = Some(outgoing.unbind());
        st.sslobj = Some(sslobj.unbind());
        let (high, low) = Self::flow_limits(py, None, None, "FLOW_CONTROL_HIGH_WATER_SSL_READ")?;
        st.incoming_high = high;
        st.incoming_low = low;
        let (high, low) = Self::flow_limits(py, None, None, "FLOW_CONTROL_HIGH_WATER_SSL_WRITE")?;
        st.outgoing_high = high;
        st.outgoing_low = low;
        Ok(SslProtocol { st: GilCell::new(st) })
    }

    // -- The protocol interface the transport below calls ---------------------

    /// Start the handshake.
    fn connection_made(slf: &Bound<'_, Self>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let old = slf.get().st.borrow_mut(slf.py())?.transport.replace(transport.clone().unbind());
        drop(old);
        Self::start_handshake(slf)
    }

    /// The transport below closed: tell the application (unless the
    /// handshake never finished), fail the waiter, drop everything.
    fn connection_lost(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let (backlog, outgoing, app_transport) = {
            let mut st = slf.get().st.borrow_mut(py)?;
            st.conn_lost += 1;
            (std::mem::take(&mut st.write_backlog), cloned(py, &st.outgoing_read), cloned(py, &st.app_transport))
        };
        drop(backlog);
        if let Some(read) = outgoing {
            read.bind(py).call0()?;
        }
        if let Some(app_transport) = app_transport {
            app_transport.bind(py).setattr(intern!(py, "_closed"), true)?;
        }
        let lost = {
            let mut st = slf.get().st.borrow_mut(py)?;
            if st.state != State::DoHandshake && matches!(st.app_state, AppState::ConMade | AppState::Eof) {
                st.app_state = AppState::ConLost;
                Some(cloned(py, &st.app_protocol))
            } else {
                None
            }
        };
        if let Some(protocol) = lost {
            let protocol = protocol.ok_or_else(|| none_has_no("connection_lost"))?;
            let callback = protocol.bind(py).getattr(intern!(py, "connection_lost"))?;
            Self::loop_of(slf)?.call_method1(intern!(py, "call_soon"), (callback, exc))?;
        }
        Self::set_state(slf, State::Unwrapped)?;
        let dropped = {
            let mut st = slf.get().st.borrow_mut(py)?;
            (st.transport.take(), st.app_transport.take(), st.app_protocol.take(), st.app_buffered.take())
        };
        drop(dropped);
        Self::wakeup_waiter(slf, Some(exc.clone()))?;
        let (shutdown, handshake) = {
            let mut st = slf.get().st.borrow_mut(py)?;
            (st.shutdown_timeout_handle.take(), st.handshake_timeout_handle.take())
        };
        Self::cancel_handle(py, shutdown)?;
        Self::cancel_handle(py, handshake)
    }

    /// The buffer the transport reads into (at most 256 KiB, as asyncio's).
    fn get_buffer(slf: &Bound<'_, Self>, n: isize) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let want = if n <= 0 || n as usize > MAX_SIZE { MAX_SIZE } else { n as usize };
        let (buffer, view) = {
            let st = slf.get().st.borrow_mut(py)?;
            (st.buffer.as_ref().map(|b| b.clone_ref(py)), cloned(py, &st.buffer_view))
        };
        if let (Some(buffer), Some(view)) = (buffer, view) {
            if buffer.bind(py).len() >= want {
                return Ok(view);
            }
        }
        let (buffer, view) = new_buffer(py, want)?;
        let old = {
            let mut st = slf.get().st.borrow_mut(py)?;
            (st.buffer.replace(buffer), st.buffer_view.replace(view.clone_ref(py)))
        };
        drop(old);
        Ok(view)
    }

    /// `nbytes` arrived in the buffer: feed them to the SSL object and move
    /// the state machine on.
    fn buffer_updated(slf: &Bound<'_, Self>, nbytes: isize) -> PyResult<()> {
        let py = slf.py();
        let (view, write, state) = {
            let st = slf.get().st.borrow_mut(py)?;
            (cloned(py, &st.buffer_view), cloned(py, &st.incoming_write), st.state)
        };
        let (Some(view), Some(write)) = (view, write) else {
            return Err(PyRuntimeError::new_err("SSLProtocol has no incoming BIO"));
        };
        let received = slice_of(view.bind(py), 0, Some(nbytes))?;
        write.bind(py).call1((received,))?;
        match state {
            State::DoHandshake => Self::do_handshake(slf),
            State::Wrapped => Self::do_read(slf),
            State::Flushing => Self::do_flush(slf),
            State::Shutdown => Self::do_shutdown(slf),
            State::Unwrapped => Ok(()),
        }
    }

    /// The peer half-closed the connection below.
    fn eof_received(slf: &Bound<'_, Self>) -> PyResult<Option<bool>> {
        let py = slf.py();
        slf.get().st.borrow_mut(py)?.eof_received = true;
        let outcome = (|| -> PyResult<Option<bool>> {
            if Self::debug(slf)? {
                Self::log(py, "debug", ("%r received EOF", slf))?;
            }
            match Self::state(slf)? {
                State::DoHandshake => {
                    let reset = py.get_type::<pyo3::exceptions::PyConnectionResetError>().into_any();
                    Self::on_handshake_complete(slf, Some(reset))?;
                }
                State::Wrapped => {
                    Self::set_state(slf, State::Flushing)?;
                    if slf.get().st.borrow_mut(py)?.app_reading_paused {
                        return Ok(Some(true));
                    }
                    Self::do_flush(slf)?;
                }
                State::Flushing => {
                    Self::do_write(slf)?;
                    Self::set_state(slf, State::Shutdown)?;
                    Self::do_shutdown(slf)?;
                }
                State::Shutdown => Self::do_shutdown(slf)?,
                State::Unwrapped => {}
            }
            Ok(None)
        })();
        if let Err(err) = &outcome {
            if is_exception(py, err) {
                Self::transport_or_error(slf, "close")?.call_method0(intern!(py, "close"))?;
            }
        }
        outcome
    }

    /// The transport below is over its high-water mark.
    fn pause_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut st = slf.get().st.borrow_mut(slf.py())?;
        if st.ssl_writing_paused {
            return Err(PyAssertionError::new_err(()));
        }
        st.ssl_writing_paused = true;
        Ok(())
    }

    /// The transport below drained: send what the SSL object produced.
    fn resume_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut st = slf.get().st.borrow_mut(slf.py())?;
            if !st.ssl_writing_paused {
                return Err(PyAssertionError::new_err(()));
            }
            st.ssl_writing_paused = false;
        }
        Self::process_outgoing(slf)
    }

    // -- What `_SSLProtocolTransport` and asyncio call ------------------------

    #[pyo3(signature = (name, default=None))]
    fn _get_extra_info(slf: &Bound<'_, Self>, name: &Bound<'_, PyAny>, default: Option<&Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let (extra, transport) = {
            let st = slf.get().st.borrow_mut(py)?;
            (st.extra.as_ref().map(|e| e.clone_ref(py)), cloned(py, &st.transport))
        };
        if let Some(extra) = extra {
            if let Some(value) = extra.bind(py).get_item(name)? {
                return Ok(value.unbind());
            }
        }
        match transport {
            Some(transport) => {
                Ok(transport.bind(py).call_method1(intern!(py, "get_extra_info"), (name, default))?.unbind())
            }
            None => Ok(default.map_or_else(|| py.None(), |d| d.clone().unbind())),
        }
    }

    fn _set_app_protocol(slf: &Bound<'_, Self>, app_protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::set_app_protocol_inner(slf, app_protocol)
    }

    #[pyo3(signature = (exc=None))]
    fn _wakeup_waiter(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        Self::wakeup_waiter(slf, exc)
    }

    fn _get_app_transport<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::get_app_transport_inner(slf)
    }

    fn _check_handshake_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        if Self::state(slf)? != State::DoHandshake {
            return Ok(());
        }
        let py = slf.py();
        let timeout = Self::required(slf, "handshake timeout", |st| &st.handshake_timeout)?;
        let message =
            format!("SSL handshake is taking longer than {} seconds: aborting the connection", timeout.str()?);
        let exc = py.get_type::<pyo3::exceptions::PyConnectionAbortedError>().call1((message,))?;
        // Called from a timer, not an except clause.
        Self::fatal_error_logging(slf, &exc, "Fatal error on transport", None)
    }

    fn _start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::start_shutdown(slf)
    }

    fn _check_shutdown_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if !matches!(Self::state(slf)?, State::Flushing | State::Shutdown) {
            return Ok(());
        }
        let timeout_error = api(py)?.exceptions.bind(py).getattr(intern!(py, "TimeoutError"))?;
        let exc = timeout_error.call1(("SSL shutdown timed out",))?;
        Self::transport_or_error(slf, "_force_close")?.call_method1(intern!(py, "_force_close"), (exc,)).map(drop)
    }

    #[pyo3(signature = (exc=None))]
    fn _abort(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        Self::abort(slf, exc)
    }

    /// Queue application data and encrypt it now if the session is up.
    fn _write_appdata(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let closed = {
            let mut st = slf.get().st.borrow_mut(py)?;
            if matches!(st.state, State::Flushing | State::Shutdown | State::Unwrapped) {
                st.conn_lost += 1;
                Some(st.conn_lost - 1)
            } else {
                None
            }
        };
        if let Some(lost_before) = closed {
            let threshold: u64 = api(py)?
                .constants
                .bind(py)
                .getattr(intern!(py, "LOG_THRESHOLD_FOR_CONNLOST_WRITES"))?
                .extract()?;
            if lost_before >= threshold {
                Self::log(py, "warning", ("SSL connection is closed",))?;
            }
            return Ok(());
        }
        // The usual call is write()'s one-tuple.
        if let Ok(tuple) = list_of_data.cast::<PyTuple>() {
            for data in tuple.iter() {
                Self::append_backlog(slf, data)?;
            }
        } else {
            for data in list_of_data.try_iter()? {
                Self::append_backlog(slf, data?)?;
            }
        }
        if Self::state(slf)? == State::Wrapped {
            if let Err(err) = Self::do_write(slf) {
                if !is_exception(py, &err) {
                    return Err(err);
                }
                let exc = err.into_value(py).into_bound(py).into_any();
                return Self::fatal_error(slf, &exc, "Fatal error on SSL protocol");
            }
        }
        Ok(())
    }

    /// Append to the write backlog without sending (what asyncio's
    /// `_test__append_write_backlog` does).
    fn _append_write_backlog(slf: &Bound<'_, Self>, data: Bound<'_, PyAny>) -> PyResult<()> {
        Self::append_backlog(slf, data)
    }

    fn _do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)
    }

    fn _control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::control_app_writing(slf)
    }

    fn _get_write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<isize> {
        Self::write_buffer_size(slf)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn _set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<Bound<'_, PyAny>>,
        low: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (high, low) = Self::flow_limits(slf.py(), high, low, "FLOW_CONTROL_HIGH_WATER_SSL_WRITE")?;
        let old = {
            let mut st = slf.get().st.borrow_mut(slf.py())?;
            (std::mem::replace(&mut st.outgoing_high, high), std::mem::replace(&mut st.outgoing_low, low))
        };
        drop(old);
        Ok(())
    }

    fn _pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().st.borrow_mut(slf.py())?.app_reading_paused = true;
        Ok(())
    }

    fn _resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = slf.get().st.borrow_mut(py)?;
            if !st.app_reading_paused {
                return Ok(());
            }
            st.app_reading_paused = false;
        }
        let resume = slf.getattr(intern!(py, "_resume_after_pause"))?;
        Self::loop_of(slf)?.call_method1(intern!(py, "call_soon"), (resume,)).map(drop)
    }

    /// What `_resume_reading` schedules: carry on where the pause stopped.
    fn _resume_after_pause(slf: &Bound<'_, Self>) -> PyResult<()> {
        match Self::state(slf)? {
            State::Wrapped => Self::do_read(slf),
            State::Flushing => Self::do_flush(slf),
            State::Shutdown => Self::do_shutdown(slf),
            _ => Ok(()),
        }
    }

    fn _control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::control_ssl_reading(slf)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn _set_read_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<Bound<'_, PyAny>>,
        low: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (high, low) = Self::flow_limits(slf.py(), high, low, "FLOW_CONTROL_HIGH_WATER_SSL_READ")?;
        let old = {
            let mut st = slf.get().st.borrow_mut(slf.py())?;
            (std::mem::replace(&mut st.incoming_high, high), std::mem::replace(&mut st.incoming_low, low))
        };
        drop(old);
        Ok(())
    }

    fn _get_read_buffer_size(slf: &Bound<'_, Self>) -> PyResult<isize> {
        Self::read_buffer_size(slf)
    }

    #[pyo3(signature = (exc, message="Fatal error on transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error_logging(slf, exc, message, None)
    }

    // -- asyncio's attributes, read-only ---------------------------------------

    #[classattr]
    fn max_size() -> usize {
        MAX_SIZE
    }

    #[getter]
    fn _loop(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::field(slf, |st| &st.loop_)?.map(Bound::unbind))
    }

    #[getter]
    fn _app_protocol(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::field(slf, |st| &st.app_protocol)?.map(Bound::unbind))
    }

    #[getter]
    fn _app_protocol_is_buffer(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Ok(slf.get().st.borrow_mut(slf.py())?.app_buffered.is_some())
    }

    #[getter]
    fn _app_transport(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::field(slf, |st| &st.app_transport)?.map(Bound::unbind))
    }

    #[getter]
    fn _transport(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::field(slf, |st| &st.transport)?.map(Bound::unbind))
    }

    #[getter]
    fn _sslcontext(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::field(slf, |st| &st.sslcontext)?.map(Bound::unbind))
    }

    #[getter]
    fn _sslobj(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::field(slf, |st| &st.sslobj)?.map(Bound::unbind))
    }

    /// Replacing the SSL object (CPython's tests put a mock in its place)
    /// rebinds read, write and pending to the new object's.
    #[setter(_sslobj)]
    fn replace_sslobj(slf: &Bound<'_, Self>, sslobj: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let (read, write, pending) = (
            sslobj.getattr(intern!(py, "read"))?.unbind(),
            sslobj.getattr(intern!(py, "write"))?.unbind(),
            sslobj.getattr(intern!(py, "pending"))?.unbind(),
        );
        let old = {
            let mut st = slf.get().st.borrow_mut(py)?;
            (
                st.sslobj.replace(sslobj.unbind()),
                st.ssl_read.replace(read),
                st.ssl_write.replace(write),
                st.ssl_pending.replace(pending),
            )
        };
        drop(old);
        Ok(())
    }

    #[getter]
    fn _incoming(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::field(slf, |st| &st.incoming)?.map(Bound::unbind))
    }

    #[getter]
    fn _outgoing(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::field(slf, |st| &st.outgoing)?.map(Bound::unbind))
    }

    #[getter]
    fn _waiter(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::field(slf, |st| &st.waiter)?.map(Bound::unbind))
    }

    #[getter]
    fn _server_hostname(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::field(slf, |st| &st.server_hostname)?.map(Bound::unbind))
    }

    #[getter]
    fn _ssl_handshake_timeout(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::field(slf, |st| &st.handshake_timeout)?.map(Bound::unbind))
    }

    #[getter]
    fn _ssl_shutdown_timeout(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::field(slf, |st| &st.shutdown_timeout)?.map(Bound::unbind))
    }

    #[getter]
    fn _extra(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyDict>>> {
        Ok(slf.get().st.borrow_mut(slf.py())?.extra.as_ref().map(|e| e.clone_ref(slf.py())))
    }

    #[getter]
    fn _server_side(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Ok(slf.get().st.borrow_mut(slf.py())?.server_side)
    }

    /// `sslproto.SSLProtocolState` member.
    #[getter]
    fn _state(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let name = Self::state(slf)?.name();
        Ok(api(py)?.sslproto.bind(py).getattr("SSLProtocolState")?.getattr(name)?.unbind())
    }

    /// `sslproto.AppProtocolState` member.
    #[getter]
    fn _app_state(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let name = slf.get().st.borrow_mut(py)?.app_state.name();
        Ok(api(py)?.sslproto.bind(py).getattr("AppProtocolState")?.getattr(name)?.unbind())
    }

    #[getter]
    fn _conn_lost(slf: &Bound<'_, Self>) -> PyResult<u64> {
        Ok(slf.get().st.borrow_mut(slf.py())?.conn_lost)
    }

    #[getter]
    fn _eof_received(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Ok(slf.get().st.borrow_mut(slf.py())?.eof_received)
    }

    #[getter]
    fn _write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<isize> {
        Ok(slf.get().st.borrow_mut(slf.py())?.write_buffer_size)
    }

    #[getter]
    fn _app_reading_paused(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Ok(slf.get().st.borrow_mut(slf.py())?.app_reading_paused)
    }

    #[getter]
    fn _app_writing_paused(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Ok(slf.get().st.borrow_mut(slf.py())?.app_writing_paused)
    }

    #[getter]
    fn _ssl_reading_paused(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Ok(slf.get().st.borrow_mut(slf.py())?.ssl_reading_paused)
    }

    #[getter]
    fn _ssl_writing_paused(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Ok(slf.get().st.borrow_mut(slf.py())?.ssl_writing_paused)
    }

    #[getter]
    fn _incoming_high_water(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(cloned(slf.py(), &slf.get().st.borrow_mut(slf.py())?.incoming_high.value))
    }

    #[getter]
    fn _incoming_low_water(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(cloned(slf.py(), &slf.get().st.borrow_mut(slf.py())?.incoming_low.value))
    }

    #[getter]
    fn _outgoing_high_water(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(cloned(slf.py(), &slf.get().st.borrow_mut(slf.py())?.outgoing_high.value))
    }

    #[getter]
    fn _outgoing_low_water(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Ok(cloned(slf.py(), &slf.get().st.borrow_mut(slf.py())?.outgoing_low.value))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self.st.try_peek() {
            Some(st) => st.refs(&mut |o| visit.call(o)),
            None => Ok(()),
        }
    }

    fn __clear__(&self) {
        self.st.replace_for_clear(TlsState::default());
    }
}

impl SslProtocol {
    /// Queue `data`, then count its len() (asyncio's order: an object
    /// without a length is queued, and the error raised).
    fn append_backlog(slf: &Bound<'_, Self>, data: Bound<'_, PyAny>) -> PyResult<()> {
        slf.get().st.borrow_mut(slf.py())?.write_backlog.push_back(data.clone().unbind());
        let size = data.len()? as isize;
        slf.get().st.borrow_mut(slf.py())?.write_buffer_size += size;
        Ok(())
    }
}
