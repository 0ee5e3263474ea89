//! The decision engine: (playbook, history of snapshots, now, memory) →
//! decisions. Pure: no I/O, no clock, no randomness; the same inputs give the
//! same decisions.
//!
//! Per tick, tiers are taken from the highest level down (protect before
//! evacuate before heal), and for each tier every target its condition is
//! evaluated for. A tier *fires* for a target when its condition has held in
//! every snapshot for `forMs`; it *stands down* when the condition has been
//! clear (below the separate stand-down thresholds) for `clearForMs`. A
//! per-region tier counts no snapshot in which a higher shard-wide tier's
//! condition (quorum lost) is breached: a global outage is T4's, not T2's or
//! T3's. Each action of a firing passes the guards in a fixed order — pause,
//! stale observation, majority of regions visible, no leader, never below
//! quorum, one region at a time, quarantine, failure budget, restart back-off
//! and budget, cooldown, rate limit — then dry-run and the approval gate.
//! Restoring actions skip the cooldown and the rate limit. After the tiers,
//! the engine undoes effects no tier owns any more (a region left at weight
//! 0, sales left paused) once their cause has been clear long enough.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::budgets::{self, acted, pos};
use crate::conditions::{self, Level, Reading};
use crate::decision::{
    ApprovalVerdict, Decision, DecisionId, Disposition, Evidence, Guard, Phase, Target, TargetKind,
};
use crate::health::{self, HealthSnapshot, Liveness, NodeId, RegionVisibility};
use crate::memory::{
    Activation, ActivationPhase, Converging, EffectOwner, EngineMemory, FailureBlock, Quarantine,
    Step, StepState,
};
use crate::playbook::{ActionKind, Condition, LiveWindowPolicy, OnTimeout, Playbook, Tier};
use crate::validate::validate;
use crate::words;

/// The playbook engine. It holds nothing: every call takes the playbook, the
/// history and the memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct Engine;

/// A command from a person (`kubectl roomkeeper …`, the admin API), recorded
/// and checked like the engine's own decisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorCommand {
    pub action: ActionKind,
    pub target: Target,
    /// Who asks for it.
    pub requested_by: String,
    /// Who approved it; `forceRecoverFromMinority` needs a second person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// Why, in the operator's words (kept in the record).
    pub reason: String,
}

/// Read-only facts of one call.
struct Tick<'a> {
    playbook: &'a Playbook,
    /// The history not from the future, newest first.
    snaps: Vec<&'a HealthSnapshot>,
    now: u64,
    latest: &'a HealthSnapshot,
}

impl Engine {
    /// Decides what to do now. `history` holds the snapshots the binding kept
    /// (at least [`Playbook::history_needed_ms`] of them, any order; snapshots
    /// after `now_ms` are ignored). Every returned decision is also recorded in
    /// `memory`. The binding carries out the `execute` ones and reports each
    /// outcome with [`EngineMemory::record_outcome`].
    pub fn decide(
        playbook: &Playbook,
        history: &[HealthSnapshot],
        now_ms: u64,
        memory: &mut EngineMemory,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        if let Err(errors) = validate(playbook) {
            let text = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            if memory.invalid_playbook.as_ref() != Some(&text) {
                memory.invalid_playbook = Some(text.clone());
                let d = Decision {
                    id: memory.take_id(),
                    at_ms: now_ms,
                    tier: "playbook".into(),
                    level: None,
                    phase: Phase::Escalate,
                    action: ActionKind::RecordEvent,
                    target: Target::Shard,
                    reason: "The playbook does not validate, so the engine takes no action until it is fixed.".into(),
                    evidence: Vec::new(),
                    disposition: Disposition::Suppressed {
                        guard: Guard::InvalidPlaybook,
                        why: text,
                    },
                    follows: None,
                };
                out.push(memory.push(d));
            }
            return out;
        }
        memory.invalid_playbook = None;
        let snaps = conditions::newest_first(history, now_ms);
        let Some(latest) = snaps.first().copied() else {
            return out;
        };
        let tick = Tick {
            playbook,
            snaps,
            now: now_ms,
            latest,
        };
        retire_removed_tiers(playbook, now_ms, memory);
        // A block is kept one window past its end, to tell a repeat
        // exhaustion (not paged again) from a new failure episode.
        let fw = pos(playbook.guards.failure_budget.window_ms);
        memory
            .failure_blocks
            .retain(|b| now_ms < b.until_ms.saturating_add(fw));
        let rw = pos(playbook.guards.restart_budget.window_ms);
        memory
            .restart_budget_resets
            .retain(|_, t| now_ms.saturating_sub(*t) < rw);
        review_quarantines(&tick, memory, &mut out);
        let mut tiers: Vec<&Tier> = playbook.tiers.iter().collect();
        tiers.sort_by_key(|t| std::cmp::Reverse(t.level));
        for tier in tiers {
            let kind = tier.trigger.condition.target_kind();
            let mut targets: BTreeSet<Target> =
                conditions::candidates(kind, latest).into_iter().collect();
            targets.extend(
                memory
                    .activations
                    .iter()
                    .filter(|a| a.tier == tier.name)
                    .map(|a| a.target.clone()),
            );
            for target in targets {
                step_tier(&tick, tier, &target, memory, &mut out);
            }
        }
        converge(&tick, memory, &mut out);
        let g = &playbook.guards;
        let keep = [
            g.window_ms,
            g.cooldown_ms,
            g.failure_budget.window_ms,
            g.restart_budget.window_ms,
        ]
        .into_iter()
        .map(pos)
        .max()
        .unwrap_or(0);
        memory.prune(now_ms, keep);
        out
    }

    /// Accepts (or refuses, with a recorded reason) an operator's command. Pause
    /// and dry-run govern the engine's own decisions, not a person's command;
    /// the quorum and one-region guards still apply.
    /// `forceRecoverFromMinority` is accepted only here, only with a second
    /// person's approval, and only while quorum is shown lost.
    pub fn operator_command(
        playbook: &Playbook,
        history: &[HealthSnapshot],
        now_ms: u64,
        memory: &mut EngineMemory,
        command: OperatorCommand,
    ) -> Decision {
        let latest = history
            .iter()
            .filter(|s| s.at_ms <= now_ms)
            .max_by_key(|s| s.at_ms);
        let evidence = latest
            .map(|s| {
                conditions::evaluate(&crate::playbook::Condition::QuorumLost, s, &Target::Shard)
                    .facts
                    .iter()
                    .map(|f| f.at(s.at_ms))
                    .collect()
            })
            .unwrap_or_default();
        let approved_by = command.approved_by.clone().filter(|a| !a.trim().is_empty());
        let refusal = operator_refusal(playbook, latest, memory, &command, approved_by.as_deref());
        let mut reason = format!(
            "Operator command from {}{}: {}. Asked to {}.",
            command.requested_by,
            approved_by
                .as_deref()
                .map(|a| format!(", approved by {a}"))
                .unwrap_or_default(),
            command.reason.trim_end_matches('.'),
            action_phrase(command.action, &command.target)
        );
        if command.reason.trim().is_empty() {
            reason = format!(
                "Operator command from {}. Asked to {}.",
                command.requested_by,
                action_phrase(command.action, &command.target)
            );
        }
        let disposition = match refusal {
            Some((guard, why)) => Disposition::Suppressed { guard, why },
            None => {
                memory.apply_effect(command.action, &command.target, EffectOwner::Operator);
                Disposition::Execute
            }
        };
        let d = Decision {
            id: memory.take_id(),
            at_ms: now_ms,
            tier: "operator".into(),
            level: None,
            phase: Phase::Operator {
                requested_by: command.requested_by,
                approved_by,
            },
            action: command.action,
            target: command.target,
            reason,
            evidence,
            disposition,
            follows: None,
        };
        memory.push(d)
    }

    /// Whether [`Self::operator_command`] would refuse `command` now, and
    /// why: the same guards, recorded nowhere. A binding that carries out a
    /// person's request as several commands (a failover: leadership, traffic,
    /// voters) asks this for every step before it takes the first, so a
    /// request a guard forbids changes nothing.
    pub fn command_refusal(
        playbook: &Playbook,
        history: &[HealthSnapshot],
        now_ms: u64,
        memory: &EngineMemory,
        command: &OperatorCommand,
    ) -> Option<(Guard, String)> {
        let latest = history
            .iter()
            .filter(|s| s.at_ms <= now_ms)
            .max_by_key(|s| s.at_ms);
        let approved_by = command
            .approved_by
            .as_deref()
            .filter(|a| !a.trim().is_empty());
        operator_refusal(playbook, latest, memory, command, approved_by)
    }

