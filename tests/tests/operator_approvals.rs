//! Humans in the loop on a real API server (etcd + kube-apiserver +
//! kube-controller-manager, the kubelet bridge running the node pods as real
//! `roomkeeper node` processes, the operator as a real process under its
//! least-privilege ServiceAccount):
//!
//! - an approval-gated tier creates a `FailoverApproval` and does nothing
//!   until on-call approves it; an identity without the
//!   `roomkeeper-approver` role is refused by the API server (403), one
//!   bound to it succeeds, and `spec.approvedBy` must be the user's own name;
//! - nobody answers: at the deadline the playbook's declared default
//!   happens; an operator restart meanwhile reuses the same object;
//! - a `Switchover` to a named node moves leadership and is recorded; one to
//!   a node that is down, and a `Failover` that would leave the shard below
//!   quorum, are refused with the reason and change nothing;
//! - `spec.paused` records what the playbook would do and changes nothing;
//! - a ChaosDrill's `spec.abort` stops the drill on Kubernetes too.
//!
//! One API server and one three-voter cluster for all of it (a few minutes).
//! Needs the binaries from `scripts/k8s-test-bins.sh` (skipped loudly
//! without them, fails under CI) and a built `roomkeeper` (`ROOMKEEPER_BIN`).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use roomkeeper_e2e::k8s::{client_from_kubeconfig, eventually, init_test_tracing, KubeHarness};
use roomkeeper_e2e::kubelet::KubeletBridge;
use roomkeeper_e2e::operator::{
    apply_yaml, approver_account, leader_client_call, wait_live_window, OperatorEnv,
    OperatorProcess,
};
use roomkeeper_e2e::Signal;
use serde_json::{json, Value};

const NS: &str = "humans";
const LRC: &str = "desk";
/// The `oncall` ServiceAccount's user name: what the admission policies
/// require in `requestedBy` and `approvedBy`.
const ONCALL: &str = "system:serviceaccount:humans:oncall";
/// The approval deadline of the test playbook.
const APPROVAL_TIMEOUT_MS: u64 = 30_000;

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("roomkeeper.dev", "v1alpha1", kind),
        plural,
    )
}

fn api(client: &Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &resource(kind, plural))
}

/// The test playbook: T1 restarts an unhealthy node, but only with a
/// person's approval; nobody answering within 30 s means yes.
fn playbook() -> Value {
    json!({
        "apiVersion": "roomkeeper.dev/v1alpha1",
        "kind": "FailoverPlaybook",
        "metadata": {"name": "ask-first"},
        "spec": {
            "tiers": [{
                "name": "heal",
                "level": 1,
                "trigger": {"condition": {"type": "nodeUnhealthy"}, "forMs": 3000, "clearForMs": 5000},
                "actions": ["restartNode"],
                "approval": {"timeoutMs": APPROVAL_TIMEOUT_MS, "onTimeout": "approve"}
            }],
            "guards": {"cooldownMs": 5000}
        }
    })
}

