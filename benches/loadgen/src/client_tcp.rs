//! `tcp`: closed-loop echo client over TCP or a Unix stream socket.
//!
//! Every connection sends SIZE bytes and waits for all SIZE bytes to come
//! back before sending the next request.  All connections share one thread
//! and one epoll instance; each is a small state machine (bytes written,
//! bytes read) advanced whenever its socket is ready.  Writing and reading
//! are interleaved, not "write all, then read": for big messages the server
//! starts echoing before the request is fully sent, and a client that is not
//! reading meanwhile could fill every socket buffer and deadlock with a
//! server that stops reading while its writes are pending (streams' drain()).

use std::io;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crate::args::Args;
use crate::stats::{report, Phase, Plan, Recorder};
use crate::stream::Stream;
use crate::sys::{Epoll, ERR, IN, OUT};

impl Stream {
    fn connect(a: &Args) -> io::Result<Stream> {
        let s = match (&a.addr, &a.unix) {
            (Some(addr), _) => {
                let s = TcpStream::connect(addr)?;
                // Requests are written whole; never let Nagle hold a tail back.
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            (None, Some(path)) => Stream::Unix(UnixStream::connect(path)?),
            (None, None) => unreachable!("checked by Args::parse"),
        };
        s.set_nonblocking()?;
        Ok(s)
    }
}

/// A stamp (connection id and request number) is written every STAMP_EVERY
/// bytes of a request and at its end, and the echo is compared with the
/// request: a server that loses, reorders, duplicates or overwrites data
/// (say a transport that keeps a reference to a buffer the protocol then
/// reuses) fails the run instead of posting a fast time.  The stamps make
/// stale data from an earlier request differ; the comparison is one memcmp,
/// a few microseconds at 100 KB, on the client's own core.
const STAMP_EVERY: usize = 1024;

fn stamp_offsets(size: usize) -> impl Iterator<Item = usize> {
    let last = size.saturating_sub(8);
    (0..size.saturating_sub(7)).step_by(STAMP_EVERY).chain(std::iter::once(last))
}

struct Conn {
    id: u64,
    stream: Stream,
    send: Vec<u8>,
    recv: Vec<u8>,
    written: usize,
    read: usize,
    seq: u64,
    started: Instant,
    /// The interest currently registered, to skip epoll_ctl when unchanged.
    interest: u32,
}

impl Conn {
    fn stamp(&self) -> [u8; 8] {
        ((self.id << 40) | (self.seq & ((1 << 40) - 1))).to_le_bytes()
    }

    /// Prepare the next request (a new stamp) and start its clock.
    fn next_request(&mut self) {
        self.seq += 1;
        let st = self.stamp();
        let size = self.send.len();
        if size >= 8 {
            for off in stamp_offsets(size) {
                self.send[off..off + 8].copy_from_slice(&st);
            }
        }
        self.written = 0;
        self.read = 0;
        self.started = Instant::now();
    }

    fn check_echo(&self) -> Result<(), String> {
        if self.recv == self.send {
            return Ok(());
        }
        let at = self.recv.iter().zip(&self.send).position(|(a, b)| a != b).unwrap_or(0);
        Err(format!(
            "connection {}: request {} came back different from what was sent (first difference at byte {at} of {})",
            self.id, self.seq, self.send.len()
        ))
    }

    /// Write as much of the request as the socket takes.
    fn write_some(&mut self) -> Result<(), String> {
        while self.written < self.send.len() {
            match self.stream.write(&self.send[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("connection {}: write: {e}", self.id)),
            }
        }
        Ok(())
    }

    /// One read of the echo (level-triggered epoll reports the socket again
    /// if more is waiting, so a read that would only return EAGAIN is
    /// saved).  Returns true when the whole echo is in.
    fn read_some(&mut self) -> Result<bool, String> {
        let size = self.send.len();
        match self.stream.read(&mut self.recv[self.read..]) {
            Ok(0) => {
                return Err(format!(
                    "connection {}: closed by the server after {} of {size} echoed bytes",
                    self.id, self.read
                ))
            }
            Ok(n) => self.read += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("connection {}: read: {e}", self.id)),
        }
        Ok(self.read == size)
    }
}

pub fn run(a: &Args) -> Result<(), String> {
    let where_ = a.addr.clone().or_else(|| a.unix.clone()).unwrap_or_default();
    let mut ep = Epoll::new().map_err(|e| format!("epoll: {e}"))?;
    let mut conns = Vec::with_capacity(a.conns);
    for id in 0..a.conns {
        let stream = Stream::connect(a).map_err(|e| format!("connect to {where_}: {e}"))?;
        let mut send = vec![0u8; a.size];
        // A recognisable filler between the stamps.
        for (i, b) in send.iter_mut().enumerate() {
            *b = b'a' + (i % 26) as u8;
        }
        conns.push(Conn {
            id: id as u64,
            stream,
            send,
            recv: vec![0u8; a.size],
            written: 0,
            read: 0,
            seq: 0,
            started: Instant::now(),
            interest: 0,
        });
    }
    let plan = Plan { warmup: a.warmup, duration: a.duration, requests: a.requests, stall: a.stall };
    let mut rec = Recorder::new();
    let mut warm_until = if plan.warmup.is_zero() { None } else { Some(Instant::now() + plan.warmup) };
    let mut last_progress = Instant::now();

    // Kick off: every connection starts its first request.
    for c in conns.iter_mut() {
        c.next_request();
        c.write_some()?;
        c.interest = IN | if c.written < a.size { OUT } else { 0 };
        ep.add(c.stream.fd(), c.interest, c.id).map_err(|e| format!("epoll_ctl: {e}"))?;
    }

    loop {
        let now = Instant::now();
        if let Phase::Done = plan.phase(&mut rec, &mut warm_until, now) {
            break;
        }
        if now.duration_since(last_progress) >= plan.stall {
            let c = &conns[0];
            return Err(format!(
                "stalled: no echo completed for {:.1} s (connection 0 wrote {} and got back {} of {} bytes)",
                plan.stall.as_secs_f64(), c.written, c.read, a.size
            ));
        }
        let timeout = plan.wait_limit(&rec, warm_until, now);
        let events = ep.wait(Some(timeout)).map_err(|e| format!("epoll_wait: {e}"))?;
        // An error or hang-up needs no special case: it shows up as a failed
        // read or write, with the real error text.
        for (token, ev) in events {
            let c = &mut conns[token as usize];
            if ev & OUT != 0 {
                c.write_some()?;
            }
            if ev & (IN | ERR) != 0 && c.read_some()? {
                rec.record(c.started.elapsed());
                c.check_echo()?;
                last_progress = Instant::now();
                let enough = warm_until.is_none() && plan.requests.is_some_and(|n| rec.requests() >= n);
                if !enough {
                    c.next_request();
                    c.write_some()?;
                }
            }
            let want = IN | if c.written < a.size { OUT } else { 0 };
            if want != c.interest {
                ep.modify(c.stream.fd(), want, c.id).map_err(|e| format!("epoll_ctl: {e}"))?;
                c.interest = want;
            }
        }
    }
    // In-flight requests are abandoned: the window ends now, and closing
    // the sockets (on return) is all the server sees of them.
    let out = report("tcp", a.conns, a.size, &mut rec, &format!(", \"address\": \"{where_}\""));
    if rec.requests() == 0 {
        return Err(format!("no request completed: {out}"));
    }
    println!("{out}");
    Ok(())
}
