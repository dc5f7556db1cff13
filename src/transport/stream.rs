//! `StreamTransport`: the native core of ferroloop's socket transports (TCP
//! and Unix stream sockets), behaving as asyncio's `_SelectorSocketTransport`
//! (CPython's selector_events.py) does, call for call and message for
//! message.  The Python subclass (`ferroloop._transports.SocketTransport`)
//! adds the cold parts: construction, `get_extra_info`, repr, `__del__`,
//! error reports.
//!
//! The same machinery carries pipes (`Kind::ReadPipe`, `Kind::WritePipe`,
//! asyncio's `_UnixReadPipeTransport`/`_UnixWritePipeTransport` in
//! unix_events.py); where pipes behave differently is in `pipe.rs`.
//!
//! How it differs inside (not in behaviour):
//! * The fd is registered once with the poller, edge-triggered for both
//!   directions.  asyncio's reader/writer registrations become two flags:
//!   `reader_on` (asyncio would have a reader registered) and a non-empty
//!   write buffer (asyncio would have a writer).  No epoll_ctl call when a
//!   transport starts or stops writing, pauses or resumes.
//! * A readiness report reads until the socket is drained, at most
//!   `MAX_READS_PER_EVENT` full reads (one on a read pipe), then yields to
//!   the other callbacks and continues next iteration
//!   (`LoopCore::retry_io`).  Drained means
//!   EAGAIN, or a short read when the report said nothing about a hang-up:
//!   data arriving after that read is a new edge, a new report.  After a
//!   hang-up report, and on retries, a short read is followed by another
//!   read in the next iteration (until EAGAIN or the EOF).
//! * Reads for `Protocol`s land straight in a new bytes object shrunk to
//!   size (no copy); `BufferedProtocol`s get the bytes straight in the
//!   buffer `get_buffer()` returns.
//! * Written bytes that the kernel did not take are copied into a
//!   `WriteBuffer` (pure Rust).
//! * Protocol callbacks for reads run in one copy of the context the
//!   transport was created in, as asyncio's reader handle does.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use super::buffer::{WriteBuffer, HOLD_AT_LEAST, MAX_SLICES};
use super::sys::{
    grow_pipe, os_error, peek, read_bytes, read_raw, shutdown_write, writable_view, write, write_vectored, with_bytes, BufferView, Io, RecvError,
    WriteCall,
};
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::handles::{copy_current_context, is_fatal};
use crate::hooks::call_hook;

/// asyncio's `max_size`: the most one `recv` asks for.
const READ_CHUNK: usize = 256 * 1024;
/// Full reads one readiness report may do before letting other callbacks
/// run (the rest is read in the next iteration).
const MAX_READS_PER_EVENT: usize = 16;
/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

mod datagram;
mod pipe;

/// What the transport carries; the pipe kinds follow asyncio's pipe
/// transports where those differ from its socket transport.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
enum Kind {
    #[default]
    Socket,
    ReadPipe,
    WritePipe,
    /// A datagram socket (UDP, Unix datagram): see datagram.rs.
    Datagram,
}

impl Kind {
    fn write_call(self) -> WriteCall {
        match self {
            Kind::Socket | Kind::Datagram => WriteCall::Send,
            Kind::ReadPipe | Kind::WritePipe => WriteCall::Write,
        }
    }

    fn is_pipe(self) -> bool {
        matches!(self, Kind::ReadPipe | Kind::WritePipe)
    }

    fn read_failed(self) -> &'static str {
        match self {
            Kind::Socket => "Fatal read error on socket transport",
            Kind::ReadPipe | Kind::WritePipe => "Fatal read error on pipe transport",
            Kind::Datagram => "Fatal read error on datagram transport",
        }
    }

    fn write_failed(self) -> &'static str {
        match self {
            Kind::Socket => "Fatal write error on socket transport",
            Kind::ReadPipe | Kind::WritePipe => "Fatal write error on pipe transport",
            Kind::Datagram => "Fatal write error on datagram transport",
        }
    }
}
/// Linux's default pipe buffer: a read this big found the pipe full.
const DEFAULT_PIPE_CAPACITY: usize = 64 * 1024;
/// What a pipe that fills up is grown to (pipe-max-size's default, the most
/// an unprivileged process may ask for).  Each wake-up of the loop or of
/// the process at the other end then moves 16 times more: 1 GiB through a
/// pipe went from ~1.4 s to ~0.2 s on these machines.  Only pipes seen
/// full grow, so idle pipes do not use up the user's pipe-buffer quota.
/// A write pipe grows when the loop flushes it after waiting, never inside
/// `write()`: a first burst fills the default 64 KiB and then the
/// transport's buffer, and pauses the protocol where asyncio's would.
const GROWN_PIPE_CAPACITY: usize = 1024 * 1024;
/// At most this many pipes of the process are grown at once.  The pipe
/// quota (pipe-user-pages-soft, 64 MiB by default) is per user, and a user
/// over it gets one-page pipes everywhere: many busy children then stay
/// within a quarter of it, and the rest keep the default capacity.
const MAX_GROWN_PIPES: usize = 16;
static GROWN_PIPES: AtomicUsize = AtomicUsize::new(0);

/// One of the MAX_GROWN_PIPES slots, given back when dropped (the transport
/// closed its pipe, or was freed).
struct GrownPipe;

impl GrownPipe {
    fn claim() -> Option<GrownPipe> {
        GROWN_PIPES
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < MAX_GROWN_PIPES).then_some(n + 1))
            .ok()
            .map(|_| GrownPipe)
    }
}

impl Drop for GrownPipe {
    fn drop(&mut self) {
        GROWN_PIPES.fetch_sub(1, Ordering::Relaxed);
    }
}
/// asyncio's default write buffer limits (`_FlowControlMixin`).
const DEFAULT_HIGH_WATER: usize = 64 * 1024;

pub(super) fn buffered_protocol_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    TYPE.import(py, "asyncio.protocols", "BufferedProtocol")
}

/// Write buffer limits: the values as given (for `get_write_buffer_limits`)
/// and as numbers to compare sizes with.
struct Limits {
    high: Py<PyAny>,
    low: Py<PyAny>,
    high_f: f64,
    low_f: f64,
}

