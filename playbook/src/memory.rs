//! The engine's memory: past decisions and their outcomes, approvals, which
//! tiers are active for which targets, and the effects in place (drained
//! regions, paused sales).
//!
//! It is plain data passed into [`crate::Engine::decide`] and handed back, so the
//! binding persists it (serde) and a restarted controller carries on where it
//! stopped. The complete decision record belongs in the binding's append-only
//! log; memory keeps what the guards and explanations need.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::decision::{
    ActionOutcome, ApprovalVerdict, Decision, DecisionId, Disposition, Evidence, Guard, Phase,
    Target,
};
use crate::health::NodeId;
use crate::playbook::ActionKind;
use crate::words;

/// How many records memory keeps before pruning old, closed ones.
pub const RECORD_CAP: usize = 512;

/// A decision with what happened to it afterwards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionRecord {
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ActionOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<ApprovalVerdict>,
}

impl DecisionRecord {
    /// Executed and still waiting for its outcome.
    pub fn is_open_action(&self) -> bool {
        self.decision.disposition.is_execute()
            && self.outcome.is_none()
            && !self.decision.action.is_notification()
    }

    /// Waiting for a human's answer.
    pub fn is_open_approval(&self) -> bool {
        matches!(
            self.decision.disposition,
            Disposition::AwaitingApproval { .. }
        ) && self.verdict.is_none()
    }
}

/// A tier's state for one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ActivationPhase {
    /// The trigger held for its hold-down; escalation actions are being taken.
    Active,
    /// The trigger was clear for its stand-down time; stand-down actions are
    /// being taken.
    StandingDown,
}

/// Where one action of an activation stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StepState {
    /// Not yet decided, or to be retried (after a failure, or after a healing
    /// action that did not heal). `afterMs`: not before this time plus the cooldown.
    Pending {
        #[serde(rename = "afterMs", default, skip_serializing_if = "Option::is_none")]
        after_ms: Option<u64>,
    },
    /// Waiting for an approval decision.
    AwaitingApproval {
        #[serde(rename = "decisionId")]
        decision_id: DecisionId,
        #[serde(rename = "expiresAtMs")]
        expires_at_ms: u64,
    },
    /// Decided `execute`; the outcome tells whether it is retried.
    Executed {
        #[serde(rename = "decisionId")]
        decision_id: DecisionId,
    },
    /// Nothing more to do for this activation (done, dry-run, rejected, handed to
    /// a human, or already in effect).
    Finished {
        #[serde(
            rename = "decisionId",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        decision_id: Option<DecisionId>,
    },
}

/// One action of an activation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub action: ActionKind,
    pub state: StepState,
    /// The guard that last suppressed it; a repeat suppression by the same guard
    /// is not recorded again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_suppressed_by: Option<Guard>,
}

impl Step {
    pub(crate) fn new(action: ActionKind) -> Step {
        Step {
            action,
            state: StepState::Pending { after_ms: None },
            last_suppressed_by: None,
        }
    }

    /// Whether nothing is left to do for it.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, StepState::Finished { .. })
    }
}

/// A tier that fired for one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activation {
    pub tier: String,
    pub level: u8,
    pub target: Target,
    pub phase: ActivationPhase,
    /// Since when the trigger has held (at firing).
    pub breached_since_ms: u64,
    pub fired_at_ms: u64,
    /// Since when the trigger has been clear (at stand-down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_since_ms: Option<u64>,
    pub steps: Vec<Step>,
}

/// Why a memory operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    #[error("decision {0} is not in the engine's memory")]
    UnknownDecision(DecisionId),
    #[error("decision {0} is not awaiting approval")]
    NotAwaitingApproval(DecisionId),
    #[error("decision {id} was already answered by {by}")]
    AlreadyAnswered { id: DecisionId, by: String },
    #[error("decision {0} was not executed, so it has no outcome")]
    NotExecuted(DecisionId),
    #[error("decision {0} already has an outcome")]
    OutcomeAlreadyRecorded(DecisionId),
    #[error("an approval needs the name of who approves")]
    MissingApprover,
    #[error("node {0} is not quarantined")]
    NotQuarantined(NodeId),
    #[error("releasing a quarantine needs the name of who releases it")]
    MissingReleaser,
}

