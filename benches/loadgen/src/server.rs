//! `echo-server`: the native reference server, the physical limit the
//! Python loops are compared with.  One thread, level-triggered epoll,
//! non-blocking sockets, no allocation per request: it does what any event
//! loop must do for an echo (wait, read, write) and nothing else.
//!
//! It prints `READY <address>` (the real port when asked for port 0) once it
//! listens.  SIGTERM or SIGINT make it print its own CPU time (getrusage,
//! user + system) as one JSON line, write the same to --report FILE if
//! given, and exit 0.  The signals arrive through a signalfd in the same
//! epoll set, so the report is written by the normal code path, never from
//! inside a signal handler.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;

use crate::args::Args;
use crate::stream::Stream;
use crate::sys::{cpu_times, termination_signalfd, Epoll, ERR, IN, OUT};

/// What one read may take.  256 KiB like asyncio's selector transports
/// (max_size), so a 100 KB request normally arrives in one read.
const READ_BUF: usize = 256 * 1024;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_SIGNAL: u64 = 1;
const FIRST_CONN: u64 = 2;

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, String),
}


struct Conn {
    stream: Stream,
    /// Bytes read but not yet written back.  While any are pending the
    /// connection waits for EPOLLOUT and does not read (back-pressure: an
    /// echo server must not buffer without bound for a slow reader).
    pending: Vec<u8>,
}

/// Write `data`, as much as the socket takes now; the rest goes to
/// `pending`.  Err means the connection is dead.
fn write_or_queue(stream: &mut Stream, data: &[u8], pending: &mut Vec<u8>) -> io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        match stream.write(&data[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    pending.extend_from_slice(&data[off..]);
    Ok(())
}

/// Handle one readiness report of a connection; Ok(false) means close it.
fn serve_conn(c: &mut Conn, ev: u32, buf: &mut [u8]) -> io::Result<bool> {
    if !c.pending.is_empty() {
        if ev & (OUT | ERR) == 0 {
            return Ok(true);
        }
        let pending = std::mem::take(&mut c.pending);
        write_or_queue(&mut c.stream, &pending, &mut c.pending)?;
        return Ok(true);
    }
    if ev & (IN | ERR) == 0 {
        return Ok(true);
    }
    // One read per report: level triggering reports the socket again if
    // more is waiting, and a read that would only return EAGAIN is saved.
    match c.stream.read(buf) {
        Ok(0) => Ok(false),
        Ok(n) => write_or_queue(&mut c.stream, &buf[..n], &mut c.pending).map(|_| true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => Ok(true),
        Err(e) => Err(e),
    }
}

/// The read buffer, on the brk heap rather than in an mmap of its own.
///
/// glibc gives an allocation of 128 KiB or more its own mmap.  On the
/// Firecracker VMs this benchmark was written on, a recv() of 100 KB into
/// such a long-lived mapping cost about twice the kernel time of the same
/// recv() into a heap buffer (or into a fresh mmap each time, as CPython's
/// sock.recv() does): about 60 against 30 µs of server CPU per 100 KB echo.
/// The cause is below the guest's view (the same buffer at 110,000 bytes in
/// its own mmap was fast too), but the reference server should not carry
/// it, so the mmap threshold is raised before the buffer is allocated.
fn read_buffer() -> Vec<u8> {
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * READ_BUF as libc::c_int) };
    vec![0u8; READ_BUF]
}

fn finish(a: &Args, extra: &str) -> Result<(), String> {
    let (user, sys) = cpu_times();
    let line = format!(
        "{{\"cpu_user_s\": {user:.6}, \"cpu_sys_s\": {sys:.6}, \"cpu_s\": {:.6}{extra}}}",
        user + sys
    );
    println!("{line}");
    if let Some(path) = &a.report {
        std::fs::write(path, format!("{line}\n")).map_err(|e| format!("--report {path}: {e}"))?;
    }
    Ok(())
}

fn ready(addr: &str) {
    println!("READY {addr}");
    // stdout is a pipe under the harness: without a flush the line would sit
    // in the buffer until exit.
    let _ = io::stdout().flush();
}

