//! Fault hooks for drills and tests. They exist in every build but do nothing
//! unless the node was started with `--enable-test-faults`; the admin API refuses
//! to set them otherwise.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    peer_loss_percent: RwLock<BTreeMap<NodeId, u8>>,
    /// State of the xorshift generator that decides which messages are lost.
    loss_rng: AtomicU64,
    /// The process acts as if frozen (SIGSTOP where no signal can reach it,
    /// as in a pod): see [`FaultSettings::paused`].
    paused: AtomicBool,
}

/// What happens to one Raft message under an injected loss rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Delivered.
    None,
    /// The request is dropped: the peer never sees it.
    Request,
    /// The request arrives but the answer is dropped.
    Response,
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
    /// Share (0–100) of Raft messages to each peer that are lost, half of them
    /// requests and half answers (a lossy WAN link); the caller times out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peer_loss_percent: BTreeMap<NodeId, u8>,
    /// The node acts as a frozen process would: its Raft timers stop, Raft
    /// traffic in and out is dropped, and every HTTP request waits (probes
    /// included) until it is unpaused; only `/admin/faults` answers, so the
    /// pause can be lifted. This is `pauseNode` where the drill cannot send
    /// the process SIGSTOP (a pod).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
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
        if let Ok(mut l) = self.peer_loss_percent.write() {
            *l = s
                .peer_loss_percent
                .iter()
                .map(|(k, v)| (*k, (*v).min(100)))
                .collect();
        }
        self.paused.store(s.paused, Ordering::Relaxed);
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
            peer_loss_percent: self
                .peer_loss_percent
                .read()
                .map(|l| l.clone())
                .unwrap_or_default(),
            paused: self.is_paused(),
        }
    }

    /// Whether the node acts as a frozen process.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Returns once the node is not paused (at once when it is not).
    pub async fn wait_while_paused(&self) {
        while self.is_paused() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Decides whether one message to `peer` is lost (xorshift64*, seeded per node).
    pub fn loss(&self, peer: NodeId) -> Loss {
        let pct = match self.peer_loss_percent.read() {
            Ok(l) => l.get(&peer).copied().unwrap_or(0),
            Err(_) => 0,
        };
        if pct == 0 {
            return Loss::None;
        }
        let mut x = self.loss_rng.load(Ordering::Relaxed);
        if x == 0 {
            x = 0x9E37_79B9_7F4A_7C15 ^ (std::process::id() as u64);
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.loss_rng.store(x, Ordering::Relaxed);
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        if r % 100 >= u64::from(pct) {
            Loss::None
        } else if (r >> 32) & 1 == 0 {
            Loss::Request
        } else {
            Loss::Response
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

    /// Raft traffic with `peer` is dropped: a partition, or this node paused.
    pub fn is_isolated(&self, peer: NodeId) -> bool {
        self.is_paused()
            || self
                .isolated_peers
                .read()
                .map(|p| p.contains(&peer))
                .unwrap_or(false)
    }
}
