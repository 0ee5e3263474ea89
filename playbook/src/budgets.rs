//! The budgets behind the guards — rate limit, cooldowns, failures per action
//! and target, restarts per node — computed from the engine's memory, and
//! their public, serializable face ([`GuardBudgets`]) for metrics and status.

use serde::{Deserialize, Serialize};

use crate::decision::{ActionOutcome, Decision, DecisionId, Disposition, Target};
use crate::engine::Engine;
use crate::health::NodeId;
use crate::memory::{DecisionRecord, EngineMemory};
use crate::playbook::{ActionKind, Guards, Playbook};

/// What is left of every guard's budget at one instant. Bindings export it as
/// metrics (`roomkeeper_playbook_rate_limit_remaining`,
/// `…_failure_budget_remaining{action,target}`, `…_restart_budget_remaining{node_id}`,
/// `…_node_quarantined{node_id}`) and show it in
/// status. Targets not listed have their whole budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardBudgets {
    /// When the budgets were computed.
    pub at_ms: u64,
    /// `guards.maxActionsPerWindow`.
    pub rate_limit_max: u32,
    /// Disruptive actions counted in the current window (failed ones are not
    /// counted; restoring actions and notifications never are).
    pub rate_limit_used: u32,
    /// How many more disruptive actions may run now.
    pub rate_limit_remaining: u32,
    /// `guards.windowMs`.
    pub rate_limit_window_ms: u64,
    /// When the oldest counted action leaves the window (one more becomes
    /// available), if any is counted.
    pub rate_limit_frees_at_ms: Option<u64>,
    /// Actions on targets still within their cooldown.
    pub cooldowns: Vec<CooldownState>,
    /// Actions on targets with failures in the window, or blocked.
    pub failure_budgets: Vec<FailureBudgetState>,
    /// Nodes with restarts in the window, or quarantined.
    pub restart_budgets: Vec<RestartBudgetState>,
    /// Quarantined nodes (details in [`EngineMemory::quarantined_nodes`]).
    pub quarantined: Vec<NodeId>,
}

/// One action on one target within its cooldown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CooldownState {
    pub action: ActionKind,
    pub target: Target,
    /// When the action may run again on the target.
    pub until_ms: u64,
}

/// The failure budget of one action on one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureBudgetState {
    pub action: ActionKind,
    pub target: Target,
    /// `guards.failureBudget.maxFailures`.
    pub max: u32,
    /// Failures counted in the window.
    pub failures: u32,
    /// Failures left before retries stop (0 while blocked).
    pub remaining: u32,
    /// Retries stop until then.
    pub blocked_until_ms: Option<u64>,
}

/// The restart budget of one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestartBudgetState {
    pub node: NodeId,
    /// `guards.restartBudget.maxRestarts`.
    pub max: u32,
    /// Restarts counted in the window (failed ones are not).
    pub restarts: u32,
    /// Restarts left before the node is quarantined.
    pub remaining: u32,
    /// The back-off: no restart before then.
    pub next_restart_after_ms: Option<u64>,
    pub quarantined: bool,
}

