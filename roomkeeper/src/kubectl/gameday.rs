//! `kubectl roomkeeper gameday`: a game day on Kubernetes, scored as the
//! local one is (`roomkeeper drill run --game-day`) and by the same state
//! machine ([`crate::drill::gameday::GameDay`]).
//!
//! The plugin takes the cluster's automation out of the way and creates the
//! drill: the playbook runs in dry-run (`spec.dryRun`: it decides and records,
//! and changes nothing), while manual commands still act; the
//! on-call answers on stdin (Enter on detection, the runbook, then
//! `restart <node>` | `transfer <node>` | `resume` | `done`). Each command is
//! carried out through the API server: `restart` deletes the node's pod,
//! `transfer` creates a Switchover, `resume` hands the cluster back to the
//! playbook (`spec.dryRun` as it was before). `spec.paused` would not do:
//! it holds manual commands too, so a `transfer` would wait. The
//! cluster's state is read from the LiveRoomCluster status every second: a
//! member the leader does not hear from is down; no leader is a problem.
//!
//! Scored honestly: only a command that changed that state counts, and only
//! while the drill's faults are still in force. Faults that delete pods are
//! refused, because the StatefulSet brings a deleted pod back by itself: the
//! score would be Kubernetes', not the on-call's. At the end (or on Ctrl-C)
//! automation is handed back, and the record is kept on the ChaosDrill
//! (annotation `roomkeeper.dev/game-day`, shown by `drill report`).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use roomkeeper_chaos::drill::{DrillSpec, FaultKind};
use roomkeeper_chaos::report::GameDayRecord;
use roomkeeper_operator::crd::{LiveRoomCluster, LiveRoomClusterStatus};
use roomkeeper_operator::drill::ChaosDrill;
use roomkeeper_operator::switchover::{Switchover, SwitchoverSpec};
use serde_json::json;

use super::act::MANAGER;
use super::{confirm, Globals, Kube, KubeContext, PluginError};
use crate::drill::gameday::{Command, FaultState, GameDay};

/// The annotation on the ChaosDrill that keeps the scored record (JSON).
pub const RECORD_ANNOTATION: &str = "roomkeeper.dev/game-day";

/// Fault kinds Kubernetes heals by itself: the StatefulSet recreates a
/// deleted pod with no person involved.
const SELF_HEALING: [FaultKind; 4] = [
    FaultKind::KillLeader,
    FaultKind::KillNode,
    FaultKind::FlapNode,
    FaultKind::RollingRestart,
];

/// Why `spec` cannot be a game day on Kubernetes, naming the fields.
pub fn refused(spec: &DrillSpec) -> Option<String> {
    let mut why: Vec<String> = spec
        .faults
        .iter()
        .enumerate()
        .filter(|(_, f)| SELF_HEALING.contains(&f.kind))
        .map(|(i, f)| {
            format!(
                "spec.faults[{i}].kind: {} deletes pods, which the StatefulSet brings back by \
                 itself; a game day would score Kubernetes, not the on-call (use pauseNode, \
                 partitionNode, partitionRegion, quorumLoss, diskStall or wanLatency)",
                f.kind
            )
        })
        .collect();
    if spec.faults.is_empty() {
        why.push("spec.faults: a game day needs a fault for people to find and fix".into());
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// When the first fault is injected and when the last one is healed, in ms
/// after the drill's start (every kind a game day accepts has a duration).
fn fault_window(spec: &DrillSpec) -> (u64, u64) {
    let start = spec.faults.iter().map(|f| f.after_secs).min().unwrap_or(0);
    let end = spec
        .faults
        .iter()
        .map(|f| f.after_secs + f.duration_secs.unwrap_or(spec.duration_secs))
        .max()
        .unwrap_or(spec.duration_secs);
    (start * 1000, end * 1000)
}

/// The cluster's state as its status shows it: members the leader does not
/// hear from are down.
pub fn fault_state(s: &LiveRoomClusterStatus) -> FaultState {
    let down: BTreeSet<u64> = s
        .members
        .iter()
        .filter(|m| m.replicating != Some(true))
        .filter_map(|m| u64::try_from(m.node_id).ok())
        .collect();
    FaultState {
        down,
        has_leader: s.leader_id.is_some(),
    }
}

fn now_ms() -> u64 {
    u64::try_from(k8s_openapi::jiff::Timestamp::now().as_millisecond()).unwrap_or(0)
}

fn unix_ms(rfc3339: &str) -> Option<u64> {
    rfc3339
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .and_then(|t| u64::try_from(t.as_millisecond()).ok())
}

/// Sets `spec.dryRun`: the playbook decides and records but changes nothing.
async fn set_dry_run(kube: &Kube, cluster: &str, dry_run: bool) -> Result<(), PluginError> {
    kube.api::<LiveRoomCluster>()
        .patch(
            cluster,
            &PatchParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"dryRun": dry_run}})),
        )
        .await
        .ctx(format!("setting spec.dryRun={dry_run} on {cluster}"))?;
    Ok(())
}