    /// "Why did it act / why did it not act" about a target, in words: each
    /// tier's live state for it (hold-down progress, active, standing down), the
    /// guards as they stand now, and the newest decision on record.
    pub fn explain(
        playbook: &Playbook,
        history: &[HealthSnapshot],
        now_ms: u64,
        memory: &EngineMemory,
        target: &Target,
    ) -> String {
        let mut lines = Vec::new();
        let snaps = conditions::newest_first(history, now_ms);
        let mut tiers: Vec<&Tier> = playbook.tiers.iter().collect();
        tiers.sort_by_key(|t| t.level);
        for tier in tiers {
            if tier.trigger.condition.target_kind() != target.kind() {
                continue;
            }
            lines.push(explain_tier(playbook, tier, &snaps, now_ms, memory, target));
        }
        if let Some(latest) = history
            .iter()
            .filter(|s| s.at_ms <= now_ms)
            .max_by_key(|s| s.at_ms)
        {
            lines.push(explain_guards(playbook, latest, now_ms, memory));
        } else {
            lines
                .push("No health snapshot has been observed yet, so the engine cannot act.".into());
        }
        // The newest decision, and the newest one that changed (or would have
        // changed) the cluster when that is an older one.
        let newest = memory.last_for(target);
        let acting = memory
            .records
            .iter()
            .rev()
            .find(|r| &r.decision.target == target && !r.decision.action.is_notification());
        match (newest, acting) {
            (Some(n), Some(a)) if n.decision.id != a.decision.id => {
                lines.push(crate::memory::explain_record(n));
                lines.push(crate::memory::explain_record(a));
            }
            _ => lines.push(memory.explain_last(target)),
        }
        lines.join("\n")
    }
}

fn retire_removed_tiers(playbook: &Playbook, now: u64, memory: &mut EngineMemory) {
    let removed: Vec<Activation> = memory
        .activations
        .iter()
        .filter(|a| playbook.tier(&a.tier).is_none())
        .cloned()
        .collect();
    for a in &removed {
        withdraw_approvals(a, now, "its tier was removed from the playbook", memory);
    }
    memory
        .activations
        .retain(|a| playbook.tier(&a.tier).is_some());
}

/// Sets a "withdrawn" verdict on approval requests still open in `a`.
fn withdraw_approvals(
    a: &Activation,
    now: u64,
    why: &str,
    memory: &mut EngineMemory,
) -> Vec<DecisionId> {
    let mut ids = Vec::new();
    for s in &a.steps {
        if let StepState::AwaitingApproval { decision_id, .. } = s.state {
            if let Some(rec) = memory
                .records
                .iter_mut()
                .find(|r| r.decision.id == decision_id)
            {
                if rec.verdict.is_none() {
                    rec.verdict = Some(ApprovalVerdict {
                        approved: false,
                        by: "engine".into(),
                        at_ms: now,
                        note: format!("withdrawn: {why}"),
                    });
                    ids.push(decision_id);
                }
            }
        }
    }
    ids
}

/// Advances one tier for one target: fire, stand down, re-fire, then work on the
/// activation's pending steps.
fn step_tier(
    tick: &Tick<'_>,
    tier: &Tier,
    target: &Target,
    memory: &mut EngineMemory,
    out: &mut Vec<Decision>,
) {
    let cond = &tier.trigger.condition;
    let for_ms = tier.trigger.for_ms.max(0) as u64;
    let clear_for_ms = tier.trigger.clear_for_ms.max(0) as u64;
    let breach_bound = tick.now.saturating_sub(for_ms);
    let clear_bound = tick.now.saturating_sub(clear_for_ms);
    // A per-region tier does not count snapshots of a global outage: while a
    // higher shard-wide tier's condition is breached it neither fires nor
    // acts, and its hold-down starts again when the outage ends.
    let sups = superseding(tick.playbook, tier);
    let breach = conditions::run_since_where(
        cond,
        &tick.snaps,
        target,
        Some(breach_bound),
        |l| l == Level::Breached,
        |s| superseded_by(&sups, s).is_none(),
    );
    let held = breach
        .as_ref()
        .filter(|(since, _)| tick.now.saturating_sub(*since) >= for_ms);
    let idx = memory
        .activations
        .iter()
        .position(|a| a.tier == tier.name && &a.target == target);
    let idx = match idx {
        None => {
            let Some((since, _)) = held else { return };
            memory.activations.push(Activation {
                tier: tier.name.clone(),
                level: tier.level,
                target: target.clone(),
                phase: ActivationPhase::Active,
                breached_since_ms: *since,
                fired_at_ms: tick.now,
                cleared_since_ms: None,
                steps: tier.actions.iter().copied().map(Step::new).collect(),
            });
            memory.activations.len() - 1
        }
        Some(i) => {
            match memory.activations[i].phase {
                ActivationPhase::Active => {
                    let clear =
                        conditions::run_since(cond, &tick.snaps, target, Some(clear_bound), |l| {
                            l == Level::Clear
                        });
                    if let Some((csince, creading)) =
                        clear.filter(|(csince, _)| tick.now.saturating_sub(*csince) >= clear_for_ms)
                    {
                        let a = memory.activations[i].clone();
                        let why = "the condition cleared before an answer";
                        for id in withdraw_approvals(&a, tick.now, why, memory) {
                            let step = a
                                .steps
                                .iter()
                                .find(|s| {
                                    matches!(s.state, StepState::AwaitingApproval { decision_id, .. } if decision_id == id)
                                })
                                .map_or(ActionKind::RecordEvent, |s| s.action);
                            let reason = stand_down_reason(tick, tier, &a, csince, &creading, step);
                            emit(
                                memory,
                                out,
                                tick,
                                tier,
                                Draft {
                                    phase: Phase::StandDown,
                                    action: step,
                                    target: action_target(step, target),
                                    reason,
                                    evidence: evidence(&creading, csince),
                                    disposition: Disposition::Suppressed {
                                        guard: Guard::ApprovalGate,
                                        why: format!("approval request #{id} withdrawn: {why}"),
                                    },
                                    follows: Some(id),
                                },
                            );
                        }
                        if tier.stand_down_actions.is_empty() {
                            memory.activations.remove(i);
                            return;
                        }
                        let act = &mut memory.activations[i];
                        act.phase = ActivationPhase::StandingDown;
                        act.cleared_since_ms = Some(csince);
                        act.steps = tier
                            .stand_down_actions
                            .iter()
                            .copied()
                            .map(Step::new)
                            .collect();
                    }
                }
                ActivationPhase::StandingDown => {
                    if let Some((since, _)) = held {
                        let act = &mut memory.activations[i];
                        act.phase = ActivationPhase::Active;
                        act.breached_since_ms = *since;
                        act.fired_at_ms = tick.now;
                        act.cleared_since_ms = None;
                        act.steps = tier.actions.iter().copied().map(Step::new).collect();
                    }
                }
            }
            i
        }
    };
    work_steps(tick, tier, idx, breach.as_ref(), memory, out);
    let a = &memory.activations[idx];
    if a.phase == ActivationPhase::StandingDown && a.steps.iter().all(Step::is_finished) {
        memory.activations.remove(idx);
    }
}

