//! Manual switchover and failover as objects. A `Switchover` (planned) moves
//! Raft leadership to a named node or region; a `Failover` (unplanned) moves
//! a region out of the way: leadership away, its traffic weight to 0, its
//! voters replaced in the surviving regions. Each is carried out once, as
//! operator commands of the one control loop
//! ([`roomkeeper_control::ControlLoop::command`]): the engine checks its
//! guards (never below quorum, one region at a time) and records the
//! decision, the binding's `Actuate` carries it out. A request a guard forbids
//! is refused before anything changes, with the guard's reason in the
//! object's status; an action this binding does not carry out yet
//! (`ActError::Unsupported`) refuses it with the runbook to follow. One that
//! only a room's live window holds, under `guards.liveWindow:
//! requireApproval`, waits in phase `AwaitingApproval` for a second person's
//! `spec.approvedBy` (or the window's end) instead of being refused
//! (docs/decisions.md D48).

// kube's `printcolumn(name = …, type_ = …)` repeats key names by design.
#![allow(clippy::duplicated_attributes)]

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{CustomResource, KubeSchema, ResourceExt};
use roomkeeper_control::observation::ClusterObservation;
use roomkeeper_control::{ActError, Actuate, ControlLoop, Journal, MemoryStore};
use roomkeeper_playbook::{
    ActionKind, Decision, Disposition, Guard, LiveWindowPolicy, OperatorCommand, Target,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::controller::{Context, Error, MANAGER};
use crate::crd::LiveRoomCluster;

/// A planned move of Raft leadership to a named node or region.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "roomkeeper.dev",
    version = "v1alpha1",
    kind = "Switchover",
    namespaced,
    shortname = "swo",
    category = "roomkeeper",
    status = "CommandStatus",
    doc = "A planned switchover: Raft leadership of a LiveRoomCluster moves to a named node or region, checked by the playbook engine's guards and carried out once by the operator.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Node", type_ = "integer", json_path = ".spec.toNode"),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.toRegion"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.toNode) != has(self.toRegion)").message("name exactly one of spec.toNode and spec.toRegion"),
    validation = Rule::new("self.cluster == oldSelf.cluster && self.requestedBy == oldSelf.requestedBy && self.reason == oldSelf.reason && has(self.toNode) == has(oldSelf.toNode) && (!has(self.toNode) || self.toNode == oldSelf.toNode) && has(self.toRegion) == has(oldSelf.toRegion) && (!has(self.toRegion) || self.toRegion == oldSelf.toRegion) && (!has(oldSelf.approvedBy) || (has(self.approvedBy) && self.approvedBy == oldSelf.approvedBy))").message("a Switchover is carried out once and cannot be changed (only spec.approvedBy may be given, once); create a new one")
)]
pub struct SwitchoverSpec {
    /// The LiveRoomCluster (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub cluster: String,
    /// The Raft node id that should lead (see `kubectl get lrc -o yaml`, status.members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub to_node: Option<i64>,
    /// The region whose live voter least behind should lead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 30))]
    pub to_region: Option<String>,
    /// Who asks (kept in the decision record).
    #[schemars(length(min = 1, max = 253))]
    pub requested_by: String,
    /// Why, in words (kept in the decision record).
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// A second person who approves it, needed only while the playbook's
    /// `guards.liveWindow: requireApproval` holds it (a room is on air).
    /// Given after the request with `kubectl roomkeeper approve NAME`; the
    /// admission policy makes it the approver's own user name, never the
    /// requester's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub approved_by: Option<String>,
}

/// An unplanned failover away from a region: leadership away, traffic weight
/// 0, voters replaced in the surviving regions.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "roomkeeper.dev",
    version = "v1alpha1",
    kind = "Failover",
    namespaced,
    shortname = "fo",
    category = "roomkeeper",
    status = "CommandStatus",
    doc = "A manual failover away from a region of a LiveRoomCluster: leadership away, traffic weight 0, voters replaced elsewhere; refused before anything changes when a guard of the playbook engine forbids it.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "From", type_ = "string", json_path = ".spec.fromRegion"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.cluster == oldSelf.cluster && self.fromRegion == oldSelf.fromRegion && self.requestedBy == oldSelf.requestedBy && self.reason == oldSelf.reason && (!has(oldSelf.approvedBy) || (has(self.approvedBy) && self.approvedBy == oldSelf.approvedBy))").message("a Failover is carried out once and cannot be changed (only spec.approvedBy may be given, once); create a new one")
)]
pub struct FailoverSpec {
    /// The LiveRoomCluster (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub cluster: String,
    /// The region to move away from.
    #[schemars(length(min = 1, max = 30))]
    pub from_region: String,
    /// Who asks (kept in the decision record).
    #[schemars(length(min = 1, max = 253))]
    pub requested_by: String,
    /// Why, in words (kept in the decision record).
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// A second person who approves it; see the Switchover's `approvedBy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub approved_by: Option<String>,
}