fn cluster() -> Value {
    json!({
        "apiVersion": "roomkeeper.dev/v1alpha1",
        "kind": "LiveRoomCluster",
        "metadata": {"name": LRC},
        "spec": {
            "image": "roomkeeper:e2e",
            "playbookRef": {"name": "ask-first"},
            "regions": [
                {"name": "a", "voters": 1},
                {"name": "b", "voters": 1},
                {"name": "c", "voters": 1}
            ]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_approve_deny_time_out_and_switch_over_through_objects() {
    init_test_tracing();
    let started = Instant::now();
    let Some(h) = KubeHarness::start_or_skip("operator_approvals").await else {
        return;
    };
    let bin = roomkeeper_e2e::binary();
    let bridge = KubeletBridge::start(h.admin_client(), h.dir(), &bin)
        .await
        .expect("kubelet bridge");
    let mut ops: Vec<OperatorProcess> = Vec::new();
    let result = scenario(&h, &bridge, &bin, &mut ops).await;
    if let Err(e) = result {
        eprintln!("{}", h.dump_logs(30));
        let admin = h.admin_client();
        if let Ok(o) = api(&admin, "LiveRoomCluster", "liveroomclusters")
            .get(LRC)
            .await
        {
            eprintln!("--- status ---\n{:#}", o.data["status"]);
        }
        for (at, note) in events(&admin).await.unwrap_or_default() {
            eprintln!("event {at} {note}");
        }
        for op in &ops {
            eprintln!("--- operator {} ---\n{}", op.identity, op.log_tail(80));
        }
        panic!(
            "approvals e2e failed after {:.0}s: {e:#}",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "approvals e2e passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
}

async fn scenario(
    h: &KubeHarness,
    bridge: &KubeletBridge,
    bin: &std::path::Path,
    ops: &mut Vec<OperatorProcess>,
) -> Result<()> {
    let env = OperatorEnv::prepare(h, bin, NS, &["deploy/approver-rbac.yaml"]).await?;
    let admin = env.admin.clone();
    env.start_operator("op-a", ops)?;
    // On-call may approve (bound to roomkeeper-approver); a viewer may only read.
    let (oncall, viewer) = people(h, &admin).await?;

    apply_yaml(&admin, &serde_json::to_string(&playbook())?, NS).await?;
    apply_yaml(&admin, &serde_json::to_string(&cluster())?, NS).await?;
    let lrcs = api(&admin, "LiveRoomCluster", "liveroomclusters");
    let status = wait_running(&lrcs, 120).await?;
    eprintln!("cluster formed: leader {}", status["leader"]);

    // Each phase hangs another node: a node restarted twice within the
    // restart budget's window would wait for its back-off first.
    let restarted = approval_nothing_happens_until_approved_and_rbac_decides_who(
        &admin, bridge, &lrcs, &oncall, &viewer, ops,
    )
    .await?;
    approval_timeout_applies_the_declared_default_across_an_operator_restart(
        &admin, bridge, &lrcs, restarted, &env, ops,
    )
    .await?;
    switchover_to_a_named_node_moves_leadership_and_is_recorded(&admin, &lrcs, &oncall).await?;
    forbidden_switchover_and_failover_are_refused_with_the_reason(&admin, bridge, &lrcs, &oncall)
        .await?;
    paused_cluster_records_decisions_and_changes_nothing(&admin, bridge, &lrcs).await?;
    if bridge.network_policy_or_skip("operator_approvals: a ChaosDrill's spec.abort") {
        drill_abort_condition_stops_the_drill_on_kubernetes(&admin, &lrcs).await?;
    }
    live_window_holds_a_switchover_for_a_second_person(h, &admin, bridge, &lrcs, &oncall).await?;
    Ok(())
}

/// ServiceAccounts `oncall` (bound to roomkeeper-approver) and `viewer`
/// (may read FailoverApprovals, nothing more), as clients.
async fn people(h: &KubeHarness, admin: &Client) -> Result<(Client, Client)> {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), NS);
    for name in ["oncall", "viewer"] {
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}}))?,
        )
        .await?;
    }
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "roomkeeper-viewer-e2e"},
                "rules": [{"apiGroups": ["roomkeeper.dev"],
                           "resources": ["failoverapprovals", "liveroomclusters"],
                           "verbs": ["get", "list", "watch"]}]
            }))?,
        )
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), NS);
    for (sa, role) in [
        ("oncall", "roomkeeper-approver"),
        ("viewer", "roomkeeper-viewer-e2e"),
    ] {
        bindings
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": format!("{sa}-binding")},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": NS}]
                }))?,
            )
            .await?;
    }
    let oncall = client_from_kubeconfig(&h.service_account_kubeconfig(NS, "oncall").await?).await?;
    let viewer = client_from_kubeconfig(&h.service_account_kubeconfig(NS, "viewer").await?).await?;
    Ok((oncall, viewer))
}

async fn lrc_status(lrcs: &Api<DynamicObject>) -> Value {
    lrcs.get(LRC)
        .await
        .ok()
        .and_then(|o| o.data.get("status").cloned())
        .unwrap_or(Value::Null)
}

async fn wait_running(lrcs: &Api<DynamicObject>, secs: u64) -> Result<Value> {
    eventually(
        Duration::from_secs(secs),
        "readyVoters 3/3 and phase Running",
        || async {
            let s = lrc_status(lrcs).await;
            s["readyVoters"] == json!("3/3")
                && s["phase"] == json!("Running")
                && s["leader"].is_string()
        },
    )
    .await
    .with_context(|| "the cluster did not (re)form")?;
    Ok(lrc_status(lrcs).await)
}

