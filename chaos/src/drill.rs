//! The drill format: one YAML document that runs locally (`roomkeeper drill
//! run FILE`) and in Kubernetes (`kubectl apply -f FILE`, the `ChaosDrill`
//! custom resource of group `roomkeeper.dev/v1alpha1`).
//!
//! [`DrillSpec`] is the resource's `spec`. It is kept Kubernetes-friendly: no
//! untagged enums, no data-carrying enums (a fault is a `kind` plus optional
//! parameters, as Chaos Mesh does it), no floats, string-keyed maps only, and a
//! doc comment on every field (they become the CRD's descriptions).
//! [`validate`] checks what the schema cannot say and names the offending field
//! by its path (`spec.faults[2].delayMs`).

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `apiVersion` of a drill manifest.
pub const API_VERSION: &str = "roomkeeper.dev/v1alpha1";
/// `kind` of a drill manifest.
pub const KIND: &str = "ChaosDrill";

/// Longest drill accepted (seconds of load).
pub const MAX_DURATION_SECS: u64 = 3_600;

/// A whole drill file: a `ChaosDrill` manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillManifest {
    /// Always `roomkeeper.dev/v1alpha1`.
    pub api_version: String,
    /// Always `ChaosDrill`.
    pub kind: String,
    /// Name (and, in Kubernetes, namespace and labels) of the drill.
    pub metadata: DrillMetadata,
    /// The drill itself.
    pub spec: DrillSpec,
}

/// The part of Kubernetes object metadata a drill file uses; other fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillMetadata {
    /// The drill's name; names the run directory and the report.
    pub name: String,
    /// Namespace in Kubernetes; ignored locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels (for example `roomkeeper.dev/suite: ci`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A planned fault injection with a hypothesis and a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrillSpec {
    /// What the drill shows, in a sentence or two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The cluster the drill runs against.
    pub target: DrillTarget,
    /// Seconds of load from the start of the drill; every fault must end by then.
    pub duration_secs: u64,
    /// Faults, each injected `afterSecs` into the drill and healed `durationSecs` later.
    pub faults: Vec<FaultSpec>,
    /// The flash-sale load run during the drill; every client operation is recorded.
    pub load: LoadSpec,
    /// What must stay true: the steady-state hypothesis.
    pub hypothesis: HypothesisSpec,
    /// When to stop early (faults are healed first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortSpec>,
    /// What the run keeps besides the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordSpec>,
    /// How the control plane's playbook runs during the drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<PlaybookOptions>,
    /// Game day: automation is paused and a human operator is timed (detection,
    /// runbook, mitigation). Without an operator the human steps are skipped
    /// and recorded as "no operator present".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub game_day: Option<bool>,
}

/// The cluster under test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrillTarget {
    /// Name of the roomkeeper cluster (in Kubernetes: the cluster resource in the
    /// drill's namespace). Locally, `local` (any name runs the loopback cluster).
    pub cluster: String,
    /// Topology of the loopback cluster when the drill runs locally; ignored in
    /// Kubernetes. Default: eu-west 2, us-east 2, ap-south 1 voters, 20 ms WAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalTopology>,
}

/// Regions and voters of the loopback cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalTopology {
    /// Regions in order, each with its voter count.
    pub regions: Vec<RegionTopology>,
    /// One-way latency added between regions, in milliseconds (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan_latency_ms: Option<u64>,
}

/// One region of the loopback cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegionTopology {
    /// Region name (`eu-west`).
    pub name: String,
    /// Voters started in the region.
    pub voters: u32,
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FaultKind {
    /// SIGKILL the Raft leader; it is started again after `durationSecs` if still down.
    KillLeader,
    /// SIGKILL the selected node(s); started again after `durationSecs` if still down.
    KillNode,
    /// SIGSTOP the selected node(s) (default: the leader) for `durationSecs`, then SIGCONT.
    PauseNode,
    /// Cut the selected node(s) off from every other node for `durationSecs`.
    PartitionNode,
    /// Cut every node of one region (`select.region` or `select.regionOf`) off from the other regions.
    PartitionRegion,
    /// Restart every node one at a time under load, `periodMs` apart (default 3000).
    RollingRestart,
    /// Every log fsync of the selected node(s) (default: all) takes `delayMs` longer.
    DiskStall,
    /// Add `delayMs` latency and/or drop `lossPercent` of Raft messages between regions.
    WanLatency,
    /// The selected node (default: a follower) crashes and comes back every `periodMs`.
    FlapNode,
    /// Lose a majority of voters (one per region first) for `durationSecs`, then bring them back.
    QuorumLoss,
    /// Partition a follower, replace it by a new voter in its region while cut off, then heal.
    MembershipChangeDuringPartition,
    /// Kill the active controller for `durationSecs`; it restarts from its persisted memory.
    KillController,
    /// Clients time out after `clientTimeoutMs` and retry every ambiguous order with
    /// the same idempotency key, `duplicates` copies at once.
    RetryStorm,
}

