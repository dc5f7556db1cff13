//! `loop.sock_recv`, `sock_recv_into`, `sock_sendall`, `sock_recvfrom`,
//! `sock_recvfrom_into`, `sock_sendto`, `sock_accept` and the connecting
//! half of `sock_connect` as native coroutines: asyncio's `async def`
//! methods of selector_events.py, step for step, without their Python
//! frames, `functools.partial` and callbacks.
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

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyMemoryView, PyType};
use pyo3::{PyTraverseError, PyVisit};

use super::sockaddr::{family_supported, from_python, to_python, SockAddr};
use super::sys::{
    is_would_block, os_error, read_bytes, read_raw, recv_from_bytes, recv_from_raw, send_to, socket_family,
    socket_type, with_bytes, writable_view, write, BufferView, Io, RecvError, WriteCall,
};
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::handles::Handle;

/// The operation and its arguments.  (Sizes given by the caller stay
/// Python objects until the call: asyncio passes them to the socket's
/// methods as they are, so their errors come when the coroutine runs.)
enum Op {
    Recv { n: Py<PyAny> },
    RecvInto { buf: Py<PyAny> },
    /// `data` is held through a memoryview (as asyncio does), so a
    /// bytearray cannot be resized while it is being sent.
    SendAll { data: Py<PyAny>, sent: usize },
    RecvFrom { n: Py<PyAny> },
    /// `n` 0 means the whole buffer (asyncio replaces it with `len(buf)`
    /// when the coroutine starts).
    RecvFromInto { buf: Py<PyAny>, n: Py<PyAny> },
    SendTo { data: Py<PyAny>, addr: Py<PyAny> },
    Accept,
    /// The address is already resolved (by `Loop.sock_connect`).
    Connect { addr: Py<PyAny> },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Recv { .. } => "sock_recv",
            Op::RecvInto { .. } => "sock_recv_into",
            Op::SendAll { .. } => "sock_sendall",
            Op::RecvFrom { .. } => "sock_recvfrom",
            Op::RecvFromInto { .. } => "sock_recvfrom_into",
            Op::SendTo { .. } => "sock_sendto",
            Op::Accept => "sock_accept",
            Op::Connect { .. } => "sock_connect",
        }
    }

    fn wants_write(&self) -> bool {
        matches!(self, Op::SendAll { .. } | Op::SendTo { .. } | Op::Connect { .. })
    }

    /// asyncio makes these calls through the socket's methods only: a new
    /// socket object (accept) or a connect's errors are the socket
    /// module's business, and neither is a per-message cost.
    fn always_via_methods(&self) -> bool {
        matches!(self, Op::Accept | Op::Connect { .. })
    }

    /// The native call takes or gives a socket address.
    fn converts_addresses(&self) -> bool {
        matches!(self, Op::RecvFrom { .. } | Op::RecvFromInto { .. } | Op::SendTo { .. })
    }

    fn refs(&self) -> impl Iterator<Item = &Py<PyAny>> {
        let (a, b) = match self {
            Op::RecvInto { buf } => (Some(buf), None),
            Op::SendAll { data, .. } => (Some(data), None),
            Op::Recv { n } | Op::RecvFrom { n } => (Some(n), None),
            Op::RecvFromInto { buf, n } => (Some(buf), Some(n)),
            Op::SendTo { data, addr } => (Some(data), Some(addr)),
            Op::Connect { addr } => (Some(addr), None),
            Op::Accept => (None, None),
        };
        a.into_iter().chain(b)
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
    /// The socket's address family (plain sockets; for sendto's address).
    family: i32,
    /// Call the socket's own recv/recv_into/send (see `check`).
    via_methods: bool,
    /// The first attempt was made: a sendto retries as `sendto(data, 0,
    /// addr)`, a connect in progress asks SO_ERROR (as asyncio does).
    retrying: bool,
    fut: Option<Py<PyAny>>,
    handle: Option<Py<PyAny>>,
}

/// One attempt's arguments, taken out of the state.
enum Args {
    Recv(Py<PyAny>),
    Into(Py<PyAny>),
    Send(Py<PyAny>, usize),
    RecvFrom(Py<PyAny>),
    RecvFromInto(Py<PyAny>, Py<PyAny>),
    SendTo { data: Py<PyAny>, addr: Py<PyAny>, retry: bool },
    Accept,
    Connect { addr: Py<PyAny>, in_progress: bool },
}

