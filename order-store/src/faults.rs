//! Fault hooks for drills and tests. They exist in every build but do nothing
//! unless the node was started with `--enable-test-faults`; the admin API refuses
//! to set them otherwise.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::raft_types::NodeId;

/// Faults currently injected into this node.
#[derive(Debug, Default)]
pub struct Faults {
    fsync_delay_ms: AtomicU64,
    isolated_peers: RwLock<HashSet<NodeId>>,
    peer_delay_ms: RwLock<BTreeMap<NodeId, u64>>,
}

/// The wire form of the fault settings (admin API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    /// Every log fsync completes this much later (a stalled disk).
    #[serde(default)]
    pub fsync_delay_ms: u64,
    /// Raft traffic to and from these peers is dropped (a partition).
    #[serde(default)]
    pub isolated_peers: Vec<NodeId>,
    /// Added latency for Raft traffic to each peer (WAN emulation between regions).
    #[serde(default)]
    pub peer_delay_ms: BTreeMap<NodeId, u64>,
}

impl Faults {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set(&self, s: &FaultSettings) {
        self.fsync_delay_ms
            .store(s.fsync_delay_ms, Ordering::Relaxed);
        if let Ok(mut peers) = self.isolated_peers.write() {
            *peers = s.isolated_peers.iter().copied().collect();
        }
        if let Ok(mut d) = self.peer_delay_ms.write() {
            *d = s.peer_delay_ms.clone();
        }
    }

    pub fn get(&self) -> FaultSettings {
        let mut isolated_peers: Vec<NodeId> = self
            .isolated_peers
            .read()
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default();
        isolated_peers.sort_unstable();
        FaultSettings {
            fsync_delay_ms: self.fsync_delay_ms.load(Ordering::Relaxed),
            isolated_peers,
            peer_delay_ms: self
                .peer_delay_ms
                .read()
                .map(|d| d.clone())
                .unwrap_or_default(),
        }
    }

    pub fn fsync_delay(&self) -> Option<Duration> {
        match self.fsync_delay_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Latency to add before sending to `peer`, if any.
    pub fn peer_delay(&self, peer: NodeId) -> Option<Duration> {
        let ms = self.peer_delay_ms.read().ok()?.get(&peer).copied()?;
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    pub fn is_isolated(&self, peer: NodeId) -> bool {
        self.isolated_peers
            .read()
            .map(|p| p.contains(&peer))
            .unwrap_or(false)
    }
}
