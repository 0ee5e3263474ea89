//! Approval requests as objects: a tier with `approval` that wants to act
//! makes the engine decide `awaitingApproval`; the operator turns each such
//! decision into a namespaced `FailoverApproval` that on-call answers by
//! setting `spec.decision` (`approve` or `deny`) with `spec.approvedBy` and
//! `spec.reason`. RBAC decides who may (the chart's `roomkeeper-approver`
//! role grants `update`/`patch`); the CRD's CEL rules require a named
//! approver and keep the request and a given answer immutable. The answer
//! goes into the engine memory's one approval path
//! ([`roomkeeper_control::ControlLoop::answer`] → `EngineMemory::approve` /
//! `reject`); the playbook's declared `onTimeout` applies when nobody answers
//! in time. The object's status shows the outcome: when, by whom, and what
//! the engine did then.
//!
//! One object per approval decision, named `<cluster>-approval-<id>`: the
//! engine memory (ConfigMap) survives an operator restart, so the restarted
//! operator finds the same object and reuses it.

// kube's `printcolumn(name = …, type_ = …)` repeats key names by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{CustomResource, KubeSchema, ResourceExt};
use roomkeeper_playbook::{DecisionRecord, Disposition, EngineMemory};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use roomkeeper_control::{ControlLoop, MemoryStore};

use crate::controller::{Context, MANAGER};
use crate::crd::LiveRoomCluster;
use crate::resources::{self, CLUSTER_LABEL};

/// A human's answer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ApprovalAnswer {
    Approve,
    Deny,
}

/// An action of the failover playbook waiting for a person's approval.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "roomkeeper.dev",
    version = "v1alpha1",
    kind = "FailoverApproval",
    namespaced,
    shortname = "fap",
    category = "roomkeeper",
    status = "FailoverApprovalStatus",
    doc = "A playbook action waiting for a person: set spec.decision (approve or deny), spec.approvedBy and spec.reason. Created by the roomkeeper operator.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier"),
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target"),
    printcolumn(name = "Deadline", type_ = "date", json_path = ".spec.deadline"),
    printcolumn(name = "Decision", type_ = "string", json_path = ".spec.decision"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "By", type_ = "string", json_path = ".status.by")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.decision) || (has(self.approvedBy) && self.approvedBy.size() > 0)").message("spec.approvedBy must name who decides (the audit record keeps it)"),
    validation = Rule::new("!has(oldSelf.decision) || (has(self.decision) && self.decision == oldSelf.decision)").message("spec.decision cannot change once given: the operator may already have acted on it; ask for a new decision instead"),
    validation = Rule::new("!has(oldSelf.approvedBy) || (has(self.approvedBy) && self.approvedBy == oldSelf.approvedBy)").message("spec.approvedBy cannot change once given")
)]
pub struct FailoverApprovalSpec {
    /// The LiveRoomCluster whose playbook asks.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.cluster is set by the operator and immutable"))]
    pub cluster: String,
    /// The engine's decision id (see the cluster's status.decisions and Events).
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.decisionId is set by the operator and immutable"))]
    pub decision_id: i64,
    /// The tier that wants to act, as `T<level> <name>`.
    pub tier: String,
    /// The action (`restartNode`, `transferLeadershipAway`, …).
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.action is set by the operator and immutable"))]
    pub action: String,
    /// What it acts on (`node 3`, `region eu-west`).
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.target is set by the operator and immutable"))]
    pub target: String,
    /// Why the engine wants to act, in words, with what it saw.
    pub request_reason: String,
    /// When the engine asked.
    pub requested_at: String,
    /// When the playbook's declared default applies if nobody answers.
    pub deadline: String,
    /// The playbook's declared default at the deadline: `approve` or `reject`.
    pub on_timeout: String,
    /// The answer: `approve` or `deny`. Once given it cannot change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<ApprovalAnswer>,
    /// Who answers; required with `decision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub approved_by: Option<String>,
    /// Why, in the approver's words (kept in the decision record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// What became of the request.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverApprovalStatus {
    /// Pending, Approved, Denied, TimedOut, Withdrawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Who answered (`timeout` when the declared default applied, `engine`
    /// when the request was withdrawn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When the answer was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<String>,
    /// What the engine did with the answer, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The decision that carried the action out (or recorded why not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up_decision_id: Option<i64>,
}

