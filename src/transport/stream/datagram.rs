//! Datagram sockets (UDP, Unix datagram): `StreamTransport` with
//! `Kind::Datagram` behaves as asyncio's `_SelectorDatagramTransport`
//! (CPython's selector_events.py).
//!
//! * A readiness report receives every queued datagram (at most
//!   `MAX_DATAGRAMS_PER_EVENT`, then the rest next iteration) where asyncio
//!   receives one per loop iteration; datagram_received() sees them in the
//!   same order.  An OSError from receiving goes to error_received() and
//!   reading goes on next iteration (EBADF -- the fd closed under the
//!   transport -- is fatal instead: asyncio's selector would go quiet).
//! * sendto() sends at once when nothing is queued; a datagram the kernel
//!   has no room for is queued whole, as bytes, with its address.  An
//!   OSError from sending goes to error_received(); other errors are fatal.
//! * On a plain `socket.socket` of family AF_INET, AF_INET6 or AF_UNIX the
//!   system calls are made on the fd, and addresses converted here
//!   (`sockaddr.rs`, with a small cache of recent peers); other sockets get
//!   their own `recvfrom`/`send`/`sendto` methods called, as asyncio does.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{Kind, StreamState, StreamTransport, LOG_THRESHOLD_FOR_CONNLOST_WRITES, READ_CHUNK};
use crate::event_loop::LoopCore;
use crate::hooks::call_hook;
use crate::transport::sockaddr::{family_supported, to_python, AddrCache, SockAddr};
use crate::transport::sys::{is_would_block, os_error, recv_from, send_to, socket_type, with_bytes, Io};

/// Datagrams one readiness report may receive before letting other
/// callbacks run (the rest are received next iteration).
const MAX_DATAGRAMS_PER_EVENT: usize = 32;

