//! `kubectl roomkeeper explain`: why the playbook did or did not act, per
//! tier and guard. No second evaluator: the words are the engine's own —
//! its memory (the ConfigMap `<cluster>-playbook-memory` the operator keeps)
//! explains each target's newest decision ([`EngineMemory::explain_last`]),
//! [`Engine::budgets`] says what is left of every guard's budget, and the
//! cluster's `status.decisions` names the guards that blocked.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use roomkeeper_operator::crd::FailoverPlaybook;
use roomkeeper_playbook::{Engine, EngineMemory, Playbook, Target};
use serde::Serialize;

use super::{print_structured, Format, Kube, KubeContext, PluginError};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub cluster: String,
    pub playbook: String,
    pub automation: String,
    pub tiers: Vec<TierExplanation>,
    pub guards: Vec<String>,
    pub blocked: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierExplanation {
    pub tier: String,
    pub trigger: String,
    /// Targets the tier is active on, with the engine's explanation of each.
    pub active: Vec<String>,
    /// The engine's words about the tier's newest decision, if it has one.
    pub last: Option<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The explanation from a playbook, the engine memory and the status's
/// decisions (pure; `run` reads them from the API server).
pub fn explain(
    cluster: &str,
    playbook_name: &str,
    playbook: &Playbook,
    memory: &EngineMemory,
    automation: &str,
    decisions: &[roomkeeper_operator::history::DecisionEntry],
    now: u64,
) -> Explanation {
    let mut tiers: Vec<_> = playbook.tiers.iter().collect();
    tiers.sort_by_key(|t| t.level);
    let tiers = tiers
        .into_iter()
        .map(|t| {
            let active: Vec<String> = memory
                .activations()
                .iter()
                .filter(|a| a.tier == t.name)
                .map(|a| {
                    format!(
                        "{} ({:?}): {}",
                        a.target,
                        a.phase,
                        memory.explain_last(&a.target)
                    )
                })
                .collect();
            let last = memory
                .records()
                .iter()
                .rev()
                .find(|r| r.decision.tier == t.name)
                .map(|r| memory.explain_last(&r.decision.target));
            TierExplanation {
                tier: format!("T{} {}", t.level, t.name),
                trigger: format!(
                    "{} held {} ms (stands down after {} ms clear); actions {:?}{}",
                    serde_json::to_string(&t.trigger.condition).unwrap_or_default(),
                    t.trigger.for_ms,
                    t.trigger.clear_for_ms,
                    t.actions,
                    if t.approval.is_some() {
                        ", with a person's approval"
                    } else {
                        ""
                    }
                ),
                active,
                last,
            }
        })
        .collect();
    let b = Engine::budgets(playbook, memory, now);
    let mut guards = vec![format!(
        "rate limit: {} of {} disruptive actions used in the last {} ms, {} left",
        b.rate_limit_used, b.rate_limit_max, b.rate_limit_window_ms, b.rate_limit_remaining
    )];
    for c in &b.cooldowns {
        guards.push(format!(
            "cooldown: {:?} on {} may run again in {} ms",
            c.action,
            c.target,
            c.until_ms.saturating_sub(now)
        ));
    }
    for f in &b.failure_budgets {
        guards.push(format!(
            "failure budget: {}",
            serde_json::to_string(f).unwrap_or_default()
        ));
    }
    for r in &b.restart_budgets {
        guards.push(format!(
            "restart budget: {}",
            serde_json::to_string(r).unwrap_or_default()
        ));
    }
    for q in &b.quarantined {
        guards.push(format!(
            "quarantined: node {q} — {}",
            memory.explain_last(&Target::Node(*q))
        ));
    }
    let blocked = decisions
        .iter()
        .filter(|d| d.disposition == "suppressed")
        .map(|d| {
            format!(
                "#{} {} {} {} {} blocked by {}: {}",
                d.id,
                d.at,
                d.tier,
                d.action,
                d.target,
                d.guard.as_deref().unwrap_or("?"),
                d.reason
            )
        })
        .collect();
    Explanation {
        cluster: cluster.to_string(),
        playbook: playbook_name.to_string(),
        automation: automation.to_string(),
        tiers,
        guards,
        blocked,
    }
}

pub fn render(e: &Explanation) -> String {
    let mut o = format!(
        "Cluster {}: playbook {}, automation {}\n",
        e.cluster, e.playbook, e.automation
    );
    for t in &e.tiers {
        o.push_str(&format!("\n{}\n  trigger: {}\n", t.tier, t.trigger));
        if t.active.is_empty() {
            o.push_str("  not active on any target\n");
        }
        for a in &t.active {
            o.push_str(&format!("  active on {a}\n"));
        }
        match &t.last {
            Some(l) => o.push_str(&format!("  last decision: {l}\n")),
            None => o.push_str(
                "  no decision on record: its trigger has not held for its hold-down time\n",
            ),
        }
    }
    o.push_str("\nGuards:\n");
    for g in &e.guards {
        o.push_str(&format!("  {g}\n"));
    }
    if !e.blocked.is_empty() {
        o.push_str("Blocked decisions (status.decisions):\n");
        for b in &e.blocked {
            o.push_str(&format!("  {b}\n"));
        }
    }
    o
}

pub async fn run(kube: &Kube, cluster: Option<String>, f: Format) -> Result<(), PluginError> {
    let lrc = kube.cluster(cluster).await?;
    let name = lrc.name_any();
    let (pb_name, playbook) = match &lrc.spec.playbook_ref {
        Some(r) => {
            let fpb = kube
                .api::<FailoverPlaybook>()
                .get(&r.name)
                .await
                .ctx(format!("FailoverPlaybook {}", r.name))?;
            (r.name.clone(), fpb.spec.0)
        }
        None => (
            "built-in default".to_string(),
            roomkeeper_playbook::default_playbook(),
        ),
    };
    let cm_name = format!("{name}-playbook-memory");
    let memory = match kube
        .api::<ConfigMap>()
        .get_opt(&cm_name)
        .await
        .ctx(format!("ConfigMap {cm_name}"))?
    {
        Some(cm) => match cm.data.and_then(|d| d.get("memory.json").cloned()) {
            Some(text) => serde_json::from_str::<EngineMemory>(&text)
                .map_err(|e| anyhow::anyhow!("{cm_name}: the engine memory is unreadable: {e}"))?,
            None => EngineMemory::default(),
        },
        None => EngineMemory::default(),
    };
    let automation = match (lrc.spec.paused, lrc.spec.dry_run) {
        (true, _) => "paused",
        (false, true) => "dry run",
        _ => "on",
    };
    let decisions = lrc.status.map(|s| s.decisions).unwrap_or_default();
    let e = explain(
        &name,
        &pb_name,
        &playbook,
        &memory,
        automation,
        &decisions,
        now_ms(),
    );
    match f {
        Format::Json | Format::Yaml => print_structured(&e, f),
        _ => {
            print!("{}", render(&e));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tier_of_the_playbook_is_explained_and_blocked_decisions_name_their_guard() {
        let pb = roomkeeper_playbook::default_playbook();
        let blocked = roomkeeper_operator::history::DecisionEntry {
            id: 7,
            tier: "T1 heal".into(),
            action: "restartNode".into(),
            target: "node 2".into(),
            disposition: "suppressed".into(),
            guard: Some("paused".into()),
            reason: "node 2 is down".into(),
            ..Default::default()
        };
        let e = explain(
            "shop",
            "built-in default",
            &pb,
            &EngineMemory::default(),
            "paused",
            &[blocked],
            1_000,
        );
        assert_eq!(e.tiers.len(), pb.tiers.len());
        let text = render(&e);
        assert!(text.contains("T1 heal"), "{text}");
        assert!(text.contains("blocked by paused: node 2 is down"), "{text}");
        assert!(text.contains("rate limit:"), "{text}");
    }
}
