//! What a run costs: CPU (the process, the webhook thread, the NATS server
//! and its proxy), context switches, memory, and one measurement's row.

use super::*;

pub(super) fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User+system CPU time of the whole process, and its context switches
/// (voluntary and not).
pub(super) fn process_cpu() -> (Duration, u64) {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (
        time(usage.ru_utime) + time(usage.ru_stime),
        (usage.ru_nvcsw + usage.ru_nivcsw) as u64,
    )
}

/// CPU time of one thread of this process: the scheduler's exact figure,
/// else user+system clock ticks (a thread id is a pid to /proc).
pub(super) fn thread_cpu(tid: i64) -> Duration {
    if let Some(ns) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
    {
        return Duration::from_nanos(ns);
    }
    other_process_cpu(tid).unwrap_or_default()
}

/// The `docker-proxy` processes forwarding `host_port` on this machine.
pub(super) fn docker_proxies(host_port: u16) -> Vec<i64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i64>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let port = host_port.to_string();
            args.first().is_some_and(|a| a.ends_with(b"docker-proxy"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"-host-port" && w[1] == port.as_bytes())
        })
        .collect()
}

/// CPU spent so far: the process's, the webhook server thread's, and the
/// NATS server's (in its container, when its process can be seen).
#[derive(Clone, Copy)]
pub(super) struct Cpu {
    pub(super) process: Duration,
    /// The process's context switches.
    pub(super) switches: u64,
    pub(super) server: Duration,
    pub(super) nats: Option<Duration>,
    /// The docker-proxy in front of the NATS port, when there is one.
    pub(super) proxy: Option<Duration>,
}

impl Cpu {
    pub(super) fn now(webhook: &Webhook, nats: Option<&Nats>) -> Self {
        let (process, switches) = process_cpu();
        Self {
            process,
            switches,
            server: thread_cpu(webhook.tid),
            nats: nats.and_then(|n| n.pid).and_then(other_process_cpu),
            proxy: nats.and_then(|n| {
                n.proxies
                    .iter()
                    .map(|pid| other_process_cpu(*pid))
                    .sum::<Option<Duration>>()
                    .filter(|_| !n.proxies.is_empty())
            }),
        }
    }

    pub(super) fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            process: self.process.saturating_sub(earlier.process),
            switches: self.switches.saturating_sub(earlier.switches),
            server: self.server.saturating_sub(earlier.server),
            nats: self
                .nats
                .zip(earlier.nats)
                .map(|(now, then)| now.saturating_sub(then)),
            proxy: self
                .proxy
                .zip(earlier.proxy)
                .map(|(now, then)| now.saturating_sub(then)),
        }
    }
}

/// One timed measurement.
pub(super) struct Measured {
    pub(super) name: String,
    pub(super) events: usize,
    pub(super) took: Duration,
    pub(super) cpu: Cpu,
    /// From the start until the first CRM request (bridge runs).
    pub(super) first_request: Option<Duration>,
    /// How long `Application::build` took (bridge runs).
    pub(super) built: Option<Duration>,
    /// CRM requests the server answered (bridge runs).
    pub(super) requests: Option<u64>,
    pub(super) redelivered: Option<usize>,
    /// Whether it finished before `STALL_AFTER`.
    pub(super) complete: bool,
    pub(super) peak_rss_kib: u64,
}

impl Measured {
    pub(super) fn rate(&self) -> f64 {
        self.events as f64 / self.took.as_secs_f64()
    }

    /// The rate from the first CRM request on (startup left out).
    pub(super) fn running_rate(&self) -> Option<f64> {
        self.first_request
            .map(|first| self.events as f64 / (self.took - first).as_secs_f64())
    }

    pub(super) fn switches_per_event(&self) -> f64 {
        self.cpu.switches as f64 / self.events as f64
    }

    pub(super) fn us_per_event(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.events as f64
    }

    pub(super) fn print(&self) {
        let mut line = format!(
            "{:<22} {} events in {:>7.1?} = {:>7.0} events/s; CPU {:>6.1} µs/event ({:.1} µs in the HTTP server); {:.1} context switches/event",
            self.name,
            self.events,
            self.took,
            self.rate(),
            self.us_per_event(self.cpu.process),
            self.us_per_event(self.cpu.server),
            self.switches_per_event(),
        );
        if let Some(nats) = self.cpu.nats {
            line += &format!("; NATS server {:.1} µs/event", self.us_per_event(nats));
        }
        if let Some(proxy) = self.cpu.proxy {
            line += &format!("; docker-proxy {:.1} µs/event", self.us_per_event(proxy));
        }
        if let Some(built) = self.built {
            line += &format!("; built in {built:.1?}");
        }
        if let Some(first) = self.first_request {
            line += &format!("; first CRM request after {first:.1?}");
        }
        if let Some(requests) = self.requests {
            line += &format!("; {requests} CRM requests");
        }
        if let Some(redelivered) = self.redelivered {
            line += &format!("; {redelivered} redelivered");
        }
        line += &format!("; peak RSS {} MiB", self.peak_rss_kib / 1024);
        if !self.complete {
            line += "  ** STALLED: did not finish **";
        }
        println!("{line}");
    }
}