/// A follower voter other than `not`: (pod, node id).
async fn follower(lrcs: &Api<DynamicObject>, not: &[i64]) -> Result<(String, i64)> {
    let s = lrc_status(lrcs).await;
    let leader = s["leaderId"].as_i64();
    s["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == json!("voter"))
        .filter_map(|m| Some((m["pod"].as_str()?.to_string(), m["nodeId"].as_i64()?)))
        .find(|(_, id)| Some(*id) != leader && !not.contains(id))
        .with_context(|| format!("no follower voter in {s}"))
}

async fn pod_uid(admin: &Client, pod: &str) -> Result<String> {
    Api::<Pod>::namespaced(admin.clone(), NS)
        .get(pod)
        .await?
        .metadata
        .uid
        .context("pod uid")
}

/// The FailoverApprovals of the cluster.
async fn approvals(client: &Client) -> Result<Vec<DynamicObject>> {
    Ok(api(client, "FailoverApproval", "failoverapprovals")
        .list(&ListParams::default())
        .await?
        .items)
}

/// Waits for the one open FailoverApproval about `node`.
async fn approval_for(admin: &Client, node: i64, secs: u64) -> Result<DynamicObject> {
    let target = format!("node {node}");
    eventually(
        Duration::from_secs(secs),
        &format!("a FailoverApproval for {target}"),
        || async {
            approvals(admin)
                .await
                .unwrap_or_default()
                .iter()
                .any(|a| a.data["spec"]["target"] == json!(target))
        },
    )
    .await?;
    approvals(admin)
        .await?
        .into_iter()
        .find(|a| a.data["spec"]["target"] == json!(target))
        .context("the approval vanished")
}

async fn approval_for_phase(
    admin: &Client,
    name: &str,
    phase: &str,
    secs: u64,
) -> Result<DynamicObject> {
    let faps = api(admin, "FailoverApproval", "failoverapprovals");
    eventually(
        Duration::from_secs(secs),
        &format!("FailoverApproval {name} {phase}"),
        || async {
            faps.get(name)
                .await
                .is_ok_and(|a| a.data["status"]["phase"] == json!(phase))
        },
    )
    .await
    .with_context(|| format!("{name} never reached {phase}"))?;
    Ok(faps.get(name).await?)
}

async fn approval_nothing_happens_until_approved_and_rbac_decides_who(
    admin: &Client,
    bridge: &KubeletBridge,
    lrcs: &Api<DynamicObject>,
    oncall: &Client,
    viewer: &Client,
    ops: &[OperatorProcess],
) -> Result<i64> {
    let (pod, node) = follower(lrcs, &[]).await?;
    let uid = pod_uid(admin, &pod).await?;
    ensure!(
        bridge.signal_pod_process(NS, &pod, Signal::SIGSTOP),
        "{pod} is not running here"
    );
    eprintln!("[approval] node {node} ({pod}) hangs (SIGSTOP)");
    let fap = approval_for(admin, node, 60).await?;
    let name = fap.metadata.name.clone().context("name")?;
    let spec = &fap.data["spec"];
    ensure!(spec["action"] == json!("restartNode"), "{spec}");
    ensure!(spec["tier"] == json!("T1 heal"), "{spec}");
    ensure!(spec["cluster"] == json!(LRC), "{spec}");
    ensure!(spec["onTimeout"] == json!("approve"), "{spec}");
    ensure!(
        spec["deadline"].is_string() && spec["requestReason"].is_string(),
        "{spec}"
    );
    ensure!(fap.data["status"]["phase"] == json!("Pending"), "{fap:?}");
    // The cluster's status and Events show the waiting decision.
    eventually(
        Duration::from_secs(20),
        "the waiting decision in status.decisions and as an Event",
        || async {
            let in_status = lrc_status(lrcs).await["decisions"]
                .as_array()
                .is_some_and(|d| {
                    d.iter()
                        .any(|e| e["disposition"] == json!("awaitingApproval"))
                });
            in_status
                && events(admin)
                    .await
                    .unwrap_or_default()
                    .iter()
                    .any(|(_, n)| n.contains("awaiting approval"))
        },
    )
    .await?;
    // The request's Warning Event links its runbook, and the operator
    // exports the unanswered request for RoomkeeperApprovalPendingTooLong.
    eventually(
        Duration::from_secs(10),
        "the ApprovalRequested Event links runbooks/approval-requested.md",
        || async {
            events(admin)
                .await
                .unwrap_or_default()
                .iter()
                .any(|(_, n)| {
                    n.contains("waits for approval")
                        && n.ends_with("; runbook: runbooks/approval-requested.md")
                })
        },
    )
    .await?;
    eventually(
        Duration::from_secs(10),
        "roomkeeper_operator_approvals_pending is 1 and the oldest request ages",
        || async {
            ops.iter().any(|o| {
                o.metric("roomkeeper_operator_approvals_pending") == Some(1.0)
                    && o.metric("roomkeeper_operator_approval_pending_oldest_seconds")
                        .is_some_and(|s| s > 0.0)
            })
        },
    )
    .await?;
    // Nothing happens while nobody answers (well within the 30 s deadline).
    tokio::time::sleep(Duration::from_secs(8)).await;
    ensure!(
        pod_uid(admin, &pod).await? == uid,
        "{pod} was restarted without approval"
    );

    // The viewer may read the request but not answer it: the API server says 403.
    let as_viewer = api(viewer, "FailoverApproval", "failoverapprovals");
    as_viewer.get(&name).await.context("the viewer reads it")?;
    let answer = |by: &str| json!({"spec": {"decision": "approve", "approvedBy": by, "reason": "the host is healthy again"}});
    match as_viewer
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(answer("system:serviceaccount:humans:viewer")),
        )
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 403 => {
            eprintln!("[approval] viewer refused: 403 {}", e.message)
        }
        other => bail!("the viewer's approval was not refused with 403: {other:?}"),
    }
    let as_oncall = api(oncall, "FailoverApproval", "failoverapprovals");
    // On-call must sign with their own name (the admission policy), and must sign.
    match as_oncall
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"decision": "approve"}})),
        )
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains("approvedBy") => {}
        other => bail!("an unsigned approval was not refused: {other:?}"),
    }
    match as_oncall
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(answer("somebody-else")),
        )
        .await
    {
        Err(kube::Error::Api(e)) if e.message.contains("your own user name") => {}
        other => bail!("an approval in someone else's name was not refused: {other:?}"),
    }
    ensure!(
        pod_uid(admin, &pod).await? == uid,
        "{pod} was restarted before anyone approved"
    );
    as_oncall
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(answer("system:serviceaccount:humans:oncall")),
        )
        .await
        .context("on-call approves")?;
    let answered_at = Instant::now();
    eventually(
        Duration::from_secs(30),
        &format!("{pod} restarted"),
        || async { pod_uid(admin, &pod).await.is_ok_and(|u| u != uid) },
    )
    .await?;
    eprintln!(
        "[approval] approved by on-call; {pod} recreated {:.1}s later",
        answered_at.elapsed().as_secs_f64()
    );
    let done = approval_for_phase(admin, &name, "Approved", 30).await?;
    let st = &done.data["status"];
    ensure!(
        st["by"] == json!("system:serviceaccount:humans:oncall"),
        "{st}"
    );
    eventually(
        Duration::from_secs(30),
        "the status says it was carried out",
        || async {
            api(admin, "FailoverApproval", "failoverapprovals")
                .get(&name)
                .await
                .is_ok_and(|a| {
                    a.data["status"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("carried out"))
                })
        },
    )
    .await?;
    // An answer, once given, cannot change.
    match as_oncall
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"decision": "deny"}})),
        )
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 422 => {}
        other => bail!("a given answer could be changed: {other:?}"),
    }
    wait_running(lrcs, 90).await?;
    Ok(node)
}