/// What became of a Switchover or Failover.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CommandStatus {
    /// Pending, AwaitingApproval, Succeeded, Refused, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// What happened, or why not, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The guard that refused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    /// The engine decisions that recorded it.
    #[serde(default)]
    pub decision_ids: Vec<i64>,
    /// When it was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
}

/// Whether a command object still waits to be carried out.
pub fn is_pending(status: Option<&CommandStatus>) -> bool {
    status
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Pending" || p == AWAITING_APPROVAL)
}

/// The phase of a command the live-window guard holds for a second person.
pub const AWAITING_APPROVAL: &str = "AwaitingApproval";

/// Whether a command the engine refuses now waits for a second person
/// instead: the live-window guard holds it, the playbook says
/// `requireApproval`, and nobody approved it yet. Returns the status to show.
pub fn awaiting_approval(
    refusal: Option<&(Guard, String)>,
    policy: LiveWindowPolicy,
    command: &OperatorCommand,
    kind: &str,
    name: &str,
) -> Option<CommandStatus> {
    let (guard, why) = refusal?;
    if *guard != Guard::LiveWindow
        || policy != LiveWindowPolicy::RequireApproval
        || command.approved_by.is_some()
    {
        return None;
    }
    // The engine's own hint ("or have someone other than the requester
    // approve it") is said below, with the command that does it.
    let why = why.split("; or have someone").next().unwrap_or(why);
    Some(CommandStatus {
        phase: Some(AWAITING_APPROVAL.into()),
        message: Some(format!(
            "{why}. It waits for someone other than {} to approve it \
             (kubectl roomkeeper approve {name}, which sets the {kind}'s spec.approvedBy), \
             or for the window to end",
            command.requested_by
        )),
        guard: Some(guard.name().to_string()),
        ..Default::default()
    })
}

/// The operator commands a Switchover is, and where leadership goes.
pub fn switchover_command(
    spec: &SwitchoverSpec,
    leader: Option<u64>,
) -> Result<(OperatorCommand, Target), String> {
    let into = match (spec.to_node, &spec.to_region) {
        (Some(n), None) => {
            Target::Node(u64::try_from(n).map_err(|_| format!("spec.toNode {n} is not a node id"))?)
        }
        (None, Some(r)) => Target::Region(r.clone()),
        _ => return Err("name exactly one of spec.toNode and spec.toRegion".into()),
    };
    let leader = leader.ok_or("the shard has no leader to move")?;
    let reason = format!(
        "Switchover to {into}{}",
        if spec.reason.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", spec.reason.trim())
        }
    );
    Ok((
        OperatorCommand {
            action: ActionKind::TransferLeadershipAway,
            target: Target::Node(leader),
            requested_by: spec.requested_by.trim().to_string(),
            approved_by: spec.approved_by.clone(),
            reason,
        },
        into,
    ))
}

/// The operator commands a Failover is, in the order they are carried out.
pub fn failover_commands(spec: &FailoverSpec) -> Vec<OperatorCommand> {
    let region = Target::Region(spec.from_region.clone());
    let reason = format!(
        "Failover away from region {}{}",
        spec.from_region,
        if spec.reason.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", spec.reason.trim())
        }
    );
    [
        ActionKind::TransferLeadershipAway,
        ActionKind::SetTrafficWeightZero,
        ActionKind::ReplaceVotersElsewhere,
    ]
    .into_iter()
    .map(|action| OperatorCommand {
        action,
        target: region.clone(),
        requested_by: spec.requested_by.trim().to_string(),
        approved_by: spec.approved_by.clone(),
        reason: reason.clone(),
    })
    .collect()
}