/// Carries out one command through the API server; says what was done.
async fn carry_out(
    kube: &Kube,
    cluster: &str,
    status: &LiveRoomClusterStatus,
    command: &Command,
    user: &str,
    dry_run_before: bool,
) -> Result<(String, bool), PluginError> {
    Ok(match command {
        Command::Restart(n) => {
            let Some(pod) = status
                .members
                .iter()
                .find(|m| u64::try_from(m.node_id).ok() == Some(*n))
                .map(|m| m.pod.clone())
            else {
                return Ok((format!("restart {n}: no member {n} in the status"), false));
            };
            kube.api::<k8s_openapi::api::core::v1::Pod>()
                .delete(
                    &pod,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::default()
                    },
                )
                .await
                .ctx(format!("deleting pod {pod}"))?;
            (format!("deleted pod {pod} (node {n}); its StatefulSet starts it again"), false)
        }
        Command::Transfer(n) => {
            let name = super::act::command_name(&format!("{cluster}-gameday"));
            let obj = Switchover::new(
                &name,
                SwitchoverSpec {
                    cluster: cluster.to_string(),
                    to_node: i64::try_from(*n).ok(),
                    to_region: None,
                    requested_by: user.to_string(),
                    reason: "game day".into(),
                    approved_by: None,
                },
            );
            kube.api::<Switchover>()
                .create(&PostParams::default(), &obj)
                .await
                .ctx(format!("creating Switchover {name}"))?;
            (format!("Switchover {name} to node {n} created"), false)
        }
        Command::ResumeAutomation => {
            set_dry_run(kube, cluster, dry_run_before).await?;
            (
                format!("automation handed back (spec.dryRun: {dry_run_before})"),
                true,
            )
        }
        Command::Heal => (
            "heal: on Kubernetes the drill heals its faults when their durationSecs run out; nothing done".into(),
            false,
        ),
    })
}

