//! I/O readiness: a mio `Poll` plus the bookkeeping asyncio's semantics need.
//!
//! * Level-triggered `add_reader`/`add_writer` on top of edge-triggered epoll:
//!   every fd that reported readiness is re-armed (EPOLL_CTL_MOD) before the
//!   next wait.  Re-arming makes the kernel re-check the fd, so one that is
//!   still readable reports again, exactly like a level-triggered poll.
//! * Native transports own their fd outright: it is registered once,
//!   edge-triggered, for both directions (`register_edge`), and reported as
//!   `Ready::Edge`; the transport reads and writes until `WouldBlock`, so it
//!   needs neither re-arming nor an epoll_ctl call when it starts or stops
//!   writing.
//! * Parking: an fd whose last reader/writer is removed stays registered
//!   with the kernel until the wait after next.  A `sock_recv` loop removes
//!   its reader when the data arrives and adds it again for the next call
//!   an iteration later: that costs one EPOLL_CTL_MOD instead of a DEL and
//!   an ADD.  Reports for parked fds are dropped.  (The cost: an fd closed
//!   while parked, whose file lives on in a dup, keeps reporting under its
//!   number until the sweep; a new fd of that number sees those reports as
//!   spurious readiness, which non-blocking callbacks shrug off.)
//! * A `mio::Waker` (eventfd) for `call_soon_threadsafe`.
//! * A non-blocking pipe handed to `signal.set_wakeup_fd`: CPython's C-level
//!   signal handler writes the signal number into it, which wakes the poll
//!   promptly whichever thread the kernel delivered the signal to.
//!
//! Pure Rust (no Python), so it is unit tested with `cargo test`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::{FxHashMap, FxHashSet};

pub const WAKER_TOKEN: Token = Token(usize::MAX);
pub const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);
/// Set in the token of an fd owned by a native transport (fds are small, so
/// it never collides with an fd; the two tokens above are checked first).
const EDGE_BIT: usize = 1 << 62;

/// One readiness report, already translated to asyncio's view: errors and
/// hang-ups count as both readable and writable (as `selectors` reports them),
/// so the callback runs and sees the error itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Wake,
    Signal,
    Fd { fd: RawFd, readable: bool, writable: bool },
    /// An fd registered with `register_edge`: something changed.  `closed`:
    /// the peer hung up or the socket has an error, so a short read does
    /// not mean everything was read (the EOF or error is still to come).
    Edge { fd: RawFd, readable: bool, writable: bool, closed: bool },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FdInterest {
    pub read: bool,
    pub write: bool,
}

impl FdInterest {
    fn to_mio(self) -> Option<Interest> {
        match (self.read, self.write) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

pub struct Poller {
    poll: Poll,
    events: Events,
    interests: FxHashMap<RawFd, FdInterest>,
    /// fds registered edge-triggered by native transports.
    edge: FxHashSet<RawFd>,
    /// fds that reported readiness in the last wait, re-armed before the next.
    fired: Vec<RawFd>,
    /// Parked fds (see the module docs): true once a wait has passed since
    /// parking, so the next wait deregisters them.
    parked: FxHashMap<RawFd, bool>,
    signal_rx: OwnedFd,
    signal_tx: OwnedFd,
}

fn token_for(fd: RawFd) -> Token {
    Token(fd as usize)
}

impl Poller {
    pub fn new() -> io::Result<(Poller, Waker)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER_TOKEN)?;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are fresh descriptors we now own.
        let (signal_rx, signal_tx) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        poll.registry().register(
            &mut SourceFd(&signal_rx.as_raw_fd()),
            SIGNAL_TOKEN,
            Interest::READABLE,
        )?;
        Ok((
            Poller {
                poll,
                events: Events::with_capacity(1024),
                interests: FxHashMap::default(),
                parked: FxHashMap::default(),
                edge: FxHashSet::default(),
                fired: Vec::new(),
                signal_rx,
                signal_tx,
            },
            waker,
        ))
    }

    /// The fd to give to `signal.set_wakeup_fd`.
    pub fn signal_wakeup_fd(&self) -> RawFd {
        self.signal_tx.as_raw_fd()
    }

    #[cfg(test)]
    pub fn interest(&self, fd: RawFd) -> FdInterest {
        self.interests.get(&fd).copied().unwrap_or_default()
    }

    /// True when some fd is watched.
    pub fn has_registrations(&self) -> bool {
        !self.interests.is_empty() || !self.edge.is_empty() || !self.parked.is_empty()
    }