/// One carried-out (or refused) step, as the status reports it.
pub fn step_status(
    d: &Decision,
    result: Option<&Result<String, ActError>>,
) -> (&'static str, String, Option<String>) {
    match (&d.disposition, result) {
        (Disposition::Suppressed { guard, why }, _) => (
            "Refused",
            format!("{} refused by guard {guard}: {why}", d.action.name()),
            Some(guard.name().to_string()),
        ),
        (_, Some(Ok(detail))) => ("Succeeded", detail.clone(), None),
        // Nothing was changed: the binding cannot do it yet, or the rules
        // of the action (who may take leadership) say no.
        (
            _,
            Some(Err(
                e @ (ActError::Unsupported { .. }
                | ActError::NoCandidate(_)
                | ActError::NotApplicable { .. }),
            )),
        ) => ("Refused", format!("{}: {e}", d.action.name()), None),
        (_, Some(Err(e))) => ("Failed", format!("{}: {e}", d.action.name()), None),
        (_, None) => (
            "Failed",
            format!("{} was not carried out", d.action.name()),
            None,
        ),
    }
}

/// Carries out every pending Switchover and Failover of the cluster, once,
/// through the control loop; writes each one's status. Runs after a tick of
/// `control` on the same observation. While the cluster is paused they wait.
#[allow(clippy::too_many_arguments)]
pub async fn carry_out_pending<A, S, J>(
    ctx: &Context,
    lrc: &LiveRoomCluster,
    control: &mut ControlLoop,
    obs: &ClusterObservation,
    actuator: &mut A,
    store: &mut S,
    journal: &mut J,
) -> Result<(), Error>
where
    A: Actuate,
    S: MemoryStore,
    J: Journal,
{
    let ns = lrc.namespace().ok_or(Error::NoNamespace)?;
    let cluster = lrc.name_any();
    let switchovers: Api<Switchover> = Api::namespaced(ctx.client.clone(), &ns);
    let failovers: Api<Failover> = Api::namespaced(ctx.client.clone(), &ns);
    // A cluster whose CRDs predate these kinds runs its playbook without them.
    let listed = futures::future::try_join(
        switchovers.list(&ListParams::default()),
        failovers.list(&ListParams::default()),
    )
    .await;
    let (switchover_list, failover_list) = match listed {
        Ok(lists) => lists,
        Err(e) => {
            tracing::warn!(%cluster, error = %e, "cannot list Switchovers and Failovers");
            return Ok(());
        }
    };
    let pending_switchovers: Vec<Switchover> = switchover_list
        .items
        .into_iter()
        .filter(|s| s.spec.cluster == cluster && is_pending(s.status.as_ref()))
        .collect();
    let pending_failovers: Vec<Failover> = failover_list
        .items
        .into_iter()
        .filter(|f| f.spec.cluster == cluster && is_pending(f.status.as_ref()))
        .collect();
    if lrc.spec.paused {
        let waiting = CommandStatus {
            phase: Some("Pending".into()),
            message: Some("the cluster is paused (spec.paused): manual commands wait".into()),
            ..Default::default()
        };
        for s in &pending_switchovers {
            write_status(
                ctx,
                &switchovers,
                s.status.as_ref(),
                &s.name_any(),
                &waiting,
            )
            .await?;
        }
        for f in &pending_failovers {
            write_status(ctx, &failovers, f.status.as_ref(), &f.name_any(), &waiting).await?;
        }
        return Ok(());
    }
    for s in pending_switchovers {
        let leader = obs.leader_status().map(|l| l.node_id);
        let status = match switchover_command(&s.spec, leader) {
            Err(why) => CommandStatus {
                phase: Some("Refused".into()),
                message: Some(why),
                decided_at: Some(crate::approval::rfc3339(obs.at_ms)),
                ..Default::default()
            },
            Ok((cmd, into)) => {
                let refusal = control.refusal(&cmd, obs.at_ms);
                if let Some(waiting) = awaiting_approval(
                    refusal.as_ref(),
                    control.playbook().guards.live_window,
                    &cmd,
                    "Switchover",
                    &s.name_any(),
                ) {
                    let live = s.status.as_ref();
                    show_held(
                        ctx,
                        lrc,
                        &switchovers,
                        "Switchover",
                        &s.name_any(),
                        live,
                        &waiting,
                    )
                    .await?;
                    continue;
                }
                let (d, result) = control
                    .command(cmd, obs, Some(&into), actuator, store, journal)
                    .await?;
                let (phase, message, guard) = step_status(&d, result.as_ref());
                CommandStatus {
                    phase: Some(phase.into()),
                    message: Some(message),
                    guard,
                    decision_ids: vec![i64::try_from(d.id).unwrap_or(i64::MAX)],
                    decided_at: Some(crate::approval::rfc3339(d.at_ms)),
                }
            }
        };
        announce(ctx, lrc, "Switchover", &s.name_any(), &status).await;
        write_status(ctx, &switchovers, s.status.as_ref(), &s.name_any(), &status).await?;
    }
    for f in pending_failovers {
        let commands = failover_commands(&f.spec);
        // A guard that forbids any step refuses the whole failover before
        // the first one changes anything; the refused step is recorded.
        let refusals: Vec<Option<(Guard, String)>> = commands
            .iter()
            .map(|c| control.refusal(c, obs.at_ms))
            .collect();
        let refused = refusals.iter().position(Option::is_some);
        if let Some(waiting) = refused.and_then(|i| {
            awaiting_approval(
                refusals[i].as_ref(),
                control.playbook().guards.live_window,
                &commands[i],
                "Failover",
                &f.name_any(),
            )
        }) {
            let live = f.status.as_ref();
            show_held(
                ctx,
                lrc,
                &failovers,
                "Failover",
                &f.name_any(),
                live,
                &waiting,
            )
            .await?;
            continue;
        }
        let steps: Vec<OperatorCommand> = match refused {
            Some(i) => vec![commands[i].clone()],
            None => commands,
        };
        let mut status = CommandStatus {
            decided_at: Some(crate::approval::rfc3339(obs.at_ms)),
            ..Default::default()
        };
        let mut done = Vec::new();
        for cmd in steps {
            let (d, result) = control
                .command(cmd, obs, None, actuator, store, journal)
                .await?;
            status
                .decision_ids
                .push(i64::try_from(d.id).unwrap_or(i64::MAX));
            let (phase, message, guard) = step_status(&d, result.as_ref());
            status.phase = Some(phase.into());
            status.guard = guard;
            if phase == "Succeeded" {
                done.push(message);
                continue;
            }
            status.message = Some(if done.is_empty() {
                message
            } else {
                format!("{}; then {message}", done.join("; "))
            });
            break;
        }
        if status.phase.as_deref() == Some("Succeeded") {
            status.message = Some(done.join("; "));
        }
        announce(ctx, lrc, "Failover", &f.name_any(), &status).await;
        write_status(ctx, &failovers, f.status.as_ref(), &f.name_any(), &status).await?;
    }
    Ok(())
}

