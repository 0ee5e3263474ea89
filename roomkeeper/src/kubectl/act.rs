//! The verbs that change something: answers to approvals, pause/resume,
//! switchover/failover (objects the operator carries out once), drills.

use std::path::Path;
use std::time::Duration;

use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use roomkeeper_chaos::drill::DrillManifest;
use roomkeeper_chaos::report::GameDayRecord;
use roomkeeper_operator::approval::FailoverApproval;
use roomkeeper_operator::crd::LiveRoomCluster;
use roomkeeper_operator::drill::{ChaosDrill, ChaosDrillSpec, ChaosDrillStatus};
use roomkeeper_operator::switchover::{
    CommandStatus, Failover, FailoverSpec, Switchover, SwitchoverSpec, AWAITING_APPROVAL,
};
use serde_json::json;

use super::{confirm, print_structured, wait_for, Format, Globals, Kube, KubeContext, PluginError};

/// The field manager of the plugin's patches.
pub(super) const MANAGER: &str = "kubectl-roomkeeper";

fn timeout(g: &Globals) -> Duration {
    Duration::from_secs(g.timeout)
}

/// approve/deny: `spec.decision`, `spec.approvedBy` (the user, as the
/// admission policy requires), `spec.reason`; then waits for the operator.
pub async fn answer(
    kube: &Kube,
    g: &Globals,
    name: &str,
    approve: bool,
    reason: &str,
) -> Result<(), PluginError> {
    let api = kube.api::<FailoverApproval>();
    let Some(fa) = api
        .get_opt(name)
        .await
        .ctx(format!("FailoverApproval {}/{name}", kube.namespace))?
    else {
        // A Switchover or Failover a live window holds for a second person.
        if let Some(done) = answer_command::<Switchover>(kube, g, name, approve).await? {
            return Ok(done);
        }
        if let Some(done) = answer_command::<Failover>(kube, g, name, approve).await? {
            return Ok(done);
        }
        return Err(anyhow::anyhow!(
            "no FailoverApproval, Switchover or Failover {name} in namespace {}",
            kube.namespace
        )
        .into());
    };
    if let Some(d) = fa.spec.decision {
        return Err(PluginError::Refused(format!(
            "{name} was already answered ({d:?} by {}); an answer cannot change",
            fa.spec.approved_by.as_deref().unwrap_or("?")
        )));
    }
    let verb = if approve { "approve" } else { "deny" };
    confirm(
        g,
        &format!(
            "{verb} {name}: {} {} {} of cluster {}",
            fa.spec.tier, fa.spec.action, fa.spec.target, fa.spec.cluster
        ),
    )?;
    let user = kube.whoami().await?;
    let patch = json!({"spec": {"decision": verb, "approvedBy": user, "reason": reason}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .ctx(format!("answering {name}"))?;
    println!("{name}: {verb} sent as {user}");
    let st = wait_for(
        timeout(g),
        &format!("the operator to take the answer to {name}"),
        || {
            let api = api.clone();
            async move {
                let fa = api.get(name).await.ctx(format!("reading {name}"))?;
                Ok(fa
                    .status
                    .filter(|s| s.phase.as_deref().is_some_and(|p| p != "Pending")))
            }
        },
    )
    .await?;
    println!(
        "{name}: {} by {} — {}",
        st.phase.unwrap_or_default(),
        st.by.unwrap_or_default(),
        st.message.unwrap_or_default()
    );
    Ok(())
}

/// A Switchover or Failover, as the approval of a second person sees it.
trait ManualCommand:
    kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    const KIND: &'static str;
    fn requested_by(&self) -> &str;
    fn command_status(&self) -> Option<&CommandStatus>;
}

impl ManualCommand for Switchover {
    const KIND: &'static str = "Switchover";
    fn requested_by(&self) -> &str {
        &self.spec.requested_by
    }
    fn command_status(&self) -> Option<&CommandStatus> {
        self.status.as_ref()
    }
}

impl ManualCommand for Failover {
    const KIND: &'static str = "Failover";
    fn requested_by(&self) -> &str {
        &self.spec.requested_by
    }
    fn command_status(&self) -> Option<&CommandStatus> {
        self.status.as_ref()
    }
}

/// approve on a Switchover/Failover the live-window guard holds: sets
/// `spec.approvedBy` to the user (the admission policy insists, and refuses
/// the requester), then waits for the operator. `None`: no such object.
async fn answer_command<K: ManualCommand>(
    kube: &Kube,
    g: &Globals,
    name: &str,
    approve: bool,
) -> Result<Option<()>, PluginError> {
    let api = kube.api::<K>();
    let Some(obj) =
        api.get_opt(name)
            .await
            .ctx(format!("{} {}/{name}", K::KIND, kube.namespace))?
    else {
        return Ok(None);
    };
    let kind = K::KIND;
    if !approve {
        return Err(PluginError::Usage(format!(
            "a {kind} is withdrawn by deleting it (kubectl delete {} {name}), not denied",
            kind.to_lowercase()
        )));
    }
    let phase = obj.command_status().and_then(|s| s.phase.clone());
    if phase.as_deref() != Some(AWAITING_APPROVAL) {
        return Err(PluginError::Refused(format!(
            "{kind} {name} is {}: only one a live window holds for a second person \
             (phase {AWAITING_APPROVAL}) takes an approval",
            phase.as_deref().unwrap_or("Pending")
        )));
    }
    confirm(
        g,
        &format!(
            "approve {kind} {name}, requested by {}, during a live window",
            obj.requested_by()
        ),
    )?;
    let user = kube.whoami().await?;
    if user == obj.requested_by() {
        return Err(PluginError::Refused(format!(
            "you requested {kind} {name}: someone else approves it"
        )));
    }
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"spec": {"approvedBy": user}})),
    )
    .await
    .ctx(format!("approving {kind} {name}"))?;
    eprintln!("{kind} {name}: approved as {user}; waiting for the operator");
    let st = wait_for(timeout(g), &format!("{kind} {name}"), || {
        let api = api.clone();
        async move {
            let o = api.get(name).await.ctx(format!("reading {name}"))?;
            Ok(o.command_status()
                .filter(|s| !roomkeeper_operator::switchover::is_pending(Some(s)))
                .cloned())
        }
    })
    .await?;
    command_outcome(kind, name, st).map(Some)
}