    /// Watch `fd` edge-triggered for both directions, for a native
    /// transport (see the module docs).
    pub fn register_edge(&mut self, fd: RawFd) -> io::Result<()> {
        let token = Token(fd as usize | EDGE_BIT);
        let both = Interest::READABLE | Interest::WRITABLE;
        let registry = self.poll.registry();
        match registry.register(&mut SourceFd(&fd), token, both) {
            // Still registered (parked, or under a number a closed fd had):
            // take it over.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                registry.reregister(&mut SourceFd(&fd), token, both)?;
                self.interests.remove(&fd);
            }
            other => other?,
        }
        self.parked.remove(&fd);
        self.edge.insert(fd);
        Ok(())
    }

    /// Stop watching a native transport's fd (a no-op if it is not, or no
    /// longer, registered that way).
    pub fn deregister_edge(&mut self, fd: RawFd) -> io::Result<()> {
        if !self.edge.remove(&fd) {
            return Ok(());
        }
        match self.poll.registry().deregister(&mut SourceFd(&fd)) {
            Err(e) if !matches!(e.raw_os_error(), Some(libc::EBADF | libc::ENOENT)) => Err(e),
            _ => Ok(()),
        }
    }

    /// A reader callback read `fd` until it would block: the edge-triggered
    /// registration reports the next data by itself, so the fd needs no
    /// re-arm before the next wait (unless a writer watches it too).
    pub fn read_drained(&mut self, fd: RawFd) {
        if self.interests.get(&fd).is_some_and(|want| !want.write) {
            self.fired.retain(|&f| f != fd);
        }
    }

    /// Watch `fd` for exactly `want`; an empty interest stops watching it.
    pub fn set_interest(&mut self, fd: RawFd, want: FdInterest) -> io::Result<()> {
        // A level-triggered watch replaces a native transport's (asyncio
        // lets add_reader take an fd whose transport is closing).
        self.edge.remove(&fd);
        let registry = self.poll.registry();
        let had = self.interests.contains_key(&fd) || self.parked.remove(&fd).is_some();
        match want.to_mio() {
            None => {
                // Parked, not deregistered: it is likely watched again soon.
                if had {
                    self.interests.remove(&fd);
                    self.parked.insert(fd, false);
                }
                Ok(())
            }
            Some(interest) => {
                let result = if had {
                    match registry.reregister(&mut SourceFd(&fd), token_for(fd), interest) {
                        // Closed and reopened behind our back: register anew.
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                            registry.register(&mut SourceFd(&fd), token_for(fd), interest)
                        }
                        other => other,
                    }
                } else {
                    match registry.register(&mut SourceFd(&fd), token_for(fd), interest) {
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                            registry.reregister(&mut SourceFd(&fd), token_for(fd), interest)
                        }
                        other => other,
                    }
                };
                match result {
                    Ok(()) => {
                        self.interests.insert(fd, want);
                        Ok(())
                    }
                    Err(e) => {
                        if had {
                            self.interests.remove(&fd);
                        }
                        Err(e)
                    }
                }
            }
        }
    }

    /// Wait for readiness (None = forever) and return what is ready.  The GIL
    /// must not be held by the caller.  EINTR returns an empty list so the
    /// caller can run Python's signal handlers.
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Ready>) -> io::Result<()> {
        self.rearm_fired();
        self.sweep_parked();
        out.clear();
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for event in self.events.iter() {
            let token = event.token();
            if token == WAKER_TOKEN {
                out.push(Ready::Wake);
            } else if token == SIGNAL_TOKEN {
                out.push(Ready::Signal);
            } else if token.0 & EDGE_BIT != 0 {
                let err = event.is_error();
                out.push(Ready::Edge {
                    fd: (token.0 & !EDGE_BIT) as RawFd,
                    readable: event.is_readable() || event.is_read_closed() || err,
                    writable: event.is_writable() || event.is_write_closed() || err,
                    closed: event.is_read_closed() || err,
                });
            } else {
                let fd = token.0 as RawFd;
                if !self.interests.contains_key(&fd) {
                    continue; // parked: nobody watches it
                }
                let err = event.is_error();
                let readable = event.is_readable() || event.is_read_closed() || err;
                let writable = event.is_writable() || event.is_write_closed() || err;
                self.fired.push(fd);
                out.push(Ready::Fd { fd, readable, writable });
            }
        }
        Ok(())
    }

    /// Ask the kernel to re-check the fds that fired last time (see module
    /// docs).  Failures mean the fd was closed without being removed; the
    /// registration is dropped then, since nothing can become ready on it.
    fn rearm_fired(&mut self) {
        let fired = std::mem::take(&mut self.fired);
        for &fd in &fired {
            if let Some(want) = self.interests.get(&fd).copied() {
                if let Some(interest) = want.to_mio() {
                    if self
                        .poll
                        .registry()
                        .reregister(&mut SourceFd(&fd), token_for(fd), interest)
                        .is_err()
                    {
                        self.interests.remove(&fd);
                    }
                }
            }
        }
        self.fired = fired;
        self.fired.clear();
    }

    /// Deregister the fds parked before the previous wait and not watched
    /// since; mark the others for the next sweep.
    fn sweep_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let registry = self.poll.registry();
        self.parked.retain(|&fd, old| {
            if !*old {
                *old = true;
                return true;
            }
            // The fd may be closed (EBADF) or its number reused by an fd
            // that is not registered (ENOENT): nothing to undo either way.
            let _ = registry.deregister(&mut SourceFd(&fd));
            false
        });
    }

    /// Signal numbers written by CPython's C signal handler since last time.
    pub fn drain_signals(&self, out: &mut impl Extend<u8>) {
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: reading into a local buffer of the given length from an
            // fd we own.
            let n = unsafe {
                libc::read(self.signal_rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
            };
            if n <= 0 {
                // 0 cannot happen while we hold the write end; <0 is EAGAIN
                // (drained) or EINTR (a signal just arrived: we will wake
                // again for it).
                break;
            }
            out.extend(buf[..n as usize].iter().copied());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn wait0(p: &mut Poller) -> Vec<Ready> {
        let mut out = vec![];
        p.wait(Some(Duration::from_millis(0)), &mut out).unwrap();
        out
    }

    #[test]
    fn reports_readable_until_drained_like_level_triggered() {
        let (mut p, _w) = Poller::new().unwrap();
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let fd = b.as_raw_fd();
        p.set_interest(fd, FdInterest { read: true, write: false }).unwrap();
        assert!(wait0(&mut p).is_empty());
        a.write_all(b"hello").unwrap();
        let r = wait0(&mut p);
        assert_eq!(r, vec![Ready::Fd { fd, readable: true, writable: false }]);
        // Not drained: reported again, although epoll is edge-triggered.
        assert_eq!(wait0(&mut p).len(), 1);
        let mut buf = [0u8; 16];
        assert_eq!(b.read(&mut buf).unwrap(), 5);
        assert!(wait0(&mut p).is_empty());
    }

    #[test]
    fn a_drained_reader_skips_the_rearm_and_still_sees_new_data() {
        let (mut p, _w) = Poller::new().unwrap();
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let fd = b.as_raw_fd();
        p.set_interest(fd, FdInterest { read: true, write: false }).unwrap();
        a.write_all(b"one").unwrap();
        assert_eq!(wait0(&mut p).len(), 1);
        let mut buf = [0u8; 16];
        assert_eq!(b.read(&mut buf).unwrap(), 3);
        assert_eq!(b.read(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        p.read_drained(fd);
        assert!(p.fired.is_empty(), "no re-arm for a drained reader");
        assert!(wait0(&mut p).is_empty());
        a.write_all(b"two").unwrap();
        assert_eq!(wait0(&mut p), vec![Ready::Fd { fd, readable: true, writable: false }]);
        // A watched writer keeps the re-arm (its readiness is level-triggered too).
        p.set_interest(fd, FdInterest { read: true, write: true }).unwrap();
        assert_eq!(wait0(&mut p).len(), 1);
        p.read_drained(fd);
        assert_eq!(p.fired, vec![fd]);
    }

    #[test]
    fn waker_and_interest_changes() {
        let (mut p, w) = Poller::new().unwrap();
        w.wake().unwrap();
        assert_eq!(wait0(&mut p), vec![Ready::Wake]);
        let (_a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        p.set_interest(fd, FdInterest { read: false, write: true }).unwrap();
        assert_eq!(wait0(&mut p), vec![Ready::Fd { fd, readable: false, writable: true }]);
        p.set_interest(fd, FdInterest::default()).unwrap();
        assert!(wait0(&mut p).is_empty());
        assert_eq!(p.interest(fd), FdInterest::default());
    }

    #[test]
    fn parked_fds_stay_quiet_report_again_when_watched_and_are_swept() {
        let (mut p, _w) = Poller::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        let read = FdInterest { read: true, write: false };
        p.set_interest(fd, read).unwrap();
        p.set_interest(fd, FdInterest::default()).unwrap();
        assert!(p.parked.contains_key(&fd));
        assert!(p.has_registrations());
        // Data arriving while parked is not reported...
        a.write_all(b"x").unwrap();
        assert!(wait0(&mut p).is_empty());
        // ...but watching again finds it (the MOD re-checks the fd).
        p.set_interest(fd, read).unwrap();
        assert!(!p.parked.contains_key(&fd));
        assert_eq!(wait0(&mut p), vec![Ready::Fd { fd, readable: true, writable: false }]);
        // Parked and left alone: deregistered at the wait after next.
        p.set_interest(fd, FdInterest::default()).unwrap();
        assert!(wait0(&mut p).is_empty());
        assert!(p.parked.contains_key(&fd));
        assert!(wait0(&mut p).is_empty());
        assert!(p.parked.is_empty());
        assert!(!p.has_registrations());
        // Registering again after the sweep works (an ADD, not a MOD).
        p.set_interest(fd, read).unwrap();
        assert_eq!(wait0(&mut p), vec![Ready::Fd { fd, readable: true, writable: false }]);
    }

    #[test]
    fn a_native_transport_takes_over_a_parked_fd() {
        let (mut p, _w) = Poller::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        p.set_interest(fd, FdInterest { read: true, write: false }).unwrap();
        p.set_interest(fd, FdInterest::default()).unwrap();
        p.register_edge(fd).unwrap();
        assert!(p.parked.is_empty());
        wait0(&mut p);
        wait0(&mut p);
        // Not swept: it still reports as the transport's.
        a.write_all(b"x").unwrap();
        assert!(wait0(&mut p).iter().any(|r| matches!(r, Ready::Edge { fd: f, readable: true, .. } if *f == fd)));
    }

    #[test]
    fn hangup_counts_as_readable_and_writable() {
        let (mut p, _w) = Poller::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        p.set_interest(fd, FdInterest { read: true, write: false }).unwrap();
        drop(a);
        match wait0(&mut p).as_slice() {
            [Ready::Fd { readable: true, .. }] => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn registering_a_regular_file_fails_cleanly() {
        let (mut p, _w) = Poller::new().unwrap();
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let r = p.set_interest(f.as_raw_fd(), FdInterest { read: true, write: false });
        assert!(r.is_err());
        assert_eq!(p.interest(f.as_raw_fd()), FdInterest::default());
    }

    #[test]
    fn edge_registrations_report_changes_once_and_need_no_rearm() {
        let (mut p, _w) = Poller::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let fd = b.as_raw_fd();
        p.register_edge(fd).unwrap();
        assert!(p.has_registrations());
        // Writable at once.
        assert_eq!(wait0(&mut p), vec![Ready::Edge { fd, readable: false, writable: true, closed: false }]);
        assert!(wait0(&mut p).is_empty());
        a.write_all(b"x").unwrap();
        match wait0(&mut p).as_slice() {
            [Ready::Edge { readable: true, .. }] => {}
            other => panic!("unexpected {other:?}"),
        }
        // Not drained, but edge-triggered: not reported again.
        assert!(wait0(&mut p).is_empty());
        p.deregister_edge(fd).unwrap();
        a.write_all(b"y").unwrap();
        assert!(wait0(&mut p).is_empty());
        assert!(!p.has_registrations());
        // A level-triggered watch of the same fd takes over.
        p.register_edge(fd).unwrap();
        p.set_interest(fd, FdInterest { read: true, write: false }).unwrap();
        assert_eq!(wait0(&mut p), vec![Ready::Fd { fd, readable: true, writable: false }]);
        p.deregister_edge(fd).unwrap();
        assert_eq!(p.interest(fd), FdInterest { read: true, write: false });
    }

    #[test]
    fn signal_pipe_carries_bytes() {
        let (mut p, _w) = Poller::new().unwrap();
        let tx = p.signal_wakeup_fd();
        // SAFETY: writing one byte from a local buffer to our own pipe.
        unsafe { libc::write(tx, [10u8].as_ptr().cast(), 1) };
        assert_eq!(wait0(&mut p), vec![Ready::Signal]);
        let mut sigs = vec![];
        p.drain_signals(&mut sigs);
        assert_eq!(sigs, vec![10]);
    }
}
