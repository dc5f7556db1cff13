//! ferroloop-loadgen: the client and the native reference server of
//! benches/bench_net.py.
//!
//!     ferroloop-loadgen tcp  --addr 127.0.0.1:8000 | --unix PATH
//!                            --conns 10 --size 1024 --duration 2 [--requests N] [--warmup 0.5]
//!     ferroloop-loadgen udp  --addr 127.0.0.1:8000 --conns 10 --size 1024 --duration 2
//!     ferroloop-loadgen echo-server --addr 127.0.0.1:0 | --unix PATH [--udp] [--report FILE]
//!
//! The clients are closed loops: every connection has exactly one request
//! in flight (send SIZE bytes, wait until SIZE bytes came back, repeat), so
//! the request rate is set by the server's latency, and the result is one
//! JSON object on stdout.  Everything runs on one thread driven by epoll,
//! so the client needs one core however many connections it has (the
//! harness pins it to the core the server does not use).

mod args;
mod client_tcp;
mod client_udp;
mod server;
mod stats;
mod stream;
mod sys;

use std::process::ExitCode;

const USAGE: &str = "\
usage:
  ferroloop-loadgen tcp  (--addr HOST:PORT | --unix PATH) [--conns N] [--size BYTES]
                         [--duration SECS | --requests N] [--warmup SECS] [--stall SECS]
  ferroloop-loadgen udp  --addr HOST:PORT [--conns N] [--size BYTES]
                         [--duration SECS | --requests N] [--warmup SECS] [--stall SECS]
                         [--resend-ms MS]
  ferroloop-loadgen echo-server (--addr HOST:PORT | --unix PATH) [--udp] [--report FILE]

tcp/udp print one JSON object: requests, seconds, requests_per_sec, p50_us,
p99_us (and losses for udp).  Defaults: --conns 1 --size 1024 --duration 2
--warmup 0 --stall 10 --resend-ms 200.

echo-server prints 'READY <address>' once listening, and on SIGTERM/SIGINT
prints its own CPU time (getrusage) as JSON, also written to --report FILE.";

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() || argv.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("{USAGE}");
        return if argv.is_empty() { ExitCode::from(2) } else { ExitCode::SUCCESS };
    }
    let cmd = argv.remove(0);
    let result = args::Args::parse(&argv).and_then(|a| match cmd.as_str() {
        "tcp" => client_tcp::run(&a),
        "udp" => client_udp::run(&a),
        "echo-server" => server::run(&a),
        other => Err(format!("unknown subcommand {other:?}")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("ferroloop-loadgen {cmd}: {msg}");
            ExitCode::from(1)
        }
    }
}
