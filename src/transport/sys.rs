//! The few system calls and C-API buffer accesses the transports make, each
//! wrapped once with its safety argument.

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use pyo3::ffi;
use pyo3::prelude::*;

use super::sockaddr::SockAddr;

/// What a non-blocking read or write on an fd came to.
pub enum Io {
    Done(usize),
    /// EAGAIN: the kernel has nothing to give / no room.
    WouldBlock,
    /// Any other errno.
    Failed(i32),
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

fn classify(n: isize) -> Option<Io> {
    if n >= 0 {
        return Some(Io::Done(n as usize));
    }
    match errno() {
        libc::EINTR => None,
        libc::EAGAIN => Some(Io::WouldBlock),
        e => Some(Io::Failed(e)),
    }
}

/// `read(fd, buf, len)`, retried on EINTR.  On a socket this is
/// `recv(fd, buf, len, 0)`; it also reads pipes and character devices.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn read_raw(fd: RawFd, buf: *mut u8, len: usize) -> Io {
    loop {
        // SAFETY: the caller guarantees `buf`/`len`; a bad fd is an errno.
        if let Some(io) = classify(unsafe { libc::read(fd, buf.cast(), len) }) {
            return io;
        }
    }
}

/// Whether a socket has something to read, without taking it: one byte
/// peeked (`recv(MSG_PEEK | MSG_DONTWAIT)`).  `Done(0)` is the EOF,
/// `WouldBlock` nothing yet, `Failed` a pending socket error -- which the
/// peek consumes, as any recv does: the caller must report it.
pub fn peek(fd: RawFd) -> Io {
    let mut byte = 0u8;
    loop {
        // SAFETY: `byte` is a live one-byte buffer; a bad fd is an errno.
        let n = unsafe { libc::recv(fd, (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if let Some(io) = classify(n) {
            return io;
        }
    }
}

/// How a transport writes to its fd.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub enum WriteCall {
    /// `send`/`sendmsg` with MSG_NOSIGNAL: a peer that went away is an
    /// EPIPE error, never a SIGPIPE.
    #[default]
    Send,
    /// `write`/`writev`, as asyncio's pipe transports do (`os.write`): they
    /// also take pipes and character devices.  CPython ignores SIGPIPE, so
    /// a closed pipe is an EPIPE error here too.
    Write,
}

/// Write `data` (one system call, retried on EINTR).
pub fn write(fd: RawFd, data: &[u8], how: WriteCall) -> Io {
    loop {
        let n = match how {
            // SAFETY: `data` is a live slice of `data.len()` bytes.
            WriteCall::Send => unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) },
            // SAFETY: as above.
            WriteCall::Write => unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) },
        };
        if let Some(io) = classify(n) {
            return io;
        }
    }
}

/// Gathered write of several slices (at most IOV_MAX are used).
pub fn write_vectored<'a>(fd: RawFd, parts: impl IntoIterator<Item = &'a [u8]>, how: WriteCall) -> Io {
    const IOV_MAX: usize = 1024;
    let iov: smallvec::SmallVec<[libc::iovec; 16]> = parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .take(IOV_MAX)
        .map(|p| libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() })
        .collect();
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    loop {
        let n = match how {
            // SAFETY: `msg` points at `iov`, whose entries point into the
            // slices of `parts` (borrowed for 'a, so live); sendmsg only
            // reads them.
            WriteCall::Send => unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) },
            // SAFETY: `iov` holds `iov.len()` entries pointing into the live
            // slices of `parts`; writev only reads them.
            WriteCall::Write => unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) },
        };
        if let Some(io) = classify(n) {
            return io;
        }
    }
}

/// `recvfrom(fd, buf, len(buf), 0)`, retried on EINTR; the sender's
/// address goes to `from` (left empty -- length 0 -- when the socket
/// reports none).
pub fn recv_from(fd: RawFd, buf: &mut [u8], from: &mut SockAddr) -> Io {
    // SAFETY: `buf` is a live writable slice of `buf.len()` bytes.
    unsafe { recv_from_raw(fd, buf.as_mut_ptr(), buf.len(), from) }
}

/// `recv_from` into a raw buffer.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn recv_from_raw(fd: RawFd, buf: *mut u8, len: usize, from: &mut SockAddr) -> Io {
    loop {
        *from = SockAddr::empty();
        let (addr, addr_len) = from.as_mut_parts();
        // SAFETY: the caller guarantees `buf`/`len`; `addr`/`addr_len` point
        // into `from`, whose storage is as large as `*addr_len` says.
        let n = unsafe { libc::recvfrom(fd, buf.cast(), len, 0, addr, addr_len) };
        if let Some(io) = classify(n) {
            return io;
        }
    }
}

