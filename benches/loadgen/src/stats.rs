//! Counting requests and latencies, and the JSON report of a client run.

use std::time::{Duration, Instant};

/// What a client records.  Every latency is kept (4 bytes each, in
/// nanoseconds, saturating at ~4.3 s): even 200k requests/s for a minute is
/// under 50 MB, and exact percentiles need no histogram code.
pub struct Recorder {
    pub latencies_ns: Vec<u32>,
    pub started: Instant,
    pub losses: u64,
    pub stale: u64,
    recording: bool,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            latencies_ns: Vec::with_capacity(1 << 20),
            started: Instant::now(),
            losses: 0,
            stale: 0,
            recording: true,
        }
    }

    pub fn record(&mut self, latency: Duration) {
        if self.recording {
            self.latencies_ns.push(latency.as_nanos().min(u32::MAX as u128) as u32);
        }
    }

    pub fn requests(&self) -> u64 {
        self.latencies_ns.len() as u64
    }

    /// Start the measured window now (after a warm-up): forget everything.
    pub fn restart(&mut self) {
        self.latencies_ns.clear();
        self.losses = 0;
        self.stale = 0;
        self.started = Instant::now();
    }
}

/// When a run ends: after `duration`, or after `requests` requests.
pub struct Plan {
    pub warmup: Duration,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub stall: Duration,
}

pub enum Phase {
    Warmup,
    Measure,
    Done,
}

impl Plan {
    /// Where the run is, switching from warm-up to measurement (and
    /// restarting the recorder) when the warm-up time is over.
    pub fn phase(&self, rec: &mut Recorder, warm_until: &mut Option<Instant>, now: Instant) -> Phase {
        if let Some(t) = *warm_until {
            if now < t {
                return Phase::Warmup;
            }
            *warm_until = None;
            rec.restart();
        }
        let done = match self.requests {
            Some(n) => rec.requests() >= n,
            None => now.duration_since(rec.started) >= self.duration,
        };
        if done { Phase::Done } else { Phase::Measure }
    }

    /// How long the next epoll_wait may sleep before the phase can change.
    pub fn wait_limit(&self, rec: &Recorder, warm_until: Option<Instant>, now: Instant) -> Duration {
        let end = match (warm_until, self.requests) {
            (Some(t), _) => t,
            (None, None) => rec.started + self.duration,
            (None, Some(_)) => now + self.stall,
        };
        end.saturating_duration_since(now).min(self.stall)
    }
}

fn percentile_us(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank: the smallest value with at least q of the samples <= it.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

/// The one line of JSON a client prints.  `extra` holds more "key": value
/// pairs, already formatted.
pub fn report(mode: &str, conns: usize, size: usize, rec: &mut Recorder, extra: &str) -> String {
    let seconds = rec.started.elapsed().as_secs_f64();
    let n = rec.latencies_ns.len();
    let mean_us = if n > 0 {
        rec.latencies_ns.iter().map(|&x| x as f64).sum::<f64>() / n as f64 / 1000.0
    } else {
        0.0
    };
    rec.latencies_ns.sort_unstable();
    let l = &rec.latencies_ns;
    format!(
        "{{\"mode\": \"{mode}\", \"conns\": {conns}, \"size\": {size}, \"requests\": {n}, \
         \"seconds\": {seconds:.6}, \"requests_per_sec\": {:.1}, \"mean_us\": {mean_us:.2}, \
         \"p50_us\": {:.2}, \"p99_us\": {:.2}, \"max_us\": {:.2}{extra}}}",
        if seconds > 0.0 { n as f64 / seconds } else { 0.0 },
        percentile_us(l, 0.50),
        percentile_us(l, 0.99),
        percentile_us(l, 1.0),
    )
}