async fn approval_timeout_applies_the_declared_default_across_an_operator_restart(
    admin: &Client,
    bridge: &KubeletBridge,
    lrcs: &Api<DynamicObject>,
    not: i64,
    env: &OperatorEnv,
    ops: &mut Vec<OperatorProcess>,
) -> Result<()> {
    let (pod, node) = follower(lrcs, &[not]).await?;
    let uid = pod_uid(admin, &pod).await?;
    ensure!(bridge.signal_pod_process(NS, &pod, Signal::SIGSTOP));
    eprintln!("[timeout] node {node} ({pod}) hangs; nobody will answer");
    let fap = approval_for(admin, node, 60).await?;
    let name = fap.metadata.name.clone().context("name")?;
    let fap_uid = fap.metadata.uid.clone().context("uid")?;
    let asked = Instant::now();
    // The operator restarts while the request is pending: the new one reuses
    // the same object (memory in the ConfigMap), never a second one.
    ops[0].kill();
    env.start_operator("op-b", ops)?;
    eprintln!("[timeout] operator op-a killed, op-b started");
    tokio::time::sleep(Duration::from_secs(12)).await;
    ensure!(
        pod_uid(admin, &pod).await? == uid,
        "{pod} restarted before the deadline"
    );
    let done =
        approval_for_phase(admin, &name, "TimedOut", APPROVAL_TIMEOUT_MS / 1000 + 60).await?;
    ensure!(
        done.metadata.uid.as_deref() == Some(fap_uid.as_str()),
        "the approval object was replaced"
    );
    let about_node: Vec<DynamicObject> = approvals(admin)
        .await?
        .into_iter()
        .filter(|a| a.data["spec"]["target"] == json!(format!("node {node}")))
        .collect();
    ensure!(
        about_node.len() == 1,
        "{} approval objects for node {node} after the restart",
        about_node.len()
    );
    ensure!(
        done.data["status"]["by"] == json!("timeout"),
        "{:?}",
        done.data
    );
    ensure!(
        asked.elapsed() >= Duration::from_millis(APPROVAL_TIMEOUT_MS - 5_000),
        "timed out early"
    );
    eventually(
        Duration::from_secs(40),
        &format!("{pod} restarted by the default"),
        || async { pod_uid(admin, &pod).await.is_ok_and(|u| u != uid) },
    )
    .await?;
    eprintln!(
        "[timeout] the declared default (approve) restarted {pod} {:.0}s after the request",
        asked.elapsed().as_secs_f64()
    );
    wait_running(lrcs, 90).await?;
    Ok(())
}