/// pause/resume: `spec.paused`, then waits until the status says so.
pub async fn pause(
    kube: &Kube,
    g: &Globals,
    cluster: Option<String>,
    paused: bool,
) -> Result<(), PluginError> {
    let lrc = kube.cluster(cluster).await?;
    let name = lrc.name_any();
    let verb = if paused { "pause" } else { "resume" };
    if lrc.spec.paused == paused {
        println!(
            "{name}: already {}",
            if paused { "paused" } else { "running" }
        );
        return Ok(());
    }
    confirm(
        g,
        &format!(
            "{verb} cluster {}/{name}{}",
            kube.namespace,
            if paused {
                " (the operator stops healing it; decisions are only recorded)"
            } else {
                " (the playbook acts again)"
            }
        ),
    )?;
    let api = kube.api::<LiveRoomCluster>();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": paused}})),
    )
    .await
    .ctx(format!("setting spec.paused of {name}"))?;
    let phase = wait_for(timeout(g), &format!("{name} to {verb}"), || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let l = api.get(&name).await.ctx(format!("reading {name}"))?;
            let phase = l.status.and_then(|s| s.phase).unwrap_or_default();
            Ok(((phase == "Paused") == paused).then_some(phase))
        }
    })
    .await?;
    println!("{name}: {verb}d (phase {phase})");
    Ok(())
}

/// Waits for a Switchover/Failover's outcome and turns it into the exit code.
fn command_outcome(kind: &str, name: &str, st: CommandStatus) -> Result<(), PluginError> {
    let msg = st.message.clone().unwrap_or_default();
    match st.phase.as_deref() {
        Some("Succeeded") => {
            println!("{kind} {name}: Succeeded — {msg}");
            Ok(())
        }
        // The request stands; a second person approves it, or the window ends.
        Some(AWAITING_APPROVAL) => {
            println!("{kind} {name}: {AWAITING_APPROVAL} — {msg}");
            Ok(())
        }
        Some("Refused") => Err(PluginError::Refused(format!(
            "{kind} {name}{}: {msg}",
            st.guard
                .as_deref()
                .map(|g| format!(" by guard {g}"))
                .unwrap_or_default()
        ))),
        other => Err(anyhow::anyhow!("{kind} {name}: {} — {msg}", other.unwrap_or("?")).into()),
    }
}

/// A command's outcome is known, or it waits for a second person.
fn settled(s: &CommandStatus) -> bool {
    !roomkeeper_operator::switchover::is_pending(Some(s))
        || s.phase.as_deref() == Some(AWAITING_APPROVAL)
}

pub(super) fn command_name(prefix: &str) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{prefix}-{ms}")
}

