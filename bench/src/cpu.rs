//! CPU time spent per answered order, from the kernel's own accounting
//! (`/proc/PID/stat`: user + system time of every thread of a process).
//!
//! Throughput on a shared two-core machine moves with the neighbours' load;
//! the CPU one order costs moves much less, so the report carries both.

use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU time of a process, if it runs (Linux only).
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// CPU time of this process (the load generator).
pub fn own_cpu() -> Option<Duration> {
    process_cpu(std::process::id())
}

/// CPU time of this process's children that have exited and been waited for
/// (`cutime + cstime`): a load tool the bench ran to completion.
pub fn reaped_children_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    stat_fields(&stat, 13)
}

/// `utime + stime` from a `/proc/PID/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<Duration> {
    stat_fields(stat, 11)
}

/// The sum of two tick counts that follow each other, `skip` fields after the
/// state field: utime and stime (fields 14, 15) or cutime and cstime (16, 17).
fn stat_fields(stat: &str, skip: usize) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let a: u64 = fields.nth(skip)?.parse().ok()?;
    let b: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64((a + b) as f64 / TICKS_PER_SEC))
}

/// CPU used in the measurement window: each server process, and the load generator.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WindowCpu {
    /// Per server process, in the order the target listed them; `None` when a
    /// process was gone at either end of the window (killed, exited).
    pub servers: Vec<Option<Duration>>,
    pub load_generator: Option<Duration>,
}

/// A sample of the processes' CPU at one instant.
#[derive(Clone, Debug)]
pub struct Sample {
    servers: Vec<Option<Duration>>,
    own: Option<Duration>,
}

pub fn sample(pids: &[u32]) -> Sample {
    Sample {
        servers: pids.iter().map(|&p| process_cpu(p)).collect(),
        own: own_cpu(),
    }
}

impl Sample {
    /// What was spent from `self` to `later`.
    pub fn until(&self, later: &Sample) -> WindowCpu {
        let d = |a: Option<Duration>, b: Option<Duration>| b?.checked_sub(a?);
        WindowCpu {
            servers: self
                .servers
                .iter()
                .zip(&later.servers)
                .map(|(a, b)| d(*a, *b))
                .collect(),
            load_generator: d(self.own, later.own),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_after_an_awkward_name() {
        // Fields 14 and 15 are 250 and 50 ticks: 3 s.
        let line = "4242 (node (x) 1) S 1 4242 4242 0 -1 4194560 9 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_stat(line), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat("garbage"), None);
        // cutime 7, cstime 3: 0.1 s.
        let line = "1 (x) S 1 1 1 0 -1 0 0 0 0 0 250 50 7 3 20 0 1 0 1 2 3";
        assert_eq!(stat_fields(line, 13), Some(Duration::from_millis(100)));
    }

    #[test]
    fn this_process_has_spent_some_cpu_and_windows_subtract() {
        let a = sample(&[std::process::id(), u32::MAX]);
        let mut x = 0u64;
        let until = std::time::Instant::now() + Duration::from_millis(60);
        while std::time::Instant::now() < until {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let b = sample(&[std::process::id(), u32::MAX]);
        let w = a.until(&b);
        assert!(
            w.load_generator
                .is_some_and(|d| d >= Duration::from_millis(20)),
            "{w:?}"
        );
        assert_eq!(w.servers.len(), 2);
        assert!(w.servers[0].is_some());
        // No such process: no figure rather than a wrong one.
        assert_eq!(w.servers[1], None);
    }
}
