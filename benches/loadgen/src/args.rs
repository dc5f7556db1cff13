//! Command-line options, shared by the subcommands (each uses what it needs).
//! Hand-rolled to stay std-only.

use std::time::Duration;

pub struct Args {
    pub addr: Option<String>,
    pub unix: Option<String>,
    pub conns: usize,
    pub size: usize,
    pub duration: Duration,
    /// Stop after this many requests instead of after `duration`.
    pub requests: Option<u64>,
    pub warmup: Duration,
    /// Give up when no request completes for this long (a hung server).
    pub stall: Duration,
    /// UDP: a request with no reply after this long counts as lost and a new
    /// one is sent.
    pub resend: Duration,
    pub udp: bool,
    pub report: Option<String>,
}

fn secs(name: &str, v: &str) -> Result<Duration, String> {
    let s: f64 = v.parse().map_err(|_| format!("{name}: not a number of seconds: {v:?}"))?;
    if !(s >= 0.0 && s.is_finite()) {
        return Err(format!("{name}: must be >= 0"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn int<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{name}: not an integer: {v:?}"))
}

impl Args {
    pub fn parse(argv: &[String]) -> Result<Args, String> {
        let mut a = Args {
            addr: None,
            unix: None,
            conns: 1,
            size: 1024,
            duration: Duration::from_secs(2),
            requests: None,
            warmup: Duration::ZERO,
            stall: Duration::from_secs(10),
            resend: Duration::from_millis(200),
            udp: false,
            report: None,
        };
        let mut it = argv.iter();
        while let Some(flag) = it.next() {
            if flag == "--udp" {
                a.udp = true;
                continue;
            }
            let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--addr" => a.addr = Some(v.clone()),
                "--unix" => a.unix = Some(v.clone()),
                "--conns" => a.conns = int(flag, v)?,
                "--size" => a.size = int(flag, v)?,
                "--duration" => a.duration = secs(flag, v)?,
                "--requests" => a.requests = Some(int(flag, v)?),
                "--warmup" => a.warmup = secs(flag, v)?,
                "--stall" => a.stall = secs(flag, v)?,
                "--resend-ms" => a.resend = Duration::from_millis(int(flag, v)?),
                "--report" => a.report = Some(v.clone()),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        if a.addr.is_some() == a.unix.is_some() {
            return Err("give exactly one of --addr HOST:PORT and --unix PATH".into());
        }
        if a.conns == 0 || a.size == 0 {
            return Err("--conns and --size must be at least 1".into());
        }
        Ok(a)
    }
}
