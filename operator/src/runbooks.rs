//! The runbook of every Event the operator emits that needs a human.
//!
//! Warning Events need a person; each Warning reason maps to a page of
//! `runbooks/`, and the Event's note ends with `; runbook: runbooks/<file>`
//! (in the note, not an annotation: `kubectl describe` and `kubectl get
//! events` show the note and nothing else). Normal Events carry no link.
//! [`crate::controller::Context::event_for`] adds the link from
//! [`WARNING_EVENT_RUNBOOKS`]; playbook decisions pick theirs by tier, guard
//! and action ([`decision_event`]). The tests fail when a Warning emission has
//! no mapping or the runbook file is missing.

use roomkeeper_playbook::{ActionKind, Decision, Disposition, Guard};

/// The longest Event note the operator writes (the API server refuses more
/// than 1 KiB; the runbook link is kept, the text before it is cut).
pub const NOTE_MAX: usize = 1000;

/// What a Warning note ends with, before the runbook's file name.
pub const MARKER: &str = "; runbook: runbooks/";

/// Reasons of the operator's Warning Events and their runbooks.
pub const WARNING_EVENT_RUNBOOKS: &[(&str, &str)] = &[
    ("ApprovalRequested", "approval-requested.md"),
    ("CommittedEntriesLost", "RoomkeeperCommittedEntriesLost.md"),
    ("Deleting", "cluster-deleting.md"),
    ("FailoverAwaitingApproval", "manual-command-refused.md"),
    ("FailoverFailed", "manual-command-refused.md"),
    ("FailoverPending", "manual-command-refused.md"),
    ("FailoverRefused", "manual-command-refused.md"),
    ("InvalidSpec", "invalid-spec.md"),
    ("PlaybookActionFailed", "playbook-action-failed.md"),
    // The default; decision_event picks the tier's or guard's page.
    ("PlaybookDecision", "playbook-page-human.md"),
    ("RaftPlaintextHeld", "raft-tls-upgrade.md"),
    ("RegionApiUnreachable", "region-api-unreachable.md"),
    ("RegionCleanupSkipped", "region-cleanup-skipped.md"),
    ("SwitchoverAwaitingApproval", "manual-command-refused.md"),
    ("SwitchoverFailed", "manual-command-refused.md"),
    ("SwitchoverPending", "manual-command-refused.md"),
    ("SwitchoverRefused", "manual-command-refused.md"),
    ("VoterMove", "tier-t3-evacuate.md"),
    ("WipedVolume", "wiped-volume.md"),
];

/// The runbook of tier level 2, 3 and 4 decisions.
pub const TIER_RUNBOOKS: &[(u8, &str)] = &[
    (2, "tier-t2-move.md"),
    (3, "tier-t3-evacuate.md"),
    (4, "tier-t4-protect.md"),
];

/// The runbook of a Warning reason.
pub fn warning_runbook(reason: &str) -> Option<&'static str> {
    WARNING_EVENT_RUNBOOKS
        .iter()
        .find(|(r, _)| *r == reason)
        .map(|(_, f)| *f)
}

/// `body` cut to fit [`NOTE_MAX`] with the runbook link after it.
pub fn with_runbook(body: &str, file: &str) -> String {
    let suffix = format!("{MARKER}{file}");
    let room = NOTE_MAX.saturating_sub(suffix.chars().count());
    let mut note: String = body.chars().take(room).collect();
    note.push_str(&suffix);
    note
}

/// The note an Event is published with: a Warning gets its reason's runbook
/// unless the note already names one.
pub fn annotate(reason: &str, warning: bool, note: String) -> String {
    if !warning || note.contains(MARKER) {
        return note.chars().take(NOTE_MAX).collect();
    }
    match warning_runbook(reason) {
        Some(file) => with_runbook(&note, file),
        None => {
            tracing::warn!(reason, "Warning Event without a runbook mapping");
            note.chars().take(NOTE_MAX).collect()
        }
    }
}

/// Guards whose block needs a person rather than time: the controller's view,
/// quorum safety, budgets spent. Pacing guards (cooldown, rate limit, back-off,
/// one region at a time, approval gate), a deliberate pause and a room on air
/// (live window) do not.
fn guard_runbook(guard: Guard) -> Option<&'static str> {
    match guard {
        Guard::Quarantined | Guard::RestartBudget => Some("tier-t1-heal.md"),
        Guard::MajorityVisible
        | Guard::StaleObservation
        | Guard::NeverBelowQuorum
        | Guard::NoLeader
        | Guard::FailureBudget
        | Guard::InvalidPlaybook => Some("RoomkeeperPlaybookGuardBlocking.md"),
        Guard::Paused
        | Guard::Cooldown
        | Guard::RateLimit
        | Guard::OneRegionAtATime
        | Guard::ApprovalGate
        | Guard::OperatorCommand
        | Guard::RestartBackOff
        | Guard::LiveWindow => None,
    }
}