impl FaultKind {
    /// Every kind, in declaration order.
    pub const ALL: [FaultKind; 13] = [
        FaultKind::KillLeader,
        FaultKind::KillNode,
        FaultKind::PauseNode,
        FaultKind::PartitionNode,
        FaultKind::PartitionRegion,
        FaultKind::RollingRestart,
        FaultKind::DiskStall,
        FaultKind::WanLatency,
        FaultKind::FlapNode,
        FaultKind::QuorumLoss,
        FaultKind::MembershipChangeDuringPartition,
        FaultKind::KillController,
        FaultKind::RetryStorm,
    ];

    /// The YAML spelling (`killLeader`).
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "killLeader",
            FaultKind::KillNode => "killNode",
            FaultKind::PauseNode => "pauseNode",
            FaultKind::PartitionNode => "partitionNode",
            FaultKind::PartitionRegion => "partitionRegion",
            FaultKind::RollingRestart => "rollingRestart",
            FaultKind::DiskStall => "diskStall",
            FaultKind::WanLatency => "wanLatency",
            FaultKind::FlapNode => "flapNode",
            FaultKind::QuorumLoss => "quorumLoss",
            FaultKind::MembershipChangeDuringPartition => "membershipChangeDuringPartition",
            FaultKind::KillController => "killController",
            FaultKind::RetryStorm => "retryStorm",
        }
    }

    /// True for kinds that need `durationSecs`.
    pub fn needs_duration(self) -> bool {
        !matches!(
            self,
            FaultKind::KillLeader | FaultKind::KillNode | FaultKind::RollingRestart
        )
    }

    /// True for kinds that take a node selector.
    pub fn takes_selector(self) -> bool {
        matches!(
            self,
            FaultKind::KillNode
                | FaultKind::PauseNode
                | FaultKind::PartitionNode
                | FaultKind::PartitionRegion
                | FaultKind::DiskStall
                | FaultKind::WanLatency
                | FaultKind::FlapNode
                | FaultKind::MembershipChangeDuringPartition
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One fault: its kind, schedule, blast radius and parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    /// What the fault does.
    pub kind: FaultKind,
    /// Seconds after the start of the drill the fault is injected.
    pub after_secs: u64,
    /// Seconds the fault lasts before it is healed. Required except for
    /// killLeader/killNode (without it the fault lasts until the node runs again,
    /// which is the playbook's job; it is started at the end of the drill at the
    /// latest) and rollingRestart (which ends when every node was restarted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    /// Blast radius: which nodes or region the fault hits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Selector>,
    /// Added latency in milliseconds (diskStall: per fsync; wanLatency: one way per message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Share of Raft messages dropped between regions, 0–100 (wanLatency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_percent: Option<u32>,
    /// Period in milliseconds (flapNode: one crash and restart per period;
    /// rollingRestart: pause between two nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_ms: Option<u64>,
    /// Client timeout in milliseconds while the fault lasts (retryStorm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_timeout_ms: Option<u64>,
    /// Copies of each ambiguous order sent at once with the same idempotency key (retryStorm, 1–16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<u32>,
}

/// Which nodes a fault hits. Unset fields do not restrict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Only the leader, only followers, or any node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<NodeRole>,
    /// Only nodes of this region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Only nodes of the region picked this way (instead of `region`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_of: Option<RegionPick>,
    /// Exactly this node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// How many of the matching nodes are hit (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Hit every matching node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// Allow a selection that takes a majority of voters down (otherwise refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_quorum_loss: Option<bool>,
}

/// A node's Raft role, for selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NodeRole {
    /// The current leader.
    Leader,
    /// Any voter that is not the leader.
    Follower,
    /// Any node.
    Any,
}

/// How a region is picked at injection time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RegionPick {
    /// The region holding the Raft leader.
    Leader,
    /// The region with the fewest voters (ties: the last in order).
    Minority,
    /// A region not holding the leader.
    NonLeader,
}

/// The load run during the drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadSpec {
    /// Concurrent buyers (1–256).
    pub clients: u32,
    /// Pause of each buyer between two orders, in milliseconds.
    pub think_time_ms: u64,
    /// Client timeout per request in milliseconds (default 3000); an answer
    /// that does not arrive in time is recorded as unknown and retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_timeout_ms: Option<u64>,
    /// How long a buyer keeps retrying one order (same idempotency key) before
    /// giving up with an unknown outcome, in milliseconds (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_deadline_ms: Option<u64>,
    /// What is on sale.
    pub catalog: CatalogSpec,
    /// Run the linearizability probe: a writer and a reader on small listings,
    /// one per few seconds, whose stock reads are checked (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linearizability_probe: Option<bool>,
}

