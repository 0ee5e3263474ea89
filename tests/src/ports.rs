//! Loopback ports for servers the tests start.
//!
//! Asking the kernel for port 0 and releasing it is racy: the port lies in the
//! ephemeral range, so any outgoing connection (a load thread of a test running
//! alongside) may take it as its local port before the server binds it. CI saw
//! exactly that ("Address already in use" for a node's API address). Ports
//! handed out here lie outside the ephemeral range, come from a per-process
//! counter (never the same port twice in one test binary) and are checked free
//! by binding once.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use anyhow::{bail, Result};

/// The window ports are taken from: below the kernel's ephemeral range when
/// there is room, else above it.
fn window() -> (u32, u32) {
    static WINDOW: OnceLock<(u32, u32)> = OnceLock::new();
    *WINDOW.get_or_init(|| {
        let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|v| v.parse::<u32>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((32768, 60999));
        if lo >= 12000 {
            (10000, lo)
        } else {
            (hi + 1, 65536)
        }
    })
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback port outside the ephemeral range that was free a moment ago and
/// that this process has not handed out before.
pub fn free_port() -> Result<u16> {
    let (lo, hi) = window();
    let span = hi - lo;
    // Processes started close together begin at different offsets.
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span.min(4096) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = lo + (offset + n) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {lo}..{hi}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_outside_the_ephemeral_range() {
        let (lo, hi) = window();
        let ports: Vec<u16> = (0..64).map(|_| free_port().unwrap()).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "a port was handed out twice");
        for p in ports {
            assert!((lo..hi).contains(&u32::from(p)), "{p} outside {lo}..{hi}");
        }
    }
}