fn work_steps(
    tick: &Tick<'_>,
    tier: &Tier,
    idx: usize,
    breach: Option<&(u64, Reading)>,
    memory: &mut EngineMemory,
    out: &mut Vec<Decision>,
) {
    let act = memory.activations[idx].clone();
    let cond = &tier.trigger.condition;
    let for_ms = tier.trigger.for_ms.max(0) as u64;
    let clear_for_ms = tier.trigger.clear_for_ms.max(0) as u64;
    // Act only on a current reading: escalation steps while the condition is
    // breached, stand-down steps while it is clear.
    // A run that reaches back to the hold-down (or stand-down) bound has held
    // since the activation's own record of it.
    let (since, reading) = match act.phase {
        ActivationPhase::Active => match breach {
            Some((since, r)) if *since <= tick.now.saturating_sub(for_ms) => {
                ((*since).min(act.breached_since_ms), r.clone())
            }
            Some((since, r)) => {
                // After a global outage (P11) a per-region tier waits a full
                // hold-down again before it takes a pending step.
                let sups = superseding(tick.playbook, tier);
                let after_outage = tick
                    .snaps
                    .iter()
                    .find(|s| s.at_ms < *since)
                    .is_some_and(|s| superseded_by(&sups, s).is_some());
                if after_outage {
                    return;
                }
                (*since, r.clone())
            }
            None => return,
        },
        ActivationPhase::StandingDown => {
            let bound = tick.now.saturating_sub(clear_for_ms);
            match conditions::run_since(cond, &tick.snaps, &act.target, Some(bound), |l| {
                l == Level::Clear
            }) {
                Some((since, r)) if since <= bound => {
                    (since.min(act.cleared_since_ms.unwrap_or(since)), r)
                }
                Some(x) => x,
                None => return,
            }
        }
    };
    let cooldown = pos(tick.playbook.guards.cooldown_ms);
    let retry_after = pos(tick.playbook.guards.failure_budget.retry_after_ms);
    for j in 0..act.steps.len() {
        let step = memory.activations[idx].steps[j].clone();
        let action = step.action;
        let reason = match act.phase {
            ActivationPhase::Active => {
                escalate_reason(tick, tier, &act.target, since, &reading, action)
            }
            ActivationPhase::StandingDown => {
                stand_down_reason(tick, tier, &act, since, &reading, action)
            }
        };
        let phase = match act.phase {
            ActivationPhase::Active => Phase::Escalate,
            ActivationPhase::StandingDown => Phase::StandDown,
        };
        let ev = evidence(&reading, since);
        let needs_approval = act.phase == ActivationPhase::Active
            && tier.approval.is_some()
            && !action.is_notification();
        match step.state {
            StepState::Finished { .. } | StepState::Executed { .. } => {}
            StepState::Pending { after_ms } => {
                // A retry (after a failure, or a restart that did not heal)
                // waits the cooldown if the action is disruptive, and
                // `failureBudget.retryAfterMs` otherwise.
                let wait = if action.is_rate_limited() {
                    cooldown
                } else {
                    retry_after
                };
                if after_ms.is_some_and(|t| tick.now < t.saturating_add(wait)) {
                    continue;
                }
                attempt(
                    tick,
                    tier,
                    idx,
                    j,
                    phase,
                    reason,
                    ev,
                    needs_approval,
                    None,
                    memory,
                    out,
                );
            }
            StepState::AwaitingApproval {
                decision_id,
                expires_at_ms,
            } => {
                let verdict = memory.record(decision_id).and_then(|r| r.verdict.clone());
                match verdict {
                    Some(v) if v.approved => {
                        let reason = format!("{reason} Approved by {}.", v.by);
                        attempt(
                            tick,
                            tier,
                            idx,
                            j,
                            phase,
                            reason,
                            ev,
                            false,
                            Some(decision_id),
                            memory,
                            out,
                        );
                    }
                    Some(v) => {
                        let why = if v.note.is_empty() {
                            format!("rejected by {}", v.by)
                        } else {
                            format!("rejected by {}: {}", v.by, v.note)
                        };
                        emit(
                            memory,
                            out,
                            tick,
                            tier,
                            Draft {
                                phase,
                                action,
                                target: action_target(action, &act.target),
                                reason,
                                evidence: ev,
                                disposition: Disposition::Suppressed {
                                    guard: Guard::ApprovalGate,
                                    why,
                                },
                                follows: Some(decision_id),
                            },
                        );
                        memory.activations[idx].steps[j].state = StepState::Finished {
                            decision_id: Some(decision_id),
                        };
                    }
                    None if tick.now >= expires_at_ms => {
                        let (on_timeout, waited) = match &tier.approval {
                            Some(a) => (a.on_timeout, words::duration_i64(a.timeout_ms)),
                            None => (OnTimeout::Approve, "its time".to_string()),
                        };
                        let approved = on_timeout == OnTimeout::Approve;
                        if let Some(rec) = memory
                            .records
                            .iter_mut()
                            .find(|r| r.decision.id == decision_id)
                        {
                            rec.verdict = Some(ApprovalVerdict {
                                approved,
                                by: "timeout".into(),
                                at_ms: tick.now,
                                note: format!(
                                    "nobody answered within {waited}; the declared default is {}",
                                    if approved { "approve" } else { "reject" }
                                ),
                            });
                        }
                        if approved {
                            let reason = format!(
                                "{reason} Nobody answered the approval request within {waited}; the tier's declared default is to approve."
                            );
                            attempt(
                                tick,
                                tier,
                                idx,
                                j,
                                phase,
                                reason,
                                ev,
                                false,
                                Some(decision_id),
                                memory,
                                out,
                            );
                        } else {
                            emit(
                                memory,
                                out,
                                tick,
                                tier,
                                Draft {
                                    phase,
                                    action,
                                    target: action_target(action, &act.target),
                                    reason,
                                    evidence: ev,
                                    disposition: Disposition::Suppressed {
                                    guard: Guard::ApprovalGate,
                                    why: format!(
                                        "nobody answered the approval request within {waited}; the tier's declared default is to reject"
                                    ),
                                },
                                    follows: Some(decision_id),
                                },
                            );
                            memory.activations[idx].steps[j].state = StepState::Finished {
                                decision_id: Some(decision_id),
                            };
                        }
                    }
                    None => {}
                }
            }
        }
    }
}

/// Tries to carry out step `j` of activation `idx`: already in effect → finished
/// silently; a guard → suppressed; dry-run → recorded; approval → requested;
/// otherwise executed.
#[allow(clippy::too_many_arguments)]
fn attempt(
    tick: &Tick<'_>,
    tier: &Tier,
    idx: usize,
    j: usize,
    phase: Phase,
    reason: String,
    evidence: Vec<Evidence>,
    needs_approval: bool,
    follows: Option<DecisionId>,
    memory: &mut EngineMemory,
    out: &mut Vec<Decision>,
) {
    let act_target = memory.activations[idx].target.clone();
    let step = memory.activations[idx].steps[j].clone();
    let action = step.action;
    let target = action_target(action, &act_target);
    if already_in_effect(tick, memory, action, &target) {
        memory.activations[idx].steps[j].state = StepState::Finished { decision_id: None };
        return;
    }
    let (mut needs_approval, mut reason) = (needs_approval, reason);
    // `liveWindow: requireApproval`: a human may let it go during the window
    // (an answered request — `follows` — is that answer, or the tier's
    // declared default at its timeout); unanswered, it goes when the window
    // ends (or as the tier's own gate says). Every other guard still applies.
    let window_may_be_approved =
        tick.playbook.guards.live_window == LiveWindowPolicy::RequireApproval;
    let window_approved = window_may_be_approved && follows.is_some();
    let mut guarded = check_guards(tick, memory, action, &target, window_approved);
    let mut live_until = None;
    if window_may_be_approved {
        if let Some((Guard::LiveWindow, why)) = &guarded {
            let held = live_window_hold(tick.latest, tick.now, action, &target);
            live_until = held.map(|(_, end)| end);
            reason = format!(
                "{reason} Live window: {}; guards.liveWindow is requireApproval, so a human is asked.",
                why.trim_start_matches("deferred: ")
            );
            // Ask only for what the other guards would let through now.
            guarded = check_guards(tick, memory, action, &target, true);
            needs_approval = guarded.is_none();
        }
    }
    if let Some((guard, why)) = guarded {
        if guard == Guard::RestartBudget && step.last_suppressed_by != Some(guard) {
            // The node's restart budget is spent: quarantine it and page a
            // human instead of restarting it again.
            let id = emit(
                memory,
                out,
                tick,
                tier,
                Draft {
                    phase,
                    action,
                    target: target.clone(),
                    reason,
                    evidence: evidence.clone(),
                    disposition: Disposition::Suppressed { guard, why },
                    follows,
                },
            );
            let quarantined = quarantine(tick, tier, &target, id, evidence, memory, out);
            memory.activations[idx].steps[j].last_suppressed_by = Some(if quarantined {
                Guard::Quarantined
            } else {
                guard
            });
        } else if guard == Guard::FailureBudget {
            let mut suppressed = None;
            if step.last_suppressed_by != Some(guard) {
                suppressed = Some(emit(
                    memory,
                    out,
                    tick,
                    tier,
                    Draft {
                        phase,
                        action,
                        target: target.clone(),
                        reason,
                        evidence,
                        disposition: Disposition::Suppressed { guard, why },
                        follows,
                    },
                ));
                memory.activations[idx].steps[j].last_suppressed_by = Some(guard);
            }
            let at = (tier.name.as_str(), Some(tier.level));
            block_failed_action(tick, at, action, &target, suppressed, memory, out);
        } else if guard == Guard::RateLimit {
            // Terminal: hand the step to a human instead of looping on it.
            let id = emit(
                memory,
                out,
                tick,
                tier,
                Draft {
                    phase,
                    action,
                    target: target.clone(),
                    reason,
                    evidence: evidence.clone(),
                    disposition: Disposition::Suppressed { guard, why },
                    follows,
                },
            );
            memory.activations[idx].steps[j].state = StepState::Finished {
                decision_id: Some(id),
            };
            escalate_to_human(tick, tier, action, &target, id, evidence, memory, out);
        } else if step.last_suppressed_by != Some(guard) {
            emit(
                memory,
                out,
                tick,
                tier,
                Draft {
                    phase,
                    action,
                    target,
                    reason,
                    evidence,
                    disposition: Disposition::Suppressed { guard, why },
                    follows,
                },
            );
            memory.activations[idx].steps[j].last_suppressed_by = Some(guard);
        }
        return;
    }
    let (disposition, state) = if tick.playbook.dry_run {
        (Disposition::DryRun, None)
    } else if needs_approval {
        let expires_at_ms = match (&tier.approval, live_until) {
            (Some(a), _) => tick.now.saturating_add(a.timeout_ms.max(0) as u64),
            (None, Some(end)) => end,
            (None, None) => tick.now,
        };
        (
            Disposition::AwaitingApproval { expires_at_ms },
            Some(expires_at_ms),
        )
    } else {
        (Disposition::Execute, None)
    };
    let executes = disposition.is_execute();
    let id = emit(
        memory,
        out,
        tick,
        tier,
        Draft {
            phase,
            action,
            target: target.clone(),
            reason,
            evidence,
            disposition,
            follows,
        },
    );
    let s = &mut memory.activations[idx].steps[j];
    s.last_suppressed_by = None;
    s.state = match state {
        Some(expires_at_ms) => StepState::AwaitingApproval {
            decision_id: id,
            expires_at_ms,
        },
        None if executes && !action.is_notification() => StepState::Executed { decision_id: id },
        None => StepState::Finished {
            decision_id: Some(id),
        },
    };
    if executes {
        memory.apply_effect(action, &target, EffectOwner::Engine);
    }
}