/// The object name of approval decision `id` of `cluster`.
pub fn object_name(cluster: &str, id: u64) -> String {
    format!("{cluster}-approval-{id}")
}

/// Milliseconds since the epoch as RFC 3339.
pub fn rfc3339(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| k8s_openapi::jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| ms.to_string(), |t| t.to_string())
}

/// The request object for an approval decision.
pub fn request(lrc: &LiveRoomCluster, rec: &DecisionRecord, on_timeout: &str) -> FailoverApproval {
    let d = &rec.decision;
    let cluster = resources::cluster_name(lrc);
    let deadline = match d.disposition {
        Disposition::AwaitingApproval { expires_at_ms } => expires_at_ms,
        _ => d.at_ms,
    };
    let mut fa = FailoverApproval::new(
        &object_name(&cluster, d.id),
        FailoverApprovalSpec {
            cluster: cluster.clone(),
            decision_id: i64::try_from(d.id).unwrap_or(i64::MAX),
            tier: d
                .level
                .map_or_else(|| d.tier.clone(), |l| format!("T{l} {}", d.tier)),
            action: d.action.name().to_string(),
            target: d.target.to_string(),
            request_reason: d.reason.chars().take(2000).collect(),
            requested_at: rfc3339(d.at_ms),
            deadline: rfc3339(deadline),
            on_timeout: on_timeout.to_string(),
            decision: None,
            approved_by: None,
            reason: None,
        },
    );
    fa.metadata.namespace = lrc.namespace();
    fa.metadata.labels = Some(resources::labels(&cluster, None));
    fa.metadata.owner_references = kube::Resource::controller_owner_ref(lrc, &()).map(|o| vec![o]);
    fa
}

/// The status an approval object shows for its record in memory.
pub fn status(rec: &DecisionRecord, memory: &EngineMemory) -> FailoverApprovalStatus {
    let Some(v) = &rec.verdict else {
        return FailoverApprovalStatus {
            phase: Some("Pending".into()),
            message: Some(
                "waiting for an answer; at the deadline the playbook's default applies".to_string(),
            ),
            ..Default::default()
        };
    };
    let phase = match (v.by.as_str(), v.approved) {
        ("timeout", _) => "TimedOut",
        ("engine", false) => "Withdrawn",
        (_, true) => "Approved",
        (_, false) => "Denied",
    };
    let follow = memory
        .records()
        .iter()
        .find(|r| r.decision.follows == Some(rec.decision.id));
    let message = match follow {
        None if v.approved => {
            "approved; the engine re-checks every guard at its next tick and then acts".to_string()
        }
        None => format!(
            "not carried out{}",
            if v.note.is_empty() {
                String::new()
            } else {
                format!(": {}", v.note)
            }
        ),
        Some(f) => match (&f.decision.disposition, &f.outcome) {
            (Disposition::Execute, Some(o)) if o.succeeded() => {
                format!("carried out: {}", outcome_text(o))
            }
            (Disposition::Execute, Some(o)) => {
                format!("carried out and failed: {}", outcome_text(o))
            }
            (Disposition::Execute, None) => "being carried out".to_string(),
            (Disposition::Suppressed { guard, why }, _) => {
                format!("not carried out: guard {guard}: {why}")
            }
            (Disposition::DryRun, _) => "dry-run: recorded, not carried out".to_string(),
            (Disposition::AwaitingApproval { .. }, _) => "waiting again".to_string(),
        },
    };
    FailoverApprovalStatus {
        phase: Some(phase.into()),
        by: Some(v.by.clone()),
        answered_at: Some(rfc3339(v.at_ms)),
        message: Some(message),
        follow_up_decision_id: follow.and_then(|f| i64::try_from(f.decision.id).ok()),
    }
}

fn outcome_text(o: &roomkeeper_playbook::ActionOutcome) -> String {
    match o {
        roomkeeper_playbook::ActionOutcome::Succeeded { detail, .. } => detail.clone(),
        roomkeeper_playbook::ActionOutcome::Failed { error, .. } => error.clone(),
    }
}

/// A person's answer found on an object, for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub decision_id: u64,
    pub approved: bool,
    pub by: String,
    pub note: String,
}

