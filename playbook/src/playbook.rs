//! The playbook: tiers (trigger → actions), guards, and the global switches.
//!
//! These types are the spec of the `FailoverPlaybook` custom resource, so their
//! serde face is camelCase and plain (externally tagged enums, no untagged
//! tricks); they also read from YAML files with [`Playbook::from_yaml`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decision::TargetKind;

/// A failover playbook: what to do at each tier, and the guards around it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Playbook {
    /// The tiers, each with a unique name and level.
    pub tiers: Vec<Tier>,
    /// Guard rails applied to every action; missing fields take safe defaults.
    #[serde(default)]
    pub guards: Guards,
    /// Decide and record, but mark every decision `dryRun` instead of `execute`.
    #[serde(default)]
    pub dry_run: bool,
    /// Global pause: decide and record, suppress every action.
    #[serde(default)]
    pub paused: bool,
    /// How the control loop reads the nodes' answers into health signals.
    #[serde(default)]
    pub health: HealthRules,
}

/// How observations become health signals. The same rules apply in every
/// binding (local processes, Kubernetes), so they live in the playbook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HealthRules {
    /// A follower counts as replicated to when the leader heard from it within
    /// this many milliseconds (several heartbeats).
    pub replicating_ack_ms: u64,
}

impl Default for HealthRules {
    fn default() -> Self {
        Self {
            replicating_ack_ms: 2_000,
        }
    }
}

/// One level of a playbook, from watching (0) to protecting (4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tier {
    /// A short unique name (`watch`, `heal`, …).
    pub name: String,
    /// 0 = watch … 4 = protect. Higher levels are decided first.
    pub level: u8,
    /// When the tier escalates and when it stands down.
    pub trigger: Trigger,
    /// Actions taken once the trigger has held for `trigger.forMs`.
    pub actions: Vec<ActionKind>,
    /// Actions taken once the trigger has been clear for `trigger.clearForMs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stand_down_actions: Vec<ActionKind>,
    /// When set, cluster-changing actions wait for a human's approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

/// A condition held for a duration (escalate), and cleared for a duration
/// (stand down).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trigger {
    pub condition: Condition,
    /// Hold-down: the condition must hold this long, across every snapshot, before
    /// the tier acts.
    pub for_ms: i64,
    /// Stand-down hysteresis: the condition must be clear (below its stand-down
    /// thresholds) this long before the tier stands down.
    pub clear_for_ms: i64,
}

/// A condition over health signals. Each one names the kind of target it is
/// evaluated for: a node, a region, or the shard.
///
/// Internally tagged, as Kubernetes users expect: `{type: regionLost}`,
/// `{type: regionDegraded, p99MsAbove: 400}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Condition {
    /// A node's latency or error rate is above a threshold (node).
    SignalDegraded(SignalThresholdSpec),
    /// A node is down by two views, its process is dead, or its disk fails (node).
    NodeUnhealthy,
    /// A replica is more than `entriesAbove` entries behind the leader (node).
    ReplicaLagging(LagSpec),
    /// A majority of a region's nodes are bad (not alive, unhealthy, or above the
    /// signal thresholds), or the region is lost (region).
    RegionDegraded(SignalThresholdSpec),
    /// Every node of a region is down by at least two independent views (region).
    RegionLost,
    /// At least half of the shard's voters are down by two views (shard).
    QuorumLost,
    /// Any of these conditions (all must target the same kind).
    AnyOf { conditions: Vec<Condition> },
}

impl Condition {
    /// The kind of target the condition is evaluated for. For `anyOf`, the kind
    /// of its first member (validation requires them all to agree).
    pub fn target_kind(&self) -> TargetKind {
        match self {
            Condition::SignalDegraded(_)
            | Condition::NodeUnhealthy
            | Condition::ReplicaLagging(_) => TargetKind::Node,
            Condition::RegionDegraded(_) | Condition::RegionLost => TargetKind::Region,
            Condition::QuorumLost => TargetKind::Shard,
            Condition::AnyOf { conditions: cs } => {
                cs.first().map_or(TargetKind::Node, Condition::target_kind)
            }
        }
    }