/// A command held for a second person: its status, and an Event the first
/// time (it is asked again at every reconcile).
async fn show_held<K>(
    ctx: &Context,
    lrc: &LiveRoomCluster,
    api: &Api<K>,
    kind: &str,
    name: &str,
    live: Option<&CommandStatus>,
    waiting: &CommandStatus,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if live != Some(waiting) {
        announce(ctx, lrc, kind, name, waiting).await;
    }
    write_status(ctx, api, live, name, waiting).await
}

async fn announce(ctx: &Context, lrc: &LiveRoomCluster, kind: &str, name: &str, s: &CommandStatus) {
    let phase = s.phase.as_deref().unwrap_or("Pending");
    ctx.event_for(
        lrc,
        phase != "Succeeded",
        &format!("{kind}{phase}"),
        format!(
            "{kind} {name}: {phase}: {}",
            s.message.as_deref().unwrap_or("")
        ),
    )
    .await;
}

async fn write_status<K>(
    ctx: &Context,
    api: &Api<K>,
    live: Option<&CommandStatus>,
    name: &str,
    want: &CommandStatus,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    // One label for both kinds' status writes.
    if live == Some(want) {
        return Ok(());
    }
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER),
        &Patch::Merge(json!({ "status": want })),
    )
    .await?;
    ctx.metrics
        .writes
        .with_label_values(&["CommandStatus"])
        .inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(node: Option<i64>, region: Option<&str>) -> SwitchoverSpec {
        SwitchoverSpec {
            cluster: "shop".into(),
            to_node: node,
            to_region: region.map(Into::into),
            requested_by: "alice".into(),
            reason: "host maintenance".into(),
            approved_by: None,
        }
    }

    #[test]
    fn a_switchover_moves_leadership_away_from_the_leader_into_its_target() {
        let (cmd, into) = switchover_command(&spec(Some(4), None), Some(1)).unwrap();
        assert_eq!(cmd.action, ActionKind::TransferLeadershipAway);
        assert_eq!(cmd.target, Target::Node(1));
        assert_eq!(into, Target::Node(4));
        assert!(cmd.reason.contains("host maintenance"), "{}", cmd.reason);
        let (_, into) = switchover_command(&spec(None, Some("eu")), Some(1)).unwrap();
        assert_eq!(into, Target::Region("eu".into()));
        assert!(switchover_command(&spec(Some(4), None), None)
            .unwrap_err()
            .contains("no leader"));
        assert!(switchover_command(&spec(Some(4), Some("eu")), Some(1)).is_err());
    }

    #[test]
    fn a_failover_is_leadership_then_traffic_then_voters() {
        let cmds = failover_commands(&FailoverSpec {
            cluster: "shop".into(),
            from_region: "eu".into(),
            requested_by: "bob".into(),
            reason: String::new(),
            approved_by: Some("carol".into()),
        });
        let actions: Vec<ActionKind> = cmds.iter().map(|c| c.action).collect();
        assert_eq!(
            actions,
            [
                ActionKind::TransferLeadershipAway,
                ActionKind::SetTrafficWeightZero,
                ActionKind::ReplaceVotersElsewhere
            ]
        );
        assert!(cmds.iter().all(|c| c.target == Target::Region("eu".into())));
        assert!(cmds
            .iter()
            .all(|c| c.approved_by.as_deref() == Some("carol")));
    }

    #[test]
    fn a_command_the_live_window_holds_waits_for_a_second_person_under_require_approval() {
        let (cmd, _) = switchover_command(&spec(Some(4), None), Some(1)).unwrap();
        let window = (Guard::LiveWindow, "deferred: room r1 is live".to_string());
        let waiting = awaiting_approval(
            Some(&window),
            LiveWindowPolicy::RequireApproval,
            &cmd,
            "Switchover",
            "s1",
        )
        .expect("waits");
        assert_eq!(waiting.phase.as_deref(), Some(AWAITING_APPROVAL));
        assert_eq!(waiting.guard.as_deref(), Some("liveWindow"));
        let msg = waiting.message.unwrap_or_default();
        assert!(
            msg.contains("room r1 is live") && msg.contains("kubectl roomkeeper approve s1"),
            "{msg}"
        );
        assert!(is_pending(Some(&CommandStatus {
            phase: Some(AWAITING_APPROVAL.into()),
            ..Default::default()
        })));
        // Deferring playbooks refuse; an approved command, or another
        // guard, is not held for approval.
        assert!(awaiting_approval(
            Some(&window),
            LiveWindowPolicy::Defer,
            &cmd,
            "Switchover",
            "s1"
        )
        .is_none());
        let approved = OperatorCommand {
            approved_by: Some("carol".into()),
            ..cmd.clone()
        };
        assert!(awaiting_approval(
            Some(&window),
            LiveWindowPolicy::RequireApproval,
            &approved,
            "Switchover",
            "s1"
        )
        .is_none());
        let quorum = (Guard::NeverBelowQuorum, "below quorum".to_string());
        assert!(awaiting_approval(
            Some(&quorum),
            LiveWindowPolicy::RequireApproval,
            &cmd,
            "Switchover",
            "s1"
        )
        .is_none());
        assert!(awaiting_approval(
            None,
            LiveWindowPolicy::RequireApproval,
            &cmd,
            "Switchover",
            "s1"
        )
        .is_none());
    }

    #[test]
    fn pending_until_a_phase_other_than_pending() {
        assert!(is_pending(None));
        assert!(is_pending(Some(&CommandStatus::default())));
        let done = CommandStatus {
            phase: Some("Refused".into()),
            ..Default::default()
        };
        assert!(!is_pending(Some(&done)));
    }
}