/// The answers on `objects` the engine has not heard yet (its record is
/// still open). An answer without a named approver is ignored (the CRD's
/// rule refuses it; an older CRD may not).
pub fn new_answers(objects: &[FailoverApproval], memory: &EngineMemory) -> Vec<Answer> {
    objects
        .iter()
        .filter_map(|fa| {
            let decision = fa.spec.decision?;
            let by = fa.spec.approved_by.clone()?.trim().to_string();
            if by.is_empty() {
                return None;
            }
            let id = u64::try_from(fa.spec.decision_id).ok()?;
            memory
                .record(id)
                .is_some_and(DecisionRecord::is_open_approval)
                .then(|| Answer {
                    decision_id: id,
                    approved: decision == ApprovalAnswer::Approve,
                    by,
                    note: fa.spec.reason.clone().unwrap_or_default(),
                })
        })
        .collect()
}

/// The FailoverApprovals of the cluster.
pub async fn list(
    ctx: &Context,
    ns: &str,
    cluster: &str,
) -> Result<Vec<FailoverApproval>, kube::Error> {
    let api: Api<FailoverApproval> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(&format!("{CLUSTER_LABEL}={cluster}")))
        .await?
        .items)
}

/// Feeds the answers people wrote on the cluster's FailoverApprovals into
/// the engine memory (each once), with an Event each.
pub async fn take_answers<S: MemoryStore>(
    ctx: &Context,
    lrc: &LiveRoomCluster,
    control: &mut ControlLoop,
    objects: &[FailoverApproval],
    now_ms: u64,
    store: &mut S,
) -> Result<(), crate::controller::Error> {
    for a in new_answers(objects, control.memory()) {
        let what = if a.approved { "approved" } else { "denied" };
        match control
            .answer(a.decision_id, a.approved, &a.by, &a.note, now_ms, store)
            .await?
        {
            Ok(()) => {
                ctx.event_for(
                    lrc,
                    false,
                    "ApprovalAnswered",
                    format!(
                        "{} {what} decision #{}{}",
                        a.by,
                        a.decision_id,
                        if a.note.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", a.note)
                        }
                    ),
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(decision = a.decision_id, error = %e, "approval answer not taken")
            }
        }
    }
    Ok(())
}