/// Pages a human once per rate-limit window after an action was rate limited.
#[allow(clippy::too_many_arguments)]
fn escalate_to_human(
    tick: &Tick<'_>,
    tier: &Tier,
    action: ActionKind,
    target: &Target,
    limited: DecisionId,
    evidence: Vec<Evidence>,
    memory: &mut EngineMemory,
    out: &mut Vec<Decision>,
) {
    let g = &tick.playbook.guards;
    let window = g.window_ms.max(0) as u64;
    if memory
        .last_rate_limit_page_ms
        .is_some_and(|t| tick.now.saturating_sub(t) < window)
    {
        return;
    }
    let reason = format!(
        "The engine reached its rate limit ({} cluster-changing actions per {}) and stopped acting instead of looping: it would have {} {target}. A human decides from here.",
        g.max_actions_per_window,
        words::duration(window),
        past_phrase(action),
    );
    let disposition = match notification_guards(tick) {
        Some((guard, why)) => Disposition::Suppressed { guard, why },
        None if tick.playbook.dry_run => Disposition::DryRun,
        None => Disposition::Execute,
    };
    if !matches!(disposition, Disposition::Suppressed { .. }) {
        memory.last_rate_limit_page_ms = Some(tick.now);
    }
    emit(
        memory,
        out,
        tick,
        tier,
        Draft {
            phase: Phase::Escalation,
            action: ActionKind::PageHuman,
            target: target.clone(),
            reason,
            evidence,
            disposition,
            follows: Some(limited),
        },
    );
}

/// What a decision says, before [`emit`] gives it an id, a time and an
/// origin.
struct Draft {
    phase: Phase,
    action: ActionKind,
    target: Target,
    reason: String,
    evidence: Vec<Evidence>,
    disposition: Disposition,
    follows: Option<DecisionId>,
}

/// Records `draft` as a decision of `tier`, now.
fn emit(
    memory: &mut EngineMemory,
    out: &mut Vec<Decision>,
    tick: &Tick<'_>,
    tier: &Tier,
    draft: Draft,
) -> DecisionId {
    emit_as(memory, out, tick.now, (&tier.name, Some(tier.level)), draft)
}

/// Who a decision is attributed to: a tier's name and level (`converge`
/// decisions have no level).
type Origin<'a> = (&'a str, Option<u8>);

/// Records `draft` as a decision of `origin` at `now`.
fn emit_as(
    memory: &mut EngineMemory,
    out: &mut Vec<Decision>,
    now: u64,
    origin: Origin<'_>,
    draft: Draft,
) -> DecisionId {
    let Draft {
        phase,
        action,
        target,
        reason,
        evidence,
        disposition,
        follows,
    } = draft;
    let d = Decision {
        id: memory.take_id(),
        at_ms: now,
        tier: origin.0.to_string(),
        level: origin.1,
        phase,
        action,
        target,
        reason,
        evidence,
        disposition,
        follows,
    };
    let id = d.id;
    out.push(memory.push(d));
    id
}

/// Sales are shard-wide; everything else applies to the tier's target.
fn action_target(action: ActionKind, tier_target: &Target) -> Target {
    match action {
        ActionKind::PauseSales | ActionKind::ResumeSales | ActionKind::ForceRecoverFromMinority => {
            Target::Shard
        }
        _ => tier_target.clone(),
    }
}

/// Effects already in place (another tier drained the region, sales are
/// already paused), effects a tier must not undo (an operator drained the
/// region or paused sales), or an evacuation with nothing left to move.
fn already_in_effect(
    tick: &Tick<'_>,
    memory: &EngineMemory,
    action: ActionKind,
    target: &Target,
) -> bool {
    match (action, target) {
        (ActionKind::SetTrafficWeightZero, Target::Region(r)) => {
            memory.drained_regions.contains_key(r)
        }
        (ActionKind::RestoreTrafficWeight, Target::Region(r)) => {
            memory.drained_regions.get(r) != Some(&EffectOwner::Engine)
        }
        (ActionKind::PauseSales, _) => memory.sales_paused.is_some(),
        (ActionKind::ResumeSales, _) => memory.sales_paused != Some(EffectOwner::Engine),
        (ActionKind::ReplaceVotersElsewhere, Target::Region(r)) => !tick
            .latest
            .nodes
            .iter()
            .any(|n| &n.region == r && tick.latest.shard.voters.contains(&n.node_id)),
        _ => false,
    }
}

/// Pause, stale observation and the majority-visible guard: the guards that
/// stop every decision, notifications included.
fn notification_guards(tick: &Tick<'_>) -> Option<(Guard, String)> {
    let g = &tick.playbook.guards;
    if tick.playbook.paused {
        return Some((
            Guard::Paused,
            "the playbook is paused: decisions are recorded, nothing is carried out".into(),
        ));
    }
    if let Some(max) = g.max_snapshot_age_ms {
        let age = tick.now.saturating_sub(tick.latest.at_ms);
        if age > max.max(0) as u64 {
            return Some((
                Guard::StaleObservation,
                format!(
                    "the newest health snapshot is {} old (limit {}): the engine does not act on stale observations",
                    words::duration(age),
                    words::duration_i64(max)
                ),
            ));
        }
    }
    majority_guard(tick.playbook, tick.latest)
}

/// The controller must see a strict majority of regions (and at least
/// `minRegionsVisibleToAct`) before acting.
fn majority_guard(playbook: &Playbook, latest: &HealthSnapshot) -> Option<(Guard, String)> {
    let v = RegionVisibility::of(latest);
    let configured = playbook.guards.min_regions_visible_to_act;
    if configured > v.total {
        return Some((
            Guard::MajorityVisible,
            format!(
                "minRegionsVisibleToAct is {configured} but the topology has {} regions: this guard can never be met",
                v.total
            ),
        ));
    }
    let required = configured.max(v.total / 2 + 1);
    if v.visible < required {
        return Some((
            Guard::MajorityVisible,
            format!(
                "the controller sees {} of {} regions and needs {required}: acting from a minority view risks a split-brain decision, so it takes no action",
                v.visible, v.total
            ),
        ));
    }
    None
}

fn check_guards(
    tick: &Tick<'_>,
    memory: &EngineMemory,
    action: ActionKind,
    target: &Target,
    live_window_approved: bool,
) -> Option<(Guard, String)> {
    if let Some(x) = notification_guards(tick) {
        return Some(x);
    }
    if action.is_notification() {
        return None;
    }
    let g = &tick.playbook.guards;
    if action == ActionKind::TransferLeadershipAway && tick.latest.shard.leader.is_none() {
        return Some((
            Guard::NoLeader,
            format!(
                "the shard has no leader, so there is no leadership to move away from {target}; the transfer waits for an election"
            ),
        ));
    }
    if !live_window_approved {
        if let Some((why, _)) = live_window_hold(tick.latest, tick.now, action, target) {
            return Some((Guard::LiveWindow, why));
        }
    }
    if g.never_below_quorum {
        if let Some(why) = quorum_risk(tick.latest, action, target) {
            return Some((Guard::NeverBelowQuorum, why));
        }
    }
    if g.one_region_at_a_time {
        if let Some(why) = region_conflict(tick.latest, memory, action, target) {
            return Some((Guard::OneRegionAtATime, why));
        }
    }
    if let (ActionKind::RestartNode, Target::Node(id)) = (action, target) {
        if let Some(q) = memory.quarantined.get(id) {
            return Some((
                Guard::Quarantined,
                format!(
                    "node {id} is quarantined since {} ms (its restart budget was spent; decision #{}): the engine does not restart it until the quarantine lifts",
                    q.since_ms,
                    q.page_decision.unwrap_or_default()
                ),
            ));
        }
    }
    if let Some(why) = failure_budget_spent(tick, memory, action, target) {
        return Some((Guard::FailureBudget, why));
    }
    if let (ActionKind::RestartNode, Target::Node(id)) = (action, target) {
        if let Some(x) = restart_budget_check(tick, memory, *id) {
            return Some(x);
        }
    }
    if !action.is_rate_limited() {
        return None;
    }
    let cooldown = pos(g.cooldown_ms);
    if let Some(last) = memory
        .records
        .iter()
        .rev()
        .map(|r| &r.decision)
        .find(|d| acted(d) && d.action == action && &d.target == target)
    {
        let ago = tick.now.saturating_sub(last.at_ms);
        if ago < cooldown {
            return Some((
                Guard::Cooldown,
                format!(
                    "{} on {target} ran {} ago (decision #{}); the cooldown is {}",
                    action.name(),
                    words::duration(ago),
                    last.id,
                    words::duration(cooldown)
                ),
            ));
        }
    }
    let window = pos(g.window_ms);
    let used = budgets::rate_limit_used(g, memory, tick.now).len();
    if used >= g.max_actions_per_window as usize {
        return Some((
            Guard::RateLimit,
            format!(
                "{used} cluster-changing actions in the last {} reach the limit of {}; a human is paged instead",
                words::duration(window),
                g.max_actions_per_window
            ),
        ));
    }
    None
}