async fn command_phase(client: &Client, kind: &str, plural: &str, name: &str) -> Result<Value> {
    let objs = api(client, kind, plural);
    eventually(
        Duration::from_secs(40),
        &format!("{kind} {name} decided"),
        || async {
            objs.get(name).await.is_ok_and(|o| {
                o.data["status"]["phase"]
                    .as_str()
                    .is_some_and(|p| p != "Pending")
            })
        },
    )
    .await?;
    Ok(objs.get(name).await?.data["status"].clone())
}

async fn create(client: &Client, kind: &str, plural: &str, obj: Value) -> Result<()> {
    let obj: DynamicObject = serde_json::from_value(obj)?;
    api(client, kind, plural)
        .create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("creating a {kind}"))?;
    Ok(())
}

async fn switchover_to_a_named_node_moves_leadership_and_is_recorded(
    admin: &Client,
    lrcs: &Api<DynamicObject>,
    oncall: &Client,
) -> Result<()> {
    let (_, to) = follower(lrcs, &[]).await?;
    // Nobody asks in someone else's name: the API server refuses it.
    let spoofed = create(
        oncall,
        "Switchover",
        "switchovers",
        json!({
            "apiVersion": "roomkeeper.dev/v1alpha1", "kind": "Switchover",
            "metadata": {"name": "in-alices-name"},
            "spec": {"cluster": LRC, "toNode": to, "requestedBy": "alice", "reason": "not me"}
        }),
    )
    .await;
    let why = format!(
        "{:#}",
        spoofed
            .err()
            .context("a spoofed requestedBy was accepted")?
    );
    ensure!(
        why.contains("spec.requestedBy must be your own user name") && why.contains(ONCALL),
        "{why}"
    );
    create(
        oncall,
        "Switchover",
        "switchovers",
        json!({
            "apiVersion": "roomkeeper.dev/v1alpha1", "kind": "Switchover",
            "metadata": {"name": "to-follower"},
            "spec": {"cluster": LRC, "toNode": to, "requestedBy": ONCALL, "reason": "host maintenance"}
        }),
    )
    .await?;
    let st = command_phase(admin, "Switchover", "switchovers", "to-follower").await?;
    ensure!(st["phase"] == json!("Succeeded"), "{st}");
    eventually(
        Duration::from_secs(20),
        &format!("node {to} leads"),
        || async { lrc_status(lrcs).await["leaderId"] == json!(to) },
    )
    .await?;
    let id = st["decisionIds"][0].as_i64().context("decision id")?;
    let status = lrc_status(lrcs).await;
    let entry = status["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["id"] == json!(id))
        .with_context(|| format!("decision {id} not in status.decisions"))?;
    ensure!(
        entry["tier"] == json!("operator")
            && entry["disposition"] == json!("execute")
            && entry["reason"]
                .as_str()
                .is_some_and(|r| r.contains("host maintenance")),
        "{entry}"
    );
    eprintln!(
        "[switchover] node {to} leads; recorded as decision {id}: {}",
        st["message"]
    );
    Ok(())
}

async fn forbidden_switchover_and_failover_are_refused_with_the_reason(
    admin: &Client,
    bridge: &KubeletBridge,
    lrcs: &Api<DynamicObject>,
    oncall: &Client,
) -> Result<()> {
    let before = lrc_status(lrcs).await;
    let leader = before["leaderId"].as_i64().context("leader")?;
    let (down_pod, down) = follower(lrcs, &[]).await?;
    ensure!(bridge.signal_pod_process(NS, &down_pod, Signal::SIGSTOP));
    // The leader's region: a failover away from it would leave one live
    // voter of three outside it.
    let leader_region = before["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["nodeId"] == json!(leader))
        .and_then(|m| m["region"].as_str())
        .context("leader region")?
        .to_string();
    // Let the leader notice (replicatingAckMs is 2 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    create(
        oncall,
        "Switchover",
        "switchovers",
        json!({
            "apiVersion": "roomkeeper.dev/v1alpha1", "kind": "Switchover",
            "metadata": {"name": "to-a-hung-node"},
            "spec": {"cluster": LRC, "toNode": down, "requestedBy": ONCALL}
        }),
    )
    .await?;
    create(
        oncall,
        "Failover",
        "failovers",
        json!({
            "apiVersion": "roomkeeper.dev/v1alpha1", "kind": "Failover",
            "metadata": {"name": "away-from-leader"},
            "spec": {"cluster": LRC, "fromRegion": leader_region, "requestedBy": ONCALL, "reason": "drill"}
        }),
    )
    .await?;
    let sw = command_phase(admin, "Switchover", "switchovers", "to-a-hung-node").await?;
    ensure!(sw["phase"] == json!("Refused"), "{sw}");
    ensure!(
        sw["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("node {down}"))),
        "{sw}"
    );
    let fo = command_phase(admin, "Failover", "failovers", "away-from-leader").await?;
    ensure!(fo["phase"] == json!("Refused"), "{fo}");
    ensure!(fo["guard"] == json!("neverBelowQuorum"), "{fo}");
    ensure!(
        fo["message"]
            .as_str()
            .is_some_and(|m| m.contains("below quorum")),
        "{fo}"
    );
    ensure!(
        lrc_status(lrcs).await["leaderId"] == json!(leader),
        "leadership moved although both were refused"
    );
    eprintln!("[refused] switchover: {}", sw["message"]);
    eprintln!("[refused] failover: {}", fo["message"]);
    ensure!(bridge.signal_pod_process(NS, &down_pod, Signal::SIGCONT));
    Ok(())
}

async fn paused_cluster_records_decisions_and_changes_nothing(
    admin: &Client,
    bridge: &KubeletBridge,
    lrcs: &Api<DynamicObject>,
) -> Result<()> {
    wait_running(lrcs, 90).await?;
    lrcs.patch(
        LRC,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await?;
    eventually(Duration::from_secs(30), "phase Paused", || async {
        lrc_status(lrcs).await["phase"] == json!("Paused")
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let uids = || async {
        let mut u: Vec<String> = pods
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        u.sort();
        u
    };
    let before = uids().await;
    // T1 wants to restart a hung node; paused, it may only say so.
    let (pod, node) = follower(lrcs, &[]).await?;
    ensure!(bridge.signal_pod_process(NS, &pod, Signal::SIGSTOP));
    eventually(
        Duration::from_secs(60),
        "a decision suppressed by the pause guard in status.decisions",
        || async {
            lrc_status(lrcs).await["decisions"]
                .as_array()
                .is_some_and(|d| {
                    d.iter().any(|e| {
                        e["guard"] == json!("paused")
                            && e["target"] == json!(format!("node {node}"))
                    })
                })
        },
    )
    .await?;
    ensure!(
        events(admin)
            .await?
            .iter()
            .any(|(_, n)| n.contains("suppressed by paused")),
        "no Event for the paused decision"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(uids().await == before, "a pod changed while paused");
    ensure!(bridge.signal_pod_process(NS, &pod, Signal::SIGCONT));
    eprintln!(
        "[paused] T1's restart of node {node} recorded as suppressed by paused; no pod changed"
    );
    Ok(())
}

/// Sets the live windows of room `live`, homed in region a.
async fn set_live_windows(admin: &Client, bridge: &KubeletBridge, windows: Value) -> Result<()> {
    leader_client_call(
        admin,
        bridge,
        NS,
        LRC,
        "PUT",
        "/v1/rooms/live",
        &json!({"title": "On air", "home_region": "a", "state": "live", "live_windows": windows}),
    )
    .await?;
    Ok(())
}

/// Under `guards.liveWindow: requireApproval`, a planned switchover while a
/// room is on air waits for a second person: the requester cannot approve
/// it (the API server refuses), someone else can, and then it is carried
/// out and recorded as approved by them.
async fn live_window_holds_a_switchover_for_a_second_person(
    h: &KubeHarness,
    admin: &Client,
    bridge: &KubeletBridge,
    lrcs: &Api<DynamicObject>,
    oncall: &Client,
) -> Result<()> {
    lrcs.patch(
        LRC,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": false}})),
    )
    .await?;
    wait_running(lrcs, 90).await?;
    api(admin, "FailoverPlaybook", "failoverplaybooks")
        .patch(
            "ask-first",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"guards": {"liveWindow": "requireApproval"}}})),
        )
        .await?;
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    set_live_windows(
        admin,
        bridge,
        json!([{"start_ms": now_ms - 1_000, "end_ms": now_ms + 600_000, "expected_peak_orders_per_s": 900}]),
    )
    .await?;
    // A second on-call person, bound to the same role.
    approver_account(admin, NS, "second").await?;
    let second = client_from_kubeconfig(&h.service_account_kubeconfig(NS, "second").await?).await?;
    let second_name = format!("system:serviceaccount:{NS}:second");

    wait_live_window(lrcs, LRC, "live").await?;
    let (_, to) = follower(lrcs, &[]).await?;
    // Approving at creation is not a second person's approval.
    let early = create(
        oncall,
        "Switchover",
        "switchovers",
        json!({
            "apiVersion": "roomkeeper.dev/v1alpha1", "kind": "Switchover",
            "metadata": {"name": "self-approved"},
            "spec": {"cluster": LRC, "toNode": to, "requestedBy": ONCALL, "approvedBy": ONCALL}
        }),
    )
    .await;
    let why = format!(
        "{:#}",
        early.err().context("approvedBy at creation was accepted")?
    );
    ensure!(why.contains("given after the request"), "{why}");
    create(
        oncall,
        "Switchover",
        "switchovers",
        json!({
            "apiVersion": "roomkeeper.dev/v1alpha1", "kind": "Switchover",
            "metadata": {"name": "on-air"},
            "spec": {"cluster": LRC, "toNode": to, "requestedBy": ONCALL, "reason": "planned move"}
        }),
    )
    .await?;
    let st = command_phase(admin, "Switchover", "switchovers", "on-air").await?;
    ensure!(
        st["phase"] == json!("AwaitingApproval")
            && st["guard"] == json!("liveWindow")
            && st["message"]
                .as_str()
                .is_some_and(|m| m.contains("kubectl roomkeeper approve on-air")),
        "{st}"
    );
    let leader_before = lrc_status(lrcs).await["leaderId"].clone();
    ensure!(leader_before != json!(to), "moved before approval");
    let approve = |who: &str| json!({"spec": {"approvedBy": who}});
    // The requester cannot approve their own request.
    let own = api(oncall, "Switchover", "switchovers")
        .patch(
            "on-air",
            &PatchParams::default(),
            &Patch::Merge(approve(ONCALL)),
        )
        .await;
    let why = format!(
        "{:#}",
        own.err().context("the requester approved their own")?
    );
    ensure!(why.contains("not the requester"), "{why}");
    // Nor can anyone approve in someone else's name.
    let spoofed = api(&second, "Switchover", "switchovers")
        .patch(
            "on-air",
            &PatchParams::default(),
            &Patch::Merge(approve("alice")),
        )
        .await;
    ensure!(
        spoofed.is_err(),
        "approvedBy in someone else's name was accepted"
    );
    api(&second, "Switchover", "switchovers")
        .patch(
            "on-air",
            &PatchParams::default(),
            &Patch::Merge(approve(&second_name)),
        )
        .await?;
    eventually(
        Duration::from_secs(40),
        "the approved switchover succeeded",
        || async {
            api(admin, "Switchover", "switchovers")
                .get("on-air")
                .await
                .is_ok_and(|o| o.data["status"]["phase"] == json!("Succeeded"))
        },
    )
    .await?;
    eventually(
        Duration::from_secs(20),
        &format!("node {to} leads"),
        || async { lrc_status(lrcs).await["leaderId"] == json!(to) },
    )
    .await?;
    // Once approved, approvedBy stays.
    let changed = api(admin, "Switchover", "switchovers")
        .patch(
            "on-air",
            &PatchParams::default(),
            &Patch::Merge(approve("admin")),
        )
        .await;
    ensure!(changed.is_err(), "approvedBy changed after approval");
    let st = api(admin, "Switchover", "switchovers")
        .get("on-air")
        .await?
        .data["status"]
        .clone();
    let id = st["decisionIds"][0].as_i64().context("decision id")?;
    let status = lrc_status(lrcs).await;
    let entry = status["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["id"] == json!(id))
        .with_context(|| format!("decision {id} not in status.decisions"))?;
    ensure!(
        entry["disposition"] == json!("execute")
            && entry["reason"]
                .as_str()
                .is_some_and(|r| r.contains(&format!("approved by {second_name}"))),
        "{entry}"
    );
    set_live_windows(admin, bridge, json!([])).await?;
    eprintln!("[live window] switchover to node {to} waited for {second_name}'s approval");
    Ok(())
}

/// `spec.abort` of a ChaosDrill holds on Kubernetes (the one drill runner):
/// the library's quorum-loss drill, with "no order accepted for 3 s" as an
/// abort condition, stops when quorum goes, heals, and says why.
async fn drill_abort_condition_stops_the_drill_on_kubernetes(
    admin: &Client,
    lrcs: &Api<DynamicObject>,
) -> Result<()> {
    lrcs.patch(
        LRC,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": false}})),
    )
    .await?;
    wait_running(lrcs, 90).await?;
    let mut drill: Value = serde_yaml::from_str(&std::fs::read_to_string(
        roomkeeper_e2e::operator::repo_root().join("chaos/drills/quorum-loss.yaml"),
    )?)?;
    drill["metadata"] = json!({"name": "abort-on-silence"});
    drill["spec"]["target"]["cluster"] = json!(LRC);
    drill["spec"]["abort"] = json!({"noOrdersForSecs": 3, "onInvariantViolation": true});
    if let Some(probes) = drill["spec"]["hypothesis"]["probes"].as_array_mut() {
        probes.retain(|p| p["kind"] != json!("playbookTier"));
    }
    let duration = drill["spec"]["durationSecs"]
        .as_u64()
        .context("durationSecs")?;
    let started = Instant::now();
    apply_yaml(admin, &serde_json::to_string(&drill)?, NS).await?;
    let drills = api(admin, "ChaosDrill", "chaosdrills");
    eventually(Duration::from_secs(150), "the drill completed", || async {
        drills
            .get("abort-on-silence")
            .await
            .is_ok_and(|d| d.data["status"]["phase"] == json!("Completed"))
    })
    .await?;
    let st = drills.get("abort-on-silence").await?.data["status"].clone();
    ensure!(
        st["verdict"] == json!("ABORTED"),
        "the drill was not aborted: {st}"
    );
    let aborted = st["message"].as_str().unwrap_or("").to_string();
    ensure!(
        aborted.contains("aborted: no order acknowledged for 3 s"),
        "the status does not say why: {st}"
    );
    ensure!(st["lost"] == json!(0) && st["oversold"] == json!(0), "{st}");
    let at = |k: &str| -> Result<k8s_openapi::jiff::Timestamp> {
        Ok(st[k].as_str().context("timestamp")?.parse()?)
    };
    let ran = at("finishedAt")?
        .duration_since(at("startedAt")?)
        .as_secs_f64();
    ensure!(
        ran < duration as f64,
        "an aborted drill ran {ran:.0}s of its {duration}s"
    );
    eprintln!(
        "[drill] {aborted} after {:.0}s of a {duration}s drill",
        started.elapsed().as_secs_f64()
    );
    wait_running(lrcs, 120).await?;
    Ok(())
}

/// Every Event's note in the namespace, with its time.
async fn events(client: &Client) -> Result<Vec<(String, String)>> {
    let evs = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await?;
    let mut out: Vec<(String, String)> = evs
        .items
        .into_iter()
        .map(|e| {
            let at = e.event_time.map(|t| t.0.to_string()).unwrap_or_default();
            (at, e.note.unwrap_or_default())
        })
        .collect();
    out.sort();
    Ok(out)
}