#[derive(Default)]
struct StreamState {
    loop_: Option<Py<LoopCore>>,
    sock: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// The protocol's method reads are delivered to (data_received,
    /// buffer_updated or datagram_received), looked up once per
    /// set_protocol as uvloop does; None if the lookup failed (then each
    /// call looks it up, and fails, as asyncio's would).
    on_data: Option<Py<PyAny>>,
    /// A BufferedProtocol's get_buffer, likewise.
    on_get_buffer: Option<Py<PyAny>>,
    /// The context read callbacks run in.
    context: Option<Py<PyAny>>,
    server: Option<Py<PyAny>>,
    /// sendfile's "write buffer drained" future.
    empty_waiter: Option<Py<PyAny>>,
    limits: Option<Limits>,
    fd: RawFd,
    kind: Kind,
    /// The protocol is a BufferedProtocol.
    buffered: bool,
    protocol_connected: bool,
    /// asyncio would have a reader registered: reads are delivered (for a
    /// write pipe: a readiness report means the reader went away).
    reader_on: bool,
    closing: bool,
    paused: bool,
    eof: bool,
    protocol_paused: bool,
    /// A pipe's buffer was grown (or that was tried): see GROWN_PIPE_CAPACITY.
    pipe_grown: bool,
    /// Held while this transport's pipe is grown: see MAX_GROWN_PIPES.
    grown_slot: Option<GrownPipe>,
    /// A read pipe on a device epoll refuses (EPERM: /dev/null, regular
    /// character devices): asyncio's transport exists but its reader cannot
    /// be added, so starting or resuming reading fails with that error.
    unpollable: bool,
    /// asyncio's `_conn_lost`: set once connection_lost is scheduled, then
    /// counts writes attempted after that.  (Write pipes: set by a failed
    /// write; `closing` alone also drops writes.)
    conn_lost: u32,
    buffer: WriteBuffer<HeldBytes>,
    /// A datagram transport's queue and addresses (None for other kinds).
    dgram: Option<Box<datagram::DatagramState>>,
}

impl StreamState {
    fn is_reading(&self) -> bool {
        !self.closing && !self.paused
    }

    /// asyncio would have a reader registered and reads are still wanted.
    fn reads_pending(&self) -> bool {
        // (A write pipe's conn_lost also counts writes dropped after close.)
        self.reader_on && (self.conn_lost == 0 || self.kind == Kind::WritePipe)
    }

    /// asyncio would have a writer registered: data waits to be sent.  (A
    /// write pipe's `conn_lost` also counts writes dropped while it closes,
    /// which must not stop the flush; its errors clear the buffer.)
    fn writes_pending(&self) -> bool {
        self.has_queued() && (self.conn_lost == 0 || self.kind == Kind::WritePipe)
    }

    /// Anything waits to be written (bytes, or datagrams).
    fn has_queued(&self) -> bool {
        match &self.dgram {
            Some(d) => d.has_queued(),
            None => !self.buffer.is_empty(),
        }
    }

    /// get_write_buffer_size(): what flow control compares with the limits.
    fn queued(&self) -> usize {
        match &self.dgram {
            Some(d) => d.queued_bytes(),
            None => self.buffer.len(),
        }
    }

    /// write() would only count the call, not send anything.
    fn writes_dropped(&self) -> bool {
        self.conn_lost > 0 || (self.kind == Kind::WritePipe && self.closing)
    }

    /// Grow a pipe seen full, once.  True if it grew.
    fn grow_pipe_once(&mut self) -> bool {
        if !self.kind.is_pipe() || self.pipe_grown {
            return false;
        }
        self.pipe_grown = true;
        let Some(slot) = GrownPipe::claim() else {
            return false;
        };
        let grown = grow_pipe(self.fd, GROWN_PIPE_CAPACITY);
        if grown {
            self.grown_slot = Some(slot);
        }
        grown
    }

    /// Write out as much of the buffer as the fd takes.  Some(errno) if a
    /// write failed (the buffer is then dropped).
    fn flush(&mut self) -> Option<i32> {
        let how = self.kind.write_call();
        while !self.buffer.is_empty() {
            let (want, io) = if self.buffer.chunk_count() == 1 {
                let only = self.buffer.slices(1).next().unwrap_or(&[]);
                (only.len(), write(self.fd, only, how))
            } else {
                let want = self.buffer.slices(MAX_SLICES).map(<[u8]>::len).sum();
                (want, write_vectored(self.fd, self.buffer.slices(MAX_SLICES), how))
            };
            match io {
                Io::Done(n) => {
                    self.buffer.consume(n);
                    // A short write: the kernel's buffer is full.
                    if n < want && !self.grow_pipe_once() {
                        break;
                    }
                }
                Io::WouldBlock if self.grow_pipe_once() => {}
                Io::WouldBlock => break,
                Io::Failed(errno) => {
                    self.buffer.clear();
                    if self.kind.is_pipe() {
                        self.conn_lost += 1;
                    }
                    return Some(errno);
                }
            }
        }
        None
    }

    fn high_low(&self) -> (f64, f64) {
        match &self.limits {
            Some(l) => (l.high_f, l.low_f),
            None => (DEFAULT_HIGH_WATER as f64, (DEFAULT_HIGH_WATER / 4) as f64),
        }
    }

    fn refs<E>(&self, visit: &mut dyn FnMut(&Py<PyAny>) -> Result<(), E>) -> Result<(), E> {
        if let Some(l) = &self.loop_ {
            visit(l.as_any())?;
        }
        for o in [
            &self.sock,
            &self.protocol,
            &self.on_data,
            &self.on_get_buffer,
            &self.context,
            &self.server,
            &self.empty_waiter,
        ]
            .into_iter()
            .flatten()
        {
            visit(o)?;
        }
        if let Some(l) = &self.limits {
            visit(&l.high)?;
            visit(&l.low)?;
        }
        if let Some(d) = &self.dgram {
            d.visit(visit)?;
        }
        Ok(())
    }
}

/// One piece of a write: its bytes, and the `bytes` object that owns them
/// if it is one (it may then be queued by reference).
struct Part<'a, 'py> {
    bytes: &'a [u8],
    owner: Option<&'a Bound<'py, PyBytes>>,
}

/// An exact `bytes` object queued by reference in a write buffer.
struct HeldBytes {
    _owner: Py<PyBytes>,
    data: *const u8,
    len: usize,
}