/// Runs the game day to the drill's end and keeps the scored record on the
/// drill; progress goes to stderr, the record is the caller's to print.
pub async fn run(
    kube: &Kube,
    g: &Globals,
    file: &Path,
    cluster: Option<String>,
    runbooks: Option<&Path>,
) -> Result<GameDayRecord, PluginError> {
    let obj = super::act::drill_object(kube, file, cluster, true)?;
    if let Some(why) = refused(&obj.spec.0) {
        return Err(PluginError::Refused(format!(
            "{} cannot be a game day on Kubernetes: {why}",
            file.display()
        )));
    }
    let name = obj.name_any();
    let target = obj.spec.0.target.cluster.clone();
    let (fault_from, fault_to) = fault_window(&obj.spec.0);
    confirm(
        g,
        &format!("game day on {target}: put its playbook in dry-run and run drill {name} (real faults; people must heal it)"),
    )?;
    let user = kube.whoami().await?;
    let lrcs = kube.api::<LiveRoomCluster>();
    let drills = kube.api::<ChaosDrill>();
    let before = lrcs
        .get(&target)
        .await
        .ctx(format!("reading LiveRoomCluster {target}"))?;
    if before.spec.paused {
        return Err(PluginError::Refused(format!(
            "{target} has spec.paused set: manual commands wait while it is, so nothing the \
             on-call does would act; resume it first (kubectl roomkeeper resume {target})"
        )));
    }
    let dry_run_before = before.spec.dry_run;
    set_dry_run(kube, &target, true).await?;
    if let Err(e) = drills
        .create(&PostParams::default(), &obj)
        .await
        .ctx(format!("creating ChaosDrill {name}"))
    {
        set_dry_run(kube, &target, dry_run_before).await?;
        return Err(e);
    }
    eprintln!(
        "Game day on {}/{target}: the playbook runs in dry-run (it decides, records and changes nothing; manual commands act), drill {name} started.",
        kube.namespace
    );
    eprintln!(
        "  Watch:    kubectl roomkeeper status {target} -n {}",
        kube.namespace
    );
    eprintln!("  Diagnose: kubectl roomkeeper explain {target} (what the playbook would do: recorded, not carried out)");
    eprintln!(
        "  Answer here: Enter when you detect the problem, then the runbook you follow, then"
    );
    eprintln!(
        "  restart <node> | transfer <node> | resume | done. The drill's end ends the game day."
    );

    let mut game = GameDay::start(runbooks);
    let mut resumed = false;
    let mut fault_seen = false;
    let mut last_state = String::new();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(obj.spec.0.duration_secs + 300);
    // Ctrl-C ends the game day, not the drill: automation is handed back
    // first, so an interrupted game day never leaves the playbook off.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let now = now_ms();
        let mut completed = false;
        // A failed read is retried at the next second, not the game day's end.
        match futures_util::future::try_join(drills.get(&name), lrcs.get(&target)).await {
            Err(e) => eprintln!(
                "game day: could not read ChaosDrill {name} or LiveRoomCluster {target} ({e}); trying again"
            ),
            Ok((drill, lrc)) => {
                let status = drill.status.unwrap_or_default();
                if let Some(start) = status.started_at.as_deref().and_then(unix_ms) {
                    if !fault_seen && now >= start + fault_from {
                        fault_seen = true;
                        game.fault_started(start + fault_from);
                    }
                    if now >= start + fault_to {
                        game.faults_ended(start + fault_to);
                    }
                }
                let lrc_status = lrc.status.unwrap_or_default();
                let state = fault_state(&lrc_status);
                if fault_seen {
                    let words = format!("{state:?}");
                    if words != last_state {
                        eprintln!(
                            "game day: {} down {:?}, leader {}",
                            target,
                            state.down,
                            lrc_status.leader.as_deref().unwrap_or("none")
                        );
                        last_state = words;
                    }
                }
                game.observe(now, state);
                let (commands, absent) = game.poll(now);
                if absent && !resumed {
                    set_dry_run(kube, &target, dry_run_before).await?;
                    resumed = true;
                    eprintln!("game day: no operator present (stdin closed); human steps skipped, automation handed back to the playbook");
                }
                for c in &commands {
                    // A command the API server refuses is said, not fatal:
                    // it changed nothing, and the score says so.
                    match carry_out(kube, &target, &lrc_status, c, &user, dry_run_before).await {
                        Ok((said, resumes)) => {
                            resumed |= resumes;
                            eprintln!("game day: {said}");
                        }
                        Err(e) => eprintln!("game day: {c:?} failed: {e}"),
                    }
                }
                completed = matches!(status.phase.as_deref(), Some("Completed" | "Invalid"));
            }
        }
        if completed {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            set_dry_run(kube, &target, dry_run_before).await?;
            return Err(PluginError::Timeout(format!(
                "drill {name} did not complete; automation handed back"
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut ctrl_c => {
                set_dry_run(kube, &target, dry_run_before).await?;
                eprintln!(
                    "game day: interrupted; automation handed back (spec.dryRun: {dry_run_before}). \
                     Drill {name} runs to its end (kubectl roomkeeper drill report {name}); nothing was scored"
                );
                return Err(PluginError::Cancelled);
            }
        }
    }
    if !resumed {
        set_dry_run(kube, &target, dry_run_before).await?;
    }
    let record = game.finish(resumed);
    drills
        .patch(
            &name,
            &PatchParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"metadata": {"annotations": {
                RECORD_ANNOTATION: serde_json::to_string(&record).map_err(anyhow::Error::from)?
            }}})),
        )
        .await
        .ctx(format!("keeping the game-day record on ChaosDrill {name}"))?;
    eprintln!("game day: over; automation handed back to the playbook. Review: kubectl roomkeeper drill report {name}");
    Ok(record)
}

