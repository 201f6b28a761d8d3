//! The standard `process_*` metrics (the names and meanings every
//! Prometheus client library exports, so shared dashboards and alerts work
//! on enrichd unchanged), read from `/proc/self` at each scrape.
//!
//! Linux only, like the service; a value that cannot be read is left out
//! rather than reported as 0.

/// One reading of the process.
#[derive(Debug, Default)]
pub(crate) struct ProcessReading {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub threads: Option<u64>,
}

pub(crate) fn read() -> ProcessReading {
    let Ok(me) = procfs::process::Process::myself() else { return ProcessReading::default() };
    let mut r = ProcessReading {
        open_fds: me.fd_count().ok().map(|n| n as u64),
        max_fds: me.limits().ok().and_then(|l| match l.max_open_files.soft_limit {
            procfs::process::LimitValue::Value(n) => Some(n),
            procfs::process::LimitValue::Unlimited => None,
        }),
        ..ProcessReading::default()
    };
    if let Ok(stat) = me.stat() {
        let ticks = procfs::ticks_per_second() as f64;
        r.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
        r.resident_bytes = Some(stat.rss * procfs::page_size());
        r.virtual_bytes = Some(stat.vsize);
        r.threads = u64::try_from(stat.num_threads).ok();
        if let Ok(boot) = procfs::boot_time_secs() {
            r.start_time_seconds = Some(boot as f64 + stat.starttime as f64 / ticks);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let r = read();
        let start = r.start_time_seconds.expect("start time");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(start <= now + 1.0 && start > now - 24.0 * 3600.0 * 365.0, "start {start}, now {now}");
        assert!(r.resident_bytes.unwrap() > 1 << 20);
        assert!(r.virtual_bytes.unwrap() >= r.resident_bytes.unwrap());
        assert!(r.open_fds.unwrap() >= 3);
        assert!(r.threads.unwrap() >= 1);
        assert!(r.cpu_seconds.unwrap() >= 0.0);
    }
}