    /// The camelCase name used in YAML.
    pub fn name(&self) -> &'static str {
        match self {
            Condition::SignalDegraded(_) => "signalDegraded",
            Condition::NodeUnhealthy => "nodeUnhealthy",
            Condition::ReplicaLagging(_) => "replicaLagging",
            Condition::RegionDegraded(_) => "regionDegraded",
            Condition::RegionLost => "regionLost",
            Condition::QuorumLost => "quorumLost",
            Condition::AnyOf { .. } => "anyOf",
        }
    }
}

/// Latency and error-rate thresholds, with separate (lower or equal) thresholds to
/// stand down. At least one escalation threshold must be set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignalThresholdSpec {
    /// Escalate when order p99 latency (ms) is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms_above: Option<f64>,
    /// Escalate when the error rate (0.0–1.0) is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_above: Option<f64>,
    /// Stand down only when p99 is at or below this (defaults to `p99MsAbove`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms_clear_below: Option<f64>,
    /// Stand down only when the error rate is at or below this (defaults to
    /// `errorRateAbove`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_clear_below: Option<f64>,
}

impl SignalThresholdSpec {
    /// The escalation thresholds; an unset threshold never trips.
    pub fn escalate(&self) -> crate::health::SignalThresholds {
        crate::health::SignalThresholds {
            p99_ms: self.p99_ms_above.unwrap_or(f64::INFINITY),
            error_rate: self.error_rate_above.unwrap_or(f64::INFINITY),
        }
    }

    /// The stand-down thresholds.
    pub fn clear(&self) -> crate::health::SignalThresholds {
        let e = self.escalate();
        crate::health::SignalThresholds {
            p99_ms: self.p99_ms_clear_below.unwrap_or(e.p99_ms),
            error_rate: self.error_rate_clear_below.unwrap_or(e.error_rate),
        }
    }
}

/// Replication lag thresholds, in log entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LagSpec {
    /// Escalate when the leader sees the replica more than this many entries behind.
    pub entries_above: u64,
    /// Stand down only at or below this many entries (defaults to `entriesAbove`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_clear_below: Option<u64>,
}

/// What the engine can decide to do. The binding (local processes or
/// Kubernetes) carries each one out.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ActionKind {
    /// Emit an event and a metric; change nothing.
    RecordEvent,
    /// Restart (or, on Kubernetes, recreate) the target node.
    RestartNode,
    /// Transfer Raft leadership to a voter outside the target node or region.
    TransferLeadershipAway,
    /// Route no new traffic to the target region.
    SetTrafficWeightZero,
    /// Route traffic to the target region again.
    RestoreTrafficWeight,
    /// Evacuate a region: for each of its voters, add a learner in a surviving
    /// region, promote it, remove the old voter — one membership change at a time.
    /// Decided as one action whose target is the region; the binding sequences it.
    ReplaceVotersElsewhere,
    /// Pause every sale of the shard (orders get a clear 503).
    PauseSales,
    /// Resume sales.
    ResumeSales,
    /// Page the on-call human.
    PageHuman,
    /// Rebuild the shard's membership from a surviving minority. Never decided by
    /// the engine; accepted only from an approved operator command.
    ForceRecoverFromMinority,
}

impl ActionKind {
    /// Every action, in declaration order.
    pub const ALL: [ActionKind; 10] = [
        ActionKind::RecordEvent,
        ActionKind::RestartNode,
        ActionKind::TransferLeadershipAway,
        ActionKind::SetTrafficWeightZero,
        ActionKind::RestoreTrafficWeight,
        ActionKind::ReplaceVotersElsewhere,
        ActionKind::PauseSales,
        ActionKind::ResumeSales,
        ActionKind::PageHuman,
        ActionKind::ForceRecoverFromMinority,
    ];