pub async fn switchover(
    kube: &Kube,
    g: &Globals,
    cluster: Option<String>,
    to_region: Option<String>,
    to_node: Option<i64>,
    reason: &str,
) -> Result<(), PluginError> {
    let lrc = kube.cluster(cluster).await?;
    let cluster = lrc.name_any();
    let to = match (&to_region, to_node) {
        (Some(r), None) => format!("region {r}"),
        (None, Some(n)) => format!("node {n}"),
        _ => {
            return Err(PluginError::Usage(
                "name exactly one of --to-region and --to-node".into(),
            ))
        }
    };
    confirm(g, &format!("switch leadership of {cluster} over to {to}"))?;
    let user = kube.whoami().await?;
    let name = command_name(&format!("{cluster}-switchover"));
    let obj = Switchover::new(
        &name,
        SwitchoverSpec {
            cluster: cluster.clone(),
            to_node,
            to_region,
            requested_by: user,
            reason: reason.to_string(),
            approved_by: None,
        },
    );
    let api = kube.api::<Switchover>();
    api.create(&PostParams::default(), &obj)
        .await
        .ctx(format!("creating Switchover {name}"))?;
    eprintln!("Switchover {name} created; waiting for the operator");
    let st = wait_for(timeout(g), &format!("Switchover {name}"), || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let o = api.get(&name).await.ctx(format!("reading {name}"))?;
            Ok(o.status.filter(settled))
        }
    })
    .await?;
    command_outcome("Switchover", &name, st)
}

pub async fn failover(
    kube: &Kube,
    g: &Globals,
    cluster: Option<String>,
    region: &str,
    reason: &str,
) -> Result<(), PluginError> {
    let lrc = kube.cluster(cluster).await?;
    let cluster = lrc.name_any();
    confirm(
        g,
        &format!("fail {cluster} over away from region {region} (leadership away, traffic 0, voters replaced)"),
    )?;
    let user = kube.whoami().await?;
    let name = command_name(&format!("{cluster}-failover"));
    let obj = Failover::new(
        &name,
        FailoverSpec {
            cluster: cluster.clone(),
            from_region: region.to_string(),
            requested_by: user,
            reason: reason.to_string(),
            approved_by: None,
        },
    );
    let api = kube.api::<Failover>();
    api.create(&PostParams::default(), &obj)
        .await
        .ctx(format!("creating Failover {name}"))?;
    eprintln!("Failover {name} created; waiting for the operator");
    let st = wait_for(timeout(g), &format!("Failover {name}"), || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let o = api.get(&name).await.ctx(format!("reading {name}"))?;
            Ok(o.status.filter(settled))
        }
    })
    .await?;
    command_outcome("Failover", &name, st)
}

/// The ChaosDrill of this namespace for `file`, refused when the operator cannot run it. With
/// `game_day`, the file's `spec.gameDay` is dropped: the plugin runs the
/// human side ([`super::gameday`]), the operator the drill.
pub(super) fn drill_object(
    kube: &Kube,
    file: &Path,
    cluster: Option<String>,
    game_day: bool,
) -> Result<ChaosDrill, PluginError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let mut manifest = DrillManifest::from_yaml(&text)
        .map_err(|e| PluginError::Usage(format!("drill {}: {e}", file.display())))?;
    if let Some(c) = cluster {
        manifest.spec.target.cluster = c;
    }
    if game_day {
        manifest.spec.game_day = None;
    }
    if let Some(why) = roomkeeper_operator::drill::unsupported(&manifest.spec) {
        return Err(PluginError::Refused(format!(
            "the operator cannot run {} on Kubernetes: {why}",
            file.display()
        )));
    }
    let mut obj = ChaosDrill::new(&manifest.metadata.name, ChaosDrillSpec(manifest.spec));
    obj.metadata.namespace = Some(kube.namespace.clone());
    if !manifest.metadata.labels.is_empty() {
        obj.metadata.labels = Some(manifest.metadata.labels);
    }
    Ok(obj)
}

pub async fn drill_run(
    kube: &Kube,
    g: &Globals,
    file: &Path,
    cluster: Option<String>,
    wait: bool,
) -> Result<(), PluginError> {
    let obj = drill_object(kube, file, cluster, false)?;
    let name = obj.name_any();
    confirm(
        g,
        &format!(
            "run drill {name} against cluster {} (it injects real faults)",
            obj.spec.0.target.cluster
        ),
    )?;
    let api = kube.api::<ChaosDrill>();
    api.create(&PostParams::default(), &obj)
        .await
        .ctx(format!("creating ChaosDrill {name}"))?;
    println!(
        "ChaosDrill {name} created; `kubectl roomkeeper drill report {name}` shows its outcome"
    );
    if wait {
        let secs = obj.spec.0.duration_secs + g.timeout;
        let st = wait_for(Duration::from_secs(secs), &format!("drill {name}"), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let d = api.get(&name).await.ctx(format!("reading {name}"))?;
                Ok(d.status
                    .filter(|s| matches!(s.phase.as_deref(), Some("Completed") | Some("Invalid"))))
            }
        })
        .await?;
        print!("{}", drill_text(&name, &st));
    }
    Ok(())
}