/// Why the failure budget of this action on this target stops a retry, if it does.
fn failure_budget_spent(
    tick: &Tick<'_>,
    memory: &EngineMemory,
    action: ActionKind,
    target: &Target,
) -> Option<String> {
    let g = &tick.playbook.guards;
    let v = budgets::failure_view(g, memory, action, target, tick.now);
    let until = v.blocked_until?;
    let errors: Vec<String> = v
        .failures
        .iter()
        .rev()
        .take(3)
        .map(|(at, e, id)| format!("#{id} at {at} ms: {e}"))
        .collect();
    Some(format!(
        "{} on {target} failed {} times within {} (budget {}): it is not retried for {} more (until {until} ms); last errors: {}",
        action.name(),
        v.failures.len(),
        words::duration_i64(g.failure_budget.window_ms),
        g.failure_budget.max_failures,
        words::duration(until.saturating_sub(tick.now)),
        errors.join("; ")
    ))
}

/// The restart back-off and budget of one node.
fn restart_budget_check(
    tick: &Tick<'_>,
    memory: &EngineMemory,
    node: NodeId,
) -> Option<(Guard, String)> {
    let g = &tick.playbook.guards;
    let rb = &g.restart_budget;
    let v = budgets::restart_view(g, memory, node, tick.now);
    let window = words::duration_i64(rb.window_ms);
    if v.exhausted {
        let times: Vec<String> = v
            .restarts
            .iter()
            .map(|(at, id)| format!("#{id} at {at} ms"))
            .collect();
        return Some((
            Guard::RestartBudget,
            format!(
                "node {node} was restarted {} times within {window} ({}) and its restart budget is {} per {window}: restarting it again would hide a fault, so it is quarantined and a human is paged",
                v.restarts.len(),
                words::list(&times),
                rb.max_restarts
            ),
        ));
    }
    match v.next_after {
        Some(t) if tick.now < t => Some((
            Guard::RestartBackOff,
            format!(
                "node {node} was restarted {} time{} within {window}; the next restart backs off until {t} ms ({} from now)",
                v.restarts.len(),
                if v.restarts.len() == 1 { "" } else { "s" },
                words::duration(t - tick.now)
            ),
        )),
        _ => None,
    }
}

/// Why a disruptive action that is not protective waits for a live window,
/// if it does. Held: draining or evacuating a region that is degraded but not
/// lost, and moving leadership away from a node or region that is still up
/// (Raft leadership is shard-wide, so any live room holds it). Never held:
/// restarts (T1), pausing or resuming sales (T4), restoring traffic,
/// anything aimed at a lost region or a node down by two views, notifications.
/// Returns the words and when the earliest-ending live window ends.
fn live_window_hold(
    latest: &HealthSnapshot,
    now: u64,
    action: ActionKind,
    target: &Target,
) -> Option<(String, u64)> {
    let in_region = |region: &str| -> Vec<&health::RoomLiveWindow> {
        latest
            .live_windows
            .iter()
            .filter(|w| w.is_live_at(now) && w.home_region == region)
            .collect()
    };
    let live: Vec<&health::RoomLiveWindow> = match (action, target) {
        (
            ActionKind::SetTrafficWeightZero | ActionKind::ReplaceVotersElsewhere,
            Target::Region(r),
        ) => {
            if health::region_lost(latest, r) {
                return None;
            }
            in_region(r)
        }
        (ActionKind::TransferLeadershipAway, t) => {
            let down = match t {
                Target::Region(r) => health::region_lost(latest, r),
                Target::Node(id) => latest
                    .nodes
                    .iter()
                    .find(|n| n.node_id == *id)
                    .is_some_and(|n| health::node_liveness(latest, n) == Liveness::Down),
                Target::Shard => false,
            };
            if down {
                return None;
            }
            latest
                .live_windows
                .iter()
                .filter(|w| w.is_live_at(now))
                .collect()
        }
        _ => return None,
    };
    let first = live.iter().min_by_key(|w| (w.end_ms, &w.room))?;
    let others = match live.len() {
        1 => String::new(),
        n => format!(
            " ({} more live room{} too)",
            n - 1,
            if n == 2 { "" } else { "s" }
        ),
    };
    let what = match target {
        Target::Node(id) => format!("node {id}"),
        Target::Region(r) => format!("region {r}"),
        Target::Shard => "the shard".to_string(),
    };
    let why = format!(
        "deferred: room {} is live in {} until {}, expected peak {} orders/s{others}; {what} is degraded, not lost, so {} is not protective and waits for the window to end",
        first.room,
        first.home_region,
        words::utc(first.end_ms),
        first.expected_peak_orders_per_s,
        action.name(),
    );
    Some((why, first.end_ms))
}

