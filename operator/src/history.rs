//! The decision history in a LiveRoomCluster's status (`status.decisions`):
//! the newest decisions of its playbook engine — taken, blocked, waiting for
//! approval, dry-run — with their outcome, read from the engine memory the
//! operator keeps in the ConfigMap `<cluster>-playbook-memory`, so the
//! history survives an operator restart. Every decision is also an Event
//! (`PlaybookDecision`), which `kubectl get events` shows with the rest.

use roomkeeper_playbook::{ActionOutcome, Disposition, EngineMemory};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How many decisions the status shows (the Events and the memory hold more).
pub const SHOWN: usize = 20;

/// One decision of the playbook engine, as the cluster's status shows it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DecisionEntry {
    pub id: i64,
    /// When it was decided (RFC 3339).
    pub at: String,
    /// `T<level> <tier>`, `operator` for a person's command, `converge`.
    pub tier: String,
    pub action: String,
    pub target: String,
    /// execute, dryRun, awaitingApproval or suppressed.
    pub disposition: String,
    /// The guard that blocked it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    /// Why, in words (shortened; the Event and the memory have it whole).
    pub reason: String,
    /// What happened when it was carried out, or the answer to an approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The newest [`SHOWN`] decisions of `memory`, oldest first.
pub fn entries(memory: &EngineMemory) -> Vec<DecisionEntry> {
    let records = memory.records();
    records[records.len().saturating_sub(SHOWN)..]
        .iter()
        .map(|r| {
            let d = &r.decision;
            let (disposition, guard, why) = match &d.disposition {
                Disposition::Execute => ("execute", None, None),
                Disposition::DryRun => ("dryRun", None, None),
                Disposition::AwaitingApproval { .. } => ("awaitingApproval", None, None),
                Disposition::Suppressed { guard, why } => {
                    ("suppressed", Some(guard.name().to_string()), Some(why))
                }
            };
            let outcome = match (&r.outcome, &r.verdict) {
                (Some(ActionOutcome::Succeeded { detail, .. }), _) => {
                    Some(format!("succeeded: {detail}"))
                }
                (Some(ActionOutcome::Failed { error, .. }), _) => Some(format!("failed: {error}")),
                (None, Some(v)) => Some(format!(
                    "{} by {}",
                    if v.approved { "approved" } else { "rejected" },
                    v.by
                )),
                (None, None) => None,
            };
            let reason = match why {
                Some(w) => format!("{w} — {}", d.reason),
                None => d.reason.clone(),
            };
            DecisionEntry {
                id: i64::try_from(d.id).unwrap_or(i64::MAX),
                at: crate::approval::rfc3339(d.at_ms),
                tier: d
                    .level
                    .map_or_else(|| d.tier.clone(), |l| format!("T{l} {}", d.tier)),
                action: d.action.name().to_string(),
                target: d.target.to_string(),
                disposition: disposition.to_string(),
                guard,
                reason: short(&reason, 300),
                outcome: outcome.map(|o| short(&o, 300)),
            }
        })
        .collect()
}