impl HeldBytes {
    fn new(owner: &Bound<'_, PyBytes>) -> Self {
        let bytes = owner.as_bytes();
        HeldBytes { data: bytes.as_ptr(), len: bytes.len(), _owner: owner.clone().unbind() }
    }
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `data`/`len` are the buffer of the bytes object `_owner`
        // keeps alive; a bytes object's buffer never moves or changes.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

// SAFETY: the pointer is only an alias of `_owner`'s immutable buffer, read
// (by the transport, under the GIL) while `_owner` is held; `Py` itself is
// Send and Sync.
unsafe impl Send for HeldBytes {}
// SAFETY: as above: shared access only reads immutable bytes.
unsafe impl Sync for HeldBytes {}

/// What one read attempt came to.
enum Read {
    /// Bytes were delivered; `more` if the read filled the buffer (the
    /// socket may hold more).
    Data { more: bool },
    Drained,
    Eof,
    /// An error was reported (the transport is closing).
    Failed,
}

/// No `dict`: the Python subclasses get CPython's own (managed) instance
/// dict, with which method calls on a transport specialise (with pyo3's dict
/// slot, 3.12 never specialises `transport.write`).
#[pyclass(module = "ferroloop._ferroloop", subclass, frozen, weakref)]
pub struct StreamTransport {
    st: GilCell<StreamState>,
}

impl StreamTransport {
    fn loop_of(&self, py: Python<'_>) -> PyResult<Option<Py<LoopCore>>> {
        Ok(self.st.borrow_mut(py)?.loop_.as_ref().map(|l| l.clone_ref(py)))
    }

    fn protocol_of(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(self.st.borrow_mut(py)?.protocol.as_ref().map(|p| p.clone_ref(py)))
    }

    /// The context read callbacks run in.
    pub fn context(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(self.st.borrow_mut(py)?.context.as_ref().map(|c| c.clone_ref(py)))
    }

    /// A read pipe and a write pipe may share one fd (a pty master opened
    /// both ways); nothing else may.
    pub fn may_share_fd_with(&self, py: Python<'_>, other: &StreamTransport) -> bool {
        let (Ok(a), Ok(b)) = (self.st.borrow_mut(py), other.st.borrow_mut(py)) else {
            return false;
        };
        matches!((a.kind, b.kind), (Kind::ReadPipe, Kind::WritePipe) | (Kind::WritePipe, Kind::ReadPipe))
            && a.sock.is_some()
    }

    /// What asyncio's selector would be watching now: (a reader is
    /// registered, a writer is -- data waits to be sent).
    pub fn watching(&self, py: Python<'_>) -> (bool, bool) {
        match self.st.borrow_mut(py) {
            Ok(st) => (st.reads_pending(), st.writes_pending()),
            Err(_) => (true, true),
        }
    }

    /// Readiness reported by the poller (or a read retry): asyncio would run
    /// the reader handle, then the writer handle.
    pub fn on_io(slf: &Bound<'_, Self>, readable: bool, writable: bool, drain: bool) -> PyResult<()> {
        if slf.get().st.borrow_mut(slf.py())?.kind == Kind::Datagram {
            if readable {
                Self::datagram_read_ready(slf)?;
            }
            // (A write retry may find the queue empty: see datagram.rs.)
            if writable {
                Self::datagram_write_ready(slf)?;
            }
            return Ok(());
        }
        if readable {
            if slf.get().st.borrow_mut(slf.py())?.kind == Kind::WritePipe {
                Self::pipe_reader_gone(slf)?;
            } else {
                Self::read_ready(slf, drain)?;
            }
        }
        if writable && slf.get().st.borrow_mut(slf.py())?.writes_pending() {
            Self::write_ready(slf)?;
        }
        Ok(())
    }