    /// The camelCase name used in YAML and in decision records.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::RecordEvent => "recordEvent",
            ActionKind::RestartNode => "restartNode",
            ActionKind::TransferLeadershipAway => "transferLeadershipAway",
            ActionKind::SetTrafficWeightZero => "setTrafficWeightZero",
            ActionKind::RestoreTrafficWeight => "restoreTrafficWeight",
            ActionKind::ReplaceVotersElsewhere => "replaceVotersElsewhere",
            ActionKind::PauseSales => "pauseSales",
            ActionKind::ResumeSales => "resumeSales",
            ActionKind::PageHuman => "pageHuman",
            ActionKind::ForceRecoverFromMinority => "forceRecoverFromMinority",
        }
    }

    /// Notifications change nothing in the cluster: they skip cooldown, rate
    /// limit, quorum and region guards and never wait for approval. Pause,
    /// dry-run, stale observations and a minority view still stop them.
    pub fn is_notification(self) -> bool {
        matches!(self, ActionKind::RecordEvent | ActionKind::PageHuman)
    }

    /// Actions that undo an earlier protective effect and bring the cluster back
    /// to normal: `restoreTrafficWeight` and `resumeSales`. They are never held
    /// back by the cooldown or the rate limit meant for disruptive actions, and
    /// do not spend that budget: a budget spent during an incident must never
    /// keep a region at weight 0 or sales paused once the incident is over.
    pub fn is_restoring(self) -> bool {
        matches!(
            self,
            ActionKind::RestoreTrafficWeight | ActionKind::ResumeSales
        )
    }

    /// Actions bounded by the cooldown and the rate limit, and counted toward it:
    /// the disruptive ones, which change processes, leadership, traffic or
    /// membership. Notifications are not, restoring actions
    /// ([`Self::is_restoring`]) are not, and neither is `pauseSales`: the sales
    /// gate follows quorum with its own hold-down and stand-down times.
    pub fn is_rate_limited(self) -> bool {
        !self.is_notification() && !self.is_restoring() && self != ActionKind::PauseSales
    }

    /// Actions that change the shard's voter membership.
    pub fn changes_membership(self) -> bool {
        matches!(
            self,
            ActionKind::ReplaceVotersElsewhere | ActionKind::ForceRecoverFromMinority
        )
    }

    /// Which target kinds the action can apply to.
    pub fn applies_to(self, kind: TargetKind) -> bool {
        match self {
            ActionKind::RecordEvent | ActionKind::PageHuman => true,
            ActionKind::RestartNode => kind == TargetKind::Node,
            ActionKind::TransferLeadershipAway => kind != TargetKind::Shard,
            ActionKind::SetTrafficWeightZero
            | ActionKind::RestoreTrafficWeight
            | ActionKind::ReplaceVotersElsewhere => kind == TargetKind::Region,
            ActionKind::PauseSales | ActionKind::ResumeSales => true,
            ActionKind::ForceRecoverFromMinority => kind == TargetKind::Shard,
        }
    }
}

/// An approval gate: cluster-changing actions of the tier wait for a human.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Approval {
    /// How long to wait for an answer.
    pub timeout_ms: i64,
    /// What happens when nobody answers in time.
    pub on_timeout: OnTimeout,
}

/// The declared default of an approval gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnTimeout {
    Approve,
    Reject,
}

/// Guard rails around every action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Guards {
    /// The same action on the same target is not repeated within this time.
    pub cooldown_ms: i64,
    /// At most this many cluster-changing actions per `windowMs`; beyond it the
    /// engine pages a human instead of acting.
    pub max_actions_per_window: u32,
    /// The rate-limit window.
    pub window_ms: i64,
    /// The controller must reach at least this many regions to act. The engine
    /// always requires a strict majority of regions; this can only raise the bar.
    pub min_regions_visible_to_act: u32,
    /// Never evacuate two regions at once, nor drain a degraded region while
    /// another is drained.
    pub one_region_at_a_time: bool,
    /// Never take an action that could leave the shard without a quorum of live
    /// voters.
    pub never_below_quorum: bool,
    /// Do not act on a snapshot older than this (`null` to disable).
    pub max_snapshot_age_ms: Option<i64>,
    /// Flap damping: how often one node may be restarted, with exponential
    /// back-off; past the budget the node is quarantined and a human paged.
    pub restart_budget: RestartBudget,
    /// How often one action on one target may fail before the engine stops
    /// retrying it, pages a human, and waits for the window to pass.
    pub failure_budget: FailureBudget,
    /// What a disruptive action that is not protective (a voluntary
    /// evacuation or drain of a degraded region, a leadership move from a
    /// live leader, a planned switchover) does while a room homed in the
    /// affected region is live: `defer` (wait for the window to end) or
    /// `requireApproval` (ask a human on any tier; unanswered, it goes when
    /// the window ends, or as a tier's own `approval` block says). Protective
    /// actions (restarts, pausing sales, evacuating a lost region) are never
    /// held.
    pub live_window: LiveWindowPolicy,
}

