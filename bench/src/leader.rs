//! Where writes go: the current leader's address, shared by all buyers, with
//! single-flight re-discovery after errors (one buyer asks the cluster, the
//! others reuse its answer).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use anyhow::Result;

/// Failed discoveries are not repeated more often than this.
const RETRY_DISCOVERY_AFTER: Duration = Duration::from_millis(25);

pub struct LeaderCell {
    current: RwLock<(u64, SocketAddr)>,
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl LeaderCell {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            current: RwLock::new((0, addr)),
            refresh: tokio::sync::Mutex::new(None),
        }
    }

    /// (generation, address); the generation changes whenever the address is
    /// re-discovered.
    pub fn get(&self) -> (u64, SocketAddr) {
        match self.current.read() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn set(&self, addr: SocketAddr) {
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = (g.0 + 1, addr);
    }

    /// Re-discovers the leader unless someone already did since generation
    /// `seen` was read. Returns the (possibly unchanged) current value.
    pub async fn refresh<F, Fut>(&self, seen: u64, discover: F) -> (u64, SocketAddr)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<SocketAddr>>,
    {
        let mut last_attempt = self.refresh.lock().await;
        let cur = self.get();
        if cur.0 != seen {
            return cur;
        }
        if let Some(at) = *last_attempt {
            if at.elapsed() < RETRY_DISCOVERY_AFTER {
                return cur;
            }
        }
        *last_attempt = Some(Instant::now());
        match discover().await {
            Ok(addr) => {
                if addr != cur.1 {
                    tracing::info!(%addr, "bench: writes now go to the new leader");
                }
                self.set(addr);
                *last_attempt = None;
            }
            Err(e) => tracing::debug!(error = %e, "leader discovery failed"),
        }
        self.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn concurrent_refreshes_discover_once() {
        let cell = Arc::new(LeaderCell::new(addr(1)));
        let calls = Arc::new(AtomicU32::new(0));
        let mut handles = Vec::new();
        for _ in 0..16 {
            let cell = cell.clone();
            let calls = calls.clone();
            handles.push(tokio::spawn(async move {
                cell.refresh(0, || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(addr(2))
                })
                .await
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap(), (1, addr(2)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failed_discovery_keeps_the_old_address() {
        let cell = LeaderCell::new(addr(1));
        let got = cell
            .refresh(0, || async { Err(anyhow::anyhow!("no leader")) })
            .await;
        assert_eq!(got, (0, addr(1)));
        // Throttled right after a failure.
        let got = cell.refresh(0, || async { Ok(addr(3)) }).await;
        assert_eq!(got, (0, addr(1)));
        tokio::time::sleep(RETRY_DISCOVERY_AFTER).await;
        let got = cell.refresh(0, || async { Ok(addr(3)) }).await;
        assert_eq!(got, (1, addr(3)));
    }
}
