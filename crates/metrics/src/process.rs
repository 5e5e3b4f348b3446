//! The process's own resources, read from /proc/self at each scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::catalog as c;
use crate::encode;

/// `process_resident_memory_bytes` and `process_open_fds`. A value that
/// cannot be read (no /proc) is left out of the scrape.
#[derive(Debug)]
pub struct Process;

impl Collector for Process {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        if let Some(rss) = resident_bytes() {
            encode::gauge(&mut enc, &c::RESIDENT_MEMORY, rss as f64)?;
        }
        if let Some(fds) = open_fds() {
            encode::gauge(&mut enc, &c::OPEN_FDS, fds as f64)?;
        }
        Ok(())
    }
}

/// VmRSS of /proc/self/status, in bytes.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Entries of /proc/self/fd (less the one the listing itself holds open).
pub fn open_fds() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t   1234 kB\nVmSwap:\t0 kB\n"), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(resident_bytes().is_some_and(|b| b > 0));
        // stdin, stdout and stderr at least.
        assert!(open_fds().is_some_and(|n| n >= 3));
    }
}