impl Args {
    fn of(op: &Op, retrying: bool, py: Python<'_>) -> Args {
        match op {
            Op::Recv { n } => Args::Recv(n.clone_ref(py)),
            Op::RecvInto { buf } => Args::Into(buf.clone_ref(py)),
            Op::SendAll { data, sent } => Args::Send(data.clone_ref(py), *sent),
            Op::RecvFrom { n } => Args::RecvFrom(n.clone_ref(py)),
            Op::RecvFromInto { buf, n } => Args::RecvFromInto(buf.clone_ref(py), n.clone_ref(py)),
            Op::SendTo { data, addr } => {
                Args::SendTo { data: data.clone_ref(py), addr: addr.clone_ref(py), retry: retrying }
            }
            Op::Accept => Args::Accept,
            Op::Connect { addr } => Args::Connect { addr: addr.clone_ref(py), in_progress: retrying },
        }
    }
}

/// A size argument the native path takes: an exact int (anything else goes
/// to the socket's method, which converts it or raises as Python does).
fn exact_size(obj: &Bound<'_, PyAny>) -> Option<isize> {
    if obj.is_exact_instance_of::<pyo3::types::PyInt>() {
        obj.extract().ok()
    } else {
        None
    }
}

fn reused() -> PyErr {
    PyRuntimeError::new_err("cannot reuse already awaited coroutine")
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

/// Like a coroutine that was never awaited: warn, as CPython does for
/// asyncio's `async def` sock_* methods, so a forgotten `await` is seen.
impl Drop for SockOp {
    fn drop(&mut self) {
        let Some(name) = self.st.try_peek().filter(|st| st.phase == Phase::Start).map(|st| st.op.name()) else {
            return;
        };
        // Objects are deallocated with the GIL held; attach() is then free.
        Python::attach(|py| {
            // Deallocation may happen while an exception is propagating.
            let pending = PyErr::take(py);
            let message = std::ffi::CString::new(format!("coroutine 'Loop.{name}' was never awaited")).ok();
            if let Some(message) = message {
                let category = py.get_type::<pyo3::exceptions::PyRuntimeWarning>();
                if let Err(err) = PyErr::warn(py, &category, &message, 1) {
                    // A warning turned into an error has nowhere to go.
                    err.write_unraisable(py, None);
                }
            }
            if let Some(err) = pending {
                err.restore(py);
            }
        });
    }
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
                family: libc::AF_UNSPEC,
                via_methods: true,
                retrying: false,
                fut: None,
                handle: None,
            }),
        }
    }

    /// The system call once, straight on the fd.  (No borrow is held while
    /// Python runs: getting a buffer may call back into Python.)
    fn attempt(&self, py: Python<'_>) -> PyResult<Attempt> {
        let (fd, family, args, via_methods, sock) = {
            let st = self.st.borrow_mut(py)?;
            let sock = st.sock.as_ref().ok_or_else(reused)?.clone_ref(py);
            (st.fd, st.family, Args::of(&st.op, st.retrying, py), st.via_methods, sock)
        };
        let sock = sock.bind(py);
        if via_methods {
            return self.attempt_via_methods(sock, args);
        }
        match args {
            Args::Recv(n) => {
                // Negative and non-int sizes: the socket's recv() raises
                // its own error.
                let Some(size) = exact_size(n.bind(py)).and_then(|v| usize::try_from(v).ok()) else {
                    return self.attempt_via_methods(sock, Args::Recv(n));
                };
                match read_bytes(py, fd, size) {
                    Ok(Some(data)) => Ok(Attempt::Done(data.into_any().unbind())),
                    Ok(None) => Ok(Attempt::Done(PyBytes::new(py, b"").into_any().unbind())),
                    Err(RecvError::WouldBlock) => Ok(Attempt::WouldBlock),
                    Err(RecvError::Failed(err)) => Err(err),
                }
            }
            Args::Into(buf) => {
                let view = writable_view(buf.bind(py), "recv_into")?;
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
            Args::RecvFrom(n) => {
                let Some(n) = exact_size(n.bind(py)) else {
                    return self.attempt_via_methods(sock, Args::RecvFrom(n));
                };
                let n = usize::try_from(n).map_err(|_| PyValueError::new_err("negative buffersize in recvfrom"))?;
                match recv_from_bytes(py, fd, n) {
                    Ok((data, from)) => Ok(Attempt::Done((data, to_python(py, &from)?).into_pyobject(py)?.into_any().unbind())),
                    Err(RecvError::WouldBlock) => Ok(Attempt::WouldBlock),
                    Err(RecvError::Failed(err)) => Err(err),
                }
            }
            Args::RecvFromInto(buf, n) => {
                let Some(n) = exact_size(n.bind(py)) else {
                    return self.attempt_via_methods(sock, Args::RecvFromInto(buf, n));
                };
                let n = usize::try_from(n).map_err(|_| PyValueError::new_err("negative buffersize in recvfrom_into"))?;
                let view = writable_view(buf.bind(py), "recvfrom_into")?;
                // The socket module's rules: 0 is the whole buffer, more
                // than the buffer is an error.
                let n = if n == 0 { view.len() } else { n };
                if n > view.len() {
                    return Err(PyValueError::new_err("nbytes is greater than the length of the buffer"));
                }
                let mut from = SockAddr::empty();
                // SAFETY: a writable view of at least `n` bytes, held until
                // the end of this block.
                match unsafe { recv_from_raw(fd, view.as_mut_ptr(), n, &mut from) } {
                    Io::Done(got) => Ok(Attempt::Done((got, to_python(py, &from)?).into_pyobject(py)?.into_any().unbind())),
                    Io::WouldBlock => Ok(Attempt::WouldBlock),
                    Io::Failed(errno) => Err(os_error(py, errno)),
                }
            }
            Args::SendTo { data, addr, retry } => {
                let Some(to) = from_python(family, addr.bind(py)) else {
                    return self.attempt_via_methods(sock, Args::SendTo { data, addr, retry });
                };
                match with_bytes(data.bind(py), |b| send_to(fd, b, Some(&to)))? {
                    Io::Done(n) => Ok(Attempt::Done(n.into_pyobject(py)?.into_any().unbind())),
                    Io::WouldBlock => Ok(Attempt::WouldBlock),
                    Io::Failed(errno) => Err(os_error(py, errno)),
                }
            }
            // (Always through the socket's methods: see Op.)
            Args::Accept | Args::Connect { .. } => self.attempt_via_methods(sock, args),
        }
    }

    /// The attempt through the socket's Python methods, as asyncio makes it.
    fn attempt_via_methods(&self, sock: &Bound<'_, PyAny>, args: Args) -> PyResult<Attempt> {
        let py = sock.py();
        let mut send_len = None;
        let called = match args {
            Args::Recv(n) => sock.call_method1(intern!(py, "recv"), (n,)),
            Args::Into(buf) => sock.call_method1(intern!(py, "recv_into"), (buf,)),
            Args::Send(data, sent) => {
                let view = PyMemoryView::from(data.bind(py))?;
                let rest = super::sys::slice_of(view.as_any(), sent as isize, None)?;
                send_len = Some(rest.len()?);
                sock.call_method1(intern!(py, "send"), (rest,))
            }
            Args::RecvFrom(n) => sock.call_method1(intern!(py, "recvfrom"), (n,)),
            Args::RecvFromInto(buf, n) => sock.call_method1(intern!(py, "recvfrom_into"), (buf, n)),
            Args::SendTo { data, addr, retry: false } => sock.call_method1(intern!(py, "sendto"), (data, addr)),
            Args::SendTo { data, addr, retry: true } => sock.call_method1(intern!(py, "sendto"), (data, 0, addr)),
            Args::Accept => sock.call_method0(intern!(py, "accept")).and_then(|pair| {
                let conn = pair.get_item(0)?;
                conn.call_method1(intern!(py, "setblocking"), (false,))?;
                Ok(pair)
            }),
            Args::Connect { addr, in_progress: false } => sock.call_method1(intern!(py, "connect"), (addr,)),
            // asyncio raises OSError(err, ...) inside the same try: an
            // errno that makes it a BlockingIOError keeps waiting below.
            Args::Connect { addr, in_progress: true } => sock
                .call_method1(intern!(py, "getsockopt"), (libc::SOL_SOCKET, libc::SO_ERROR))
                .and_then(|e| e.extract::<i32>())
                .and_then(|errno| match errno {
                    0 => Ok(py.None().into_bound(py)),
                    errno => {
                        let message = format!("Connect call failed {}", addr.bind(py).str()?);
                        Err(pyo3::exceptions::PyOSError::new_err((errno, message)))
                    }
                }),
        };
        let result = match called {
            Ok(r) => r,
            Err(e) if is_would_block(py, &e) => return Ok(Attempt::WouldBlock),
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
                _ => return Err(reused()),
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
        st.via_methods = !(plain && non_blocking && fd >= 0) || st.op.always_via_methods();
        if !st.via_methods && st.op.converts_addresses() {
            // Addresses are converted natively for these families only.
            st.family = socket_family(fd);
            st.via_methods = !family_supported(st.family);
        }
        Ok(loop_)
    }

    /// The first step: the call at once, else a future to wait on.
    fn start(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let loop_ = this.check(py)?;
        this.default_recvfrom_into_size(py)?;
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
            st.retrying = true;
        }
        fut.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
        Ok(fut.unbind())
    }

    /// sock_recvfrom_into's `if not nbytes: nbytes = len(buf)`, made where
    /// asyncio makes it (so `len` counts a typed buffer's items, as there).
    fn default_recvfrom_into_size(&self, py: Python<'_>) -> PyResult<()> {
        let (buf, n) = match &self.st.borrow_mut(py)?.op {
            Op::RecvFromInto { buf, n } => (buf.clone_ref(py), n.clone_ref(py)),
            _ => return Ok(()),
        };
        if n.bind(py).is_truthy()? {
            return Ok(());
        }
        let len = buf.bind(py).len()?.into_pyobject(py)?.into_any().unbind();
        if let Op::RecvFromInto { n, .. } = &mut self.st.borrow_mut(py)?.op {
            *n = len;
        }
        Ok(())
    }

    /// Finish with `value`: the StopIteration that returns it.
    fn finish(&self, py: Python<'_>, value: Py<PyAny>) -> PyErr {
        self.release(py);
        crate::stop_iteration::stop_iteration_err(py, value)
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
            _ => Err(reused()),
        }
    }

    /// Stop waiting: stop watching the fd and cancel the future.  On a
    /// closed loop the future is left alone (cancelling would schedule its
    /// callbacks on the closed loop, an error): asyncio's coroutine, closed
    /// there, leaves its future pending too, silently.
    fn abandon(&self, py: Python<'_>) -> PyResult<()> {
        let (fut, loop_) = {
            let st = self.st.borrow_mut(py)?;
            (st.fut.as_ref().map(|f| f.clone_ref(py)), st.loop_.as_ref().map(|l| l.clone_ref(py)))
        };
        let unwatched = self.unwatch(py);
        let loop_closed = match loop_ {
            Some(l) => match l.bind(py).cast::<LoopCore>() {
                Ok(core) => core.get().is_closed(),
                Err(_) => l.bind(py).call_method0(intern!(py, "is_closed"))?.is_truthy()?,
            },
            None => true,
        };
        if let (Some(fut), false) = (fut, loop_closed) {
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
    fn recv(r#loop: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, nbytes: &Bound<'_, PyAny>) -> SockOp {
        SockOp::new(r#loop, sock, Op::Recv { n: nbytes.clone().unbind() })
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

    /// `loop.sock_recvfrom(sock, bufsize)`.
    #[staticmethod]
    fn recvfrom(r#loop: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, bufsize: &Bound<'_, PyAny>) -> SockOp {
        SockOp::new(r#loop, sock, Op::RecvFrom { n: bufsize.clone().unbind() })
    }

    /// `loop.sock_recvfrom_into(sock, buf, nbytes=0)`.
    #[staticmethod]
    fn recvfrom_into(
        r#loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        buf: &Bound<'_, PyAny>,
        nbytes: &Bound<'_, PyAny>,
    ) -> SockOp {
        SockOp::new(r#loop, sock, Op::RecvFromInto { buf: buf.clone().unbind(), n: nbytes.clone().unbind() })
    }

    /// `loop.sock_sendto(sock, data, address)`.
    #[staticmethod]
    fn sendto(
        r#loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        address: &Bound<'_, PyAny>,
    ) -> SockOp {
        SockOp::new(r#loop, sock, Op::SendTo { data: data.clone().unbind(), addr: address.clone().unbind() })
    }

    /// `loop.sock_accept(sock)`.
    #[staticmethod]
    fn accept(r#loop: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>) -> SockOp {
        SockOp::new(r#loop, sock, Op::Accept)
    }

    /// The connecting half of `loop.sock_connect(sock, address)`, once the
    /// address is resolved.
    #[staticmethod]
    fn connect(r#loop: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, address: &Bound<'_, PyAny>) -> SockOp {
        SockOp::new(r#loop, sock, Op::Connect { addr: address.clone().unbind() })
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
        for o in [&st.loop_, &st.sock, &st.fut, &st.handle].into_iter().flatten().chain(st.op.refs()) {
            visit.call(o)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Some(mut st) = self.st.try_borrow_for_clear() {
            let old = (st.loop_.take(), st.sock.take(), st.fut.take(), st.handle.take());
            let op = std::mem::replace(&mut st.op, Op::Accept);
            drop(st);
            drop((old, op));
        }
    }
}