thread_local! {
    /// Where datagrams are received before being copied into a bytes
    /// object of their size (asyncio's `max_size`: 256 KiB, more than any
    /// UDP datagram).  Borrowed only inside `recv_native`, which runs no
    /// Python code meanwhile.
    static RECV_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A datagram waiting for room in the socket's send buffer.
pub(super) struct Queued {
    data: Py<PyBytes>,
    addr: Py<PyAny>,
}

/// What a datagram transport keeps besides the stream state.
pub(super) struct DatagramState {
    queue: VecDeque<Queued>,
    /// asyncio's `_buffer_size`: queued bytes, plus a header per datagram
    /// on 3.13+.
    size: usize,
    header: usize,
    /// 3.11/3.12 drop empty datagrams; 3.13+ sends them.
    send_empty: bool,
    /// The remote address given to create_datagram_endpoint (asyncio's
    /// `_address`), if truthy.
    address: Option<Py<PyAny>>,
    /// The socket had a peer when the transport was made: `send`, not
    /// `sendto` (asyncio tests `extra['peername']`).
    connected: bool,
    /// System calls on the fd (see the module docs).
    native: bool,
    family: i32,
    cache: AddrCache,
}

impl DatagramState {
    pub(super) fn queued_bytes(&self) -> usize {
        self.size
    }

    pub(super) fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Take the queued datagrams and cached addresses (dropped by the
    /// caller once it no longer borrows the state).
    pub(super) fn take_refs(&mut self) -> (VecDeque<Queued>, AddrCache) {
        self.size = 0;
        (std::mem::take(&mut self.queue), std::mem::take(&mut self.cache))
    }

    pub(super) fn visit<E>(&self, visit: &mut dyn FnMut(&Py<PyAny>) -> Result<(), E>) -> Result<(), E> {
        for q in &self.queue {
            visit(q.data.as_any())?;
            visit(&q.addr)?;
        }
        if let Some(a) = &self.address {
            visit(a)?;
        }
        self.cache.visit(visit)
    }

    fn cost(&self, data: &Py<PyBytes>, py: Python<'_>) -> usize {
        data.bind(py).as_bytes().len() + self.header
    }
}

/// What one receive came to.
enum Received<'py> {
    Datagram(Bound<'py, PyBytes>, Py<PyAny>),
    Drained,
    /// An OSError, for error_received().
    Error(PyErr),
    /// Anything else: a fatal error.
    Fatal(PyErr),
}

/// What one send came to.
enum Sent {
    Done,
    WouldBlock,
    Error(PyErr),
    Fatal(PyErr),
}

/// How a Python call on the socket failed, as asyncio sorts it.
fn sort_error(py: Python<'_>, err: PyErr) -> Result<PyErr, PyErr> {
    if is_would_block(py, &err) {
        Err(err)
    } else {
        Ok(err)
    }
}

impl StreamTransport {
    pub(super) fn attach_datagram(
        slf: &Bound<'_, Self>,
        loop_: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        address: Option<&Bound<'_, PyAny>>,
        connected: bool,
    ) -> PyResult<()> {
        let py = slf.py();
        let family: i32 = sock.getattr(intern!(py, "family"))?.extract()?;
        let address = match address {
            Some(a) if a.is_truthy()? => Some(a.clone().unbind()),
            _ => None,
        };
        let native = sock.get_type().is(socket_type(py)?) && family_supported(family);
        let modern = py.version_info() >= (3, 13);
        let dgram = DatagramState {
            queue: VecDeque::new(),
            size: 0,
            header: if modern { 8 } else { 0 },
            send_empty: modern,
            address,
            connected,
            native,
            family,
            cache: AddrCache::default(),
        };
        let (loop_, fd) =
            Self::bind(slf, loop_, sock, protocol, |st| StreamState { kind: Kind::Datagram, dgram: Some(Box::new(dgram)), ..st })?;
        LoopCore::watch_transport(&loop_, fd, slf.clone().unbind())
    }

    /// Receive what is queued (asyncio's `_read_ready`, repeated).
    pub(super) fn datagram_read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        for _ in 0..MAX_DATAGRAMS_PER_EVENT {
            let (protocol, fd, native) = {
                let st = slf.get().st.borrow_mut(py)?;
                if !st.reads_pending() {
                    return Ok(());
                }
                match (&st.protocol, &st.dgram) {
                    (Some(p), Some(d)) => (p.clone_ref(py), st.fd, d.native),
                    _ => return Ok(()),
                }
            };
            let protocol = protocol.into_bound(py);
            let received = if native { Self::recv_native(slf, fd)? } else { Self::recv_via_socket(slf)? };
            let delivered = match received {
                Received::Datagram(data, addr) => {
                    Self::deliver(slf, &protocol, |st| &st.on_data, intern!(py, "datagram_received"), (data, addr))
                        .map(drop)
                }
                Received::Error(err) if err.value(py).getattr(intern!(py, "errno"))?.eq(libc::EBADF)? => {
                    // The fd was closed under the transport: asyncio's
                    // selector would never report it again; end here.
                    return Self::fatal_error(slf, err, Kind::Datagram.read_failed());
                }
                Received::Error(err) => {
                    // Like asyncio, which reads once per iteration: the
                    // rest (more errors, or datagrams) next iteration.
                    Self::retry_read(slf)?;
                    return Self::error_received(slf, err);
                }
                Received::Drained => return Ok(()),
                Received::Fatal(err) => return Self::fatal_error(slf, err, Kind::Datagram.read_failed()),
            };
            if let Err(err) = delivered {
                // The reader callback raised: the loop's exception handler
                // reports it, and the rest is received next iteration.
                Self::retry_read(slf)?;
                return Err(err);
            }
        }
        // Still more queued: let the other callbacks run first.
        Self::retry_read(slf)
    }

    fn recv_native<'py>(slf: &Bound<'py, Self>, fd: RawFd) -> PyResult<Received<'py>> {
        let py = slf.py();
        let mut from = SockAddr::empty();
        let got = RECV_BUF.with(|cell| -> PyResult<Option<Result<Bound<'py, PyBytes>, i32>>> {
            let mut buf = cell.try_borrow_mut().map_err(|_| PyRuntimeError::new_err("datagram buffer in use"))?;
            if buf.len() < READ_CHUNK {
                buf.resize(READ_CHUNK, 0);
            }
            Ok(match recv_from(fd, &mut buf[..READ_CHUNK], &mut from) {
                Io::Done(n) => Some(Ok(PyBytes::new(py, &buf[..n]))),
                Io::WouldBlock => None,
                Io::Failed(errno) => Some(Err(errno)),
            })
        })?;
        let data = match got {
            None => return Ok(Received::Drained),
            Some(Err(errno)) => return Ok(Received::Error(os_error(py, errno))),
            Some(Ok(data)) => data,
        };
        // Converting makes only str/int/tuple/bytes objects: no Python code
        // runs while the state is borrowed.
        let addr = {
            let mut st = slf.get().st.borrow_mut(py)?;
            match st.dgram.as_mut() {
                Some(d) => d.cache.python(py, &from),
                None => to_python(py, &from),
            }
        };
        match addr {
            Ok(addr) => Ok(Received::Datagram(data, addr)),
            Err(err) => Ok(Received::Fatal(err)),
        }
    }

    /// `sock.recvfrom(max_size)` for sockets the native path does not take.
    fn recv_via_socket<'py>(slf: &Bound<'py, Self>) -> PyResult<Received<'py>> {
        let py = slf.py();
        let Some(sock) = slf.get().st.borrow_mut(py)?.sock.as_ref().map(|s| s.clone_ref(py)) else {
            return Ok(Received::Drained);
        };
        let outcome = slf
            .getattr(intern!(py, "max_size"))
            .and_then(|size| sock.bind(py).call_method1(intern!(py, "recvfrom"), (size,)))
            .and_then(|r| {
                let (data, addr): (Bound<'py, PyBytes>, Py<PyAny>) = r.extract()?;
                Ok((data, addr))
            });
        Ok(match outcome {
            Ok((data, addr)) => Received::Datagram(data, addr),
            Err(err) => match sort_error(py, err) {
                Err(_would_block) => Received::Drained,
                Ok(err) if err.is_instance_of::<PyOSError>(py) => Received::Error(err),
                Ok(err) => Received::Fatal(err),
            },
        })
    }

    /// Send one datagram to `addr` (ignored on a connected socket; None:
    /// to the socket's peer).
    fn send_datagram(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>) -> PyResult<Sent> {
        let py = slf.py();
        let (fd, connected, native, kernel_addr, sock) = {
            let mut st = slf.get().st.borrow_mut(py)?;
            let fd = st.fd;
            let sock = st.sock.as_ref().map(|s| s.clone_ref(py));
            let Some(d) = st.dgram.as_mut() else {
                return Ok(Sent::Done);
            };
            // Finding or converting the address makes no Python call (only
            // exact tuples of exact str and int are converted here).
            // No address on a socket without a peer name (a socketpair's
            // unnamed Unix peer): send() to whatever it is connected to, as
            // uvloop does; asyncio's sendto(data, None) fails with a
            // TypeError.  Unconnected, send() is the kernel's OSError.
            let connected = d.connected || addr.is_none();
            let kernel_addr = if d.native && !connected { d.cache.kernel(d.family, addr) } else { None };
            (fd, connected, d.native, kernel_addr, sock)
        };
        if native && (connected || kernel_addr.is_some()) {
            return Ok(match with_bytes(data, |b| send_to(fd, b, kernel_addr.as_ref()))? {
                Io::Done(_) => Sent::Done,
                Io::WouldBlock => Sent::WouldBlock,
                Io::Failed(errno) => Sent::Error(os_error(py, errno)),
            });
        }
        let Some(sock) = sock else {
            return Ok(Sent::Done);
        };
        let sock = sock.bind(py);
        let outcome = if connected {
            sock.call_method1(intern!(py, "send"), (data,))
        } else {
            sock.call_method1(intern!(py, "sendto"), (data, addr))
        };
        Ok(match outcome {
            Ok(_) => Sent::Done,
            Err(err) => match sort_error(py, err) {
                Err(_would_block) => Sent::WouldBlock,
                Ok(err) if err.is_instance_of::<PyOSError>(py) => Sent::Error(err),
                Ok(err) => Sent::Fatal(err),
            },
        })
    }

    /// An OSError from receiving or sending goes to the protocol's
    /// error_received().
    fn error_received(slf: &Bound<'_, Self>, err: PyErr) -> PyResult<()> {
        let py = slf.py();
        if let Some(p) = slf.get().protocol_of(py)? {
            p.bind(py).call_method1(intern!(py, "error_received"), (err.into_value(py),))?;
        }
        Ok(())
    }

    /// asyncio's `sendto(data, addr=None)`.
    pub(super) fn datagram_sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        Self::check_bytes_like(data)?;
        let none = py.None().into_bound(py);
        let mut addr = addr.cloned().unwrap_or(none);
        let (address, send_empty) = {
            let st = slf.get().st.borrow_mut(py)?;
            let Some(d) = st.dgram.as_ref() else {
                return Err(PyRuntimeError::new_err("not a datagram transport"));
            };
            (d.address.as_ref().map(|a| a.clone_ref(py).into_bound(py)), d.send_empty)
        };
        let len = with_bytes(data, <[u8]>::len)?;
        if len == 0 && !send_empty {
            return Ok(());
        }
        if let Some(address) = &address {
            if !(addr.is_none() || addr.is(address) || addr.eq(address)?) {
                return Err(PyValueError::new_err(format!("Invalid address: must be None or {}", address.str()?)));
            }
            addr = address.clone();
        }
        // Writes once the connection is lost are counted, not sent (asyncio
        // does so on connected transports; on the others, once the socket
        // is closed, where asyncio fails on the missing socket).
        let (warn, queued) = {
            let mut st = slf.get().st.borrow_mut(py)?;
            let lost = (st.conn_lost > 0 && address.is_some()) || st.sock.is_none();
            if lost {
                st.conn_lost += 1;
            }
            (lost.then_some(st.conn_lost > LOG_THRESHOLD_FOR_CONNLOST_WRITES), st.has_queued())
        };
        match warn {
            Some(true) => return call_hook(py, "warn_lost_write", (false,)).map(drop),
            Some(false) => return Ok(()),
            None => {}
        }
        if !queued {
            match Self::send_datagram(slf, data, &addr)? {
                Sent::Done => return Ok(()),
                Sent::WouldBlock => {}
                Sent::Error(err) => return Self::error_received(slf, err),
                Sent::Fatal(err) => return Self::fatal_error(slf, err, Kind::Datagram.write_failed()),
            }
        }
        // Queue an immutable copy (bytes are kept as they are).
        let data = match data.cast_exact::<PyBytes>() {
            Ok(b) => b.clone().unbind(),
            Err(_) => with_bytes(data, |b| PyBytes::new(py, b).unbind())?,
        };
        {
            let mut st = slf.get().st.borrow_mut(py)?;
            if let Some(d) = st.dgram.as_mut() {
                d.size += d.cost(&data, py);
                d.queue.push_back(Queued { data, addr: addr.unbind() });
            }
        }
        Self::maybe_pause_protocol(slf)
    }

    /// Send the queued datagrams (asyncio's `_sendto_ready`).
    pub(super) fn datagram_write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        loop {
            let next = {
                let mut st = slf.get().st.borrow_mut(py)?;
                if st.conn_lost > 0 {
                    return Ok(());
                }
                let Some(d) = st.dgram.as_mut() else {
                    return Ok(());
                };
                match d.queue.pop_front() {
                    Some(q) => {
                        d.size -= d.cost(&q.data, py).min(d.size);
                        q
                    }
                    None => break,
                }
            };
            let sent = Self::send_datagram(slf, next.data.bind(py).as_any(), next.addr.bind(py))?;
            match sent {
                Sent::Done => {}
                Sent::WouldBlock => {
                    let mut st = slf.get().st.borrow_mut(py)?;
                    if let Some(d) = st.dgram.as_mut() {
                        d.size += d.cost(&next.data, py);
                        d.queue.push_front(next);
                    }
                    break;
                }
                Sent::Error(err) => {
                    // asyncio returns with its writer still registered: the
                    // next iteration goes on with the queue (or, empty,
                    // resumes the protocol and finishes a close).
                    Self::retry_write(slf)?;
                    drop(next);
                    return Self::error_received(slf, err);
                }
                Sent::Fatal(err) => {
                    drop(next);
                    return Self::fatal_error(slf, err, Kind::Datagram.write_failed());
                }
            }
        }
        Self::maybe_resume_protocol(slf)?;
        let (empty, closing) = {
            let st = slf.get().st.borrow_mut(py)?;
            (!st.dgram.as_ref().is_some_and(|d| d.has_queued()), st.closing)
        };
        if empty && closing {
            Self::call_connection_lost_impl(slf, py.None().into_bound(py))?;
        }
        Ok(())
    }

    /// Try writing at the next I/O dispatch.
    fn retry_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if let Some(loop_) = slf.get().loop_of(py)? {
            LoopCore::retry_write(loop_.bind(py), slf.clone().unbind())?;
        }
        Ok(())
    }
}
