//! Decisions: what the engine decided, about what, why, on which evidence, and
//! whether the binding may carry it out.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::health::NodeId;
use crate::playbook::ActionKind;
use crate::words;

/// A decision's identifier, unique within one [`crate::EngineMemory`].
pub type DecisionId = u64;

/// What a decision is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    Node(NodeId),
    Region(String),
    Shard,
}

impl Target {
    /// The kind of this target.
    pub fn kind(&self) -> TargetKind {
        match self {
            Target::Node(_) => TargetKind::Node,
            Target::Region(_) => TargetKind::Region,
            Target::Shard => TargetKind::Shard,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(id) => write!(f, "node {id}"),
            Target::Region(r) => write!(f, "region {r}"),
            Target::Shard => f.write_str("the shard"),
        }
    }
}

/// The kinds of target a condition is evaluated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TargetKind {
    Node,
    Region,
    Shard,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Node => "node",
            TargetKind::Region => "region",
            TargetKind::Shard => "shard",
        })
    }
}

/// One signal value behind a decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// What was measured, e.g. `node 3 order p99 (ms)` or `region c nodes down`.
    pub signal: String,
    /// The value seen in the newest snapshot.
    pub value: String,
    /// The threshold it was compared with, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<String>,
    /// Since when the condition has held (escalation) or been clear (stand-down).
    pub since_ms: u64,
}

/// Where a decision comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// A tier's trigger held for its hold-down time.
    Escalate,
    /// A tier's trigger was clear for its stand-down time.
    StandDown,
    /// A budget was spent (the rate limit, a node's restart budget, an action's
    /// failure budget); the engine pages a human instead of acting.
    Escalation,
    /// An operator's command (`kubectl roomkeeper …`, admin API).
    Operator {
        #[serde(rename = "requestedBy")]
        requested_by: String,
        #[serde(
            rename = "approvedBy",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        approved_by: Option<String>,
    },
}

/// The guards that can stop an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Guard {
    /// The playbook is paused.
    Paused,
    /// The newest snapshot is older than `guards.maxSnapshotAgeMs`.
    StaleObservation,
    /// The controller does not see a majority of regions (or the configured
    /// minimum).
    MajorityVisible,
    /// The same action on the same target ran within `guards.cooldownMs`.
    Cooldown,
    /// `guards.maxActionsPerWindow` actions already ran within `guards.windowMs`.
    RateLimit,
    /// The action could leave fewer live voters than a quorum.
    NeverBelowQuorum,
    /// Another region is being evacuated or is drained.
    OneRegionAtATime,
    /// An approval gate said no (rejected, timed out with default reject, or
    /// withdrawn because the condition cleared).
    ApprovalGate,
    /// The playbook does not validate; the engine does nothing with it.
    InvalidPlaybook,
    /// An operator command was refused (missing approval, wrong state).
    OperatorCommand,
    /// `transferLeadershipAway` waits: the shard has no leader to move.
    NoLeader,
    /// The node is quarantined (its restart budget was spent): the engine does
    /// not restart it until the quarantine lifts.
    Quarantined,
    /// The node was restarted recently; the next restart within
    /// `guards.restartBudget.windowMs` waits for its exponential back-off.
    RestartBackOff,
    /// `guards.restartBudget.maxRestarts` restarts of the node within the
    /// window: the node is quarantined and a human paged instead.
    RestartBudget,
    /// `guards.failureBudget.maxFailures` failures of this action on this
    /// target within the window: no retry until the window passes; a human is paged.
    FailureBudget,
    /// A room homed in the target's region is live (a streamer is on air):
    /// a disruptive action that is not protective waits for the window to
    /// end, or for approval (`guards.liveWindow`).
    LiveWindow,
}

impl Guard {
    /// Every guard, in declaration order. [`Guard::position`] matches
    /// exhaustively, so a new variant does not compile until it is here too
    /// (tests that must cover every guard iterate this).
    pub const ALL: [Guard; 16] = [
        Guard::Paused,
        Guard::StaleObservation,
        Guard::MajorityVisible,
        Guard::Cooldown,
        Guard::RateLimit,
        Guard::NeverBelowQuorum,
        Guard::OneRegionAtATime,
        Guard::ApprovalGate,
        Guard::InvalidPlaybook,
        Guard::OperatorCommand,
        Guard::NoLeader,
        Guard::Quarantined,
        Guard::RestartBackOff,
        Guard::RestartBudget,
        Guard::FailureBudget,
        Guard::LiveWindow,
    ];