/// Why an action could leave fewer live voters than a quorum, if it could.
fn quorum_risk(latest: &HealthSnapshot, action: ActionKind, target: &Target) -> Option<String> {
    let voters = &latest.shard.voters;
    let total = voters.len();
    let majority = total / 2 + 1;
    let alive_voter = |pred: &dyn Fn(&health::NodeHealth) -> bool| {
        latest
            .nodes
            .iter()
            .filter(|n| voters.contains(&n.node_id))
            .filter(|n| pred(n))
            .filter(|n| health::node_liveness(latest, n) == Liveness::Alive)
            .count()
    };
    match (action, target) {
        (ActionKind::ReplaceVotersElsewhere, Target::Region(r)) => {
            let outside = alive_voter(&|n| &n.region != r);
            if total == 0 || outside < majority {
                Some(format!(
                    "outside region {r}, {outside} of {total} voters are alive by two views and a quorum needs {majority}: replacing its voters could leave the shard below quorum"
                ))
            } else {
                None
            }
        }
        (ActionKind::RestartNode, Target::Node(id)) => {
            let node = latest.nodes.iter().find(|n| n.node_id == *id)?;
            if !voters.contains(id) || health::node_liveness(latest, node) != Liveness::Alive {
                return None;
            }
            let alive = alive_voter(&|_| true);
            if alive <= majority {
                Some(format!(
                    "node {id} is a live voter and only {alive} of {total} voters are alive (a quorum needs {majority}): restarting it would drop the shard below quorum"
                ))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Why acting on this region now would touch two regions at once, if it would.
fn region_conflict(
    latest: &HealthSnapshot,
    memory: &EngineMemory,
    action: ActionKind,
    target: &Target,
) -> Option<String> {
    let Target::Region(r) = target else {
        return None;
    };
    let evacuating = memory.evacuation_in_progress();
    match action {
        ActionKind::ReplaceVotersElsewhere => evacuating.first().map(|other| {
            if other == r {
                format!("an evacuation of region {r} is already in progress")
            } else {
                format!(
                    "region {other} is being evacuated (no outcome reported yet); only one region is evacuated at a time"
                )
            }
        }),
        ActionKind::SetTrafficWeightZero | ActionKind::TransferLeadershipAway => {
            if health::region_lost(latest, r) {
                // Traffic to a lost region fails anyway; moving it off is always safe.
                return None;
            }
            if let Some(other) = evacuating.iter().find(|o| *o != r) {
                return Some(format!(
                    "region {other} is being evacuated; region {r} is left alone until that finishes"
                ));
            }
            memory
                .drained_regions
                .keys()
                .find(|o| *o != r)
                .map(|other| {
                    format!(
                        "region {other} is already drained; draining region {r} too would move two regions at once"
                    )
                })
        }
        _ => None,
    }
}

fn evidence(reading: &Reading, since: u64) -> Vec<Evidence> {
    reading.facts.iter().map(|f| f.at(since)).collect()
}

fn facts_summary(reading: &Reading) -> String {
    let parts: Vec<String> = reading
        .facts
        .iter()
        .take(4)
        .map(|f| match &f.threshold {
            Some(t) => format!("{} is {} (threshold {t})", f.signal, f.value),
            None => format!("{} is {}", f.signal, f.value),
        })
        .collect();
    let more = reading.facts.len().saturating_sub(4);
    let mut s = words::list(&parts);
    if more > 0 {
        s.push_str(&format!(" (+{more} more in the evidence)"));
    }
    s
}

fn tier_label(tier: &Tier) -> String {
    format!("T{} {}", tier.level, tier.name)
}

fn escalate_reason(
    tick: &Tick<'_>,
    tier: &Tier,
    target: &Target,
    since: u64,
    reading: &Reading,
    action: ActionKind,
) -> String {
    let facts = facts_summary(reading);
    format!(
        "{} {} for {} (hold-down {}){}. Tier {} will {}.",
        words::capitalize(&target.to_string()),
        conditions::phrase(&tier.trigger.condition),
        words::duration(tick.now.saturating_sub(since)),
        words::duration_i64(tier.trigger.for_ms),
        if facts.is_empty() {
            String::new()
        } else {
            format!(": {facts}")
        },
        tier_label(tier),
        action_phrase(action, &action_target(action, target)),
    )
}

fn stand_down_reason(
    tick: &Tick<'_>,
    tier: &Tier,
    act: &Activation,
    since: u64,
    reading: &Reading,
    action: ActionKind,
) -> String {
    let facts = facts_summary(reading);
    format!(
        "{}'s condition for tier {} has been clear for {} (stand-down {}){}; the tier fired {} ago and now stands down. It will {}.",
        words::capitalize(&act.target.to_string()),
        tier_label(tier),
        words::duration(tick.now.saturating_sub(since)),
        words::duration_i64(tier.trigger.clear_for_ms),
        if facts.is_empty() {
            String::new()
        } else {
            format!(": {facts}")
        },
        words::duration(tick.now.saturating_sub(act.fired_at_ms)),
        action_phrase(action, &action_target(action, &act.target)),
    )
}

/// What an action does, as a verb phrase: "restart node 3".
pub fn action_phrase(action: ActionKind, target: &Target) -> String {
    match action {
        ActionKind::RecordEvent => format!("record an event about {target}"),
        ActionKind::RestartNode => format!("restart {target}"),
        ActionKind::TransferLeadershipAway => format!("move Raft leadership away from {target}"),
        ActionKind::SetTrafficWeightZero => {
            format!("set the traffic weight of {target} to 0 so new traffic goes elsewhere")
        }
        ActionKind::RestoreTrafficWeight => format!("restore the traffic weight of {target}"),
        ActionKind::ReplaceVotersElsewhere => format!(
            "replace the voters of {target} in surviving regions (add a learner, promote it, remove the old voter — one change at a time)"
        ),
        ActionKind::PauseSales => {
            "pause sales (orders fail fast with 503 and a reason) and keep them paused until quorum is back".into()
        }
        ActionKind::ResumeSales => "resume sales".into(),
        ActionKind::PageHuman => format!("page the on-call human about {target}"),
        ActionKind::ForceRecoverFromMinority => {
            "force recovery of the shard from its surviving minority of voters".into()
        }
    }
}

fn past_phrase(action: ActionKind) -> &'static str {
    match action {
        ActionKind::RecordEvent => "recorded an event about",
        ActionKind::RestartNode => "restarted",
        ActionKind::TransferLeadershipAway => "moved leadership away from",
        ActionKind::SetTrafficWeightZero => "drained the traffic of",
        ActionKind::RestoreTrafficWeight => "restored the traffic of",
        ActionKind::ReplaceVotersElsewhere => "replaced the voters of",
        ActionKind::PauseSales => "paused sales for",
        ActionKind::ResumeSales => "resumed sales for",
        ActionKind::PageHuman => "paged about",
        ActionKind::ForceRecoverFromMinority => "forced minority recovery of",
    }
}

fn operator_refusal(
    playbook: &Playbook,
    latest: Option<&HealthSnapshot>,
    memory: &EngineMemory,
    command: &OperatorCommand,
    approved_by: Option<&str>,
) -> Option<(Guard, String)> {
    let refuse = |why: String| Some((Guard::OperatorCommand, why));
    if command.requested_by.trim().is_empty() {
        return refuse("a command needs the name of who requests it".into());
    }
    if !command.action.applies_to(command.target.kind()) {
        return refuse(format!(
            "{} cannot apply to a {}",
            command.action.name(),
            command.target.kind()
        ));
    }
    if command.action == ActionKind::ForceRecoverFromMinority {
        match approved_by {
            None => {
                return Some((
                    Guard::ApprovalGate,
                    "forcing recovery from a minority needs a second person's approval (approvedBy)".into(),
                ))
            }
            Some(a) if a == command.requested_by => {
                return Some((
                    Guard::ApprovalGate,
                    "forcing recovery from a minority needs approval by someone other than the requester".into(),
                ))
            }
            Some(_) => {}
        }
        if command.reason.trim().is_empty() {
            return refuse(
                "forcing recovery from a minority needs a written reason for the audit record"
                    .into(),
            );
        }
        let Some(latest) = latest else {
            return refuse(
                "no health snapshot has been observed, so quorum loss cannot be shown".into(),
            );
        };
        let c = health::voter_counts(latest);
        return match health::quorum(latest) {
            health::QuorumState::Lost => None,
            health::QuorumState::Present => refuse(format!(
                "quorum is present ({} of {} voters alive by two views): forcing recovery from a minority would fork the order history",
                c.alive, c.total
            )),
            health::QuorumState::Unknown => refuse(format!(
                "quorum cannot be shown lost ({} of {} voters down by two views, {} alive): the views disagree, so a minority recovery is refused",
                c.down, c.total, c.alive
            )),
        };
    }
    let latest = latest?;
    if let Some((why, _)) = live_window_hold(latest, latest.at_ms, command.action, &command.target)
    {
        let approved = approved_by.is_some_and(|a| a != command.requested_by);
        if !(approved && playbook.guards.live_window == LiveWindowPolicy::RequireApproval) {
            let how = match playbook.guards.live_window {
                LiveWindowPolicy::Defer => "ask again after the window",
                LiveWindowPolicy::RequireApproval => {
                    "or have someone other than the requester approve it (approvedBy)"
                }
            };
            return Some((Guard::LiveWindow, format!("{why}; {how}")));
        }
    }
    if playbook.guards.never_below_quorum {
        if let Some(why) = quorum_risk(latest, command.action, &command.target) {
            return Some((Guard::NeverBelowQuorum, why));
        }
    }
    if playbook.guards.one_region_at_a_time && command.action == ActionKind::ReplaceVotersElsewhere
    {
        if let Some(why) = region_conflict(latest, memory, command.action, &command.target) {
            return Some((Guard::OneRegionAtATime, why));
        }
    }
    None
}

fn explain_tier(
    playbook: &Playbook,
    tier: &Tier,
    snaps: &[&HealthSnapshot],
    now: u64,
    memory: &EngineMemory,
    target: &Target,
) -> String {
    let label = tier_label(tier);
    let cond = &tier.trigger.condition;
    let sups = superseding(playbook, tier);
    let superseded = snaps.first().and_then(|s| superseded_by(&sups, s)).map(|t| {
        format!(
            " It is superseded for now: {}'s condition ({}) holds, an outage that is global, so per-region tiers take no action and their hold-down starts again when it ends.",
            tier_label(t),
            t.trigger.condition.name()
        )
    }).unwrap_or_default();
    if let Some(a) = memory
        .activations
        .iter()
        .find(|a| a.tier == tier.name && &a.target == target)
    {
        let steps: Vec<String> = a
            .steps
            .iter()
            .map(|s| {
                let state = match &s.state {
                    StepState::Pending { .. } => match s.last_suppressed_by {
                        Some(g) => format!("waiting (last stopped by guard {g})"),
                        None => "waiting".to_string(),
                    },
                    StepState::AwaitingApproval { decision_id, .. } => {
                        format!("awaiting approval (decision #{decision_id})")
                    }
                    StepState::Executed { decision_id } => {
                        format!("executed (decision #{decision_id}), outcome pending or succeeded")
                    }
                    StepState::Finished {
                        decision_id: Some(id),
                    } => format!("done (decision #{id})"),
                    StepState::Finished { decision_id: None } => "already in effect".to_string(),
                };
                format!("{} {state}", s.action.name())
            })
            .collect();
        let phase = match a.phase {
            ActivationPhase::Active => format!(
                "is active for {target}: it fired {} ago after its condition held since {} ms",
                words::duration(now.saturating_sub(a.fired_at_ms)),
                a.breached_since_ms
            ),
            ActivationPhase::StandingDown => format!(
                "is standing down for {target}: its condition has been clear since {} ms",
                a.cleared_since_ms.unwrap_or(now)
            ),
        };
        return format!(
            "{label} {phase}. Steps: {}.{superseded}",
            words::list(&steps)
        );
    }
    if !superseded.is_empty() {
        return format!("{label}: not triggered for {target}.{superseded}");
    }
    let for_ms = tier.trigger.for_ms.max(0) as u64;
    match conditions::run_since_where(
        cond,
        snaps,
        target,
        None,
        |l| l == Level::Breached,
        |s| superseded_by(&sups, s).is_none(),
    ) {
        Some((since, _)) => {
            let held = now.saturating_sub(since);
            format!(
                "{label}: {target} {} for {} of its {} hold-down; it acts after {} more if the condition keeps holding in every snapshot.",
                conditions::phrase(cond),
                words::duration(held),
                words::duration(for_ms),
                words::duration(for_ms.saturating_sub(held))
            )
        }
        None => match conditions::current(cond, snaps, target).map(|r| r.level) {
            Some(Level::Between) => format!(
                "{label}: not triggered for {target}, and not clear either (its signals are between the stand-down and escalation thresholds, its views disagree, or no node reports for it)."
            ),
            _ => format!(
                "{label}: not triggered for {target} (condition {} does not hold in the newest snapshot).",
                cond.name()
            ),
        },
    }
}

fn explain_guards(
    playbook: &Playbook,
    latest: &HealthSnapshot,
    now: u64,
    memory: &EngineMemory,
) -> String {
    let g = &playbook.guards;
    let mut parts = Vec::new();
    if playbook.paused {
        parts.push("the playbook is paused, so nothing is carried out".to_string());
    }
    if playbook.dry_run {
        parts.push("the playbook is in dry-run, so decisions are recorded only".to_string());
    }
    let v = RegionVisibility::of(latest);
    let required = g.min_regions_visible_to_act.max(v.total / 2 + 1);
    parts.push(format!(
        "the controller sees {} of {} regions (needs {required}{})",
        v.visible,
        v.total,
        if v.visible >= required {
            ""
        } else {
            " — so it takes no action"
        }
    ));
    let window = pos(g.window_ms);
    let used = budgets::rate_limit_used(g, memory, now).len();
    parts.push(format!(
        "{used} of {} cluster-changing actions used in the last {} (failed actions and restoring actions do not count)",
        g.max_actions_per_window,
        words::duration(window)
    ));
    let budgets = Engine::budgets(playbook, memory, now);
    for f in &budgets.failure_budgets {
        if let Some(until) = f.blocked_until_ms {
            parts.push(format!(
                "{} on {} failed {} times and is not retried until {until} ms",
                f.action.name(),
                f.target,
                f.failures
            ));
        }
    }
    if !memory.quarantined.is_empty() {
        let q: Vec<String> = memory
            .quarantined
            .values()
            .map(|q| format!("node {} (since {} ms)", q.node, q.since_ms))
            .collect();
        parts.push(format!(
            "quarantined after spending their restart budget: {}",
            words::list(&q)
        ));
    }
    let ev = memory.evacuation_in_progress();
    if !ev.is_empty() {
        parts.push(format!(
            "an evacuation of region {} is in progress",
            ev.join(", ")
        ));
    }
    if !memory.drained_regions.is_empty() {
        let d: Vec<String> = memory
            .drained_regions
            .iter()
            .map(|(r, owner)| match owner {
                EffectOwner::Engine => r.clone(),
                EffectOwner::Operator => format!("{r} (by an operator)"),
            })
            .collect();
        parts.push(format!("drained: {}", words::list(&d)));
    }
    match memory.sales_paused {
        Some(EffectOwner::Engine) => parts.push("sales are paused by the engine".into()),
        Some(EffectOwner::Operator) => {
            parts.push("sales are paused by an operator (only an operator resumes them)".into())
        }
        None => {}
    }
    format!("Guards now: {}.", parts.join("; "))
}

// ---- a global outage supersedes per-region tiers ---------------------------

/// The shard-wide tiers above a per-region tier: while one of their
/// conditions is breached, the outage is global and the region tier neither
/// fires nor acts. Empty for tiers that are not per region.
fn superseding<'a>(playbook: &'a Playbook, tier: &Tier) -> Vec<&'a Tier> {
    if tier.trigger.condition.target_kind() != TargetKind::Region {
        return Vec::new();
    }
    playbook
        .tiers
        .iter()
        .filter(|t| t.trigger.condition.target_kind() == TargetKind::Shard && t.level > tier.level)
        .collect()
}

/// The superseding tier whose condition is breached in this snapshot, if any.
fn superseded_by<'a>(sups: &[&'a Tier], snap: &HealthSnapshot) -> Option<&'a Tier> {
    sups.iter().copied().find(|t| {
        conditions::evaluate(&t.trigger.condition, snap, &Target::Shard).level == Level::Breached
    })
}