pub async fn drill_list(kube: &Kube, f: Format) -> Result<(), PluginError> {
    let drills = kube
        .api::<ChaosDrill>()
        .list(&ListParams::default())
        .await
        .ctx("listing ChaosDrills")?
        .items;
    if matches!(f, Format::Json | Format::Yaml) {
        let rows: Vec<serde_json::Value> = drills
            .iter()
            .map(|d| json!({"name": d.name_any(), "cluster": d.spec.0.target.cluster, "status": d.status}))
            .collect();
        return print_structured(&rows, f);
    }
    if drills.is_empty() {
        println!("No ChaosDrills in namespace {}", kube.namespace);
        return Ok(());
    }
    println!(
        "{:<28} {:<16} {:<10} {:<8} {:>7} {:>5} {:>7}",
        "NAME", "CLUSTER", "PHASE", "VERDICT", "ACKED", "LOST", "RTO-MS"
    );
    for d in &drills {
        let s = d.status.clone().unwrap_or_default();
        let o = |v: Option<i64>| v.map_or_else(|| "-".into(), |v| v.to_string());
        println!(
            "{:<28} {:<16} {:<10} {:<8} {:>7} {:>5} {:>7}",
            d.name_any(),
            d.spec.0.target.cluster,
            s.phase.unwrap_or_else(|| "Pending".into()),
            s.verdict.unwrap_or_else(|| "-".into()),
            o(s.acked),
            o(s.lost),
            o(s.rto_ms)
        );
    }
    Ok(())
}

fn drill_text(name: &str, s: &ChaosDrillStatus) -> String {
    let o = |v: Option<i64>| v.map_or_else(|| "-".into(), |v| v.to_string());
    let mut t = format!(
        "Drill {name}: {} {}\n",
        s.phase.as_deref().unwrap_or("Pending"),
        s.verdict.as_deref().unwrap_or("")
    );
    if let Some(m) = &s.message {
        t.push_str(&format!("  {m}\n"));
    }
    t.push_str(&format!(
        "  started {} finished {}\n  acknowledged {} lost {} oversold {} unknown {} longest gap {} ms\n",
        s.started_at.as_deref().unwrap_or("-"),
        s.finished_at.as_deref().unwrap_or("-"),
        o(s.acked),
        o(s.lost),
        o(s.oversold),
        o(s.unknown_ops),
        o(s.rto_ms)
    ));
    for (title, items) in [
        ("Faults", &s.faults),
        ("Probes", &s.probes),
        ("Violations", &s.violations),
    ] {
        if !items.is_empty() {
            t.push_str(&format!("  {title}:\n"));
            for i in items {
                t.push_str(&format!("    {i}\n"));
            }
        }
    }
    if let Some(cm) = &s.report_config_map {
        t.push_str(&format!("  Full report: ConfigMap {cm} (report.json)\n"));
    }
    t
}

/// The game-day record `kubectl roomkeeper gameday` kept on the drill.
fn game_day_record(d: &ChaosDrill) -> Option<GameDayRecord> {
    d.annotations()
        .get(super::gameday::RECORD_ANNOTATION)
        .and_then(|v| serde_json::from_str(v).ok())
}

pub async fn drill_report(kube: &Kube, name: &str, f: Format) -> Result<(), PluginError> {
    let d = kube
        .api::<ChaosDrill>()
        .get(name)
        .await
        .ctx(format!("ChaosDrill {}/{name}", kube.namespace))?;
    let s = d.status.clone().unwrap_or_default();
    let game_day = game_day_record(&d);
    match f {
        Format::Json | Format::Yaml => {
            // The status, and the game day's record when there was one.
            let mut v = serde_json::to_value(&s).map_err(anyhow::Error::from)?;
            if let (Some(r), Some(o)) = (game_day, v.as_object_mut()) {
                o.insert(
                    "gameDay".into(),
                    serde_json::to_value(r).map_err(anyhow::Error::from)?,
                );
            }
            print_structured(&v, f)
        }
        _ => {
            print!("{}", drill_text(name, &s));
            if let Some(r) = game_day {
                print!("{}", super::gameday::record_text(&r));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_commands_exit_3_with_the_guard_and_succeeded_ones_0() {
        let refused = CommandStatus {
            phase: Some("Refused".into()),
            message: Some("would leave the shard below quorum".into()),
            guard: Some("neverBelowQuorum".into()),
            ..Default::default()
        };
        let e = command_outcome("Failover", "f1", refused).unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(
            e.to_string()
                .contains("by guard neverBelowQuorum: would leave"),
            "{e}"
        );
        let failed = CommandStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        };
        assert_eq!(
            command_outcome("Failover", "f1", failed)
                .unwrap_err()
                .exit_code(),
            1
        );
        let ok = CommandStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        };
        assert!(command_outcome("Switchover", "s1", ok).is_ok());
    }
}