    /// asyncio's `_fatal_error` (the Python subclass's method: it logs or
    /// calls the exception handler, then force-closes).
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if is_fatal(py, &err) {
            return Err(err);
        }
        slf.call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message)).map(drop)
    }

    /// Call a protocol method; an exception other than SystemExit and
    /// KeyboardInterrupt becomes a fatal error with `message` (Ok(None)).
    fn call_protocol<'py>(
        slf: &Bound<'py, Self>,
        protocol: &Bound<'py, PyAny>,
        name: &Bound<'py, pyo3::types::PyString>,
        args: impl pyo3::call::PyCallArgs<'py>,
        message: &str,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        Self::fatal_on_error(slf, protocol.call_method1(name, args), message)
    }

    /// A protocol call's outcome: its exception (other than SystemExit and
    /// KeyboardInterrupt) becomes a fatal error with `message` (Ok(None)).
    fn fatal_on_error<'py>(
        slf: &Bound<'py, Self>,
        outcome: PyResult<Bound<'py, PyAny>>,
        message: &str,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        match outcome {
            Ok(v) => Ok(Some(v)),
            Err(e) => Self::fatal_error(slf, e, message).map(|()| None),
        }
    }

    /// Call the cached protocol method (see `on_data`), or look `name` up.
    fn deliver<'py>(
        slf: &Bound<'py, Self>,
        protocol: &Bound<'py, PyAny>,
        cached: fn(&StreamState) -> &Option<Py<PyAny>>,
        name: &Bound<'py, pyo3::types::PyString>,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let method = cached(&*slf.get().st.borrow_mut(py)?).as_ref().map(|m| m.clone_ref(py));
        match method {
            Some(m) => m.into_bound(py).call1(args),
            None => protocol.call_method1(name, args),
        }
    }

    fn read_ready(slf: &Bound<'_, Self>, drain: bool) -> PyResult<()> {
        let py = slf.py();
        for round in 0..MAX_READS_PER_EVENT {
            let first = round == 0;
            let (protocol, buffered, fd, kind) = {
                let st = slf.get().st.borrow_mut(py)?;
                if !st.reads_pending() {
                    return Ok(());
                }
                match &st.protocol {
                    Some(p) => (p.clone_ref(py), st.buffered, st.fd, st.kind),
                    None => return Ok(()),
                }
            };
            let protocol = protocol.into_bound(py);
            let outcome = if buffered {
                // asyncio asks for a buffer only when the socket is
                // readable (the EOF included); a read we try on spec (a
                // retry, a hang-up report, the next of several reads)
                // peeks first, so get_buffer() is never called for nothing.
                // A pending socket error (ECONNRESET) is reported by the
                // peek itself, and consumed: it becomes this read's error.
                let failed = match (drain || !first).then(|| peek(fd)) {
                    Some(Io::WouldBlock) => return Ok(()),
                    Some(Io::Failed(errno)) => Some(errno),
                    _ => None,
                };
                Self::read_into_protocol(slf, &protocol, fd, failed)?
            } else {
                Self::read_bytes(slf, &protocol, fd, kind)?
            };
            match outcome {
                // A read pipe yields after every full read, as asyncio's
                // reads once per readiness report: a subprocess's pipes hand
                // their data on through call_soon (base_subprocess), so the
                // StreamReader that pauses the pipe only sees it after the
                // callbacks queued meanwhile have run.  Reading on would
                // buffer megabytes past the pause (and, with the reader
                // gone, keep a killed child's pipe from reaching its EOF).
                Read::Data { more: true } if kind == Kind::ReadPipe => break,
                Read::Data { more: true } => continue,
                // A short read after a hang-up report: the EOF (or error)
                // is read next iteration, as asyncio would see it, so the
                // callbacks the data caused run before connection_lost.
                Read::Data { more: false } if drain => break,
                Read::Data { .. } | Read::Drained | Read::Failed => return Ok(()),
                Read::Eof if kind == Kind::ReadPipe => return Self::pipe_eof(slf, &protocol),
                Read::Eof => return Self::on_eof(slf, &protocol),
            }
        }
        // Still more to read: let the other callbacks run first.
        Self::retry_read(slf)
    }

    /// Read again at the next I/O dispatch (the edge-triggered fd will not
    /// report data that is already there).
    fn retry_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if let Some(loop_) = slf.get().loop_of(py)? {
            LoopCore::retry_io(loop_.bind(py), slf.clone().unbind())?;
        }
        Ok(())
    }

    fn read_bytes(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>, fd: RawFd, kind: Kind) -> PyResult<Read> {
        let py = slf.py();
        let data = match read_bytes(py, fd, READ_CHUNK) {
            Ok(Some(data)) => data,
            Ok(None) => return Ok(Read::Eof),
            Err(RecvError::WouldBlock) => return Ok(Read::Drained),
            Err(RecvError::Failed(err)) => {
                Self::fatal_error(slf, err, kind.read_failed())?;
                return Ok(Read::Failed);
            }
        };
        let more = data.as_bytes().len() == READ_CHUNK;
        if kind.is_pipe() {
            if data.as_bytes().len() >= DEFAULT_PIPE_CAPACITY {
                slf.get().st.borrow_mut(py)?.grow_pipe_once();
            }
            return Self::pipe_data_received(slf, protocol, data, more);
        }
        let called = Self::fatal_on_error(
            slf,
            Self::deliver(slf, protocol, |st| &st.on_data, intern!(py, "data_received"), (data,)),
            "Fatal error: protocol.data_received() call failed.",
        )?;
        Ok(if called.is_some() { Read::Data { more } } else { Read::Failed })
    }

    /// get_buffer(), then recv_into it (or, with `failed`, the error a peek
    /// already took from the socket, as recv_into would have raised it).
    fn read_into_protocol(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        fd: RawFd,
        failed: Option<i32>,
    ) -> PyResult<Read> {
        let py = slf.py();
        const GET_BUFFER_FAILED: &str = "Fatal error: protocol.get_buffer() call failed.";
        let asked = Self::deliver(slf, protocol, |st| &st.on_get_buffer, intern!(py, "get_buffer"), (-1,));
        let buf = match asked.and_then(|b| {
            if b.len()? == 0 {
                return Err(PyRuntimeError::new_err("get_buffer() returned an empty buffer"));
            }
            Ok(b)
        }) {
            Ok(b) => b,
            Err(e) => {
                Self::fatal_error(slf, e, GET_BUFFER_FAILED)?;
                return Ok(Read::Failed);
            }
        };
        let io = match writable_view(&buf, "recv_into") {
            // SAFETY: a writable view of `view.len()` bytes, held until the
            // end of this arm.
            Ok(view) => match failed {
                Some(errno) => (Io::Failed(errno), view.len()),
                None => (unsafe { read_raw(fd, view.as_mut_ptr(), view.len()) }, view.len()),
            },
            Err(e) => {
                Self::fatal_error(slf, e, Kind::Socket.read_failed())?;
                return Ok(Read::Failed);
            }
        };
        match io {
            (Io::Done(0), _) => Ok(Read::Eof),
            (Io::Done(n), capacity) => {
                let called = Self::fatal_on_error(
                    slf,
                    Self::deliver(slf, protocol, |st| &st.on_data, intern!(py, "buffer_updated"), (n,)),
                    "Fatal error: protocol.buffer_updated() call failed.",
                )?;
                Ok(if called.is_some() { Read::Data { more: n == capacity } } else { Read::Failed })
            }
            (Io::WouldBlock, _) => Ok(Read::Drained),
            (Io::Failed(errno), _) => {
                Self::fatal_error(slf, os_error(py, errno), Kind::Socket.read_failed())?;
                Ok(Read::Failed)
            }
        }
    }

    /// asyncio's `_read_ready__on_eof`.
    fn on_eof(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if let Some(loop_) = slf.get().loop_of(py)? {
            if loop_.get().is_debug() {
                call_hook(py, "transport_debug", (slf, "%r received EOF"))?;
            }
        }
        let Some(keep_open) = Self::call_protocol(
            slf,
            protocol,
            intern!(py, "eof_received"),
            (),
            "Fatal error: protocol.eof_received() call failed.",
        )?
        else {
            return Ok(());
        };
        if keep_open.is_truthy()? {
            // The protocol may still write, but nothing more can be read.
            slf.get().st.borrow_mut(py)?.reader_on = false;
            Ok(())
        } else {
            Self::close(slf)
        }
    }

    /// Send what the buffer holds (asyncio's `_write_ready`).
    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (failed, kind) = {
            let mut st = slf.get().st.borrow_mut(py)?;
            if !st.writes_pending() {
                return Ok(());
            }
            (st.flush(), st.kind)
        };
        if let Some(errno) = failed {
            let err = os_error(py, errno);
            let exc = err.value(py).clone().unbind();
            Self::fatal_error(slf, err, kind.write_failed())?;
            let waiter = slf.get().st.borrow_mut(py)?.empty_waiter.as_ref().map(|w| w.clone_ref(py));
            if let Some(w) = waiter {
                w.bind(py).call_method1(intern!(py, "set_exception"), (exc,))?;
            }
            return Ok(());
        }
        // asyncio's write pipe resumes the protocol only once its buffer is
        // empty; the socket transport at the low-water mark.
        let empty = slf.get().st.borrow_mut(py)?.buffer.is_empty();
        if kind != Kind::WritePipe || empty {
            Self::maybe_resume_protocol(slf)?;
        }
        let (drained, waiter, closing, eof, fd) = {
            let st = slf.get().st.borrow_mut(py)?;
            (
                st.buffer.is_empty(),
                st.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                st.closing,
                st.eof,
                st.fd,
            )
        };
        if drained {
            if let Some(w) = waiter {
                w.bind(py).call_method1(intern!(py, "set_result"), (py.None(),))?;
            }
            if closing {
                slf.get().st.borrow_mut(py)?.reader_on = false;
                Self::call_connection_lost_impl(slf, py.None().into_bound(py))?;
            } else if eof {
                shutdown_write(py, fd)?;
            }
        }
        Ok(())
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut st = slf.get().st.borrow_mut(py)?;
            let (high, _) = st.high_low();
            if (st.queued() as f64) <= high || st.protocol_paused {
                return Ok(());
            }
            st.protocol_paused = true;
            st.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        Self::notify_flow(slf, protocol, intern!(py, "pause_writing"), "protocol.pause_writing() failed")
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut st = slf.get().st.borrow_mut(py)?;
            let (_, low) = st.high_low();
            if !st.protocol_paused || (st.queued() as f64) > low {
                return Ok(());
            }
            st.protocol_paused = false;
            st.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        Self::notify_flow(slf, protocol, intern!(py, "resume_writing"), "protocol.resume_writing() failed")
    }

    /// pause_writing()/resume_writing(); their errors go to the loop's
    /// exception handler (the transport stays open), as in asyncio.
    fn notify_flow(
        slf: &Bound<'_, Self>,
        protocol: Option<Py<PyAny>>,
        method: &Bound<'_, pyo3::types::PyString>,
        message: &str,
    ) -> PyResult<()> {
        let py = slf.py();
        let Some(protocol) = protocol else {
            return Ok(());
        };
        if let Err(err) = protocol.bind(py).call_method0(method) {
            if is_fatal(py, &err) {
                return Err(err);
            }
            let context = PyDict::new(py);
            context.set_item("message", message)?;
            context.set_item("exception", err.into_value(py))?;
            context.set_item("transport", slf)?;
            context.set_item("protocol", protocol)?;
            if let Some(loop_) = slf.get().loop_of(py)? {
                loop_.bind(py).call_method1(intern!(py, "call_exception_handler"), (context,))?;
            }
        }
        Ok(())
    }

    /// `loop.call_soon(self._call_connection_lost, exc)`.
    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        if let Some(loop_) = slf.get().loop_of(py)? {
            let cb = slf.getattr(intern!(py, "_call_connection_lost"))?;
            loop_.bind(py).call_method1(intern!(py, "call_soon"), (cb, exc))?;
        }
        Ok(())
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = slf.get().st.borrow_mut(py)?;
            if st.closing {
                return Ok(());
            }
            st.closing = true;
            st.reader_on = false;
            if st.has_queued() {
                return Ok(()); // connection_lost once the buffer is flushed
            }
            st.conn_lost += 1;
        }
        Self::schedule_connection_lost(slf, py.None())
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let dropped = {
            let mut st = slf.get().st.borrow_mut(py)?;
            if st.conn_lost > 0 {
                return Ok(());
            }
            let dropped = std::mem::take(&mut st.buffer);
            let datagrams = st.dgram.as_mut().map(|d| d.take_refs());
            st.closing = true;
            st.reader_on = false;
            st.conn_lost += 1;
            (dropped, datagrams)
        };
        drop(dropped);
        Self::schedule_connection_lost(slf, exc)
    }

    fn call_connection_lost_impl(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let st = slf.get().st.borrow_mut(py)?;
            if st.protocol_connected { st.protocol.as_ref().map(|p| p.clone_ref(py)) } else { None }
        };
        let outcome = match protocol {
            Some(p) => p.bind(py).call_method1(intern!(py, "connection_lost"), (&exc,)).map(drop),
            None => Ok(()),
        };
        // asyncio's `finally:` -- the socket is closed whatever the protocol did.
        let cleanup = Self::release(slf, true);
        let waiter = slf.get().st.borrow_mut(py)?.empty_waiter.as_ref().map(|w| w.clone_ref(py));
        if let Some(w) = waiter {
            let err = pyo3::exceptions::PyConnectionError::new_err("Connection is closed by peer");
            w.bind(py).call_method1(intern!(py, "set_exception"), (err.into_value(py),))?;
        }
        outcome.and(cleanup)
    }

    /// Stop watching the fd, close the socket, drop the protocol, loop and
    /// server (detaching from it).  `connection_lost` cleanup, and `__del__`
    /// of a transport never closed (then the protocol is kept, as in asyncio).
    fn release(slf: &Bound<'_, Self>, lost: bool) -> PyResult<()> {
        let py = slf.py();
        let (loop_, sock, protocol, server, fd) = {
            let mut st = slf.get().st.borrow_mut(py)?;
            let protocol = if lost { (st.protocol.take(), st.on_data.take(), st.on_get_buffer.take()) } else { (None, None, None) };
            let datagrams = st.dgram.as_mut().map(|d| d.take_refs());
            (st.loop_.take(), st.sock.take(), (protocol, datagrams, st.grown_slot.take()), st.server.take(), st.fd)
        };
        // Deregister before closing: the fd number may be reused at once.
        let unwatched = match &loop_ {
            Some(l) => LoopCore::unwatch_transport(l.bind(py), fd, slf.as_ptr()),
            None => Ok(()),
        };
        let closed = match &sock {
            Some(s) => s.bind(py).call_method0(intern!(py, "close")).map(drop),
            None => Ok(()),
        };
        let detached = match &server {
            Some(s) if py.version_info() >= (3, 13) => {
                s.bind(py).call_method1(intern!(py, "_detach"), (slf,)).map(drop)
            }
            Some(s) => s.bind(py).call_method0(intern!(py, "_detach")).map(drop),
            None => Ok(()),
        };
        drop((loop_, sock, protocol, server));
        unwatched.and(closed).and(detached)
    }

    /// bytes, bytearray or memoryview: what the transports' write() takes.
    fn is_bytes_like(data: &Bound<'_, PyAny>) -> bool {
        data.is_instance_of::<PyBytes>() || data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>()
    }

    /// Bytes-like data for write()/writelines().
    fn check_bytes_like(data: &Bound<'_, PyAny>) -> PyResult<()> {
        if Self::is_bytes_like(data) {
            return Ok(());
        }
        let name = data.get_type().name()?;
        Err(PyTypeError::new_err(format!("data argument must be a bytes-like object, not '{name}'")))
    }

    /// Writes after the connection was lost are counted (and logged after a
    /// few), not sent -- asyncio's behaviour.  True if that was the case.
    fn count_lost_write(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        let (warn, pipe) = {
            let mut st = slf.get().st.borrow_mut(py)?;
            if !st.writes_dropped() {
                return Ok(false);
            }
            let warn = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
            st.conn_lost += 1;
            (warn, st.kind.is_pipe())
        };
        if warn {
            call_hook(py, "warn_lost_write", (pipe,))?;
        }
        Ok(true)
    }

    fn check_writable(&self, py: Python<'_>, method: &str) -> PyResult<()> {
        let st = self.st.borrow_mut(py)?;
        if st.eof {
            return Err(PyRuntimeError::new_err(format!("Cannot call {method}() after write_eof()")));
        }
        if st.empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err(format!("unable to {method}; sendfile is in progress")));
        }
        Ok(())
    }

    /// Start afresh on `loop` and `file` (a socket or pipe object; its fd
    /// from `fileno()`) with `protocol`; read callbacks will run in a copy
    /// of the current context.  `init` adds what the kind of transport
    /// needs to the new state.  Watching the fd is left to the caller.
    fn bind<'py>(
        slf: &Bound<'py, Self>,
        loop_: &Bound<'py, PyAny>,
        file: &Bound<'py, PyAny>,
        protocol: &Bound<'py, PyAny>,
        init: impl FnOnce(StreamState) -> StreamState,
    ) -> PyResult<(Bound<'py, LoopCore>, RawFd)> {
        let py = slf.py();
        let loop_ = loop_
            .cast::<LoopCore>()
            .map_err(|_| PyTypeError::new_err("a native transport needs a ferroloop loop"))?
            .clone();
        let fd: RawFd = file.call_method0(intern!(py, "fileno"))?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
        }
        let fresh = init(StreamState {
            loop_: Some(loop_.clone().unbind()),
            sock: Some(file.clone().unbind()),
            context: Some(copy_current_context(py)?),
            fd,
            ..Default::default()
        });
        let old = std::mem::replace(&mut *slf.get().st.borrow_mut(py)?, fresh);
        drop(old);
        Self::set_protocol(slf, protocol)?;
        Ok((loop_, fd))
    }

    /// Send `parts` now if nothing is queued, queue what the kernel did not
    /// take, and pause the protocol if the buffer went over the high mark.
    fn send_or_buffer(slf: &Bound<'_, Self>, parts: &[Part<'_, '_>]) -> PyResult<()> {
        let py = slf.py();
        let (failed, kind) = {
            let mut st = slf.get().st.borrow_mut(py)?;
            let mut sent = 0;
            let mut failed = None;
            if st.buffer.is_empty() {
                let how = st.kind.write_call();
                let io = match parts {
                    [one] => write(st.fd, one.bytes, how),
                    many => write_vectored(st.fd, many.iter().map(|p| p.bytes), how),
                };
                match io {
                    Io::Done(n) => sent = n,
                    Io::WouldBlock => {}
                    Io::Failed(errno) => {
                        if st.kind.is_pipe() {
                            st.conn_lost += 1;
                        }
                        failed = Some(errno)
                    }
                }
            }
            if failed.is_none() {
                for part in parts {
                    let bytes = part.bytes;
                    if sent >= bytes.len() {
                        sent -= bytes.len();
                        continue;
                    }
                    match part.owner {
                        Some(owner) if bytes.len() - sent >= HOLD_AT_LEAST => {
                            st.buffer.push_held(HeldBytes::new(owner), sent)
                        }
                        _ => st.buffer.extend(&bytes[sent..]),
                    }
                    sent = 0;
                }
            }
            (failed, st.kind)
        };
        if let Some(errno) = failed {
            return Self::fatal_error(slf, os_error(py, errno), kind.write_failed());
        }
        Self::maybe_pause_protocol(slf)
    }
}