/// One datagram: `sendto(fd, data, to)`, or `send` on a connected socket
/// (`to` None), retried on EINTR.
pub fn send_to(fd: RawFd, data: &[u8], to: Option<&SockAddr>) -> Io {
    loop {
        let n = match to {
            // SAFETY: `data` is a live slice; `a` is an initialised address
            // of `a.len()` bytes.
            Some(a) => unsafe {
                libc::sendto(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL, a.as_ptr(), a.len())
            },
            // SAFETY: `data` is a live slice of `data.len()` bytes.
            None => unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) },
        };
        if let Some(io) = classify(n) {
            return io;
        }
    }
}

/// The errors asyncio's socket calls treat as "try again when ready"
/// (BlockingIOError, InterruptedError).
pub fn is_would_block(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py)
        || err.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py)
}

/// `accept4` a connection, non-blocking and close-on-exec from the start
/// (one system call where `socket.accept()` + `setblocking(False)` make
/// two).  Err is the errno.
pub fn accept_nonblocking(fd: RawFd) -> Result<(OwnedFd, SockAddr), i32> {
    let mut addr = SockAddr::empty();
    let (ptr, len) = addr.as_mut_parts();
    loop {
        // SAFETY: `ptr`/`len` describe `addr`'s storage, which accept4 fills
        // in (and truncates to); a bad fd is an errno.
        let conn = unsafe { libc::accept4(fd, ptr, len, libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) };
        if conn >= 0 {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            return Ok((unsafe { OwnedFd::from_raw_fd(conn) }, addr));
        }
        match errno() {
            libc::EINTR => continue, // as the socket module retries (PEP 475)
            e => return Err(e),
        }
    }
}

/// A socket's address family (`SO_DOMAIN`), AF_UNSPEC if it cannot be had.
pub fn socket_family(fd: RawFd) -> i32 {
    let mut family: libc::c_int = libc::AF_UNSPEC;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `family`/`len` are a live c_int and its size; a bad fd is an
    // errno, which leaves `family` AF_UNSPEC.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, (&mut family as *mut libc::c_int).cast(), &mut len)
    };
    if rc == 0 {
        family
    } else {
        libc::AF_UNSPEC
    }
}

/// Grow a pipe's buffer to `size` bytes (`F_SETPIPE_SZ`) unless it is that
/// big already (never shrink it); false if it did not grow (not a pipe,
/// big enough, above /proc/sys/fs/pipe-max-size, or the user's pipe-buffer
/// quota is used up).
pub fn grow_pipe(fd: RawFd, size: usize) -> bool {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl without argument; a bad fd or a non-pipe is an errno.
    let current = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    if current < 0 || current >= size {
        return false;
    }
    // SAFETY: fcntl with an int argument; a bad fd is an errno.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size) >= 0 }
}

/// `shutdown(fd, SHUT_WR)`.
pub fn shutdown_write(py: Python<'_>, fd: RawFd) -> PyResult<()> {
    // SAFETY: shutdown has no memory arguments; a bad fd is an errno.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
        return Err(os_error(py, errno()));
    }
    Ok(())
}

/// `socket.socket`: on an object of exactly this type (not a subclass,
/// which may override its methods) the transports make the system calls
/// on the fd themselves.
pub fn socket_type(py: Python<'_>) -> PyResult<&Bound<'_, pyo3::types::PyType>> {
    static TYPE: pyo3::sync::PyOnceLock<Py<pyo3::types::PyType>> = pyo3::sync::PyOnceLock::new();
    TYPE.import(py, "socket", "socket")
}

/// The OSError subclass CPython raises for `errno` (ConnectionResetError,
/// BrokenPipeError, ...), with `errno` and `strerror` set, as the socket
/// module would raise it.
pub fn os_error(py: Python<'_>, errno: i32) -> PyErr {
    // SAFETY: errno is thread-local; PyErr_SetFromErrno reads it and sets
    // the exception (it checks signals only for EINTR, never passed here).
    unsafe {
        *libc::__errno_location() = errno;
        ffi::PyErr_SetFromErrno(ffi::PyExc_OSError);
    }
    PyErr::fetch(py)
}

/// An `io::Error` as the OSError the os module would raise (errno and
/// strerror set, the errno's subclass); pyo3's own conversion gives a bare
/// message with no errno.
pub fn io_error(py: Python<'_>, err: std::io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(errno) => os_error(py, errno),
        None => pyo3::exceptions::PyOSError::new_err(err.to_string()),
    }
}