// ---- failure budget --------------------------------------------------------

/// Records that an action's failure budget is spent (once per exhaustion) and
/// pages a human with the errors.
fn block_failed_action(
    tick: &Tick<'_>,
    origin: Origin<'_>,
    action: ActionKind,
    target: &Target,
    suppressed: Option<DecisionId>,
    memory: &mut EngineMemory,
    out: &mut Vec<Decision>,
) {
    let g = &tick.playbook.guards;
    let v = budgets::failure_view(g, memory, action, target, tick.now);
    let Some(until) = v.blocked_until else {
        return;
    };
    if v.recorded {
        return;
    }
    let newest = v.failures.iter().map(|f| f.0).max().unwrap_or(tick.now);
    // One page per failure episode: an exhaustion right after the previous
    // block (the action kept failing) is recorded but not paged again.
    let repeat = memory
        .failure_blocks
        .iter()
        .any(|b| b.action == action && &b.target == target && b.paged);
    let disposition = if tick.playbook.dry_run {
        Disposition::DryRun
    } else {
        match notification_guards(tick) {
            Some((guard, why)) => Disposition::Suppressed { guard, why },
            None => Disposition::Execute,
        }
    };
    memory.failure_blocks.push(FailureBlock {
        action,
        target: target.clone(),
        at_ms: newest,
        until_ms: until,
        paged: repeat || disposition.is_execute(),
    });
    if repeat {
        return;
    }
    let evidence: Vec<Evidence> = v
        .failures
        .iter()
        .map(|(at, error, id)| Evidence {
            signal: format!("{} on {target} (decision #{id})", action.name()),
            value: format!("failed: {error}"),
            threshold: None,
            since_ms: *at,
        })
        .collect();
    let reason = format!(
        "The engine tried to {} and it failed {} times within {} (failure budget {} per {}). It stops retrying until {until} ms and a human decides from here; the errors are in the evidence.",
        action_phrase(action, target),
        v.failures.len(),
        words::duration_i64(g.failure_budget.window_ms),
        g.failure_budget.max_failures,
        words::duration_i64(g.failure_budget.window_ms),
    );
    emit_as(
        memory,
        out,
        tick.now,
        origin,
        Draft {
            phase: Phase::Escalation,
            action: ActionKind::PageHuman,
            target: target.clone(),
            reason,
            evidence,
            disposition,
            follows: suppressed,
        },
    );
}

// ---- restart budget and quarantine -----------------------------------------

/// Quarantines a node whose restart budget is spent and pages a human once.
/// In dry-run the page is recorded as what would have been done and the node
/// is not quarantined. Returns whether the node is now quarantined.
fn quarantine(
    tick: &Tick<'_>,
    tier: &Tier,
    target: &Target,
    suppressed: DecisionId,
    evidence: Vec<Evidence>,
    memory: &mut EngineMemory,
    out: &mut Vec<Decision>,
) -> bool {
    let Target::Node(node) = target else {
        return false;
    };
    let g = &tick.playbook.guards;
    let rb = &g.restart_budget;
    let v = budgets::restart_view(g, memory, *node, tick.now);
    let window = words::duration_i64(rb.window_ms);
    let mut ev: Vec<Evidence> = v
        .restarts
        .iter()
        .map(|(at, id)| Evidence {
            signal: format!("node {node} restart (decision #{id})"),
            value: match memory.record(*id).and_then(|r| r.outcome.as_ref()) {
                Some(o) if o.succeeded() => "succeeded".into(),
                Some(_) => "failed".into(),
                None => "outcome not reported".into(),
            },
            threshold: Some(format!("at most {} per {window}", rb.max_restarts)),
            since_ms: *at,
        })
        .collect();
    ev.extend(evidence);
    let reason = format!(
        "{} needs another restart, but it was restarted {} times within {window} (restart budget {} per {window}) and keeps failing: restarting it again would hide the real fault. The engine quarantines it — no more restarts, and the bindings keep it out of Raft leadership and buyer traffic — and pages a human. The quarantine lifts once the node has been healthy for {window}, or when an operator releases it.",
        words::capitalize(&target.to_string()),
        v.restarts.len(),
        rb.max_restarts,
    );
    let dry = tick.playbook.dry_run;
    let id = emit(
        memory,
        out,
        tick,
        tier,
        Draft {
            phase: Phase::Escalation,
            action: ActionKind::PageHuman,
            target: target.clone(),
            reason: reason.clone(),
            evidence: ev.clone(),
            disposition: if dry {
                Disposition::DryRun
            } else {
                Disposition::Execute
            },
            follows: Some(suppressed),
        },
    );
    if dry {
        return false;
    }
    memory.quarantined.insert(
        *node,
        Quarantine {
            node: *node,
            since_ms: tick.now,
            tier: tier.name.clone(),
            reason,
            evidence: ev,
            page_decision: Some(id),
            healthy_since_ms: None,
        },
    );
    true
}

/// Follows each quarantined node's health and lifts the quarantine once the
/// node has been healthy (alive by two views, process and disk fine) for the
/// restart budget's window, or once the node is no longer part of the shard.
/// Lifting waits while the playbook is paused or in dry-run, the view is
/// stale, or the controller sees a minority.
fn review_quarantines(tick: &Tick<'_>, memory: &mut EngineMemory, out: &mut Vec<Decision>) {
    if memory.quarantined.is_empty() {
        return;
    }
    let window = pos(tick.playbook.guards.restart_budget.window_ms);
    let cond = Condition::NodeUnhealthy;
    let nodes: Vec<NodeId> = memory.quarantined.keys().copied().collect();
    for node in nodes {
        let target = Target::Node(node);
        let latest = tick.latest;
        let gone = !latest.nodes.iter().any(|n| n.node_id == node)
            && !latest.shard.voters.contains(&node)
            && !latest.shard.learners.contains(&node);
        let Some(q) = memory.quarantined.get_mut(&node) else {
            continue;
        };
        // Since when the node has been healthy in every snapshot: walk back
        // to the newest snapshot in which it was not, no further than the
        // start of the healthy run already known.
        let known = q.healthy_since_ms;
        let mut oldest_clear = None;
        let mut hit_unhealthy = false;
        for s in &tick.snaps {
            if known.is_some_and(|h| s.at_ms < h) {
                break;
            }
            if conditions::evaluate(&cond, s, &target).level != Level::Clear {
                hit_unhealthy = true;
                break;
            }
            oldest_clear = Some(s.at_ms);
        }
        q.healthy_since_ms = match (oldest_clear, hit_unhealthy) {
            (None, _) => None,
            (Some(t), true) => Some(t),
            (Some(t), false) => Some(known.unwrap_or(t)),
        };
        let healthy_for = q
            .healthy_since_ms
            .map(|h| tick.now.saturating_sub(h))
            .unwrap_or(0);
        if !gone && (q.healthy_since_ms.is_none() || healthy_for < window) {
            continue;
        }
        if tick.playbook.dry_run || notification_guards(tick).is_some() {
            continue;
        }
        let Some(q) = memory.quarantined.remove(&node) else {
            continue;
        };
        let reason = if gone {
            format!(
                "Node {node} is no longer part of the shard, so its quarantine (since {} ms) is lifted.",
                q.since_ms
            )
        } else {
            format!(
                "Node {node} has been healthy for {} since its quarantine at {} ms (the restart budget's window is {}), so the quarantine is lifted: the engine may restart it again and the bindings may give it leadership and traffic.",
                words::duration(healthy_for),
                q.since_ms,
                words::duration(window)
            )
        };
        let level = tick.playbook.tier(&q.tier).map(|t| t.level);
        let evidence = conditions::evaluate(&cond, tick.latest, &target)
            .facts
            .iter()
            .map(|f| f.at(q.healthy_since_ms.unwrap_or(tick.now)))
            .collect();
        emit_as(
            memory,
            out,
            tick.now,
            (&q.tier, level),
            Draft {
                phase: Phase::StandDown,
                action: ActionKind::RecordEvent,
                target,
                reason,
                evidence,
                disposition: Disposition::Execute,
                follows: q.page_decision,
            },
        );
    }
}

