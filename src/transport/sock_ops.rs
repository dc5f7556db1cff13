//! `loop.sock_recv`, `sock_recv_into` and `sock_sendall` as native
//! coroutines: asyncio's `async def` methods of selector_events.py, step for
//! step, without their Python frames, `functools.partial` and callbacks.
//!
//! A `SockOp` is what `loop.sock_recv(sock, n)` returns: it is awaited (or
//! wrapped in a task) like the coroutine asyncio returns, and is registered
//! as a `collections.abc.Coroutine`.  Its first step checks the socket and
//! tries the system call; if that would block it creates a future, watches
//! the fd (`_add_reader`/`_add_writer`, whose callback retries the call and
//! completes the future) and yields the future.  When the task resumes it,
//! the step returns the future's result.  The fd stops being watched when
//! the call completes, or when the task throws its cancellation in -- the
//! socket stays usable, as in asyncio.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyMemoryView, PyType};
use pyo3::{PyTraverseError, PyVisit};

use super::sys::{os_error, read_bytes, read_raw, socket_type, write, BufferView, Io, RecvError, WriteCall};
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::handles::Handle;

/// The operation and its arguments.
enum Op {
    Recv { n: usize },
    RecvInto { buf: Py<PyAny> },
    /// `data` is held through a memoryview (as asyncio does), so a
    /// bytearray cannot be resized while it is being sent.
    SendAll { data: Py<PyAny>, sent: usize },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Recv { .. } => "sock_recv",
            Op::RecvInto { .. } => "sock_recv_into",
            Op::SendAll { .. } => "sock_sendall",
        }
    }

    fn wants_write(&self) -> bool {
        matches!(self, Op::SendAll { .. })
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Phase {
    /// Not started: the first step checks and tries the call.
    Start,
    /// The future was yielded; the next step returns its result.
    Waiting,
    Finished,
}

struct OpState {
    loop_: Option<Py<PyAny>>,
    sock: Option<Py<PyAny>>,
    op: Op,
    phase: Phase,
    fd: RawFd,
    /// Call the socket's own recv/recv_into/send (see `check`).
    via_methods: bool,
    fut: Option<Py<PyAny>>,
    handle: Option<Py<PyAny>>,
}

/// One attempt's arguments, taken out of the state.
enum Args {
    Recv(usize),
    Into(Py<PyAny>),
    Send(Py<PyAny>, usize),
}

/// The socket method and argument for `Args` (sendall: the unsent rest).
fn args_to_call(py: Python<'_>, args: Args) -> PyResult<(&'static str, Py<PyAny>, Option<usize>)> {
    Ok(match args {
        Args::Recv(n) => ("recv", n.into_pyobject(py)?.into_any().unbind(), None),
        Args::Into(buf) => ("recv_into", buf, None),
        Args::Send(data, sent) => {
            let view = PyMemoryView::from(data.bind(py))?;
            let rest = view.get_item(pyo3::types::PySlice::new(py, sent as isize, isize::MAX, 1))?;
            let len = rest.len()?;
            ("send", rest.unbind(), Some(len))
        }
    })
}

/// What one attempt at the system call came to.
enum Attempt {
    Done(Py<PyAny>),
    WouldBlock,
}

fn ssl_socket_type(py: Python<'_>) -> Option<&Bound<'_, PyType>> {
    static TYPE: PyOnceLock<Option<Py<PyType>>> = PyOnceLock::new();
    TYPE.get_or_init(py, || {
        py.import("ssl").and_then(|m| m.getattr("SSLSocket")).and_then(|t| Ok(t.cast_into::<PyType>()?.unbind())).ok()
    })
    .as_ref()
    .map(|t| t.bind(py))
}

#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct SockOp {
    st: GilCell<OpState>,
}

impl SockOp {
    fn new(loop_: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, op: Op) -> SockOp {
        SockOp {
            st: GilCell::new(OpState {
                loop_: Some(loop_.clone().unbind()),
                sock: Some(sock.clone().unbind()),
                op,
                phase: Phase::Start,
                fd: -1,
                via_methods: true,
                fut: None,
                handle: None,
            }),
        }
    }

    /// The system call once, straight on the fd.  (No borrow is held while
    /// Python runs: getting a buffer may call back into Python.)
    fn attempt(&self, py: Python<'_>) -> PyResult<Attempt> {
        let (fd, args, sock) = {
            let st = self.st.borrow_mut(py)?;
            let args = match &st.op {
                Op::Recv { n } => Args::Recv(*n),
                Op::RecvInto { buf } => Args::Into(buf.clone_ref(py)),
                Op::SendAll { data, sent } => Args::Send(data.clone_ref(py), *sent),
            };
            let sock = if st.via_methods { st.sock.as_ref().map(|s| s.clone_ref(py)) } else { None };
            (st.fd, args, sock)
        };
        if let Some(sock) = sock {
            return self.attempt_via_methods(sock.bind(py), args_to_call(py, args)?);
        }
        match args {
            Args::Recv(n) => match read_bytes(py, fd, n) {
                Ok(Some(data)) => Ok(Attempt::Done(data.into_any().unbind())),
                Ok(None) => Ok(Attempt::Done(PyBytes::new(py, b"").into_any().unbind())),
                Err(RecvError::WouldBlock) => Ok(Attempt::WouldBlock),
                Err(RecvError::Failed(err)) => Err(err),
            },
            Args::Into(buf) => {
                let view = BufferView::get(buf.bind(py), true)?;
                // SAFETY: a writable view of `view.len()` bytes, held until
                // the end of this block.
                match unsafe { read_raw(fd, view.as_mut_ptr(), view.len()) } {
                    Io::Done(n) => Ok(Attempt::Done(n.into_pyobject(py)?.into_any().unbind())),
                    Io::WouldBlock => Ok(Attempt::WouldBlock),
                    Io::Failed(errno) => Err(os_error(py, errno)),
                }
            }
            Args::Send(data, sent) => {
                let view = BufferView::get(data.bind(py), false)?;
                // Even nothing is sent (asyncio's sock.send(b'') reports a
                // closed or unconnected socket).
                let rest = view.as_slice().get(sent..).unwrap_or(&[]);
                let n = match write(fd, rest, WriteCall::Send) {
                    Io::Done(n) if n == rest.len() => return Ok(Attempt::Done(py.None())),
                    Io::Done(n) => n,
                    Io::WouldBlock => 0,
                    Io::Failed(errno) => return Err(os_error(py, errno)),
                };
                drop(view);
                if let Op::SendAll { sent, .. } = &mut self.st.borrow_mut(py)?.op {
                    *sent += n;
                }
                Ok(Attempt::WouldBlock)
            }
        }
    }

    /// The attempt through the socket's Python methods.
    fn attempt_via_methods(
        &self,
        sock: &Bound<'_, PyAny>,
        (method, arg, send_len): (&'static str, Py<PyAny>, Option<usize>),
    ) -> PyResult<Attempt> {
        let py = sock.py();
        let result = match sock.call_method1(method, (arg,)) {
            Ok(r) => r,
            Err(e)
                if e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py)
                    || e.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py) =>
            {
                return Ok(Attempt::WouldBlock)
            }
            Err(e) => return Err(e),
        };
        let Some(len) = send_len else {
            return Ok(Attempt::Done(result.unbind()));
        };
        let n: usize = result.extract()?;
        if n >= len {
            return Ok(Attempt::Done(py.None()));
        }
        if let Op::SendAll { sent, .. } = &mut self.st.borrow_mut(py)?.op {
            *sent += n;
        }
        Ok(Attempt::WouldBlock)
    }

    /// asyncio's checks, made when the coroutine starts (not when it is
    /// created): not an SSLSocket; non-blocking in debug mode.  Returns the
    /// loop.
    fn check<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (loop_, sock) = {
            let st = self.st.borrow_mut(py)?;
            match (&st.loop_, &st.sock) {
                (Some(l), Some(s)) => (l.clone_ref(py).into_bound(py), s.clone_ref(py).into_bound(py)),
                _ => return Err(PyRuntimeError::new_err("cannot reuse already awaited coroutine")),
            }
        };
        if let Some(ssl) = ssl_socket_type(py) {
            if sock.is_instance(ssl)? {
                return Err(PyTypeError::new_err("Socket cannot be of type SSLSocket"));
            }
        }
        let debug = match loop_.cast::<LoopCore>() {
            Ok(core) => core.get().is_debug(),
            Err(_) => loop_.call_method0(intern!(py, "get_debug"))?.is_truthy()?,
        };
        let non_blocking = sock.call_method0(intern!(py, "gettimeout"))?.eq(0)?;
        if debug && !non_blocking {
            return Err(PyValueError::new_err("the socket must be non-blocking"));
        }
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        // The system calls straight on the fd only for a plain non-blocking
        // socket.  A blocking one (asyncio blocks in it, with the GIL
        // released) or a subclass (which may override recv/send) gets the
        // socket's own methods, as asyncio calls them.
        let plain = sock.get_type().is(socket_type(py)?);
        let mut st = self.st.borrow_mut(py)?;
        st.fd = fd;
        st.via_methods = !(plain && non_blocking && fd >= 0);
        Ok(loop_)
    }

    /// The first step: the call at once, else a future to wait on.
    fn start(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let loop_ = this.check(py)?;
        if let Attempt::Done(value) = this.attempt(py)? {
            return Err(Self::finish(this, py, value));
        }
        let (fd, write) = {
            let st = this.st.borrow_mut(py)?;
            (st.fd, st.op.wants_write())
        };
        let unpinned = match &this.st.borrow_mut(py)?.op {
            Op::SendAll { data, .. } => Some(data.clone_ref(py)),
            _ => None,
        };
        if let Some(data) = unpinned {
            // Pin the data (a bytearray cannot be resized while queued).
            let view = PyMemoryView::from(data.bind(py))?.into_any().unbind();
            if let Op::SendAll { data, .. } = &mut this.st.borrow_mut(py)?.op {
                *data = view;
            }
        }
        let fut = loop_.call_method0(intern!(py, "create_future"))?;
        if fd_has_transport(&loop_, fd)? {
            // It raises unless that transport is closing.
            loop_.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
        }
        let ready = slf.getattr(intern!(py, "_io_ready"))?;
        let watch = if write { intern!(py, "_add_writer") } else { intern!(py, "_add_reader") };
        let handle = loop_.call_method1(watch, (fd, ready))?;
        {
            let mut st = this.st.borrow_mut(py)?;
            st.fut = Some(fut.clone().unbind());
            st.handle = Some(handle.unbind());
            st.phase = Phase::Waiting;
        }
        fut.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
        Ok(fut.unbind())
    }

    /// Finish with `value`: the StopIteration that returns it.
    fn finish(&self, py: Python<'_>, value: Py<PyAny>) -> PyErr {
        self.release(py);
        PyStopIteration::new_err((value,))
    }

    /// Drop everything but the phase (Finished).
    fn release(&self, py: Python<'_>) {
        if let Ok(mut st) = self.st.borrow_mut(py) {
            st.phase = Phase::Finished;
            let old = (st.loop_.take(), st.sock.take(), st.fut.take(), st.handle.take());
            drop(st);
            drop(old);
        }
    }

    fn step(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let (phase, fut) = {
            let st = this.st.borrow_mut(py)?;
            (st.phase, st.fut.as_ref().map(|f| f.clone_ref(py)))
        };
        match (phase, fut) {
            (Phase::Start, _) => Self::start(slf).inspect_err(|_| this.release(py)),
            (Phase::Waiting, Some(fut)) => {
                // Normally done by _io_ready already; not if the future was
                // completed or cancelled from outside.
                this.unwatch(py)?;
                let outcome = fut.bind(py).call_method0(intern!(py, "result"));
                match outcome {
                    Ok(value) => Err(this.finish(py, value.unbind())),
                    Err(err) => {
                        this.release(py);
                        Err(err)
                    }
                }
            }
            _ => Err(PyRuntimeError::new_err("cannot reuse already awaited coroutine")),
        }
    }

    /// Stop waiting: stop watching the fd and cancel the future.
    fn abandon(&self, py: Python<'_>) -> PyResult<()> {
        let fut = self.st.borrow_mut(py)?.fut.as_ref().map(|f| f.clone_ref(py));
        let unwatched = self.unwatch(py);
        if let Some(fut) = fut {
            fut.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        self.release(py);
        unwatched
    }

    /// Remove the reader/writer this op added, unless it was replaced
    /// meanwhile (asyncio's `_sock_read_done`, run here when the op
    /// completes or is abandoned rather than as the future's done callback,
    /// which saves a callback per wait).
    fn unwatch(&self, py: Python<'_>) -> PyResult<()> {
        let (loop_, handle, fd, write) = {
            let mut st = self.st.borrow_mut(py)?;
            (st.loop_.as_ref().map(|l| l.clone_ref(py)), st.handle.take(), st.fd, st.op.wants_write())
        };
        let (Some(loop_), Some(handle)) = (loop_, handle) else {
            return Ok(());
        };
        let cancelled = match handle.bind(py).cast::<Handle>() {
            Ok(h) => h.get().is_cancelled(),
            Err(_) => handle.bind(py).call_method0(intern!(py, "cancelled"))?.is_truthy()?,
        };
        if cancelled {
            return Ok(());
        }
        let unwatch = if write { intern!(py, "_remove_writer") } else { intern!(py, "_remove_reader") };
        loop_.bind(py).call_method1(unwatch, (fd,)).map(drop)
    }
}