#[pymethods]
impl StreamTransport {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        StreamTransport { st: GilCell::new(StreamState { fd: -1, ..Default::default() }) }
    }

    /// Bind to `loop` and `sock` (non-blocking), set the protocol and start
    /// watching the fd.  Reading starts with `_start_reading()`, which the
    /// constructor schedules after `connection_made`.
    #[pyo3(signature = (r#loop, sock, protocol, server=None))]
    fn _attach(
        slf: &Bound<'_, Self>,
        r#loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        server: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let server = server.filter(|s| !s.is_none()).map(|s| s.clone().unbind());
        let (loop_, fd) = Self::bind(slf, r#loop, sock, protocol, |st| StreamState { server, ..st })?;
        LoopCore::watch_transport(&loop_, fd, slf.clone().unbind())
    }

    /// Bind to `loop` and a pipe (or socket, or character device) already
    /// set non-blocking, as a read pipe or a write pipe.  A write pipe with
    /// `watch_reader` treats readiness to read as its reader going away
    /// (asyncio does this for FIFOs and sockets).  A character device that
    /// epoll cannot watch (/dev/null) is accepted for writing: writes to it
    /// never wait.
    #[pyo3(signature = (r#loop, pipe, protocol, writable, watch_reader))]
    fn _attach_pipe(
        slf: &Bound<'_, Self>,
        r#loop: &Bound<'_, PyAny>,
        pipe: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        writable: bool,
        watch_reader: bool,
    ) -> PyResult<()> {
        Self::attach_pipe(slf, r#loop, pipe, protocol, writable, watch_reader)
    }

    /// Bind to `loop` and a non-blocking datagram socket with `protocol`
    /// (a DatagramProtocol); `address` is the remote address sendto()
    /// insists on, `connected` whether the socket has a peer (send, not
    /// sendto).  Reading starts with `_start_reading()`.
    #[pyo3(signature = (r#loop, sock, protocol, address, connected))]
    fn _attach_datagram(
        slf: &Bound<'_, Self>,
        r#loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        address: Option<&Bound<'_, PyAny>>,
        connected: bool,
    ) -> PyResult<()> {
        Self::attach_datagram(slf, r#loop, sock, protocol, address, connected)
    }

    /// Send one datagram to `addr` (a datagram transport's sendto).
    #[pyo3(signature = (data, addr=None))]
    fn sendto(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>, addr: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        Self::datagram_sendto(slf, data, addr)
    }

    /// A pipe's `_close(exc)`: stop, drop buffered data, and schedule
    /// connection_lost(exc).
    #[pyo3(signature = (exc=None))]
    fn _close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        Self::pipe_close(slf, exc.unwrap_or_else(|| slf.py().None()))
    }

    /// Start delivering reads (asyncio's `call_soon(self._add_reader, ...)`
    /// after connection_made).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let loop_ = {
            let mut st = slf.get().st.borrow_mut(py)?;
            if !st.is_reading() || st.conn_lost > 0 {
                return Ok(());
            }
            if st.unpollable {
                return Err(os_error(py, libc::EPERM));
            }
            st.reader_on = true;
            st.loop_.as_ref().map(|l| l.clone_ref(py))
        };
        // Data may have arrived (and its edge passed) before now.
        match loop_ {
            Some(l) => LoopCore::retry_io(l.bind(py), slf.clone().unbind()),
            None => Ok(()),
        }
    }

    /// A readiness report delivered through `loop.call_soon` (debug mode).
    fn _io_ready(slf: &Bound<'_, Self>, readable: bool, writable: bool, drain: bool) -> PyResult<()> {
        Self::on_io(slf, readable, writable, drain)
    }

    /// Read what is available now (asyncio's reader callback).
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::read_ready(slf, true)
    }

    /// Send what is buffered (asyncio's writer callback).
    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::write_ready(slf)
    }

    fn set_protocol(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let kind = slf.get().st.borrow_mut(py)?.kind;
        // asyncio's pipes always call data_received().  Besides asyncio's
        // BufferedProtocol, a protocol with get_buffer() and
        // buffer_updated() but no data_received() is read as a buffered
        // one, as uvloop does (asyncio would fail it on its first read).
        let buffered = kind == Kind::Socket
            && (protocol.is_instance(buffered_protocol_type(py)?)?
                || (protocol.hasattr(intern!(py, "get_buffer"))?
                    && protocol.hasattr(intern!(py, "buffer_updated"))?
                    && !protocol.hasattr(intern!(py, "data_received"))?));
        let method = |name: &Bound<'_, pyo3::types::PyString>| protocol.getattr(name).ok().map(Bound::unbind);
        let (on_data, on_get_buffer) = match kind {
            _ if buffered => (method(intern!(py, "buffer_updated")), method(intern!(py, "get_buffer"))),
            Kind::Datagram => (method(intern!(py, "datagram_received")), None),
            Kind::Socket | Kind::ReadPipe | Kind::WritePipe => (method(intern!(py, "data_received")), None),
        };
        let old = {
            let mut st = slf.get().st.borrow_mut(py)?;
            st.buffered = buffered;
            st.protocol_connected = true;
            (
                st.protocol.replace(protocol.clone().unbind()),
                std::mem::replace(&mut st.on_data, on_data),
                std::mem::replace(&mut st.on_get_buffer, on_get_buffer),
            )
        };
        drop(old);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.protocol_of(py)?.unwrap_or_else(|| py.None()))
    }

    fn is_closing(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.st.borrow_mut(py)?.closing)
    }

    fn is_reading(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.st.borrow_mut(py)?.is_reading())
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let debug = {
            let mut st = slf.get().st.borrow_mut(py)?;
            if !st.is_reading() {
                return Ok(());
            }
            st.paused = true;
            st.reader_on = false;
            st.loop_.as_ref().is_some_and(|l| l.get().is_debug())
        };
        if debug {
            call_hook(py, "transport_debug", (slf, "%r pauses reading"))?;
        }
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let loop_ = {
            let mut st = slf.get().st.borrow_mut(py)?;
            if st.closing || !st.paused {
                return Ok(());
            }
            st.paused = false;
            if st.unpollable {
                return Err(os_error(py, libc::EPERM));
            }
            st.reader_on = true;
            st.loop_.as_ref().map(|l| l.clone_ref(py))
        };
        if let Some(l) = loop_ {
            LoopCore::retry_io(l.bind(py), slf.clone().unbind())?;
            if l.get().is_debug() {
                call_hook(py, "transport_debug", (slf, "%r resumes reading"))?;
            }
        }
        Ok(())
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if slf.get().st.borrow_mut(slf.py())?.kind.is_pipe() {
            Self::check_pipe_data(data)?;
        }
        Self::check_bytes_like(data)?;
        slf.get().check_writable(slf.py(), "write")?;
        let owner = data.cast_exact::<PyBytes>().ok();
        with_bytes(data, |bytes| {
            if bytes.is_empty() || Self::count_lost_write(slf)? {
                return Ok(());
            }
            Self::send_or_buffer(slf, &[Part { bytes, owner }])
        })?
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        slf.get().check_writable(py, "writelines")?;
        // Any bytes-like pieces, as asyncio takes them: 3.12+'s socket
        // transport wraps each in a memoryview (and returns at once for an
        // empty or false argument), 3.11's uses `b"".join`.  (The pipe and
        // datagram classes join in Python.)
        let memoryviews = py.version_info() >= (3, 12);
        if memoryviews && !list_of_data.is_truthy()? {
            return Ok(());
        }
        let pieces = match list_of_data.try_iter() {
            Ok(it) => it,
            Err(err) if memoryviews => return Err(err),
            Err(_) => return Err(PyTypeError::new_err("can only join an iterable")),
        };
        let mut items = Vec::new();
        for (i, item) in pieces.enumerate() {
            let item = item?;
            let view = match BufferView::get(&item, false) {
                Ok(view) => view,
                Err(err) if !err.is_instance_of::<PyTypeError>(py) => return Err(err),
                Err(_) => {
                    let name = item.get_type().name()?;
                    return Err(PyTypeError::new_err(if memoryviews {
                        format!("memoryview: a bytes-like object is required, not '{name}'")
                    } else {
                        format!("sequence item {i}: expected a bytes-like object, {name} found")
                    }));
                }
            };
            items.push((view, item));
        }
        if items.iter().all(|(v, _)| v.len() == 0) || Self::count_lost_write(slf)? {
            return Ok(());
        }
        let parts: Vec<Part<'_, '_>> = items
            .iter()
            .map(|(view, item)| Part { bytes: view.as_slice(), owner: item.cast_exact::<PyBytes>().ok() })
            .collect();
        Self::send_or_buffer(slf, &parts)
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let fd = {
            let mut st = slf.get().st.borrow_mut(py)?;
            if st.kind.is_pipe() {
                drop(st);
                return Self::pipe_write_eof(slf);
            }
            if st.closing || st.eof {
                return Ok(());
            }
            st.eof = true;
            if !st.buffer.is_empty() {
                return Ok(()); // shut down once the buffer is flushed
            }
            st.fd
        };
        shutdown_write(py, fd)
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    /// Close after flushing the write buffer; connection_lost(None) follows.
    #[pyo3(name = "close")]
    fn py_close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let (kind, open) = {
            let st = slf.get().st.borrow_mut(slf.py())?;
            (st.kind, st.sock.is_some())
        };
        match kind {
            // All a write pipe needs to close is write_eof.
            Kind::WritePipe if open => Self::pipe_write_eof(slf),
            Kind::WritePipe => Ok(()),
            Kind::Socket | Kind::ReadPipe | Kind::Datagram => Self::close(slf),
        }
    }

    /// Close now, dropping buffered data; connection_lost(None) follows.
    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().st.borrow_mut(slf.py())?.kind.is_pipe() {
            return Self::pipe_close(slf, slf.py().None());
        }
        Self::force_close(slf, slf.py().None())
    }

    fn _force_close(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        Self::force_close(slf, exc)
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        Self::call_connection_lost_impl(slf, exc)
    }

    /// sendfile: stop watching the fd while `sock_sendfile` watches it.
    fn _suspend_watch(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (loop_, fd) = {
            let st = slf.get().st.borrow_mut(py)?;
            (st.loop_.as_ref().map(|l| l.clone_ref(py)), st.fd)
        };
        match loop_ {
            Some(l) => LoopCore::unwatch_transport(l.bind(py), fd, slf.as_ptr()),
            None => Ok(()),
        }
    }

    /// sendfile is over: watch the fd again, unless the transport was
    /// closed meanwhile.
    fn _resume_watch(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (loop_, fd) = {
            let st = slf.get().st.borrow_mut(py)?;
            if st.sock.is_none() {
                return Ok(());
            }
            (st.loop_.as_ref().map(|l| l.clone_ref(py)), st.fd)
        };
        match loop_ {
            Some(l) if !l.get().is_closed() => {
                LoopCore::watch_transport(l.bind(py), fd, slf.clone().unbind())
            }
            _ => Ok(()),
        }
    }

    /// `__del__` of a transport never closed: stop watching and close the
    /// socket (the Python side warns first).
    fn _release_unclosed(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::release(slf, false)
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.st.borrow_mut(py)?.queued())
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let st = self.st.borrow_mut(py)?;
        Ok(match &st.limits {
            Some(l) => (l.low.clone_ref(py), l.high.clone_ref(py)),
            None => (
                (DEFAULT_HIGH_WATER / 4).into_pyobject(py)?.into_any().unbind(),
                DEFAULT_HIGH_WATER.into_pyobject(py)?.into_any().unbind(),
            ),
        })
    }

    #[pyo3(signature = (high=None, low=None))]
    fn _set_write_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<Bound<'_, PyAny>>,
        low: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let int = |v: usize| -> PyResult<Bound<'_, PyAny>> { Ok(v.into_pyobject(py)?.into_any()) };
        let high = high.filter(|h| !h.is_none());
        let low = low.filter(|l| !l.is_none());
        // asyncio's arithmetic, on whatever numbers were given.
        let high = match (high, &low) {
            (Some(h), _) => h,
            (None, None) => int(DEFAULT_HIGH_WATER)?,
            (None, Some(l)) => l.mul(4)?,
        };
        let low = match low {
            Some(l) => l,
            None => high.floor_div(4)?,
        };
        let zero = int(0)?;
        if !(high.ge(&low)? && low.ge(&zero)?) {
            return Err(PyValueError::new_err(format!(
                "high ({}) must be >= low ({}) must be >= 0",
                high.repr()?,
                low.repr()?
            )));
        }
        let limits = Limits {
            high_f: high.extract()?,
            low_f: low.extract()?,
            high: high.unbind(),
            low: low.unbind(),
        };
        let old = self.st.borrow_mut(py)?.limits.replace(limits);
        drop(old);
        Ok(())
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<Bound<'_, PyAny>>,
        low: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        slf.get()._set_write_buffer_limits(slf.py(), high, low)?;
        Self::maybe_pause_protocol(slf)
    }

    fn _make_empty_waiter(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let (loop_, empty) = {
            let st = slf.get().st.borrow_mut(py)?;
            if st.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err("Empty waiter is already set"));
            }
            (st.loop_.as_ref().map(|l| l.clone_ref(py)), st.buffer.is_empty())
        };
        let loop_ = loop_.ok_or_else(|| PyRuntimeError::new_err("Transport is closed"))?;
        let waiter = loop_.bind(py).call_method0(intern!(py, "create_future"))?;
        slf.get().st.borrow_mut(py)?.empty_waiter = Some(waiter.clone().unbind());
        if empty {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(waiter.unbind())
    }

    fn _reset_empty_waiter(&self, py: Python<'_>) -> PyResult<()> {
        let old = self.st.borrow_mut(py)?.empty_waiter.take();
        drop(old);
        Ok(())
    }

    // asyncio's attributes, read by code that peeks at its transports.

    #[getter]
    fn _sock(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let st = self.st.borrow_mut(py)?;
        Ok(st.sock.as_ref().map_or_else(|| py.None(), |s| s.clone_ref(py)))
    }

    /// Code that cleans up after asyncio's transports by hand sets this
    /// (`transport._pipe = None` after closing the pipe itself).
    #[setter(_sock)]
    fn set_sock(&self, py: Python<'_>, sock: Option<Py<PyAny>>) -> PyResult<()> {
        let sock = sock.filter(|s| !s.is_none(py));
        let old = std::mem::replace(&mut self.st.borrow_mut(py)?.sock, sock);
        drop(old);
        Ok(())
    }

    #[getter]
    fn _sock_fd(&self, py: Python<'_>) -> PyResult<RawFd> {
        Ok(self.st.borrow_mut(py)?.fd)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.loop_of(py)?.map_or_else(|| py.None(), |l| l.into_any()))
    }

    #[getter]
    fn _protocol(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.get_protocol(py)
    }

    #[getter]
    fn _server(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let st = self.st.borrow_mut(py)?;
        Ok(st.server.as_ref().map_or_else(|| py.None(), |s| s.clone_ref(py)))
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.st.borrow_mut(py)?.closing)
    }

    #[getter]
    fn _paused(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.st.borrow_mut(py)?.paused)
    }

    #[getter]
    fn _eof(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.st.borrow_mut(py)?.eof)
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> PyResult<u32> {
        Ok(self.st.borrow_mut(py)?.conn_lost)
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.st.borrow_mut(py)?.protocol_paused)
    }

    #[getter]
    fn _high_water(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.get_write_buffer_limits(py)?.1)
    }

    #[getter]
    fn _low_water(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.get_write_buffer_limits(py)?.0)
    }

    #[getter]
    fn _empty_waiter(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let st = self.st.borrow_mut(py)?;
        Ok(st.empty_waiter.as_ref().map_or_else(|| py.None(), |w| w.clone_ref(py)))
    }

    /// For repr: would asyncio's selector show a reader / a writer?
    #[getter]
    fn _reader_polling(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.st.borrow_mut(py)?.reader_on)
    }

    #[getter]
    fn _writer_polling(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.st.borrow_mut(py)?.writes_pending())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self.st.try_peek() {
            Some(st) => st.refs(&mut |o| visit.call(o)),
            None => Ok(()),
        }
    }

    fn __clear__(&self) {
        // Only the fd number stays (`_sock_fd`, repr).
        if let Some(fd) = self.st.try_peek().map(|st| st.fd) {
            self.st.replace_for_clear(StreamState { fd, ..Default::default() });
        }
    }
}