/// A node taken out of the engine's hands after its restart budget was spent
/// (`guards.restartBudget`). The engine does not restart it; the bindings keep
/// it out of Raft leadership and buyer traffic. It lifts by itself once the
/// node has been healthy for the restart budget's window, or by
/// [`EngineMemory::release_quarantine`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quarantine {
    pub node: NodeId,
    /// When the engine quarantined it.
    pub since_ms: u64,
    /// The tier whose restart was refused.
    pub tier: String,
    /// Why, in words (restarts and the budget).
    pub reason: String,
    /// The restarts and the node's views behind the decision.
    pub evidence: Vec<Evidence>,
    /// The `pageHuman` decision that told a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_decision: Option<DecisionId>,
    /// Since when the node has been healthy without interruption, as seen at
    /// the engine's ticks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since_ms: Option<u64>,
}

/// An action on a target whose failure budget is spent: no retry before `until_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FailureBlock {
    pub action: ActionKind,
    pub target: Target,
    /// The newest failure counted; failures up to it are spent.
    pub at_ms: u64,
    pub until_ms: u64,
    /// A human was paged about this failure episode (this block, or the one
    /// just before it): a repeat exhaustion right after a block is recorded
    /// but not paged again.
    #[serde(default)]
    pub paged: bool,
}

/// The engine undoing an effect that no tier owns any more (a region left
/// drained, sales left paused): what it last recorded, so a repeat is not
/// recorded again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Converging {
    pub action: ActionKind,
    pub target: Target,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_suppressed_by: Option<Guard>,
    /// Recorded as dry-run already.
    #[serde(default)]
    pub dry_run_recorded: bool,
}

/// Who put an effect (a drained region, paused sales) in place. A tier never
/// undoes an operator's effect: only an operator command does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EffectOwner {
    Engine,
    Operator,
}

/// The engine's memory (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineMemory {
    pub(crate) next_decision_id: DecisionId,
    pub(crate) records: Vec<DecisionRecord>,
    pub(crate) activations: Vec<Activation>,
    /// Regions whose traffic weight the engine or an operator set to 0.
    pub(crate) drained_regions: BTreeMap<String, EffectOwner>,
    /// Whether, and by whom, sales are paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sales_paused: Option<EffectOwner>,
    /// When the engine last paged a human because of the rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_rate_limit_page_ms: Option<u64>,
    /// The validation errors last reported for the playbook, to report them once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) invalid_playbook: Option<String>,
    /// Nodes whose restart budget was spent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) quarantined: BTreeMap<NodeId, Quarantine>,
    /// Actions whose failure budget is spent, until their window passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) failure_blocks: Vec<FailureBlock>,
    /// Effects no tier owns any more that the engine is undoing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) converging: Vec<Converging>,
    /// When an operator released a node's quarantine: restarts before then no
    /// longer count toward its restart budget.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) restart_budget_resets: BTreeMap<NodeId, u64>,
}

impl EngineMemory {
    /// An empty memory (a controller's first start).
    pub fn new() -> EngineMemory {
        EngineMemory {
            next_decision_id: 1,
            ..EngineMemory::default()
        }
    }

    /// The decisions memory holds, oldest first.
    pub fn records(&self) -> &[DecisionRecord] {
        &self.records
    }

    /// One decision's record.
    pub fn record(&self, id: DecisionId) -> Option<&DecisionRecord> {
        self.records.iter().find(|r| r.decision.id == id)
    }

