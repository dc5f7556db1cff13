//! Socket addresses between the kernel's `sockaddr` and Python's address
//! objects, as CPython's socket module converts them (`makesockaddr` and
//! `getsockaddrarg` in socketmodule.c), for the address families the native
//! datagram path handles: AF_INET, AF_INET6 and AF_UNIX.
//!
//! Python to kernel is only a fast path: numeric addresses in exact tuples
//! of exact str and int.  Anything else (host names, '<broadcast>', scope
//! names, out-of-range ports, subclasses) is left to the socket module, so
//! its resolution rules and error messages stay exactly Python's.

use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString, PyTuple};

/// A kernel socket address and its length.
#[derive(Clone, Copy)]
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    /// All zero, with room for any address (what `recvfrom` fills in).
    pub fn empty() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all zero is valid.
        SockAddr { storage: unsafe { std::mem::zeroed() }, len: size_of::<libc::sockaddr_storage>() as libc::socklen_t }
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    /// Where `recvfrom` writes the address, and its length in and out.
    pub fn as_mut_parts(&mut self) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        ((&mut self.storage as *mut libc::sockaddr_storage).cast(), &mut self.len)
    }

    pub fn len(&self) -> libc::socklen_t {
        self.len
    }

    /// The bytes the kernel filled in (the cache's key).
    fn as_bytes(&self) -> &[u8] {
        let len = (self.len as usize).min(size_of::<libc::sockaddr_storage>());
        // SAFETY: `storage` is `size_of::<sockaddr_storage>()` initialised
        // bytes and `len` is capped to that.
        unsafe { std::slice::from_raw_parts(self.as_ptr().cast::<u8>(), len) }
    }

    fn family(&self) -> i32 {
        i32::from(self.storage.ss_family)
    }

    fn from_v4(ip: Ipv4Addr, port: u16) -> Self {
        let mut a = Self::empty();
        // SAFETY: sockaddr_storage is larger than and aligned for
        // sockaddr_in; all its bytes are initialised.
        let sin = unsafe { &mut *(&mut a.storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = port.to_be();
        sin.sin_addr = libc::in_addr { s_addr: u32::from(ip).to_be() };
        a.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        a
    }

    fn from_v6(ip: Ipv6Addr, port: u16, flowinfo: u32, scope_id: u32) -> Self {
        let mut a = Self::empty();
        // SAFETY: as in from_v4, for sockaddr_in6.
        let sin6 = unsafe { &mut *(&mut a.storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = port.to_be();
        sin6.sin6_flowinfo = flowinfo.to_be();
        sin6.sin6_addr = libc::in6_addr { s6_addr: ip.octets() };
        sin6.sin6_scope_id = scope_id;
        a.len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        a
    }
}

/// Whether the native datagram path converts this family's addresses.
pub fn family_supported(family: i32) -> bool {
    matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX)
}

extern "C" {
    // POSIX, in every libc; the libc crate does not declare it.
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// `inet_ntop` (what CPython's make_ipv4_addr/make_ipv6_addr call), so the
/// text is exactly the socket module's.
fn ntop(family: i32, src: *const libc::c_void) -> Option<String> {
    let mut buf = [0 as libc::c_char; 64]; // INET6_ADDRSTRLEN is 46
    // SAFETY: `src` points at an in_addr/in6_addr matching `family`, `buf`
    // is writable for its length; on success it holds a NUL-terminated
    // string.
    let p = unsafe { inet_ntop(family, src, buf.as_mut_ptr(), buf.len() as libc::socklen_t) };
    if p.is_null() {
        return None;
    }
    // SAFETY: inet_ntop succeeded, so `buf` is NUL-terminated.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

/// The Python address `recvfrom` would return for `addr` (socketmodule.c's
/// makesockaddr): None for an empty address; (host, port) for AF_INET;
/// (host, port, flowinfo, scope_id) for AF_INET6; for AF_UNIX, the path as
/// str (file-system decoded), or bytes for Linux's abstract namespace.
pub fn to_python(py: Python<'_>, addr: &SockAddr) -> PyResult<Py<PyAny>> {
    if addr.len == 0 {
        return Ok(py.None());
    }
    let ptr = addr.as_ptr();
    match addr.family() {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*ptr.cast::<libc::sockaddr_in>() };
            let host = ntop(libc::AF_INET, (&sin.sin_addr as *const libc::in_addr).cast());
            let host = host.ok_or_else(|| pyo3::exceptions::PyOSError::new_err("inet_ntop failed"))?;
            Ok(PyTuple::new(py, [PyString::new(py, &host).into_any(), u16::from_be(sin.sin_port).into_pyobject(py)?.into_any()])?
                .into_any()
                .unbind())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*ptr.cast::<libc::sockaddr_in6>() };
            let host = ntop(libc::AF_INET6, (&sin6.sin6_addr as *const libc::in6_addr).cast());
            let host = host.ok_or_else(|| pyo3::exceptions::PyOSError::new_err("inet_ntop failed"))?;
            Ok(PyTuple::new(
                py,
                [
                    PyString::new(py, &host).into_any(),
                    u16::from_be(sin6.sin6_port).into_pyobject(py)?.into_any(),
                    u32::from_be(sin6.sin6_flowinfo).into_pyobject(py)?.into_any(),
                    sin6.sin6_scope_id.into_pyobject(py)?.into_any(),
                ],
            )?
            .into_any()
            .unbind())
        }
        libc::AF_UNIX => {
            // sun_path follows the 2-byte family.
            let path = &addr.as_bytes()[size_of::<libc::sa_family_t>()..];
            if path.first() == Some(&0) {
                // Linux's abstract namespace: every byte counts.
                return Ok(PyBytes::new(py, path).into_any().unbind());
            }
            // A NUL-terminated path (the storage is zeroed beyond what the
            // kernel wrote, so an unbound sender's empty path reads as '').
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            // SAFETY: `path[..end]` is a live byte slice; the result is a new
            // reference or NULL with an exception set.
            let obj = unsafe { ffi::PyUnicode_DecodeFSDefaultAndSize(path.as_ptr().cast(), end as ffi::Py_ssize_t) };
            // SAFETY: a new reference (or NULL, turned into the exception).
            unsafe { Bound::from_owned_ptr_or_err(py, obj) }.map(Bound::unbind)
        }
        family => Err(pyo3::exceptions::PyOSError::new_err(format!("unexpected address family {family}"))),
    }
}

/// An exact int in `0..=max`, else None.
fn small_int(obj: &Bound<'_, PyAny>, max: u32) -> Option<u32> {
    if !obj.is_exact_instance_of::<PyInt>() {
        return None;
    }
    obj.extract::<u32>().ok().filter(|v| *v <= max)
}

/// The kernel address for a numeric Python address on a socket of
/// `family`, or None where the socket module must convert it.
pub fn from_python(family: i32, addr: &Bound<'_, PyAny>) -> Option<SockAddr> {
    if !addr.is_exact_instance_of::<PyTuple>() {
        return None;
    }
    let tuple = addr.cast::<PyTuple>().ok()?;
    let host = tuple.get_item(0).ok()?;
    if !host.is_exact_instance_of::<PyString>() {
        return None;
    }
    let host = host.cast::<PyString>().ok()?;
    let host = host.to_str().ok()?;
    let port = u16::try_from(small_int(&tuple.get_item(1).ok()?, 0xffff)?).ok()?;
    match (family, tuple.len()) {
        (libc::AF_INET, 2) => Some(SockAddr::from_v4(host.parse().ok()?, port)),
        (libc::AF_INET6, 2..=4) => {
            let field = |i: usize, max: u32| match tuple.get_item(i) {
                Ok(v) => small_int(&v, max),
                Err(_) => Some(0),
            };
            // The socket module's limits: flowinfo 0-1048575, scope_id a
            // C unsigned int.
            let flowinfo = if tuple.len() > 2 { field(2, 0xfffff)? } else { 0 };
            let scope_id = if tuple.len() > 3 { field(3, u32::MAX)? } else { 0 };
            Some(SockAddr::from_v6(host.parse().ok()?, port, flowinfo, scope_id))
        }
        _ => None,
    }
}

/// Recently seen addresses, both ways: a datagram socket talks to the same
/// peers over and over, and its protocol usually sends back to the very
/// address object it was given.  A small open-addressed table of received
/// addresses: an address hashes to a window of `WAYS` slots; a second
/// table maps an object's identity to its slot.  Entries hold their Python object, so an entry
/// found by identity is still the same address (only tuples of exact str
/// and int, str and bytes are cached: all immutable).
#[derive(Default)]
pub struct AddrCache {
    /// Allocated on first use.
    entries: Vec<Option<(SockAddr, Py<PyAny>)>>,
    /// Indexed by a hash of an object's address: where its entry is.
    by_object: Vec<u8>,
    /// Which slot of a full window is replaced next.
    evict: usize,
    /// The last address object sent to that the table does not hold.
    last_sent: Option<(SockAddr, Py<PyAny>)>,
}

impl AddrCache {
    const SLOTS: usize = 64;
    const WAYS: usize = 4;

    fn window(addr: &SockAddr) -> impl Iterator<Item = usize> {
        // FNV-1a over the bytes: a few dozen at most.
        let mut h: u32 = 0x811c_9dc5;
        for &b in addr.as_bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        let start = h as usize;
        (0..Self::WAYS).map(move |i| (start + i) % Self::SLOTS)
    }

    fn object_slot(obj: *mut ffi::PyObject) -> usize {
        // Objects are at least 16-byte aligned.
        ((obj as usize) >> 4) % Self::SLOTS
    }

    fn find(&self, addr: &SockAddr) -> Option<usize> {
        let key = addr.as_bytes();
        Self::window(addr).find(|&i| matches!(self.entries.get(i), Some(Some((a, _))) if a.as_bytes() == key))
    }

    /// The Python object for a received address.
    pub fn python(&mut self, py: Python<'_>, addr: &SockAddr) -> PyResult<Py<PyAny>> {
        if let Some(Some((_, obj))) = self.find(addr).and_then(|i| self.entries.get(i)) {
            return Ok(obj.clone_ref(py));
        }
        let obj = to_python(py, addr)?;
        // (Not an unbound Unix sender's empty address: '' is a shared
        // object that means no address at all when sent to.)
        if addr.len as usize > size_of::<libc::sa_family_t>() {
            self.insert(*addr, obj.clone_ref(py));
        }
        Ok(obj)
    }

    /// The kernel address for `obj`, if it is one of the cached objects (or
    /// the last one converted), or numeric.
    pub fn kernel(&mut self, family: i32, obj: &Bound<'_, PyAny>) -> Option<SockAddr> {
        if let Some(&i) = self.by_object.get(Self::object_slot(obj.as_ptr())) {
            if let Some(Some((a, o))) = self.entries.get(usize::from(i)) {
                if o.as_ptr() == obj.as_ptr() {
                    return Some(*a);
                }
            }
        }
        if let Some((a, o)) = &self.last_sent {
            if o.as_ptr() == obj.as_ptr() {
                return Some(*a);
            }
        }
        let addr = from_python(family, obj)?;
        // Not in the table: what it holds is what the socket module would
        // return for an address (the table answers receives too), and the
        // caller's object may be written differently ('::1', port).
        let old = self.last_sent.replace((addr, obj.clone().unbind()));
        drop(old);
        Some(addr)
    }

    /// Cache `obj` for `addr`: in the address's slot if it has one, else
    /// in a free or the oldest-replaced slot of its window.  (A replaced
    /// object is a str, bytes or tuple of str and int, whose deallocation
    /// runs no Python code.)
    fn insert(&mut self, addr: SockAddr, obj: Py<PyAny>) {
        if self.entries.is_empty() {
            self.entries.resize_with(Self::SLOTS, || None);
            self.by_object = vec![u8::MAX; Self::SLOTS];
        }
        let slot = self.find(&addr).or_else(|| Self::window(&addr).find(|&i| self.entries[i].is_none()));
        let slot = slot.unwrap_or_else(|| {
            self.evict = self.evict.wrapping_add(1);
            Self::window(&addr).nth(self.evict % Self::WAYS).unwrap_or(0)
        });
        self.by_object[Self::object_slot(obj.as_ptr())] = slot as u8;
        let old = self.entries[slot].replace((addr, obj));
        drop(old);
    }

    pub fn visit<E>(&self, visit: &mut dyn FnMut(&Py<PyAny>) -> Result<(), E>) -> Result<(), E> {
        self.entries.iter().flatten().chain(&self.last_sent).try_for_each(|(_, o)| visit(o))
    }
}