    /// This guard's index in [`Guard::ALL`].
    pub fn position(self) -> usize {
        match self {
            Guard::Paused => 0,
            Guard::StaleObservation => 1,
            Guard::MajorityVisible => 2,
            Guard::Cooldown => 3,
            Guard::RateLimit => 4,
            Guard::NeverBelowQuorum => 5,
            Guard::OneRegionAtATime => 6,
            Guard::ApprovalGate => 7,
            Guard::InvalidPlaybook => 8,
            Guard::OperatorCommand => 9,
            Guard::NoLeader => 10,
            Guard::Quarantined => 11,
            Guard::RestartBackOff => 12,
            Guard::RestartBudget => 13,
            Guard::FailureBudget => 14,
            Guard::LiveWindow => 15,
        }
    }

    /// The camelCase name used in records and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Guard::Paused => "paused",
            Guard::StaleObservation => "staleObservation",
            Guard::MajorityVisible => "majorityVisible",
            Guard::Cooldown => "cooldown",
            Guard::RateLimit => "rateLimit",
            Guard::NeverBelowQuorum => "neverBelowQuorum",
            Guard::OneRegionAtATime => "oneRegionAtATime",
            Guard::ApprovalGate => "approvalGate",
            Guard::InvalidPlaybook => "invalidPlaybook",
            Guard::OperatorCommand => "operatorCommand",
            Guard::NoLeader => "noLeader",
            Guard::Quarantined => "quarantined",
            Guard::RestartBackOff => "restartBackOff",
            Guard::RestartBudget => "restartBudget",
            Guard::FailureBudget => "failureBudget",
            Guard::LiveWindow => "liveWindow",
        }
    }
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the binding may carry a decision out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Disposition {
    /// Carry it out, then report with [`crate::EngineMemory::record_outcome`].
    Execute,
    /// The playbook is in dry-run: record it, do not carry it out.
    DryRun,
    /// Wait for [`crate::EngineMemory::approve`] / `reject` or the timeout.
    AwaitingApproval {
        #[serde(rename = "expiresAtMs")]
        expires_at_ms: u64,
    },
    /// A guard stopped it; `why` says so in words.
    Suppressed { guard: Guard, why: String },
}

impl Disposition {
    /// True only for [`Disposition::Execute`].
    pub fn is_execute(&self) -> bool {
        matches!(self, Disposition::Execute)
    }
}

/// One decision of the engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub id: DecisionId,
    pub at_ms: u64,
    /// The tier's name (`operator` for operator commands, `converge` for the
    /// engine undoing an effect no tier owns any more).
    pub tier: String,
    /// The tier's level; `None` for operator commands and `converge` decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u8>,
    pub phase: Phase,
    pub action: ActionKind,
    pub target: Target,
    /// A sentence a person reads: what was seen, for how long, and what to do.
    pub reason: String,
    /// The signal values that triggered it.
    pub evidence: Vec<Evidence>,
    pub disposition: Disposition,
    /// The earlier decision this one answers (an approval request, a rate-limited
    /// action).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<DecisionId>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = self.level.map(|l| format!("T{l} ")).unwrap_or_default();
        write!(
            f,
            "#{} {}{} · {} {} · ",
            self.id,
            level,
            self.tier,
            self.action.name(),
            self.target
        )?;
        match &self.disposition {
            Disposition::Execute => f.write_str("execute")?,
            Disposition::DryRun => f.write_str("dry-run (not carried out)")?,
            Disposition::AwaitingApproval { expires_at_ms } => write!(
                f,
                "awaiting approval for {}",
                words::duration(expires_at_ms.saturating_sub(self.at_ms))
            )?,
            Disposition::Suppressed { guard, why } => write!(f, "suppressed by {guard}: {why}")?,
        }
        write!(f, " — {}", self.reason)
    }
}

/// What happened when the binding carried a decision out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ActionOutcome {
    Succeeded {
        #[serde(rename = "atMs")]
        at_ms: u64,
        detail: String,
    },
    Failed {
        #[serde(rename = "atMs")]
        at_ms: u64,
        error: String,
    },
}

impl ActionOutcome {
    /// When the outcome was observed.
    pub fn at_ms(&self) -> u64 {
        match self {
            ActionOutcome::Succeeded { at_ms, .. } | ActionOutcome::Failed { at_ms, .. } => *at_ms,
        }
    }

    /// Whether the action succeeded.
    pub fn succeeded(&self) -> bool {
        matches!(self, ActionOutcome::Succeeded { .. })
    }
}

/// A human's (or the timeout's) answer to an approval request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalVerdict {
    pub approved: bool,
    /// Who answered; `timeout` when the declared default applied.
    pub by: String,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[cfg(test)]
mod tests {
    use super::Guard;

    #[test]
    fn guard_all_lists_every_guard_once_in_order() {
        for (i, g) in Guard::ALL.iter().enumerate() {
            assert_eq!(g.position(), i, "{g}");
        }
    }
}