    /// The tiers currently active or standing down, per target.
    pub fn activations(&self) -> &[Activation] {
        &self.activations
    }

    /// Decisions carried out (`execute`) whose outcome has not been recorded. A
    /// restarted binding resumes or closes these with [`Self::record_outcome`].
    pub fn open_actions(&self) -> Vec<&Decision> {
        self.records
            .iter()
            .filter(|r| r.is_open_action())
            .map(|r| &r.decision)
            .collect()
    }

    /// Decisions waiting for a human's approval.
    pub fn pending_approvals(&self) -> Vec<&Decision> {
        self.records
            .iter()
            .filter(|r| r.is_open_approval())
            .map(|r| &r.decision)
            .collect()
    }

    /// Regions whose traffic weight is 0, and who set it.
    pub fn drained_regions(&self) -> &BTreeMap<String, EffectOwner> {
        &self.drained_regions
    }

    /// Whether sales are paused, and by whom.
    pub fn sales_paused(&self) -> Option<EffectOwner> {
        self.sales_paused
    }

    /// Nodes quarantined after their restart budget was spent, with the reason
    /// and evidence. The bindings keep these out of Raft leadership and buyer
    /// traffic; the engine does not restart them.
    pub fn quarantined_nodes(&self) -> &BTreeMap<NodeId, Quarantine> {
        &self.quarantined
    }

    /// Whether a node is quarantined.
    pub fn is_quarantined(&self, node: NodeId) -> bool {
        self.quarantined.contains_key(&node)
    }