/// A playbook decision as an Event: whether it is a Warning, and its note
/// (with the runbook of a page, a guard that needs a person, or the tier).
pub fn decision_event(d: &Decision) -> (bool, String) {
    let file = if matches!(d.action, ActionKind::PageHuman) {
        Some("playbook-page-human.md")
    } else if let Some(f) = match &d.disposition {
        Disposition::Suppressed { guard, .. } => guard_runbook(*guard),
        _ => None,
    } {
        Some(f)
    } else {
        d.level.and_then(|l| {
            TIER_RUNBOOKS
                .iter()
                .find(|(level, _)| *level == l)
                .map(|(_, f)| *f)
        })
    };
    match file {
        Some(f) => (true, with_runbook(&d.to_string(), f)),
        None => (false, d.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf()
    }

    #[test]
    fn every_mapped_runbook_exists() {
        let dir = repo().join("runbooks");
        let files = WARNING_EVENT_RUNBOOKS
            .iter()
            .map(|(_, f)| *f)
            .chain(TIER_RUNBOOKS.iter().map(|(_, f)| *f))
            .chain(["tier-t1-heal.md", "RoomkeeperPlaybookGuardBlocking.md"]);
        for f in files {
            let text = std::fs::read_to_string(dir.join(f))
                .unwrap_or_else(|e| panic!("runbooks/{f}: {e}"));
            assert!(text.len() > 200, "runbooks/{f} is nearly empty");
        }
        let reasons: Vec<&str> = WARNING_EVENT_RUNBOOKS.iter().map(|(r, _)| *r).collect();
        let mut sorted = reasons.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, reasons, "one entry per reason, sorted");
    }

    #[test]
    fn warnings_end_with_their_runbook_even_when_long() {
        let note = annotate("WipedVolume", true, "x".repeat(5000));
        assert!(
            note.ends_with("; runbook: runbooks/wiped-volume.md"),
            "{note}"
        );
        assert_eq!(note.chars().count(), NOTE_MAX);
        assert_eq!(annotate("Bootstrapped", false, "ok".into()), "ok");
        // A note that names its runbook keeps it.
        let own = with_runbook("T3 evacuate", "tier-t3-evacuate.md");
        assert_eq!(annotate("PlaybookDecision", true, own.clone()), own);
        // An unmapped Warning still publishes, without a link (the grep test
        // below keeps that from happening).
        assert_eq!(annotate("NoSuchReason", true, "n".into()), "n");
    }

    /// The arguments of every `event_for(` call in the operator's sources:
    /// (file, warning argument, reason argument).
    fn emissions() -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let src = repo().join("operator/src");
        for e in std::fs::read_dir(&src).expect("operator/src") {
            let p = e.expect("entry").path();
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).expect("source");
            let file = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            let mut rest = text.as_str();
            while let Some(i) = rest.find("event_for(") {
                let before = &rest[..i];
                rest = &rest[i + "event_for(".len()..];
                if before.ends_with("fn ") || file == "runbooks.rs" {
                    continue;
                }
                // Split the call's arguments at top-level commas.
                let (mut depth, mut args, mut cur, mut in_str) =
                    (0i32, Vec::new(), String::new(), false);
                let mut prev = ' ';
                for c in rest.chars() {
                    if c == '"' && prev != '\\' {
                        in_str = !in_str;
                    }
                    prev = c;
                    if !in_str {
                        match c {
                            '(' | '[' | '{' => depth += 1,
                            ')' | ']' | '}' if depth == 0 => break,
                            ')' | ']' | '}' => depth -= 1,
                            ',' if depth == 0 => {
                                args.push(cur.trim().to_string());
                                cur.clear();
                                continue;
                            }
                            _ => {}
                        }
                    }
                    cur.push(c);
                }
                args.push(cur.trim().to_string());
                assert!(args.len() >= 3, "{file}: event_for call with {args:?}");
                out.push((file.clone(), args[1].clone(), args[2].clone()));
            }
        }
        out
    }

    #[test]
    fn every_warning_emission_has_a_runbook() {
        let calls = emissions();
        assert!(
            calls.len() >= 20,
            "only {} event_for calls found",
            calls.len()
        );
        let mut problems = Vec::new();
        let mut warnings = 0;
        for (file, warning, reason) in &calls {
            if warning == "false" {
                continue;
            }
            warnings += 1;
            let reasons: Vec<String> = if let Some(lit) =
                reason.strip_prefix('"').and_then(|r| r.strip_suffix('"'))
            {
                vec![lit.to_string()]
            } else if reason == "&format!(\"{kind}{phase}\")" {
                // switchover.rs: Switchover/Failover commands that did not succeed.
                ["Switchover", "Failover"]
                    .iter()
                    .flat_map(|k| ["Pending", "Refused", "Failed"].map(|p| format!("{k}{p}")))
                    .collect()
            } else {
                problems.push(format!("{file}: Warning-capable event with a computed reason {reason}: add it to this test and the table"));
                continue;
            };
            for r in reasons {
                if warning_runbook(&r).is_none() {
                    problems.push(format!(
                        "{file}: Warning reason {r} has no runbook in WARNING_EVENT_RUNBOOKS"
                    ));
                }
            }
        }
        assert!(
            warnings >= 6,
            "only {warnings} Warning-capable emissions: the scan is broken"
        );
        assert!(problems.is_empty(), "{}", problems.join("\n"));

        // Every Event goes through event_for, and event_for through annotate.
        let controller = std::fs::read_to_string(repo().join("operator/src/controller.rs"))
            .expect("controller.rs");
        assert!(controller.contains("crate::runbooks::annotate(reason, warning, note)"));
        for e in std::fs::read_dir(repo().join("operator/src")).expect("src") {
            let p = e.expect("entry").path();
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let n = text.matches("EventType::Warning").count();
            if p.ends_with("runbooks.rs") {
                continue;
            }
            let allowed = usize::from(p.ends_with("controller.rs"));
            assert!(
                n <= allowed,
                "{}: publishes Warning Events outside event_for",
                p.display()
            );
        }
    }

    /// RoomkeeperPlaybookGuardBlocking leaves out exactly the guards whose
    /// blocks are Normal Events here.
    #[test]
    fn the_guard_alert_and_the_warning_events_split_guards_alike() {
        let all = Guard::ALL;
        let mut pacing: Vec<&str> = all
            .iter()
            .filter(|g| guard_runbook(**g).is_none())
            .map(|g| g.name())
            .collect();
        pacing.sort_unstable();
        let rules = std::fs::read_to_string(
            repo().join("charts/roomkeeper-operator/files/roomkeeper-nodes.rules.yaml"),
        )
        .expect("rule file");
        let start = rules
            .find("guard!~\"")
            .expect("the guard alert's exclusion")
            + 8;
        let end = start + rules[start..].find('"').expect("closing quote");
        let mut excluded: Vec<&str> = rules[start..end].split('|').collect();
        excluded.sort_unstable();
        assert_eq!(excluded, pacing);
    }

    fn decision(level: Option<u8>, action: ActionKind, disposition: Disposition) -> Decision {
        Decision {
            id: 7,
            at_ms: 0,
            tier: "move".into(),
            level,
            phase: roomkeeper_playbook::Phase::Escalate,
            action,
            target: roomkeeper_playbook::Target::Node(3),
            reason: "node 3 is down".into(),
            evidence: Vec::new(),
            disposition,
            follows: None,
        }
    }

    #[test]
    fn decisions_that_need_a_person_link_the_right_page() {
        let exec = || Disposition::Execute;
        let (w, note) = decision_event(&decision(
            Some(3),
            ActionKind::ReplaceVotersElsewhere,
            exec(),
        ));
        assert!(
            w && note.ends_with("runbooks/tier-t3-evacuate.md"),
            "{note}"
        );
        let (w, note) = decision_event(&decision(Some(1), ActionKind::PageHuman, exec()));
        assert!(
            w && note.ends_with("runbooks/playbook-page-human.md"),
            "{note}"
        );
        let quarantined = Disposition::Suppressed {
            guard: Guard::RestartBudget,
            why: "3 restarts".into(),
        };
        let (w, note) = decision_event(&decision(Some(1), ActionKind::RestartNode, quarantined));
        assert!(w && note.ends_with("runbooks/tier-t1-heal.md"), "{note}");
        let blind = Disposition::Suppressed {
            guard: Guard::MajorityVisible,
            why: "1 of 3".into(),
        };
        let (w, note) = decision_event(&decision(
            Some(2),
            ActionKind::TransferLeadershipAway,
            blind,
        ));
        assert!(
            w && note.ends_with("runbooks/RoomkeeperPlaybookGuardBlocking.md"),
            "{note}"
        );
        // Routine: a T1 restart, or one held back by its cooldown.
        let (w, note) = decision_event(&decision(Some(1), ActionKind::RestartNode, exec()));
        assert!(!w && !note.contains(MARKER), "{note}");
        let cooling = Disposition::Suppressed {
            guard: Guard::Cooldown,
            why: "30 s".into(),
        };
        assert!(!decision_event(&decision(Some(1), ActionKind::RestartNode, cooling)).0);
    }
}
