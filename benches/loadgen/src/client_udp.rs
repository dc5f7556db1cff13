//! `udp`: closed-loop echo client over UDP.
//!
//! N sockets, each connect()ed to the server (so the kernel filters out
//! anything not from the server, and send/recv need no address), each with
//! one datagram in flight.  UDP may drop a datagram (a full socket buffer),
//! so a request with no reply after --resend-ms counts as lost and a new
//! request is sent.  Every datagram starts with an 8-byte stamp (socket id and
//! request number): a late reply to a request given up on carries an old
//! stamp and is ignored (counted as stale) instead of being taken for the
//! reply to the current one.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Instant;

use crate::args::Args;
use crate::stats::{report, Phase, Plan, Recorder};
use crate::sys::{Epoll, IN};

struct Sock {
    id: u64,
    sock: UdpSocket,
    send: Vec<u8>,
    seq: u64,
    sent_at: Instant,
}

impl Sock {
    fn stamp(&self) -> [u8; 8] {
        ((self.id << 40) | (self.seq & ((1 << 40) - 1))).to_le_bytes()
    }

    /// Send the next request.  A send the kernel refuses for lack of buffer
    /// space is treated like a lost datagram: the resend timer covers it.
    fn send_next(&mut self) -> Result<(), String> {
        self.seq += 1;
        let st = self.stamp();
        self.send[..8].copy_from_slice(&st);
        self.sent_at = Instant::now();
        match self.sock.send(&self.send) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(format!("socket {}: send: {e}", self.id)),
        }
    }
}

pub fn run(a: &Args) -> Result<(), String> {
    let addr = a.addr.as_deref().ok_or("udp needs --addr HOST:PORT (no --unix)")?;
    if a.size < 8 {
        return Err("udp needs --size of at least 8 (the stamp)".into());
    }
    if a.size > 65507 {
        return Err("--size above 65507 does not fit in one UDP datagram".into());
    }
    let mut ep = Epoll::new().map_err(|e| format!("epoll: {e}"))?;
    let bind = if addr.starts_with('[') { "[::]:0" } else { "0.0.0.0:0" };
    let mut socks = Vec::with_capacity(a.conns);
    for id in 0..a.conns {
        let sock = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
        sock.connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
        sock.set_nonblocking(true).map_err(|e| format!("set_nonblocking: {e}"))?;
        ep.add(sock.as_raw_fd(), IN, id as u64).map_err(|e| format!("epoll_ctl: {e}"))?;
        let send = (0..a.size).map(|i| b'a' + (i % 26) as u8).collect();
        socks.push(Sock { id: id as u64, sock, send, seq: 0, sent_at: Instant::now() });
    }
    let plan = Plan { warmup: a.warmup, duration: a.duration, requests: a.requests, stall: a.stall };
    let mut rec = Recorder::new();
    let mut warm_until = if plan.warmup.is_zero() { None } else { Some(Instant::now() + plan.warmup) };
    let mut last_progress = Instant::now();
    let mut buf = vec![0u8; 65536];

    for s in socks.iter_mut() {
        s.send_next()?;
    }
    loop {
        let now = Instant::now();
        if let Phase::Done = plan.phase(&mut rec, &mut warm_until, now) {
            break;
        }
        if now.duration_since(last_progress) >= plan.stall {
            return Err(format!(
                "stalled: no reply for {:.1} s ({} datagrams lost so far)",
                plan.stall.as_secs_f64(), rec.losses
            ));
        }
        // Resend whatever timed out; sleep until the next resend is due.
        let mut timeout = plan.wait_limit(&rec, warm_until, now);
        for s in socks.iter_mut() {
            let due = s.sent_at + a.resend;
            if due <= now {
                rec.losses += 1;
                s.send_next()?;
                timeout = timeout.min(a.resend);
            } else {
                timeout = timeout.min(due - now);
            }
        }
        let events = ep.wait(Some(timeout)).map_err(|e| format!("epoll_wait: {e}"))?;
        for (token, _ev) in events {
            let s = &mut socks[token as usize];
            let n = match s.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ECONNREFUSED: an ICMP port-unreachable, nobody listens.
                Err(e) => return Err(format!("socket {}: recv: {e}", s.id)),
            };
            if n < 8 || buf[..8] != s.stamp() {
                rec.stale += 1;
                continue;
            }
            if buf[..n] != s.send[..] {
                return Err(format!(
                    "socket {}: the echo of request {} differs from the request ({n} of {} bytes came back)",
                    s.id, s.seq, a.size
                ));
            }
            rec.record(s.sent_at.elapsed());
            last_progress = Instant::now();
            let enough = warm_until.is_none() && plan.requests.is_some_and(|n| rec.requests() >= n);
            if !enough {
                s.send_next()?;
            }
        }
    }
    let extra = format!(", \"losses\": {}, \"stale\": {}, \"address\": \"{addr}\"", rec.losses, rec.stale);
    let out = report("udp", a.conns, a.size, &mut rec, &extra);
    if rec.requests() == 0 {
        return Err(format!("no request completed: {out}"));
    }
    println!("{out}");
    Ok(())
}