/// `guards.liveWindow`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LiveWindowPolicy {
    #[default]
    Defer,
    RequireApproval,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            cooldown_ms: 60_000,
            max_actions_per_window: 6,
            window_ms: 600_000,
            min_regions_visible_to_act: 2,
            one_region_at_a_time: true,
            never_below_quorum: true,
            max_snapshot_age_ms: Some(15_000),
            restart_budget: RestartBudget::default(),
            failure_budget: FailureBudget::default(),
            live_window: LiveWindowPolicy::Defer,
        }
    }
}

/// Flap damping for restarts, per node (`guards.restartBudget`).
///
/// Restarts of one node that did not fail are counted over `windowMs`. The
/// k-th restart within the window waits `backoffBaseMs · 2^(k−1)` after the
/// previous one (on top of the cooldown). When `maxRestarts` restarts are in
/// the window and the node needs another, it is **quarantined** instead: no
/// more restarts, the bindings keep it out of leadership and traffic, and a
/// human is paged once with the evidence. The quarantine lifts when the node
/// has been healthy for `windowMs`, or when an operator releases it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RestartBudget {
    /// Restarts of one node allowed within `windowMs`.
    pub max_restarts: u32,
    /// The window restarts are counted over, and how long a quarantined node
    /// must stay healthy before its quarantine lifts.
    pub window_ms: i64,
    /// The back-off before the second restart within the window; it doubles
    /// for each further one. 0 disables the back-off (the cooldown still applies).
    pub backoff_base_ms: i64,
}

impl Default for RestartBudget {
    fn default() -> Self {
        RestartBudget {
            max_restarts: 3,
            window_ms: 600_000,
            backoff_base_ms: 10_000,
        }
    }
}

/// The budget of failed actions, per action and target (`guards.failureBudget`).
///
/// A failed action is retried (disruptive actions after `cooldownMs`, the
/// others after `retryAfterMs`) and does not spend the rate limit. When
/// `maxFailures` failures of one action on one target fall within `windowMs`,
/// the engine pages a human with the errors and stops retrying it until
/// `windowMs` has passed since the last failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct FailureBudget {
    /// Failures of one action on one target allowed within `windowMs`.
    pub max_failures: u32,
    /// The window failures are counted over, and how long retries stop once
    /// the budget is spent.
    pub window_ms: i64,
    /// How long a failed action that is not cooled down (restoring actions and
    /// the sales gate) waits before it is retried.
    pub retry_after_ms: i64,
}

impl Default for FailureBudget {
    fn default() -> Self {
        FailureBudget {
            max_failures: 3,
            window_ms: 600_000,
            retry_after_ms: 10_000,
        }
    }
}

impl Playbook {
    /// Parses a playbook from YAML and validates it. Errors name the field
    /// (`tiers[2].trigger.forMs: must not be negative`).
    pub fn from_yaml(text: &str) -> Result<Playbook, crate::validate::InvalidPlaybook> {
        let playbook: Playbook = serde_yaml::from_str(text)
            .map_err(|e| crate::validate::InvalidPlaybook::from(crate::validate::yaml_error(&e)))?;
        crate::validate::validate(&playbook).map_err(crate::validate::InvalidPlaybook::from)?;
        Ok(playbook)
    }