pub fn run(a: &Args) -> Result<(), String> {
    if a.udp {
        return run_udp(a);
    }
    let listener = match (&a.addr, &a.unix) {
        (Some(addr), _) => {
            let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            Listener::Tcp(l)
        }
        (None, Some(path)) => {
            let _ = std::fs::remove_file(path); // a stale socket file from an earlier run
            let l = UnixListener::bind(path).map_err(|e| format!("bind {path}: {e}"))?;
            Listener::Unix(l, path.clone())
        }
        (None, None) => unreachable!("checked by Args::parse"),
    };
    let (lfd, shown) = match &listener {
        Listener::Tcp(l) => {
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            (l.as_raw_fd(), l.local_addr().map(|x| x.to_string()).unwrap_or_default())
        }
        Listener::Unix(l, path) => {
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            (l.as_raw_fd(), path.clone())
        }
    };
    let sfd = termination_signalfd().map_err(|e| format!("signalfd: {e}"))?;
    let mut ep = Epoll::new().map_err(|e| format!("epoll: {e}"))?;
    ep.add(lfd, IN, TOKEN_LISTENER).map_err(|e| e.to_string())?;
    ep.add(sfd, IN, TOKEN_SIGNAL).map_err(|e| e.to_string())?;
    ready(&shown);

    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut next_token = FIRST_CONN;
    let mut buf = read_buffer();
    let mut accepted = 0u64;
    'serve: loop {
        let events = ep.wait(None).map_err(|e| format!("epoll_wait: {e}"))?;
        for (token, ev) in events {
            match token {
                TOKEN_SIGNAL => break 'serve,
                TOKEN_LISTENER => loop {
                    let accepted_stream = match &listener {
                        Listener::Tcp(l) => l.accept().map(|(s, _)| {
                            let _ = s.set_nodelay(true);
                            Stream::Tcp(s)
                        }),
                        Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
                    };
                    let stream = match accepted_stream {
                        Ok(s) => s,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // ECONNABORTED and the like: that client is gone, not us.
                        Err(_) => break,
                    };
                    let nb = stream.set_nonblocking();
                    if nb.is_err() || ep.add(stream.fd(), IN, next_token).is_err() {
                        continue; // dropped: closes it
                    }
                    conns.insert(next_token, Conn { stream, pending: Vec::new() });
                    next_token += 1;
                    accepted += 1;
                },
                _ => {
                    let Some(c) = conns.get_mut(&token) else { continue };
                    let was_pending = !c.pending.is_empty();
                    match serve_conn(c, ev, &mut buf) {
                        Ok(true) => {
                            let now_pending = !c.pending.is_empty();
                            if now_pending != was_pending {
                                let want = if now_pending { OUT } else { IN };
                                if ep.modify(c.stream.fd(), want, token).is_err() {
                                    conns.remove(&token);
                                }
                            }
                        }
                        // EOF or an error: closing the fd also takes it out of epoll.
                        _ => {
                            conns.remove(&token);
                        }
                    }
                }
            }
        }
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    finish(a, &format!(", \"connections\": {accepted}"))
}

fn run_udp(a: &Args) -> Result<(), String> {
    let addr = a.addr.as_deref().ok_or("--udp needs --addr HOST:PORT")?;
    let sock = UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let sfd = termination_signalfd().map_err(|e| format!("signalfd: {e}"))?;
    let mut ep = Epoll::new().map_err(|e| format!("epoll: {e}"))?;
    ep.add(sock.as_raw_fd(), IN, TOKEN_LISTENER).map_err(|e| e.to_string())?;
    ep.add(sfd, IN, TOKEN_SIGNAL).map_err(|e| e.to_string())?;
    ready(&sock.local_addr().map(|x| x.to_string()).unwrap_or_default());

    let mut buf = vec![0u8; 65536];
    let (mut echoed, mut dropped) = (0u64, 0u64);
    'serve: loop {
        for (token, _ev) in ep.wait(None).map_err(|e| format!("epoll_wait: {e}"))? {
            if token == TOKEN_SIGNAL {
                break 'serve;
            }
            // One datagram per report, like the TCP side (level-triggered).
            match sock.recv_from(&mut buf) {
                Ok((n, peer)) => match sock.send_to(&buf[..n], peer) {
                    Ok(_) => echoed += 1,
                    // No room in the send buffer: UDP may drop, and so do we.
                    Err(_) => dropped += 1,
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                // Errors such as ECONNREFUSED from an earlier send to a client
                // that has gone: nothing to do for a connectionless server.
                Err(_) => {}
            }
        }
    }
    finish(a, &format!(", \"echoed\": {echoed}, \"dropped\": {dropped}"))
}