impl Engine {
    /// Every guard's remaining budget now, for metrics and status. Pure, like
    /// [`Engine::decide`]; it reads the memory and changes nothing.
    pub fn budgets(playbook: &Playbook, memory: &EngineMemory, now_ms: u64) -> GuardBudgets {
        let g = &playbook.guards;
        let used = rate_limit_used(g, memory, now_ms);
        let window = pos(g.window_ms);
        let max = g.max_actions_per_window;
        let count = used.len() as u32;

        let cooldown = pos(g.cooldown_ms);
        let mut cooldowns: Vec<CooldownState> = Vec::new();
        for r in memory.records.iter().rev() {
            let d = &r.decision;
            if !acted(d) || !d.action.is_rate_limited() {
                continue;
            }
            let until = d.at_ms.saturating_add(cooldown);
            if until <= now_ms {
                continue;
            }
            if cooldowns
                .iter()
                .any(|c| c.action == d.action && c.target == d.target)
            {
                continue;
            }
            cooldowns.push(CooldownState {
                action: d.action,
                target: d.target.clone(),
                until_ms: until,
            });
        }
        cooldowns.sort_by(|a, b| (a.action, &a.target).cmp(&(b.action, &b.target)));

        let mut pairs: Vec<(ActionKind, Target)> = memory
            .records
            .iter()
            .filter(|r| failed_at(r).is_some() && !r.decision.action.is_notification())
            .map(|r| (r.decision.action, r.decision.target.clone()))
            .chain(
                memory
                    .failure_blocks
                    .iter()
                    .map(|b| (b.action, b.target.clone())),
            )
            .collect();
        pairs.sort();
        pairs.dedup();
        let fb = &g.failure_budget;
        let failure_budgets = pairs
            .into_iter()
            .filter_map(|(action, target)| {
                let v = failure_view(g, memory, action, &target, now_ms);
                if v.failures.is_empty() && v.blocked_until.is_none() {
                    return None;
                }
                let failures = v.failures.len() as u32;
                Some(FailureBudgetState {
                    action,
                    target,
                    max: fb.max_failures,
                    failures,
                    remaining: if v.blocked_until.is_some() {
                        0
                    } else {
                        fb.max_failures.saturating_sub(failures)
                    },
                    blocked_until_ms: v.blocked_until,
                })
            })
            .collect();

        let mut nodes: Vec<NodeId> = memory
            .records
            .iter()
            .filter(|r| r.decision.action == ActionKind::RestartNode)
            .filter_map(|r| match r.decision.target {
                Target::Node(id) => Some(id),
                _ => None,
            })
            .chain(memory.quarantined.keys().copied())
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let rb = &g.restart_budget;
        let restart_budgets = nodes
            .into_iter()
            .filter_map(|node| {
                let v = restart_view(g, memory, node, now_ms);
                let quarantined = memory.quarantined.contains_key(&node);
                if v.restarts.is_empty() && !quarantined {
                    return None;
                }
                let restarts = v.restarts.len() as u32;
                Some(RestartBudgetState {
                    node,
                    max: rb.max_restarts,
                    restarts,
                    remaining: if quarantined {
                        0
                    } else {
                        rb.max_restarts.saturating_sub(restarts)
                    },
                    next_restart_after_ms: v.next_after.filter(|t| *t > now_ms),
                    quarantined,
                })
            })
            .collect();

        GuardBudgets {
            at_ms: now_ms,
            rate_limit_max: max,
            rate_limit_used: count,
            rate_limit_remaining: max.saturating_sub(count),
            rate_limit_window_ms: window,
            rate_limit_frees_at_ms: used.iter().min().map(|t| t.saturating_add(window)),
            cooldowns,
            failure_budgets,
            restart_budgets,
            quarantined: memory.quarantined.keys().copied().collect(),
        }
    }
}

pub(crate) fn pos(ms: i64) -> u64 {
    ms.max(0) as u64
}

/// Decided to be carried out (or recorded as what would have been, in dry-run).
pub(crate) fn acted(d: &Decision) -> bool {
    matches!(d.disposition, Disposition::Execute | Disposition::DryRun)
}

/// When the action failed, if it did.
pub(crate) fn failed_at(r: &DecisionRecord) -> Option<u64> {
    match &r.outcome {
        Some(ActionOutcome::Failed { at_ms, .. }) => Some(*at_ms),
        _ => None,
    }
}

/// The times of the disruptive actions that count toward the rate limit now:
/// acted, within the window, and not failed.
pub(crate) fn rate_limit_used(g: &Guards, memory: &EngineMemory, now: u64) -> Vec<u64> {
    let window = pos(g.window_ms);
    memory
        .records
        .iter()
        .filter(|r| {
            let d = &r.decision;
            acted(d)
                && d.action.is_rate_limited()
                && failed_at(r).is_none()
                && now.saturating_sub(d.at_ms) < window
        })
        .map(|r| r.decision.at_ms)
        .collect()
}