/// Listings of the drill's live room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CatalogSpec {
    /// Ordinary listings (1–64).
    pub skus: u32,
    /// Stock of each ordinary listing.
    pub stock: u32,
    /// Hot listings that sell out during the drill (oversell check under contention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_skus: Option<u32>,
    /// Stock of each hot listing (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_stock: Option<u32>,
}

/// The steady-state hypothesis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HypothesisSpec {
    /// Probes; the drill passes iff every probe holds (and the history checker
    /// finds no violation, which is always checked).
    pub probes: Vec<ProbeSpec>,
}

/// What a probe measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProbeKind {
    /// At least `minPercent` of orders (idempotency keys) in `phase` were acknowledged.
    OrdersAccepted,
    /// The `percentile` (default 99) of order latency (first send → acknowledgement) in `phase` is ≤ `maxMs`.
    Latency,
    /// The history checker finds no violation and every node reports its invariants intact.
    Invariants,
    /// The longest gap between acknowledged orders is ≤ `maxMs`.
    Rto,
    /// At most `max` acknowledged orders are missing after healing (default 0).
    Rpo,
    /// Playbook tier `tier` (name or `T<level>`) decides within `withinSecs` of the first fault (or never, with `expect: notReached`).
    PlaybookTier,
    /// Orders flow again (a second with at least half the steady rate) within `withinSecs` of the last heal.
    Recovery,
    /// Accepted orders per second in `phase` (default fault) are at least
    /// `minPercentOfSteady` % of the steady phase's rate (what buyers get
    /// during the fault against the pre-fault baseline).
    Throughput,
    /// Within `withinSecs` of the last heal the control loop is back to
    /// normal and stays so: every region at traffic weight 100, sales open,
    /// no tier active, a leader elected on a node that takes traffic. Read
    /// from the control loop the binding runs (or the operator's memory).
    FullRecovery,
}

impl ProbeKind {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::OrdersAccepted => "ordersAccepted",
            ProbeKind::Latency => "latency",
            ProbeKind::Invariants => "invariants",
            ProbeKind::Rto => "rto",
            ProbeKind::Rpo => "rpo",
            ProbeKind::PlaybookTier => "playbookTier",
            ProbeKind::Recovery => "recovery",
            ProbeKind::Throughput => "throughput",
            ProbeKind::FullRecovery => "fullRecovery",
        }
    }
}

/// Part of the drill a probe looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DrillPhase {
    /// Before the first fault.
    Steady,
    /// From the first fault's injection to the last fault's heal.
    Fault,
    /// After the last fault's heal.
    Recovery,
    /// The whole drill.
    Whole,
}

/// Whether a playbook tier must or must not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TierExpectation {
    /// The tier decides (execute, dry-run or suppressed by a pause) within `withinSecs`.
    Reached,
    /// The tier never decides during the drill.
    NotReached,
}

/// One probe of the hypothesis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeSpec {
    /// What is measured.
    pub kind: ProbeKind,
    /// A name for the report (default: derived from kind and thresholds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Phase looked at (ordersAccepted, latency: default whole; throughput: default fault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DrillPhase>,
    /// Least share of orders acknowledged, 0–100 (ordersAccepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_percent: Option<u32>,
    /// Least accepted orders/s in the phase, as a percentage of the steady
    /// phase's rate, 1–100 (throughput).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_percent_of_steady: Option<u32>,
    /// Percentile, 1–100 (latency; default 99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<u32>,
    /// Upper bound in milliseconds (latency, rto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
    /// Upper bound on lost acknowledged orders (rpo; default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    /// Tier name (`heal`) or `T<level>` (`T1`) (playbookTier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Deadline in seconds (playbookTier: after the first fault; recovery,
    /// fullRecovery: after the last heal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_secs: Option<u64>,
    /// Reached (default) or notReached (playbookTier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<TierExpectation>,
}

/// Conditions that stop the drill early; faults are healed first and the verdict is ABORTED.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbortSpec {
    /// Abort when no order has been acknowledged for this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_orders_for_secs: Option<u64>,
    /// Abort when a node reports a broken invariant (checked every few seconds; default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_invariant_violation: Option<bool>,
    /// Abort when more than this many operations ended with an unknown outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unknown_ops: Option<u64>,
}

/// What the run keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordSpec {
    /// Write the full client history (`history.json`; default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<bool>,
    /// Copy the playbook's decision log into the run (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decisions: Option<bool>,
    /// Keep the nodes' logs and data in the run directory (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_logs: Option<bool>,
    /// Width of one timeline bucket in milliseconds (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline_bucket_ms: Option<u64>,
}