/// Whether the loop's `_transports` (asyncio's WeakValueDictionary of
/// transports by fd) has an entry for `fd`: a dict lookup in its `data`,
/// where asyncio's own check raises and catches a KeyError every time.
fn fd_has_transport(loop_: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<bool> {
    let py = loop_.py();
    let transports = loop_.getattr(intern!(py, "_transports"))?;
    match transports.getattr(intern!(py, "data")).ok().and_then(|d| d.cast_into::<PyDict>().ok()) {
        Some(data) => data.contains(fd),
        // Not a WeakValueDictionary: let asyncio's check look.
        None => Ok(true),
    }
}

/// The exception `throw(typ, val, tb)` raises, built as generators do.
fn thrown(typ: &Bound<'_, PyAny>, val: Option<&Bound<'_, PyAny>>) -> PyResult<PyErr> {
    if let Ok(t) = typ.cast::<PyType>() {
        let value = match val.filter(|v| !v.is_none()) {
            Some(v) if v.is_instance(t)? => v.clone(),
            Some(v) => t.call1((v,))?,
            None => t.call0()?,
        };
        return Ok(PyErr::from_value(value));
    }
    Ok(PyErr::from_value(typ.clone()))
}

#[pymethods]
impl SockOp {
    /// `loop.sock_recv(sock, nbytes)`.
    #[staticmethod]
    fn recv(r#loop: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, nbytes: isize) -> PyResult<SockOp> {
        let n = usize::try_from(nbytes).map_err(|_| PyValueError::new_err("negative buffersize in recv"))?;
        Ok(SockOp::new(r#loop, sock, Op::Recv { n }))
    }

    /// `loop.sock_recv_into(sock, buf)`.
    #[staticmethod]
    fn recv_into(r#loop: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, buf: &Bound<'_, PyAny>) -> SockOp {
        SockOp::new(r#loop, sock, Op::RecvInto { buf: buf.clone().unbind() })
    }

    /// `loop.sock_sendall(sock, data)`.
    #[staticmethod]
    fn sendall(r#loop: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> SockOp {
        SockOp::new(r#loop, sock, Op::SendAll { data: data.clone().unbind(), sent: 0 })
    }

    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Self::step(slf)
    }

    fn send(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if !value.is_none() && slf.get().st.borrow_mut(py)?.phase == Phase::Start {
            return Err(PyTypeError::new_err("can't send non-None value to a just-started coroutine"));
        }
        Self::step(slf)
    }

    #[pyo3(signature = (typ, val=None, _tb=None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let err = thrown(typ, val)?;
        slf.get().abandon(py)?;
        Err(err)
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.abandon(py)
    }

    /// The fd is ready: retry the call; complete the future unless it
    /// would still block.
    fn _io_ready(&self, py: Python<'_>) -> PyResult<()> {
        let fut = match self.st.borrow_mut(py)?.fut.as_ref() {
            Some(f) => f.clone_ref(py).into_bound(py),
            None => return Ok(()),
        };
        if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
            return self.unwatch(py);
        }
        let outcome = match self.attempt(py) {
            Ok(Attempt::WouldBlock) => return Ok(()),
            Err(err) if crate::handles::is_fatal(py, &err) => return Err(err),
            other => other,
        };
        self.unwatch(py)?;
        match outcome {
            Ok(Attempt::Done(value)) => fut.call_method1(intern!(py, "set_result"), (value,)).map(drop),
            Ok(Attempt::WouldBlock) => Ok(()),
            Err(err) => fut.call_method1(intern!(py, "set_exception"), (err.into_value(py),)).map(drop),
        }
    }

    #[getter]
    fn __name__(&self, py: Python<'_>) -> PyResult<&'static str> {
        Ok(self.st.borrow_mut(py)?.op.name())
    }

    #[getter]
    fn __qualname__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("Loop.{}", self.st.borrow_mut(py)?.op.name()))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("<coroutine object Loop.{}>", self.st.borrow_mut(py)?.op.name()))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(st) = self.st.try_peek() else {
            return Ok(());
        };
        for o in [&st.loop_, &st.sock, &st.fut, &st.handle].into_iter().flatten() {
            visit.call(o)?;
        }
        match &st.op {
            Op::RecvInto { buf } => visit.call(buf),
            Op::SendAll { data, .. } => visit.call(data),
            Op::Recv { .. } => Ok(()),
        }
    }

    fn __clear__(&self) {
        if let Some(mut st) = self.st.try_borrow_for_clear() {
            let old = (st.loop_.take(), st.sock.take(), st.fut.take(), st.handle.take());
            let op = std::mem::replace(&mut st.op, Op::Recv { n: 0 });
            drop(st);
            drop((old, op));
        }
    }
}