/// A Python buffer (bytes, bytearray, memoryview, ...) held for the
/// duration of one call; released on drop, with the GIL still held (the
/// `'py` lifetime ties it to the GIL token).
pub struct BufferView<'py> {
    view: ffi::Py_buffer,
    _gil: PhantomData<Python<'py>>,
}

impl<'py> BufferView<'py> {
    /// A C-contiguous view of `obj`'s bytes, writable if asked.
    pub fn get(obj: &Bound<'py, PyAny>, writable: bool) -> PyResult<Self> {
        let flags = if writable { ffi::PyBUF_WRITABLE } else { ffi::PyBUF_SIMPLE };
        let mut view = MaybeUninit::<ffi::Py_buffer>::zeroed();
        // SAFETY: `obj` is a live object; on success PyObject_GetBuffer
        // fills `view` completely, on failure it sets an exception and
        // leaves nothing to release.
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) } < 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: initialised by the successful call above.
        Ok(BufferView { view: unsafe { view.assume_init() }, _gil: PhantomData })
    }

    pub fn len(&self) -> usize {
        self.view.len.max(0) as usize
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.len() == 0 || self.view.buf.is_null() {
            return &[];
        }
        // SAFETY: a simple buffer is `len` contiguous bytes at `buf`, valid
        // until released (in drop), and we hold the GIL meanwhile.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.len()) }
    }

    /// Where a read may write (only meaningful for a writable view).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.view.buf.cast()
    }
}

/// A writable view of `buf` for the socket method `method`, refused with
/// the socket module's TypeError (a read-only buffer gives BufferError
/// from the buffer protocol itself).
pub fn writable_view<'py>(buf: &Bound<'py, PyAny>, method: &str) -> PyResult<BufferView<'py>> {
    BufferView::get(buf, true).map_err(|_| {
        // The argument parser's wording: None by name, anything else by type.
        let type_name = if buf.is_none() {
            "None".to_string()
        } else {
            buf.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".into())
        };
        pyo3::exceptions::PyTypeError::new_err(format!(
            "{method}() argument 1 must be read-write bytes-like object, not {type_name}"
        ))
    })
}

/// `obj[start:stop]` (`stop` None: to the end).
///
/// Not pyo3's `PySlice::new`: up to pyo3 0.30 it hands PySlice_New three
/// new integers and never releases them (PySlice_New takes its own
/// references), a leak per call for any bound above 256 -- one per TLS
/// read, as it was used here.
pub fn slice_of<'py>(obj: &Bound<'py, PyAny>, start: isize, stop: Option<isize>) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let start = start.into_pyobject(py)?;
    let stop = match stop {
        Some(stop) => stop.into_pyobject(py)?.into_any(),
        None => py.None().into_bound(py),
    };
    // SAFETY: `start` and `stop` are live objects we hold (PySlice_New
    // takes its own references to them); a NULL step means None.
    // PySlice_New returns a new reference or NULL with an exception set.
    let slice = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PySlice_New(start.as_ptr(), stop.as_ptr(), std::ptr::null_mut()))? };
    obj.get_item(slice)
}

/// Run `f` on the bytes of a bytes-like object: exact bytes directly (the
/// common case, without the buffer protocol), anything else through a
/// `BufferView`.
pub fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = data.cast_exact::<pyo3::types::PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    let view = BufferView::get(data, false)?;
    Ok(f(view.as_slice()))
}

impl Drop for BufferView<'_> {
    fn drop(&mut self) {
        // SAFETY: `view` was filled by PyObject_GetBuffer and is released
        // exactly once; the GIL is held (see the type's docs).
        unsafe { ffi::PyBuffer_Release(&mut self.view) }
    }
}

extern "C" {
    // CPython's own (non-limited) API, which pyo3-ffi keeps private: shrink
    // a bytes object nobody else references yet, in place when possible.
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> libc::c_int;
}