/// How the playbook runs during the drill.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlaybookOptions {
    /// Every playbook duration is multiplied by this percentage (local default 20:
    /// minutes of hold-down become seconds). Ignored in Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_scale_percent: Option<u32>,
    /// Decide and record, but do not act.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// Pause automation (decisions are recorded as suppressed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// A problem in a drill, named by its field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    /// Field path, `spec.faults[1].delayMs`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Errors reading a drill file.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("not a drill manifest: {0}")]
    Parse(String),
    #[error("{field} must be {expected:?}, got {got:?}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error("invalid drill: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
}

impl DrillManifest {
    /// Parses and validates a drill file.
    pub fn from_yaml(text: &str) -> Result<Self, DrillError> {
        let m: DrillManifest =
            serde_yaml::from_str(text).map_err(|e| DrillError::Parse(e.to_string()))?;
        if m.api_version != API_VERSION {
            return Err(DrillError::WrongType {
                field: "apiVersion",
                expected: API_VERSION,
                got: m.api_version,
            });
        }
        if m.kind != KIND {
            return Err(DrillError::WrongType {
                field: "kind",
                expected: KIND,
                got: m.kind,
            });
        }
        let mut errs = Vec::new();
        if !valid_name(&m.metadata.name) {
            errs.push(ValidationError {
                path: "metadata.name".into(),
                message: format!(
                    "{:?} is not a DNS-1123 name (lowercase letters, digits, '-', at most 63)",
                    m.metadata.name
                ),
            });
        }
        if let Err(mut e) = validate(&m.spec) {
            errs.append(&mut e);
        }
        if errs.is_empty() {
            Ok(m)
        } else {
            Err(DrillError::Invalid(errs))
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

impl DrillSpec {
    /// Start of the first fault and end of the last one, in seconds (None without faults).
    pub fn fault_window_secs(&self) -> Option<(u64, u64)> {
        let start = self.faults.iter().map(|f| f.after_secs).min()?;
        let end = self
            .faults
            .iter()
            .map(|f| f.after_secs + f.duration_secs.unwrap_or(0))
            .max()?;
        Some((start, end))
    }

    /// True when the drill runs as a game day.
    pub fn is_game_day(&self) -> bool {
        self.game_day.unwrap_or(false)
    }
}

struct Errs(Vec<ValidationError>);

impl Errs {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Checks what the schema cannot: ranges, parameters each fault kind and probe
/// kind needs (and only those), and that every fault ends within the drill.
pub fn validate(spec: &DrillSpec) -> Result<(), Vec<ValidationError>> {
    let mut e = Errs(Vec::new());
    if spec.target.cluster.trim().is_empty() {
        e.push("spec.target.cluster", "must not be empty");
    }
    let mut regions: Vec<&str> = Vec::new();
    if let Some(t) = &spec.target.local {
        if t.regions.is_empty() {
            e.push("spec.target.local.regions", "needs at least one region");
        }
        let mut voters = 0;
        for (i, r) in t.regions.iter().enumerate() {
            let p = format!("spec.target.local.regions[{i}]");
            if !valid_name(&r.name) {
                e.push(
                    format!("{p}.name"),
                    format!("{:?} is not a DNS-1123 name", r.name),
                );
            }
            if regions.contains(&r.name.as_str()) {
                e.push(
                    format!("{p}.name"),
                    format!("region {:?} appears twice", r.name),
                );
            }
            regions.push(&r.name);
            if r.voters == 0 || r.voters > 5 {
                e.push(format!("{p}.voters"), "must be 1–5");
            }
            voters += r.voters;
        }
        if voters > 9 {
            e.push("spec.target.local.regions", "at most 9 voters in all");
        }
        if t.regions.len() > 9 {
            e.push("spec.target.local.regions", "at most 9 regions");
        }
        if t.wan_latency_ms.is_some_and(|l| l > 1_000) {
            e.push("spec.target.local.wanLatencyMs", "must be ≤ 1000");
        }
    }
    if spec.duration_secs < 5 || spec.duration_secs > MAX_DURATION_SECS {
        e.push(
            "spec.durationSecs",
            format!("must be 5–{MAX_DURATION_SECS}, got {}", spec.duration_secs),
        );
    }
    for (i, f) in spec.faults.iter().enumerate() {
        validate_fault(
            &mut e,
            &format!("spec.faults[{i}]"),
            f,
            spec.duration_secs,
            &regions,
        );
    }
    validate_load(&mut e, &spec.load);
    if spec.hypothesis.probes.is_empty() {
        e.push("spec.hypothesis.probes", "needs at least one probe");
    }
    let mut names = Vec::new();
    for (i, p) in spec.hypothesis.probes.iter().enumerate() {
        let path = format!("spec.hypothesis.probes[{i}]");
        validate_probe(&mut e, &path, p, spec.duration_secs);
        if let Some(n) = &p.name {
            if names.contains(n) {
                e.push(
                    format!("{path}.name"),
                    format!("probe name {n:?} used twice"),
                );
            }
            names.push(n.clone());
        }
    }
    if let Some(a) = &spec.abort {
        if a.no_orders_for_secs == Some(0) {
            e.push("spec.abort.noOrdersForSecs", "must be ≥ 1");
        }
    }
    if let Some(r) = &spec.record {
        if let Some(b) = r.timeline_bucket_ms {
            if !(100..=60_000).contains(&b) {
                e.push("spec.record.timelineBucketMs", "must be 100–60000");
            }
        }
    }
    if let Some(p) = &spec.playbook {
        if let Some(s) = p.time_scale_percent {
            if s == 0 || s > 1_000 {
                e.push("spec.playbook.timeScalePercent", "must be 1–1000");
            }
        }
    }
    if e.0.is_empty() {
        Ok(())
    } else {
        Err(e.0)
    }
}

fn validate_fault(e: &mut Errs, p: &str, f: &FaultSpec, drill_secs: u64, regions: &[&str]) {
    let k = f.kind;
    match f.duration_secs {
        None if k.needs_duration() => {
            e.push(format!("{p}.durationSecs"), format!("required for {k}"))
        }
        Some(0) => e.push(format!("{p}.durationSecs"), "must be ≥ 1"),
        _ => {}
    }
    let end = f.after_secs + f.duration_secs.unwrap_or(0);
    if end > drill_secs {
        e.push(
            format!("{p}.afterSecs"),
            format!("the fault ends at {end} s, after the drill's durationSecs {drill_secs}"),
        );
    }
    if f.select.is_some() && !k.takes_selector() {
        e.push(format!("{p}.select"), format!("{k} takes no selector"));
    }
    if let Some(s) = &f.select {
        let sp = format!("{p}.select");
        if s.region.is_some() && s.region_of.is_some() {
            e.push(
                format!("{sp}.regionOf"),
                "give region or regionOf, not both",
            );
        }
        if let Some(r) = &s.region {
            if !regions.is_empty() && !regions.contains(&r.as_str()) {
                e.push(
                    format!("{sp}.region"),
                    format!("no region {r:?} in spec.target.local"),
                );
            }
        }
        if s.count == Some(0) {
            e.push(format!("{sp}.count"), "must be ≥ 1");
        }
        if s.count.is_some() && s.all == Some(true) {
            e.push(format!("{sp}.all"), "give count or all, not both");
        }
        if k == FaultKind::PartitionRegion && (s.role.is_some() || s.node_id.is_some()) {
            e.push(
                sp.clone(),
                "partitionRegion selects a region: use region or regionOf only",
            );
        }
    }
    if k == FaultKind::PartitionRegion
        && f.select
            .as_ref()
            .is_none_or(|s| s.region.is_none() && s.region_of.is_none())
    {
        e.push(
            format!("{p}.select"),
            "partitionRegion needs select.region or select.regionOf",
        );
    }
    // Parameters: required ones present, foreign ones absent.
    let allowed: &[&str] = match k {
        FaultKind::DiskStall => &["delayMs"],
        FaultKind::WanLatency => &["delayMs", "lossPercent"],
        FaultKind::FlapNode | FaultKind::RollingRestart => &["periodMs"],
        FaultKind::RetryStorm => &["clientTimeoutMs", "duplicates"],
        _ => &[],
    };
    let given = [
        ("delayMs", f.delay_ms.is_some()),
        ("lossPercent", f.loss_percent.is_some()),
        ("periodMs", f.period_ms.is_some()),
        ("clientTimeoutMs", f.client_timeout_ms.is_some()),
        ("duplicates", f.duplicates.is_some()),
    ];
    for (name, present) in given {
        if present && !allowed.contains(&name) {
            e.push(format!("{p}.{name}"), format!("not a parameter of {k}"));
        }
    }
    match k {
        FaultKind::DiskStall => match f.delay_ms {
            None => e.push(format!("{p}.delayMs"), "required for diskStall"),
            Some(d) if d == 0 || d > 60_000 => e.push(format!("{p}.delayMs"), "must be 1–60000"),
            _ => {}
        },
        FaultKind::WanLatency => {
            if f.delay_ms.is_none() && f.loss_percent.is_none() {
                e.push(
                    format!("{p}.delayMs"),
                    "wanLatency needs delayMs or lossPercent",
                );
            }
            if f.delay_ms.is_some_and(|d| d > 10_000) {
                e.push(format!("{p}.delayMs"), "must be ≤ 10000");
            }
            if f.loss_percent.is_some_and(|l| l > 100) {
                e.push(format!("{p}.lossPercent"), "must be 0–100");
            }
        }
        FaultKind::FlapNode => match f.period_ms {
            None => e.push(format!("{p}.periodMs"), "required for flapNode"),
            Some(x) if x < 1_000 => e.push(format!("{p}.periodMs"), "must be ≥ 1000"),
            _ => {}
        },
        FaultKind::RollingRestart if f.period_ms.is_some_and(|x| x > 60_000) => {
            e.push(format!("{p}.periodMs"), "must be ≤ 60000");
        }
        FaultKind::RetryStorm => {
            match f.client_timeout_ms {
                None => e.push(format!("{p}.clientTimeoutMs"), "required for retryStorm"),
                Some(t) if !(10..=10_000).contains(&t) => {
                    e.push(format!("{p}.clientTimeoutMs"), "must be 10–10000")
                }
                _ => {}
            }
            if f.duplicates.is_some_and(|d| d == 0 || d > 16) {
                e.push(format!("{p}.duplicates"), "must be 1–16");
            }
        }
        _ => {}
    }
}

fn validate_load(e: &mut Errs, l: &LoadSpec) {
    if l.clients == 0 || l.clients > 256 {
        e.push("spec.load.clients", "must be 1–256");
    }
    if l.think_time_ms > 60_000 {
        e.push("spec.load.thinkTimeMs", "must be ≤ 60000");
    }
    if l.client_timeout_ms
        .is_some_and(|t| !(10..=60_000).contains(&t))
    {
        e.push("spec.load.clientTimeoutMs", "must be 10–60000");
    }
    if l.retry_deadline_ms.is_some_and(|t| t > 120_000) {
        e.push("spec.load.retryDeadlineMs", "must be ≤ 120000");
    }
    let c = &l.catalog;
    if c.skus == 0 || c.skus > 64 {
        e.push("spec.load.catalog.skus", "must be 1–64");
    }
    if c.stock == 0 {
        e.push("spec.load.catalog.stock", "must be ≥ 1");
    }
    if c.hot_skus.is_some_and(|h| h > 16) {
        e.push("spec.load.catalog.hotSkus", "must be ≤ 16");
    }
    if c.hot_stock == Some(0) {
        e.push("spec.load.catalog.hotStock", "must be ≥ 1");
    }
}

fn validate_probe(e: &mut Errs, p: &str, pr: &ProbeSpec, drill_secs: u64) {
    let k = pr.kind;
    let allowed: &[&str] = match k {
        ProbeKind::OrdersAccepted => &["phase", "minPercent"],
        ProbeKind::Latency => &["phase", "percentile", "maxMs"],
        ProbeKind::Invariants => &[],
        ProbeKind::Rto => &["maxMs"],
        ProbeKind::Rpo => &["max"],
        ProbeKind::PlaybookTier => &["tier", "withinSecs", "expect"],
        ProbeKind::Recovery | ProbeKind::FullRecovery => &["withinSecs"],
        ProbeKind::Throughput => &["phase", "minPercentOfSteady"],
    };
    let given = [
        ("phase", pr.phase.is_some()),
        ("minPercent", pr.min_percent.is_some()),
        ("minPercentOfSteady", pr.min_percent_of_steady.is_some()),
        ("percentile", pr.percentile.is_some()),
        ("maxMs", pr.max_ms.is_some()),
        ("max", pr.max.is_some()),
        ("tier", pr.tier.is_some()),
        ("withinSecs", pr.within_secs.is_some()),
        ("expect", pr.expect.is_some()),
    ];
    for (name, present) in given {
        if present && !allowed.contains(&name) {
            e.push(
                format!("{p}.{name}"),
                format!("not a parameter of {}", k.as_str()),
            );
        }
    }
    let need = |e: &mut Errs, name: &str, present: bool| {
        if !present {
            e.push(
                format!("{p}.{name}"),
                format!("required for {}", k.as_str()),
            );
        }
    };
    match k {
        ProbeKind::OrdersAccepted => {
            need(e, "minPercent", pr.min_percent.is_some());
            if pr.min_percent.is_some_and(|m| m > 100) {
                e.push(format!("{p}.minPercent"), "must be 0–100");
            }
        }
        ProbeKind::Latency => {
            need(e, "maxMs", pr.max_ms.is_some());
            if pr.percentile.is_some_and(|x| x == 0 || x > 100) {
                e.push(format!("{p}.percentile"), "must be 1–100");
            }
        }
        ProbeKind::Rto => need(e, "maxMs", pr.max_ms.is_some()),
        ProbeKind::PlaybookTier => {
            need(e, "tier", pr.tier.is_some());
            if pr.expect != Some(TierExpectation::NotReached) {
                need(e, "withinSecs", pr.within_secs.is_some());
            }
            if let Some(t) = &pr.tier {
                if t.trim().is_empty() {
                    e.push(format!("{p}.tier"), "must not be empty");
                }
            }
        }
        ProbeKind::Recovery | ProbeKind::FullRecovery => {
            need(e, "withinSecs", pr.within_secs.is_some())
        }
        ProbeKind::Throughput => {
            need(e, "minPercentOfSteady", pr.min_percent_of_steady.is_some());
            if pr.min_percent_of_steady.is_some_and(|m| m == 0 || m > 100) {
                e.push(format!("{p}.minPercentOfSteady"), "must be 1–100");
            }
            match pr.phase {
                Some(DrillPhase::Fault) | Some(DrillPhase::Recovery) | None => {}
                Some(other) => e.push(
                    format!("{p}.phase"),
                    format!(
                        "{} is not compared with the steady rate: use fault or recovery",
                        phase_str(other)
                    ),
                ),
            }
        }
        ProbeKind::Invariants | ProbeKind::Rpo => {}
    }
    if pr.within_secs.is_some_and(|w| w > drill_secs) {
        e.push(
            format!("{p}.withinSecs"),
            format!("must be ≤ the drill's durationSecs {drill_secs}"),
        );
    }
}

/// The default local topology: eu-west 2, us-east 2, ap-south 1, 20 ms WAN.
pub fn default_topology() -> LocalTopology {
    LocalTopology {
        regions: vec![
            RegionTopology {
                name: "eu-west".into(),
                voters: 2,
            },
            RegionTopology {
                name: "us-east".into(),
                voters: 2,
            },
            RegionTopology {
                name: "ap-south".into(),
                voters: 1,
            },
        ],
        wan_latency_ms: Some(20),
    }
}

impl ProbeSpec {
    /// The probe's name in reports.
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let phase = self
            .phase
            .map(|p| format!(" ({})", phase_str(p)))
            .unwrap_or_default();
        match self.kind {
            ProbeKind::OrdersAccepted => format!(
                "≥ {}% of orders acknowledged{phase}",
                self.min_percent.unwrap_or(0)
            ),
            ProbeKind::Latency => format!(
                "p{} order latency ≤ {} ms{phase}",
                self.percentile.unwrap_or(99),
                self.max_ms.unwrap_or(0)
            ),
            ProbeKind::Invariants => "no lost order, no oversell, one effect per key, linearizable reads, node invariants".into(),
            ProbeKind::Rto => format!("RTO ≤ {} ms", self.max_ms.unwrap_or(0)),
            ProbeKind::Rpo => format!("RPO ≤ {}", self.max.unwrap_or(0)),
            ProbeKind::PlaybookTier => match self.expect.unwrap_or(TierExpectation::Reached) {
                TierExpectation::Reached => format!(
                    "tier {} decides within {} s of the first fault",
                    self.tier.as_deref().unwrap_or("?"),
                    self.within_secs.unwrap_or(0)
                ),
                TierExpectation::NotReached => format!(
                    "tier {} never decides",
                    self.tier.as_deref().unwrap_or("?")
                ),
            },
            ProbeKind::Recovery => format!(
                "orders flow again within {} s of the last heal",
                self.within_secs.unwrap_or(0)
            ),
            ProbeKind::Throughput => format!(
                "accepted orders/s ≥ {}% of steady ({})",
                self.min_percent_of_steady.unwrap_or(0),
                phase_str(self.phase.unwrap_or(DrillPhase::Fault))
            ),
            ProbeKind::FullRecovery => format!(
                "weights 100, sales open, no tier active, leader on a serving node within {} s of the last heal",
                self.within_secs.unwrap_or(0)
            ),
        }
    }
}

/// The YAML spelling of a phase.
pub fn phase_str(p: DrillPhase) -> &'static str {
    match p {
        DrillPhase::Steady => "steady",
        DrillPhase::Fault => "fault",
        DrillPhase::Recovery => "recovery",
        DrillPhase::Whole => "whole",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: roomkeeper.dev/v1alpha1
kind: ChaosDrill
metadata:
  name: t
spec:
  target: {cluster: local}
  durationSecs: 30
  faults:
    - {kind: killLeader, afterSecs: 10, durationSecs: 5}
  load:
    clients: 4
    thinkTimeMs: 20
    catalog: {skus: 2, stock: 1000}
  hypothesis:
    probes:
      - {kind: invariants}
"#;

    fn errors(yaml: &str) -> Vec<String> {
        match DrillManifest::from_yaml(yaml) {
            Err(DrillError::Invalid(v)) => v.iter().map(|e| e.to_string()).collect(),
            Err(e) => vec![e.to_string()],
            Ok(_) => vec![],
        }
    }

    #[test]
    fn a_minimal_drill_parses() {
        let m = DrillManifest::from_yaml(GOOD).expect("valid");
        assert_eq!(m.spec.faults[0].kind, FaultKind::KillLeader);
        assert_eq!(m.spec.fault_window_secs(), Some((10, 15)));
    }

    #[test]
    fn errors_name_the_field_path() {
        let bad = GOOD.replace(
            "{kind: killLeader, afterSecs: 10, durationSecs: 5}",
            "{kind: diskStall, afterSecs: 10, durationSecs: 5}",
        );
        assert_eq!(
            errors(&bad),
            vec!["spec.faults[0].delayMs: required for diskStall"]
        );
        let bad = GOOD.replace("durationSecs: 5}", "durationSecs: 50}");
        assert!(errors(&bad)[0].starts_with("spec.faults[0].afterSecs: the fault ends at 60 s"));
        let bad = GOOD.replace("{kind: invariants}", "{kind: latency, percentile: 0}");
        assert_eq!(
            errors(&bad),
            vec![
                "spec.hypothesis.probes[0].maxMs: required for latency",
                "spec.hypothesis.probes[0].percentile: must be 1–100"
            ]
        );
    }

    #[test]
    fn foreign_parameters_and_unknown_fields_are_refused() {
        let bad = GOOD.replace("durationSecs: 5}", "durationSecs: 5, delayMs: 3}");
        assert_eq!(
            errors(&bad),
            vec!["spec.faults[0].delayMs: not a parameter of killLeader"]
        );
        let bad = GOOD.replace("afterSecs: 10,", "afterSecs: 10, typo: 1,");
        assert!(
            errors(&bad)[0].contains("unknown field `typo`"),
            "{:?}",
            errors(&bad)
        );
        let bad = GOOD.replace("kind: ChaosDrill", "kind: Pod");
        assert!(errors(&bad)[0].contains("kind must be"));
        let bad = GOOD.replace("name: t", "name: Bad_Name");
        assert!(errors(&bad)[0].starts_with("metadata.name"));
    }

    #[test]
    fn throughput_and_full_recovery_probes_take_their_own_parameters() {
        let with = |probe: &str| GOOD.replace("{kind: invariants}", probe);
        assert_eq!(
            errors(&with("{kind: throughput, minPercentOfSteady: 60}")),
            Vec::<String>::new()
        );
        assert_eq!(
            errors(&with("{kind: throughput}")),
            vec!["spec.hypothesis.probes[0].minPercentOfSteady: required for throughput"]
        );
        assert_eq!(
            errors(&with(
                "{kind: throughput, minPercentOfSteady: 60, phase: steady}"
            )),
            vec!["spec.hypothesis.probes[0].phase: steady is not compared with the steady rate: use fault or recovery"]
        );
        assert_eq!(
            errors(&with("{kind: fullRecovery, withinSecs: 20, minPercent: 3}")),
            vec!["spec.hypothesis.probes[0].minPercent: not a parameter of fullRecovery"]
        );
        assert_eq!(
            errors(&with("{kind: fullRecovery}")),
            vec!["spec.hypothesis.probes[0].withinSecs: required for fullRecovery"]
        );
    }

    #[test]
    fn partition_region_needs_a_region() {
        let bad = GOOD.replace(
            "{kind: killLeader, afterSecs: 10, durationSecs: 5}",
            "{kind: partitionRegion, afterSecs: 10, durationSecs: 5, select: {role: leader}}",
        );
        let e = errors(&bad);
        assert!(
            e.iter().any(|m| m.contains("use region or regionOf only")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.contains("needs select.region")), "{e:?}");
    }

    #[test]
    fn the_schema_has_no_untagged_unions_and_describes_every_field() {
        let schema = schemars::schema_for!(DrillSpec);
        // Every property of every object has a description, and no union
        // (oneOf/anyOf) carries an object: enums are plain strings.
        fn walk(v: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
                for (k, p) in props {
                    if p.get("description").is_none() {
                        missing.push(k.clone());
                    }
                }
            }
            for union in ["oneOf", "anyOf"] {
                for branch in v
                    .get(union)
                    .and_then(|b| b.as_array())
                    .into_iter()
                    .flatten()
                {
                    if branch.get("properties").is_some() {
                        missing.push(format!("{union} with an object branch"));
                    }
                }
            }
            match v {
                serde_json::Value::Object(m) => m.values().for_each(|x| walk(x, missing)),
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, missing)),
                _ => {}
            }
        }
        let mut missing = Vec::new();
        walk(&serde_json::to_value(&schema).expect("json"), &mut missing);
        assert!(
            missing.is_empty(),
            "fields without description: {missing:?}"
        );
    }
}