    /// The playbook as YAML.
    pub fn to_yaml(&self) -> String {
        // Serializing plain data structures with string keys cannot fail.
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// The tier with this name.
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name == name)
    }

    /// The signal thresholds of the first `regionDegraded` tier (or the
    /// defaults): what a status view should call a degraded region, so that it
    /// agrees with the engine.
    pub fn region_thresholds(&self) -> crate::health::SignalThresholds {
        fn find(c: &Condition) -> Option<&SignalThresholdSpec> {
            match c {
                Condition::RegionDegraded(s) => Some(s),
                Condition::AnyOf { conditions } => conditions.iter().find_map(find),
                _ => None,
            }
        }
        self.tiers
            .iter()
            .find_map(|t| find(&t.trigger.condition))
            .map(SignalThresholdSpec::escalate)
            .unwrap_or_default()
    }

    /// The stand-down thresholds of the first `regionDegraded` tier (or the
    /// defaults): below these a region counts as clear.
    pub fn region_clear_thresholds(&self) -> crate::health::SignalThresholds {
        fn find(c: &Condition) -> Option<&SignalThresholdSpec> {
            match c {
                Condition::RegionDegraded(s) => Some(s),
                Condition::AnyOf { conditions } => conditions.iter().find_map(find),
                _ => None,
            }
        }
        self.tiers
            .iter()
            .find_map(|t| find(&t.trigger.condition))
            .map(SignalThresholdSpec::clear)
            .unwrap_or_default()
    }

    /// How long after every fault has ended the engine has converged, at most:
    /// once the cluster is healthy (every node alive, quorum with a leader,
    /// signals below the stand-down thresholds, actions succeeding) and stays
    /// so, within this time every tier has stood down, every region the engine
    /// drained is restored, sales the engine paused are resumed, and no node is
    /// quarantined — provided the playbook is neither paused nor in dry-run and
    /// the controller sees enough regions to act. Regions left with no node at
    /// all (evacuated) are the exception: they wait for a person (P3).
    ///
    /// It is the longest of: any tier's `clearForMs` (stand-down, and the hold
    /// before an orphaned drain or pause is undone); the failure budget's
    /// `windowMs` plus `retryAfterMs` (a restore whose failures spent the budget
    /// waits for the window); the restart budget's `windowMs` (a quarantine
    /// lifts after that long healthy). Neither the cooldown nor the rate limit
    /// appears: restoring actions are not subject to them.
    pub fn convergence_bound_ms(&self) -> u64 {
        let pos = |ms: i64| ms.max(0) as u64;
        let clear = self
            .tiers
            .iter()
            .map(|t| pos(t.trigger.clear_for_ms))
            .max()
            .unwrap_or(0);
        let fb = &self.guards.failure_budget;
        let failures = pos(fb.window_ms).saturating_add(pos(fb.retry_after_ms));
        let quarantine = pos(self.guards.restart_budget.window_ms);
        clear.max(failures).max(quarantine)
    }

    /// When sales reopen after quorum returns: the longest `clearForMs` of the
    /// tiers that resume sales on stand-down (`None` when no tier does). The
    /// clock starts at the first snapshot in which a majority of voters is
    /// alive by two views **and** a leader is elected, and restarts if either
    /// is lost again; no rate limit, cooldown or spent budget delays it.
    pub fn sales_reopen_after_ms(&self) -> Option<u64> {
        self.tiers
            .iter()
            .filter(|t| t.stand_down_actions.contains(&ActionKind::ResumeSales))
            .map(|t| t.trigger.clear_for_ms.max(0) as u64)
            .max()
    }

    /// How much snapshot history the binding must keep for hold-down and
    /// stand-down times to be judged: the longest `forMs` or `clearForMs`.
    pub fn history_needed_ms(&self) -> u64 {
        self.tiers
            .iter()
            .flat_map(|t| [t.trigger.for_ms, t.trigger.clear_for_ms])
            .max()
            .unwrap_or(0)
            .max(0) as u64
    }
}