/// One `read` of up to `max` bytes straight into a new bytes object, shrunk
/// to what arrived -- what asyncio's `sock.recv(max_size)` does, minus the
/// Python call.  These short-lived buffers come from glibc's heap (see
/// `adapt_malloc_thresholds`); a long-lived per-thread buffer copied out
/// from was measured slower, at 100 KiB reads by a third.  `Ok(None)` is
/// the EOF.
pub fn read_bytes(py: Python<'_>, fd: RawFd, max: usize) -> Result<Option<Bound<'_, pyo3::types::PyBytes>>, RecvError> {
    // SAFETY: `fill` is handed a buffer valid for writes of `max` bytes.
    let data = new_bytes_from(py, max, |buf| unsafe { read_raw(fd, buf, max) })?;
    Ok(Some(data).filter(|d| !d.as_bytes().is_empty()))
}

/// `sock.recvfrom(max)` on the fd: one datagram (or stream read) straight
/// into a new bytes object, with the sender's address (empty when the
/// socket reports none).  An empty datagram is an empty bytes object.
pub fn recv_from_bytes(
    py: Python<'_>,
    fd: RawFd,
    max: usize,
) -> Result<(Bound<'_, pyo3::types::PyBytes>, SockAddr), RecvError> {
    let mut from = SockAddr::empty();
    // SAFETY: `fill` is handed a buffer valid for writes of `max` bytes.
    let data = new_bytes_from(py, max, |buf| unsafe { recv_from_raw(fd, buf, max, &mut from) })?;
    Ok((data, from))
}

/// A new bytes object of up to `max` bytes, filled by `fill` (one system
/// call writing into the buffer it is given) and shrunk to what it wrote.
fn new_bytes_from<'py>(
    py: Python<'py>,
    max: usize,
    fill: impl FnOnce(*mut u8) -> Io,
) -> Result<Bound<'py, pyo3::types::PyBytes>, RecvError> {
    // SAFETY: a NULL source makes CPython allocate `max` uninitialised
    // bytes; the result is a new reference or NULL with an exception set.
    let mut obj = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), max as ffi::Py_ssize_t) };
    if obj.is_null() {
        return Err(RecvError::Failed(PyErr::fetch(py)));
    }
    // SAFETY: `obj` is a bytes object of `max` writable bytes that only we
    // reference (so writing into it is allowed until it is shared).  (For
    // max 0 CPython hands out its shared empty bytes, which a fill of 0
    // bytes does not write to.)
    let n = match fill(unsafe { ffi::PyBytes_AsString(obj).cast() }) {
        Io::Done(n) => n.min(max),
        failed => {
            // SAFETY: we own the reference created above.
            unsafe { ffi::Py_DECREF(obj) };
            return Err(match failed {
                Io::Failed(errno) => RecvError::Failed(os_error(py, errno)),
                _ => RecvError::WouldBlock,
            });
        }
    };
    // SAFETY: `obj` is an unshared bytes object we own; on failure
    // _PyBytes_Resize frees it, sets `obj` to NULL and sets an exception.
    if n < max && unsafe { _PyBytes_Resize(&mut obj, n as ffi::Py_ssize_t) } < 0 {
        return Err(RecvError::Failed(PyErr::fetch(py)));
    }
    // SAFETY: `obj` is a valid new reference to a bytes object.
    Ok(unsafe { Bound::from_owned_ptr(py, obj).cast_into_unchecked() })
}

/// Free one 1 MiB allocation, so that glibc's malloc keeps the buffers
/// transports churn through (reads of up to 256 KiB, their copies in
/// asyncio's streams) on its heap.  glibc maps every allocation above its
/// mmap threshold separately, and returns the top of its heap to the
/// system above its trim threshold; both start at 128 KiB and only rise
/// once a large mapped allocation is freed whole (to its size, and twice
/// that).  A process that has not freed one yet pays, per 100 KiB message,
/// an mmap or brk and a page fault per 4 KiB: measured here, 100 KiB
/// streams echo went from 3.6k to 10.4k requests/s with page faults from
/// 335k/s to none.  Any program that once frees a buffer of a MiB (reading
/// a file does) gets the same thresholds; on other allocators this is only
/// a malloc and a free.
pub fn adapt_malloc_thresholds() {
    const SIZE: usize = 1024 * 1024;
    // SAFETY: malloc's result is checked; the volatile write (inside the
    // allocation) keeps the compiler from dropping the pair as unused; the
    // block is freed once, right after.
    unsafe {
        let p = libc::malloc(SIZE).cast::<u8>();
        if !p.is_null() {
            std::ptr::write_volatile(p, 0);
            libc::free(p.cast());
        }
    }
}

pub enum RecvError {
    WouldBlock,
    /// The OSError of a failed read, or a failed allocation (MemoryError).
    Failed(PyErr),
}