/// The record in words: each step's points and why.
pub fn record_text(r: &GameDayRecord) -> String {
    let mut t = format!("Game day: score {}/100 ({})\n", r.score, r.note);
    for s in &r.steps {
        let when = s.after_fault_ms.map_or_else(
            || "-".to_string(),
            |ms| format!("+{:.1} s", ms as f64 / 1000.0),
        );
        t.push_str(&format!(
            "  {:<15} {:>9} {:>3} pts  {}{}\n",
            s.step,
            when,
            s.points,
            s.answer
                .as_deref()
                .map_or_else(String::new, |a| format!("[{a}] ")),
            s.explanation
        ));
    }
    t.push_str(&format!("  Scoring: {}\n", r.scoring));
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomkeeper_operator::crd::MemberStatus;

    fn spec(yaml: &str) -> DrillSpec {
        roomkeeper_chaos::drill::DrillManifest::from_yaml(yaml)
            .expect("drill")
            .spec
    }

    const PAUSE: &str = "apiVersion: roomkeeper.dev/v1alpha1\nkind: ChaosDrill\nmetadata: {name: gd}\nspec:\n  target: {cluster: c}\n  durationSecs: 60\n  faults:\n    - {kind: pauseNode, afterSecs: 5, durationSecs: 40, select: {role: follower}}\n  load: {clients: 2, thinkTimeMs: 50, catalog: {skus: 2, stock: 1000}}\n  hypothesis:\n    probes:\n      - {kind: invariants}\n";

    #[test]
    fn faults_kubernetes_heals_by_itself_are_refused_with_the_field() {
        assert_eq!(refused(&spec(PAUSE)), None);
        let kill = PAUSE.replace(
            "{kind: pauseNode, afterSecs: 5, durationSecs: 40, select: {role: follower}}",
            "{kind: killNode, afterSecs: 5, select: {role: follower}}",
        );
        let why = refused(&spec(&kill)).expect("refused");
        assert!(
            why.contains("spec.faults[0].kind: killNode") && why.contains("StatefulSet"),
            "{why}"
        );
    }

    #[test]
    fn the_fault_window_runs_from_the_first_fault_to_the_last_heal() {
        assert_eq!(fault_window(&spec(PAUSE)), (5_000, 45_000));
    }

    #[test]
    fn members_the_leader_does_not_hear_from_are_down() {
        let member = |id: i64, replicating: Option<bool>| MemberStatus {
            node_id: id,
            pod: format!("p-{id}"),
            region: "a".into(),
            role: "voter".into(),
            lag: None,
            matched_index: None,
            replicating,
        };
        let s = LiveRoomClusterStatus {
            leader_id: Some(1),
            members: vec![
                member(1, Some(true)),
                member(2, Some(false)),
                member(3, None),
            ],
            ..Default::default()
        };
        let st = fault_state(&s);
        assert_eq!(st.down, [2, 3].into());
        assert!(st.has_leader);
        let none = fault_state(&LiveRoomClusterStatus::default());
        assert!(!none.has_leader && none.down.is_empty());
    }
}