    /// A person lifts a node's quarantine (after fixing what made it flap).
    /// Recorded as an operator decision (`recordEvent` on the node); the
    /// engine may restart the node again from its next tick, with a fresh
    /// restart budget (restarts before the release no longer count).
    pub fn release_quarantine(
        &mut self,
        node: NodeId,
        by: &str,
        reason: &str,
        at_ms: u64,
    ) -> Result<Decision, MemoryError> {
        if by.trim().is_empty() {
            return Err(MemoryError::MissingReleaser);
        }
        let q = self
            .quarantined
            .remove(&node)
            .ok_or(MemoryError::NotQuarantined(node))?;
        self.restart_budget_resets.insert(node, at_ms);
        let why = if reason.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", reason.trim().trim_end_matches('.'))
        };
        let d = Decision {
            id: self.take_id(),
            at_ms,
            tier: "operator".into(),
            level: None,
            phase: Phase::Operator {
                requested_by: by.to_string(),
                approved_by: None,
            },
            action: ActionKind::RecordEvent,
            target: Target::Node(node),
            reason: format!(
                "Operator {by} released the quarantine of node {node} (quarantined at {} ms by tier {}){why}. The engine may restart it again.",
                q.since_ms, q.tier
            ),
            evidence: q.evidence,
            disposition: Disposition::Execute,
            follows: q.page_decision,
        };
        Ok(self.push(d))
    }

    /// The region under an open evacuation (executed, no outcome yet), if any.
    pub fn evacuation_in_progress(&self) -> Vec<&str> {
        self.records
            .iter()
            .filter(|r| {
                r.is_open_action() && r.decision.action == ActionKind::ReplaceVotersElsewhere
            })
            .filter_map(|r| match &r.decision.target {
                Target::Region(name) => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Records a human's approval. The next [`crate::Engine::decide`] re-checks the
    /// guards and emits the `execute` decision (or a suppression).
    pub fn approve(&mut self, id: DecisionId, by: &str, at_ms: u64) -> Result<(), MemoryError> {
        self.answer(id, true, by, "", at_ms)
    }

    /// Records a human's rejection; the next decide records it as suppressed by
    /// the approval gate.
    pub fn reject(
        &mut self,
        id: DecisionId,
        by: &str,
        why: &str,
        at_ms: u64,
    ) -> Result<(), MemoryError> {
        self.answer(id, false, by, why, at_ms)
    }

    fn answer(
        &mut self,
        id: DecisionId,
        approved: bool,
        by: &str,
        note: &str,
        at_ms: u64,
    ) -> Result<(), MemoryError> {
        if by.trim().is_empty() {
            return Err(MemoryError::MissingApprover);
        }
        let rec = self
            .records
            .iter_mut()
            .find(|r| r.decision.id == id)
            .ok_or(MemoryError::UnknownDecision(id))?;
        if !matches!(
            rec.decision.disposition,
            Disposition::AwaitingApproval { .. }
        ) {
            return Err(MemoryError::NotAwaitingApproval(id));
        }
        if let Some(v) = &rec.verdict {
            return Err(MemoryError::AlreadyAnswered {
                id,
                by: v.by.clone(),
            });
        }
        rec.verdict = Some(ApprovalVerdict {
            approved,
            by: by.to_string(),
            at_ms,
            note: note.to_string(),
        });
        Ok(())
    }

    /// Records what happened when the binding carried out an `execute` decision.
    /// A failure makes the action eligible for a retry (after the cooldown for
    /// disruptive actions, after `failureBudget.retryAfterMs` for the others)
    /// and counts toward the action's failure budget, not the rate limit; a
    /// restart that succeeded but did not heal the node is retried too.
    pub fn record_outcome(
        &mut self,
        id: DecisionId,
        outcome: ActionOutcome,
    ) -> Result<(), MemoryError> {
        let rec = self
            .records
            .iter_mut()
            .find(|r| r.decision.id == id)
            .ok_or(MemoryError::UnknownDecision(id))?;
        if !rec.decision.disposition.is_execute() {
            return Err(MemoryError::NotExecuted(id));
        }
        if rec.outcome.is_some() {
            return Err(MemoryError::OutcomeAlreadyRecorded(id));
        }
        rec.outcome = Some(outcome.clone());
        let action = rec.decision.action;
        let target = rec.decision.target.clone();
        if !outcome.succeeded() {
            self.recompute_effect(action, &target);
        }
        let retry = !outcome.succeeded() || action == ActionKind::RestartNode;
        for a in &mut self.activations {
            for s in &mut a.steps {
                if s.state == (StepState::Executed { decision_id: id }) {
                    s.state = if retry && !action.is_notification() {
                        StepState::Pending {
                            after_ms: Some(outcome.at_ms()),
                        }
                    } else {
                        StepState::Finished {
                            decision_id: Some(id),
                        }
                    };
                    s.last_suppressed_by = None;
                }
            }
        }
        // A tier that has finished standing down is done now, not at the next tick.
        self.activations.retain(|a| {
            a.phase != ActivationPhase::StandingDown || !a.steps.iter().all(Step::is_finished)
        });
        Ok(())
    }

    pub(crate) fn apply_effect(&mut self, action: ActionKind, target: &Target, owner: EffectOwner) {
        match (action, target) {
            (ActionKind::SetTrafficWeightZero, Target::Region(r)) => {
                self.drained_regions.insert(r.clone(), owner);
            }
            (ActionKind::RestoreTrafficWeight, Target::Region(r)) => {
                self.drained_regions.remove(r);
            }
            (ActionKind::PauseSales, _) => self.sales_paused = Some(owner),
            (ActionKind::ResumeSales, _) => self.sales_paused = None,
            _ => {}
        }
    }

    /// After a failure, sets the effect (a region's traffic weight, the sales
    /// gate) from the newest executed decision on it that did not fail: that
    /// is where the cluster is, or is heading. When every one on record failed,
    /// the effect goes back to what it was before the oldest of them.
    fn recompute_effect(&mut self, action: ActionKind, target: &Target) {
        let owner = |r: &DecisionRecord| match r.decision.phase {
            Phase::Operator { .. } => EffectOwner::Operator,
            _ => EffectOwner::Engine,
        };
        let family: Vec<&DecisionRecord> = self
            .records
            .iter()
            .filter(|r| {
                r.decision.disposition.is_execute()
                    && same_effect(r.decision.action, &r.decision.target, action, target)
            })
            .collect();
        let failed = |r: &&DecisionRecord| matches!(r.outcome, Some(ActionOutcome::Failed { .. }));
        if let Some(r) = family.iter().rev().find(|r| !failed(r)) {
            let (a, t, o) = (r.decision.action, r.decision.target.clone(), owner(r));
            self.apply_effect(a, &t, o);
        } else if let Some(r) = family.first() {
            let (a, t, o) = (r.decision.action, r.decision.target.clone(), owner(r));
            self.undo_effect(a, &t, o);
        }
    }

    fn undo_effect(&mut self, action: ActionKind, target: &Target, owner: EffectOwner) {
        match (action, target) {
            (ActionKind::SetTrafficWeightZero, Target::Region(r)) => {
                self.drained_regions.remove(r);
            }
            (ActionKind::RestoreTrafficWeight, Target::Region(r)) => {
                self.drained_regions.insert(r.clone(), owner);
            }
            (ActionKind::PauseSales, _) => self.sales_paused = None,
            (ActionKind::ResumeSales, _) => self.sales_paused = Some(owner),
            _ => {}
        }
    }

    pub(crate) fn push(&mut self, decision: Decision) -> Decision {
        if self.next_decision_id == 0 {
            self.next_decision_id = 1;
        }
        self.next_decision_id = self.next_decision_id.max(decision.id + 1);
        self.records.push(DecisionRecord {
            decision: decision.clone(),
            outcome: None,
            verdict: None,
        });
        decision
    }

    pub(crate) fn take_id(&mut self) -> DecisionId {
        if self.next_decision_id == 0 {
            self.next_decision_id = 1;
        }
        let id = self.next_decision_id;
        self.next_decision_id += 1;
        id
    }

    /// The newest decision about a target.
    pub fn last_for(&self, target: &Target) -> Option<&DecisionRecord> {
        self.records
            .iter()
            .rev()
            .find(|r| &r.decision.target == target)
    }

    /// "Why did it act / why did it not act" about a target, in words, from the
    /// newest decision memory holds about it. [`crate::Engine::explain`] adds the
    /// live state of hold-downs and guards.
    pub fn explain_last(&self, target: &Target) -> String {
        let Some(rec) = self.last_for(target) else {
            return format!(
                "No decision about {target} is in the engine's memory: no tier's trigger has held for its hold-down time for it (or the record was pruned; see the decision log)."
            );
        };
        explain_record(rec)
    }

    /// Drops old closed records beyond [`RECORD_CAP`], keeping every open one,
    /// everything within `keep_ms`, and the newest record per target.
    pub(crate) fn prune(&mut self, now_ms: u64, keep_ms: u64) {
        if self.records.len() <= RECORD_CAP {
            return;
        }
        let newest_per_target: BTreeSet<DecisionId> = {
            let mut seen = BTreeSet::new();
            let mut ids = BTreeSet::new();
            for r in self.records.iter().rev() {
                if seen.insert(r.decision.target.clone()) {
                    ids.insert(r.decision.id);
                }
            }
            ids
        };
        let in_steps: BTreeSet<DecisionId> = self
            .activations
            .iter()
            .flat_map(|a| a.steps.iter())
            .filter_map(|s| match s.state {
                StepState::AwaitingApproval { decision_id, .. }
                | StepState::Executed { decision_id } => Some(decision_id),
                _ => None,
            })
            .collect();
        let mut excess = self.records.len() - RECORD_CAP;
        let cutoff = now_ms.saturating_sub(keep_ms);
        self.records.retain(|r| {
            if excess == 0 {
                return true;
            }
            let keep = r.is_open_action()
                || r.is_open_approval()
                || r.decision.at_ms >= cutoff
                || newest_per_target.contains(&r.decision.id)
                || in_steps.contains(&r.decision.id);
            if !keep {
                excess -= 1;
            }
            keep
        });
    }
}

/// Whether two actions set the same effect: the traffic weight of one region,
/// or the sales gate.
fn same_effect(a: ActionKind, at: &Target, b: ActionKind, bt: &Target) -> bool {
    use ActionKind::{PauseSales, RestoreTrafficWeight, ResumeSales, SetTrafficWeightZero};
    match (a, b) {
        (PauseSales | ResumeSales, PauseSales | ResumeSales) => true,
        (
            SetTrafficWeightZero | RestoreTrafficWeight,
            SetTrafficWeightZero | RestoreTrafficWeight,
        ) => at == bt,
        _ => false,
    }
}

/// A decision record in words.
pub(crate) fn explain_record(rec: &DecisionRecord) -> String {
    let d = &rec.decision;
    let who = match &d.phase {
        Phase::Operator {
            requested_by,
            approved_by,
        } => match approved_by {
            Some(a) => format!("an operator command from {requested_by}, approved by {a},"),
            None => format!("an operator command from {requested_by}"),
        },
        _ => match d.level {
            Some(l) => format!("tier T{l} {}", d.tier),
            None => format!("tier {}", d.tier),
        },
    };
    let mut out = format!(
        "Decision #{} at {} ms: {who} decided to {} {}. Reason: {}",
        d.id,
        d.at_ms,
        d.action.name(),
        d.target,
        d.reason
    );
    match &d.disposition {
        Disposition::Execute if d.action.is_notification() && rec.outcome.is_none() => {
            out.push_str(" It acted: the binding issued it.");
        }
        Disposition::Execute => {
            out.push_str(" It acted: the decision was to execute.");
            match &rec.outcome {
                Some(ActionOutcome::Succeeded { at_ms, detail }) => out.push_str(&format!(
                    " The action succeeded {} later{}.",
                    words::duration(at_ms.saturating_sub(d.at_ms)),
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {detail}")
                    }
                )),
                Some(ActionOutcome::Failed { at_ms, error }) => out.push_str(&format!(
                    " The action failed {} later: {error}.",
                    words::duration(at_ms.saturating_sub(d.at_ms))
                )),
                None => out.push_str(" Its outcome has not been reported yet."),
            }
        }
        Disposition::DryRun => out.push_str(
            " It did not act: the playbook is in dry-run, so the decision was recorded only.",
        ),
        Disposition::AwaitingApproval { expires_at_ms } => match &rec.verdict {
            None => out.push_str(&format!(
                " It has not acted yet: it is waiting for approval until {expires_at_ms} ms."
            )),
            Some(v) if v.approved => out.push_str(&format!(
                " It was approved by {} at {} ms; the next decision carries it out.",
                v.by, v.at_ms
            )),
            Some(v) => out.push_str(&format!(
                " It was rejected by {} at {} ms{}.",
                v.by,
                v.at_ms,
                if v.note.is_empty() {
                    String::new()
                } else {
                    format!(": {}", v.note)
                }
            )),
        },
        Disposition::Suppressed { guard, why } => {
            out.push_str(&format!(
                " It did not act: guard {guard} stopped it — {why}"
            ));
            if !why.ends_with('.') {
                out.push('.');
            }
        }
    }
    if !d.evidence.is_empty() {
        out.push_str(" Evidence: ");
        out.push_str(&evidence_words(&d.evidence));
        out.push('.');
    }
    out
}

pub(crate) fn evidence_words(evidence: &[Evidence]) -> String {
    let parts: Vec<String> = evidence
        .iter()
        .map(|e| match &e.threshold {
            Some(t) => format!("{} = {} (threshold {t})", e.signal, e.value),
            None => format!("{} = {}", e.signal, e.value),
        })
        .collect();
    parts.join("; ")
}