/// Makes the objects match the memory: a request object for every open
/// approval decision (created once, reused after a restart), and the status
/// of every object whose record memory still holds.
pub async fn publish(
    ctx: &Context,
    lrc: &LiveRoomCluster,
    memory: &EngineMemory,
    on_timeout: &BTreeMap<String, String>,
    existing: &[FailoverApproval],
) -> Result<(), kube::Error> {
    let Some(ns) = lrc.namespace() else {
        return Ok(());
    };
    let cluster = resources::cluster_name(lrc);
    let api: Api<FailoverApproval> = Api::namespaced(ctx.client.clone(), &ns);
    let by_id: BTreeMap<i64, &FailoverApproval> = existing
        .iter()
        .map(|fa| (fa.spec.decision_id, fa))
        .collect();
    for rec in memory.records() {
        if !matches!(
            rec.decision.disposition,
            Disposition::AwaitingApproval { .. }
        ) {
            continue;
        }
        let id = i64::try_from(rec.decision.id).unwrap_or(i64::MAX);
        let name = object_name(&cluster, rec.decision.id);
        let live_status = match by_id.get(&id) {
            Some(fa) => fa.status.clone(),
            None if rec.is_open_approval() => {
                let default = on_timeout
                    .get(&rec.decision.tier)
                    .map_or("approve", String::as_str);
                let obj = request(lrc, rec, default);
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => {
                        ctx.metrics
                            .writes
                            .with_label_values(&["FailoverApproval"])
                            .inc();
                        ctx.event_for(
                            lrc,
                            true,
                            "ApprovalRequested",
                            format!(
                                "{} waits for approval until {}: kubectl patch failoverapproval {name} -n {ns} --type merge -p '{{\"spec\":{{\"decision\":\"approve\",\"approvedBy\":\"<you>\",\"reason\":\"<why>\"}}}}' (or \"deny\"); default at the deadline: {default}",
                                rec.decision, obj.spec.deadline
                            ),
                        )
                        .await;
                    }
                    // Made by an earlier operator whose list we did not see.
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
                None
            }
            None => continue,
        };
        let want = status(rec, memory);
        if live_status.as_ref() != Some(&want) {
            api.patch_status(
                &name,
                &PatchParams::apply(MANAGER),
                &Patch::Merge(json!({ "status": want })),
            )
            .await?;
            ctx.metrics
                .writes
                .with_label_values(&["FailoverApprovalStatus"])
                .inc();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomkeeper_playbook::{ActionKind, ActionOutcome, Decision, Disposition, Phase, Target};

    fn awaiting(id: u64) -> Decision {
        Decision {
            id,
            at_ms: 1_000,
            tier: "heal".into(),
            level: Some(1),
            phase: Phase::Escalate,
            action: ActionKind::RestartNode,
            target: Target::Node(3),
            reason: "node 3 is down by three views".into(),
            evidence: vec![],
            disposition: Disposition::AwaitingApproval {
                expires_at_ms: 61_000,
            },
            follows: None,
        }
    }

    fn memory_with(d: Decision) -> EngineMemory {
        let mut m: EngineMemory = serde_json::from_value(serde_json::json!({
            "nextDecisionId": d.id + 1,
            "records": [{"decision": d}],
            "activations": [],
            "drainedRegions": {}
        }))
        .unwrap();
        assert!(m.record(d.id).is_some_and(DecisionRecord::is_open_approval));
        m.approve(d.id, "alice", 2_000).unwrap();
        m
    }

    #[test]
    fn an_answer_reaches_the_engine_once_and_only_with_a_named_approver() {
        let d = awaiting(7);
        let lrc = LiveRoomCluster::new(
            "shop",
            serde_json::from_value(
                serde_json::json!({"image": "x", "regions": [{"name": "a", "voters": 3}]}),
            )
            .unwrap(),
        );
        let mut fa = request(
            &lrc,
            &DecisionRecord {
                decision: d.clone(),
                outcome: None,
                verdict: None,
            },
            "reject",
        );
        assert_eq!(fa.metadata.name.as_deref(), Some("shop-approval-7"));
        assert_eq!(fa.spec.tier, "T1 heal");
        assert_eq!(fa.spec.target, "node 3");
        assert_eq!(fa.spec.deadline, "1970-01-01T00:01:01Z");
        let mut open: EngineMemory = serde_json::from_value(serde_json::json!({
            "nextDecisionId": 8, "records": [{"decision": d}], "activations": [], "drainedRegions": {}
        }))
        .unwrap();
        assert!(
            new_answers(std::slice::from_ref(&fa), &open).is_empty(),
            "no answer yet"
        );
        fa.spec.decision = Some(ApprovalAnswer::Deny);
        fa.spec.approved_by = Some("  ".into());
        assert!(
            new_answers(std::slice::from_ref(&fa), &open).is_empty(),
            "nobody named"
        );
        fa.spec.approved_by = Some("bob".into());
        fa.spec.reason = Some("the host is being repaired".into());
        let answers = new_answers(std::slice::from_ref(&fa), &open);
        assert_eq!(
            answers,
            vec![Answer {
                decision_id: 7,
                approved: false,
                by: "bob".into(),
                note: "the host is being repaired".into()
            }]
        );
        open.reject(7, "bob", "the host is being repaired", 3_000)
            .unwrap();
        assert!(
            new_answers(std::slice::from_ref(&fa), &open).is_empty(),
            "heard once"
        );
        let s = status(open.record(7).unwrap(), &open);
        assert_eq!(s.phase.as_deref(), Some("Denied"));
        assert_eq!(s.by.as_deref(), Some("bob"));
        assert!(s.message.unwrap().contains("being repaired"));
    }

    #[test]
    fn status_says_what_the_engine_did_after_the_answer() {
        let mut m = memory_with(awaiting(7));
        let s = status(m.record(7).unwrap(), &m);
        assert_eq!(s.phase.as_deref(), Some("Approved"));
        assert!(s.message.unwrap().contains("next tick"));
        // The engine's follow-up decision, carried out.
        let mut follow = awaiting(8);
        follow.disposition = Disposition::Execute;
        follow.follows = Some(7);
        let mut v = serde_json::to_value(&m).unwrap();
        v["records"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"decision": follow}));
        v["nextDecisionId"] = serde_json::json!(9);
        m = serde_json::from_value(v).unwrap();
        m.record_outcome(
            8,
            ActionOutcome::Succeeded {
                at_ms: 3_000,
                detail: "deleted pod shop-a-0".into(),
            },
        )
        .unwrap();
        let s = status(m.record(7).unwrap(), &m);
        assert_eq!(s.follow_up_decision_id, Some(8));
        assert_eq!(
            s.message.as_deref(),
            Some("carried out: deleted pod shop-a-0")
        );
    }
}
