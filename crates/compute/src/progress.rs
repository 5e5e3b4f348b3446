//! Progress of a long transfer in the log: bytes so far and the rate, at
//! most every few seconds, from the stream wrappers around the packer.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_secs(5);

struct Meter {
    what: &'static str,
    bytes: u64,
    started: Instant,
    last_log: Instant,
}

impl Meter {
    fn new(what: &'static str) -> Self {
        let now = Instant::now();
        Meter { what, bytes: 0, started: now, last_log: now }
    }

    fn add(&mut self, n: usize) {
        self.bytes += n as u64;
        if self.last_log.elapsed() >= EVERY {
            self.last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            tracing::info!(
                step = self.what,
                mib = format!("{:.1}", self.bytes as f64 / 1048576.0),
                mib_per_s = format!("{:.1}", self.bytes as f64 / 1048576.0 / secs),
                "transfer in progress"
            );
        }
    }
}

/// Counts what the engine writes into an outbound stream.
pub struct MeteredOut<W> {
    inner: W,
    meter: Meter,
}

impl<W> MeteredOut<W> {
    pub fn new(inner: W, what: &'static str) -> Self {
        MeteredOut { inner, meter: Meter::new(what) }
    }
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for MeteredOut<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.meter.add(n);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Counts what the engine reads from an inbound stream.
pub struct MeteredIn<R> {
    inner: R,
    meter: Meter,
}

impl<R> MeteredIn<R> {
    pub fn new(inner: R, what: &'static str) -> Self {
        MeteredIn { inner, meter: Meter::new(what) }
    }
}

impl<R: Read> Read for MeteredIn<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.add(n);
        Ok(n)
    }
}