/// The playbook that ships by default (and with the Helm chart).
///
/// - T0 `watch`: a node's signals degrade or a replica lags → event + metric.
/// - T1 `heal`: a node is unhealthy → restart it.
/// - T2 `move`: a region is degraded → move leadership and new traffic away.
/// - T3 `evacuate`: a region is lost → weight 0, replace its voters elsewhere.
/// - T4 `protect`: quorum is lost → pause sales and page a human; resume once
///   quorum has been back, with a leader, for 30 s
///   ([`Playbook::sales_reopen_after_ms`]). While quorum is lost, T4
///   supersedes T2 and T3: no region is drained or evacuated for an outage
///   that is global.
pub fn default_playbook() -> Playbook {
    Playbook {
        tiers: vec![
            Tier {
                name: "watch".into(),
                level: 0,
                trigger: Trigger {
                    condition: Condition::AnyOf {
                        conditions: vec![
                            Condition::SignalDegraded(SignalThresholdSpec {
                                p99_ms_above: Some(250.0),
                                error_rate_above: Some(0.02),
                                p99_ms_clear_below: Some(150.0),
                                error_rate_clear_below: Some(0.01),
                            }),
                            Condition::ReplicaLagging(LagSpec {
                                entries_above: 1_000,
                                entries_clear_below: Some(100),
                            }),
                        ],
                    },
                    for_ms: 30_000,
                    clear_for_ms: 60_000,
                },
                actions: vec![ActionKind::RecordEvent],
                stand_down_actions: vec![ActionKind::RecordEvent],
                approval: None,
            },
            Tier {
                name: "heal".into(),
                level: 1,
                trigger: Trigger {
                    condition: Condition::NodeUnhealthy,
                    for_ms: 5_000,
                    clear_for_ms: 30_000,
                },
                actions: vec![ActionKind::RestartNode, ActionKind::RecordEvent],
                stand_down_actions: vec![ActionKind::RecordEvent],
                approval: None,
            },
            Tier {
                name: "move".into(),
                level: 2,
                trigger: Trigger {
                    condition: Condition::RegionDegraded(SignalThresholdSpec {
                        p99_ms_above: Some(400.0),
                        error_rate_above: Some(0.05),
                        p99_ms_clear_below: Some(200.0),
                        error_rate_clear_below: Some(0.02),
                    }),
                    for_ms: 20_000,
                    clear_for_ms: 120_000,
                },
                actions: vec![
                    ActionKind::TransferLeadershipAway,
                    ActionKind::SetTrafficWeightZero,
                    ActionKind::RecordEvent,
                ],
                stand_down_actions: vec![ActionKind::RestoreTrafficWeight, ActionKind::RecordEvent],
                approval: None,
            },
            Tier {
                name: "evacuate".into(),
                level: 3,
                trigger: Trigger {
                    condition: Condition::RegionLost,
                    for_ms: 30_000,
                    clear_for_ms: 300_000,
                },
                actions: vec![
                    ActionKind::SetTrafficWeightZero,
                    ActionKind::ReplaceVotersElsewhere,
                    ActionKind::PageHuman,
                ],
                stand_down_actions: vec![ActionKind::RecordEvent],
                approval: None,
            },
            Tier {
                name: "protect".into(),
                level: 4,
                trigger: Trigger {
                    condition: Condition::QuorumLost,
                    for_ms: 5_000,
                    clear_for_ms: 30_000,
                },
                actions: vec![ActionKind::PauseSales, ActionKind::PageHuman],
                stand_down_actions: vec![ActionKind::ResumeSales, ActionKind::RecordEvent],
                approval: None,
            },
        ],
        guards: Guards::default(),
        dry_run: false,
        paused: false,
        health: HealthRules::default(),
    }
}

/// Kubernetes needs a structural schema, and `Condition` is internally tagged and
/// recursive (`anyOf`), which schemars would render as `oneOf` with references.
/// The schema is therefore flat: `type` plus every field any variant has; deeper
/// checks (which fields go with which type, nesting) are `validate`'s job and
/// surface as a condition on the resource.
impl JsonSchema for Condition {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Condition".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A condition over health signals: {type: regionLost}, {type: regionDegraded, p99MsAbove: 400}, {type: anyOf, conditions: [...]}.",
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {
                    "type": "string",
                    "enum": ["signalDegraded", "nodeUnhealthy", "replicaLagging", "regionDegraded", "regionLost", "quorumLost", "anyOf"],
                    "description": "Which condition."
                },
                "p99MsAbove": {"type": "number", "description": "signalDegraded/regionDegraded: escalate when order p99 latency (ms) is above this."},
                "errorRateAbove": {"type": "number", "description": "signalDegraded/regionDegraded: escalate when the error rate (0.0-1.0) is above this."},
                "p99MsClearBelow": {"type": "number", "description": "Stand down only when p99 is at or below this."},
                "errorRateClearBelow": {"type": "number", "description": "Stand down only when the error rate is at or below this."},
                "entriesAbove": {"type": "integer", "format": "uint64", "minimum": 0, "description": "replicaLagging: escalate when a replica is more than this many entries behind."},
                "entriesClearBelow": {"type": "integer", "format": "uint64", "minimum": 0, "description": "replicaLagging: stand down at or below this many entries."},
                "conditions": {
                    "type": "array",
                    "description": "anyOf: the member conditions (same shape, all of one target kind).",
                    "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }
            }
        })
    }
}