/// The failures of one action on one target that count now.
pub(crate) struct FailureView {
    /// (failed at, error, decision), oldest first.
    pub failures: Vec<(u64, String, DecisionId)>,
    /// Retries stop until then (a recorded block, or a budget just spent).
    pub blocked_until: Option<u64>,
    /// A block is recorded in memory (a human was told).
    pub recorded: bool,
}

pub(crate) fn failure_view(
    g: &Guards,
    memory: &EngineMemory,
    action: ActionKind,
    target: &Target,
    now: u64,
) -> FailureView {
    let fb = &g.failure_budget;
    let window = pos(fb.window_ms);
    let blocks = || {
        memory
            .failure_blocks
            .iter()
            .filter(|b| b.action == action && &b.target == target)
    };
    let active = blocks()
        .filter(|b| now < b.until_ms)
        .max_by_key(|b| b.until_ms);
    let spent_up_to = blocks().map(|b| b.at_ms).max();
    let failures: Vec<(u64, String, DecisionId)> = memory
        .records
        .iter()
        .filter(|r| r.decision.action == action && &r.decision.target == target)
        .filter_map(|r| match &r.outcome {
            Some(ActionOutcome::Failed { at_ms, error }) => {
                Some((*at_ms, error.clone(), r.decision.id))
            }
            _ => None,
        })
        .filter(|(at, _, _)| now.saturating_sub(*at) < window)
        .filter(|(at, _, _)| match (active, spent_up_to) {
            (Some(b), _) => *at <= b.at_ms,
            (None, Some(spent)) => *at > spent,
            (None, None) => true,
        })
        .collect();
    if let Some(b) = active {
        return FailureView {
            failures,
            blocked_until: Some(b.until_ms),
            recorded: true,
        };
    }
    let blocked_until = (failures.len() as u64 >= u64::from(fb.max_failures))
        .then(|| failures.iter().map(|f| f.0).max().unwrap_or(now))
        .map(|newest| newest.saturating_add(window))
        .filter(|until| *until > now);
    FailureView {
        failures,
        blocked_until,
        recorded: false,
    }
}

/// The restarts of one node that count now.
pub(crate) struct RestartView {
    /// (restarted at, decision), oldest first.
    pub restarts: Vec<(u64, DecisionId)>,
    /// The back-off: the next restart not before then.
    pub next_after: Option<u64>,
    /// `maxRestarts` restarts are in the window.
    pub exhausted: bool,
}

pub(crate) fn restart_view(
    g: &Guards,
    memory: &EngineMemory,
    node: NodeId,
    now: u64,
) -> RestartView {
    let rb = &g.restart_budget;
    let window = pos(rb.window_ms);
    let target = Target::Node(node);
    let reset = memory.restart_budget_resets.get(&node).copied();
    let mut restarts: Vec<(u64, DecisionId)> = memory
        .records
        .iter()
        .filter(|r| {
            let d = &r.decision;
            d.action == ActionKind::RestartNode
                && d.target == target
                && acted(d)
                && failed_at(r).is_none()
                && now.saturating_sub(d.at_ms) < window
                && reset.is_none_or(|t| d.at_ms > t)
        })
        .map(|r| (r.decision.at_ms, r.decision.id))
        .collect();
    restarts.sort_unstable();
    let base = pos(rb.backoff_base_ms);
    let next_after = restarts.last().filter(|_| base > 0).map(|(last, _)| {
        let doublings = (restarts.len() as u32 - 1).min(32);
        last.saturating_add(base.saturating_mul(1u64 << doublings))
    });
    RestartView {
        exhausted: restarts.len() as u64 >= u64::from(rb.max_restarts),
        restarts,
        next_after,
    }
}