// ---- convergence: effects no tier owns ---------------------------------------

/// The name decisions undoing an orphaned effect are recorded under.
pub const CONVERGE: &str = "converge";

/// Whether a tier (any phase) still owns the sales gate: its activation will
/// resume sales itself on stand-down.
fn sales_owned(playbook: &Playbook, memory: &EngineMemory) -> bool {
    memory.activations.iter().any(|a| {
        a.steps
            .iter()
            .any(|s| matches!(s.action, ActionKind::PauseSales | ActionKind::ResumeSales))
            || playbook.tier(&a.tier).is_some_and(|t| {
                t.actions.contains(&ActionKind::PauseSales)
                    || t.stand_down_actions.contains(&ActionKind::ResumeSales)
            })
    })
}

/// A region is clear for convergence when it has nodes, is not lost, at most
/// half of its nodes are bad under the stand-down thresholds, and every
/// per-region tier's condition reads clear for it.
fn region_clear(playbook: &Playbook, snap: &HealthSnapshot, region: &str) -> bool {
    let t = playbook.region_clear_thresholds();
    let (bad, total) = health::region_bad_nodes(snap, region, &t);
    if total == 0 || health::region_lost(snap, region) || bad * 2 > total {
        return false;
    }
    let target = Target::Region(region.to_string());
    playbook
        .tiers
        .iter()
        .filter(|t| t.trigger.condition.target_kind() == TargetKind::Region)
        .all(|t| conditions::evaluate(&t.trigger.condition, snap, &target).level == Level::Clear)
}

/// The longest `clearForMs` of the tiers listing `action` (0 when none does).
fn hold_for(playbook: &Playbook, action: ActionKind) -> u64 {
    playbook
        .tiers
        .iter()
        .filter(|t| t.actions.contains(&action))
        .map(|t| pos(t.trigger.clear_for_ms))
        .max()
        .unwrap_or(0)
}

/// Undoes the engine's own effects that no tier owns any more — a region left
/// at traffic weight 0, sales left paused — once their cause has been clear
/// for the longest stand-down time of the tiers that cause them. This is how a
/// region drained by a tier that stood down without restoring it (or was
/// removed from the playbook, or whose restore was lost) comes back: a
/// healthy region at weight 0 with no tier owning it is itself a signal.
/// Effects an operator put in place are never undone here (P7).
fn converge(tick: &Tick<'_>, memory: &mut EngineMemory, out: &mut Vec<Decision>) {
    let playbook = tick.playbook;
    let mut wanted: Vec<(ActionKind, Target)> = memory
        .drained_regions
        .iter()
        .filter(|(_, owner)| **owner == EffectOwner::Engine)
        .map(|(r, _)| Target::Region(r.clone()))
        .filter(|t| !memory.activations.iter().any(|a| &a.target == t))
        .map(|t| (ActionKind::RestoreTrafficWeight, t))
        .collect();
    if memory.sales_paused == Some(EffectOwner::Engine) && !sales_owned(playbook, memory) {
        wanted.push((ActionKind::ResumeSales, Target::Shard));
    }
    memory
        .converging
        .retain(|c| wanted.iter().any(|(a, t)| *a == c.action && *t == c.target));
    let retry_after = pos(playbook.guards.failure_budget.retry_after_ms);
    for (action, target) in wanted {
        let (hold, since, evidence, what) = match &target {
            Target::Region(r) => {
                let hold = hold_for(playbook, ActionKind::SetTrafficWeightZero);
                let since =
                    conditions::held_since(&tick.snaps, tick.now.saturating_sub(hold), |s| {
                        region_clear(playbook, s, r)
                    });
                let (bad, total) =
                    health::region_bad_nodes(tick.latest, r, &playbook.region_clear_thresholds());
                let at = since.unwrap_or(tick.now);
                let evidence = vec![
                    Evidence {
                        signal: format!("region {r} traffic weight"),
                        value: "0 (drained by the engine, no tier owns it)".into(),
                        threshold: None,
                        since_ms: at,
                    },
                    Evidence {
                        signal: format!("region {r} bad nodes"),
                        value: format!("{bad} of {total}"),
                        threshold: Some("at most half".into()),
                        since_ms: at,
                    },
                ];
                let what = format!(
                    "Region {r} is still at traffic weight 0, but no tier owns that any more (the tier that drained it stood down without restoring it, or left the playbook)"
                );
                (hold, since, evidence, what)
            }
            _ => {
                let hold = hold_for(playbook, ActionKind::PauseSales);
                let since =
                    conditions::held_since(&tick.snaps, tick.now.saturating_sub(hold), |s| {
                        health::quorum(s) == health::QuorumState::Present
                            && s.shard.leader.is_some()
                    });
                let at = since.unwrap_or(tick.now);
                let evidence =
                    conditions::evaluate(&Condition::QuorumLost, tick.latest, &Target::Shard)
                        .facts
                        .iter()
                        .map(|f| f.at(at))
                        .collect();
                let what = "Sales are still paused by the engine, but no tier owns the pause any more (the tier that paused them left the playbook, or its resume was lost)".to_string();
                (hold, since, evidence, what)
            }
        };
        let Some(since) = since else { continue };
        let clear_for = tick.now.saturating_sub(since);
        if clear_for < hold {
            continue;
        }
        // A failed attempt is retried after `retryAfterMs`, within the failure budget.
        let last_failure = memory
            .records
            .iter()
            .filter(|r| r.decision.action == action && r.decision.target == target)
            .filter_map(budgets::failed_at)
            .max();
        if last_failure.is_some_and(|t| tick.now < t.saturating_add(retry_after)) {
            continue;
        }
        let reason = format!(
            "{what}. Its cause has been clear for {} (hold {}), so the engine will {}.",
            words::duration(clear_for),
            words::duration(hold),
            action_phrase(action, &target)
        );
        let idx = match memory
            .converging
            .iter()
            .position(|c| c.action == action && c.target == target)
        {
            Some(i) => i,
            None => {
                memory.converging.push(Converging {
                    action,
                    target: target.clone(),
                    last_suppressed_by: None,
                    dry_run_recorded: false,
                });
                memory.converging.len() - 1
            }
        };
        let origin = (CONVERGE, None);
        let guard = notification_guards(tick).or_else(|| {
            failure_budget_spent(tick, memory, action, &target).map(|w| (Guard::FailureBudget, w))
        });
        if let Some((guard, why)) = guard {
            let mut suppressed = None;
            if memory.converging[idx].last_suppressed_by != Some(guard) {
                memory.converging[idx].last_suppressed_by = Some(guard);
                suppressed = Some(emit_as(
                    memory,
                    out,
                    tick.now,
                    origin,
                    Draft {
                        phase: Phase::StandDown,
                        action,
                        target: target.clone(),
                        reason,
                        evidence,
                        disposition: Disposition::Suppressed { guard, why },
                        follows: None,
                    },
                ));
            }
            if guard == Guard::FailureBudget {
                block_failed_action(tick, origin, action, &target, suppressed, memory, out);
            }
            continue;
        }
        if playbook.dry_run {
            if !memory.converging[idx].dry_run_recorded {
                memory.converging[idx].dry_run_recorded = true;
                memory.converging[idx].last_suppressed_by = None;
                emit_as(
                    memory,
                    out,
                    tick.now,
                    origin,
                    Draft {
                        phase: Phase::StandDown,
                        action,
                        target,
                        reason,
                        evidence,
                        disposition: Disposition::DryRun,
                        follows: None,
                    },
                );
            }
            continue;
        }
        memory.converging.remove(idx);
        emit_as(
            memory,
            out,
            tick.now,
            origin,
            Draft {
                phase: Phase::StandDown,
                action,
                target: target.clone(),
                reason,
                evidence,
                disposition: Disposition::Execute,
                follows: None,
            },
        );
        memory.apply_effect(action, &target, EffectOwner::Engine);
    }
}
