//! The operator against a real API server (etcd + kube-apiserver +
//! kube-controller-manager built from their Go modules) with the kubelet
//! bridge running the node pods as real `roomkeeper node` processes.
//!
//! Needs the binaries from `scripts/k8s-test-bins.sh` (skipped loudly without
//! them, fails under CI) and a built `roomkeeper` (`ROOMKEEPER_BIN`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use roomkeeper_e2e::k8s::{client_from_kubeconfig, eventually, init_test_tracing, KubeHarness};
use roomkeeper_e2e::kubelet::KubeletBridge;
use roomkeeper_e2e::operator::{
    apply_file, apply_yaml, form_example_cluster, install_crds, lrc_resource, OperatorEnv,
    OperatorProcess,
};
use serde_json::{json, Value};

const NS: &str = "shop";
const LRC: &str = "flash-sale";

fn drill_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("roomkeeper.dev", "v1alpha1", "ChaosDrill"),
        "chaosdrills",
    )
}

fn fpb_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("roomkeeper.dev", "v1alpha1", "FailoverPlaybook"),
        "failoverplaybooks",
    )
}

fn base_cluster() -> Value {
    json!({
        "apiVersion": "roomkeeper.dev/v1alpha1",
        "kind": "LiveRoomCluster",
        "metadata": {"name": "bad"},
        "spec": {
            "image": "roomkeeper:test",
            "regions": [
                {"name": "a", "voters": 1},
                {"name": "b", "voters": 1},
                {"name": "c", "voters": 1}
            ]
        }
    })
}

/// Creates `obj` and returns the API server's rejection message.
async fn rejection(api: &Api<DynamicObject>, obj: Value) -> Result<String> {
    let obj: DynamicObject = serde_json::from_value(obj)?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => bail!("the API server accepted an invalid object"),
        Err(kube::Error::Api(e)) => {
            ensure!(
                e.code == 422,
                "expected 422 Invalid, got {}: {}",
                e.code,
                e.message
            );
            Ok(e.message)
        }
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_custom_resources_are_rejected_with_actionable_messages() {
    init_test_tracing();
    let Some(h) = KubeHarness::start_or_skip("operator_invalid").await else {
        return;
    };
    if let Err(e) = invalid_scenario(&h).await {
        eprintln!("{}", h.dump_logs(40));
        panic!("{e:#}");
    }
}

async fn invalid_scenario(h: &KubeHarness) -> Result<()> {
    let client = h.admin_client();
    install_crds(&client).await?;
    let lrcs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &lrc_resource());
    let patch = |f: &dyn Fn(&mut Value)| {
        let mut v = base_cluster();
        f(&mut v);
        v
    };
    // (what, object, words the message must contain)
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "even voter count",
            patch(&|v| v["spec"]["regions"][2]["voters"] = json!(2)),
            "must be odd",
        ),
        (
            "fewer than 3 voters",
            patch(&|v| {
                v["spec"]["regions"] = json!([{"name": "a", "voters": 1}]);
            }),
            "at least 3 voters",
        ),
        (
            "duplicate region names",
            patch(&|v| v["spec"]["regions"][1]["name"] = json!("a")),
            "region names must be unique",
        ),
        (
            "region name not a DNS label",
            patch(&|v| v["spec"]["regions"][0]["name"] = json!("US_East")),
            "must be a DNS label",
        ),
        (
            "region with a majority while surviving region loss",
            patch(&|v| {
                v["spec"]["surviveRegionLoss"] = json!(true);
                v["spec"]["regions"][0]["voters"] = json!(3);
            }),
            "holds a majority of the voters",
        ),
        (
            "surviving region loss with two voter regions",
            patch(&|v| {
                v["spec"]["surviveRegionLoss"] = json!(true);
                v["spec"]["regions"][2]["voters"] = json!(0);
                v["spec"]["regions"][0]["voters"] = json!(2);
            }),
            "at least 3 regions",
        ),
        (
            "election timeout range inverted",
            patch(&|v| {
                v["spec"]["orderStore"] =
                    json!({"electionTimeoutMinMs": 900, "electionTimeoutMaxMs": 500});
            }),
            "electionTimeoutMinMs must be below electionTimeoutMaxMs",
        ),
        (
            "heartbeat too slow for the election timeout",
            patch(&|v| {
                v["spec"]["orderStore"] = json!({"heartbeatMs": 200, "electionTimeoutMinMs": 300, "electionTimeoutMaxMs": 600});
            }),
            "at most a third of electionTimeoutMinMs",
        ),
        (
            "negative voters",
            patch(&|v| v["spec"]["regions"][0]["voters"] = json!(-1)),
            "greater than or equal to 0",
        ),
        (
            "too many voters in a region",
            patch(&|v| v["spec"]["regions"][0]["voters"] = json!(9)),
            "less than or equal to 7",
        ),
        (
            "empty image",
            patch(&|v| v["spec"]["image"] = json!("")),
            "image must not be empty",
        ),
        (
            "no regions at all",
            patch(&|v| {
                v["spec"].as_object_mut().map(|o| o.remove("regions"));
            }),
            "Required value",
        ),
        (
            "duplicate zones",
            patch(&|v| v["spec"]["regions"][0]["zones"] = json!(["z1", "z1"])),
            "zones must be unique",
        ),
        (
            "storage size not a quantity",
            patch(&|v| v["spec"]["regions"][0]["storage"] = json!({"size": "lots"})),
            "must be a quantity",
        ),
    ];
    let total = cases.len();
    for (what, obj, words) in cases {
        let msg = rejection(&lrcs, obj)
            .await
            .with_context(|| what.to_string())?;
        ensure!(
            msg.contains(words),
            "{what}: message {msg:?} lacks {words:?}"
        );
        eprintln!("rejected ({what}): {msg}");
    }
    // Immutable and grow-only fields: create a valid cluster, then change them.
    let mut ok = base_cluster();
    ok["metadata"]["name"] = json!("valid");
    ok["spec"]["regions"][0]["storage"] = json!({"size": "20Gi", "storageClassName": "fast"});
    let ok: DynamicObject = serde_json::from_value(ok)?;
    lrcs.create(&PostParams::default(), &ok)
        .await
        .context("a valid cluster")?;
    let updates: Vec<(&str, Value, &str)> = vec![
        (
            "storage class change",
            json!({"spec": {"regions": [
            {"name": "a", "voters": 1, "storage": {"size": "20Gi", "storageClassName": "slow"}},
            {"name": "b", "voters": 1}, {"name": "c", "voters": 1}]}}),
            "storageClassName is immutable",
        ),
        (
            "storage shrink",
            json!({"spec": {"regions": [
            {"name": "a", "voters": 1, "storage": {"size": "10Gi", "storageClassName": "fast"}},
            {"name": "b", "voters": 1}, {"name": "c", "voters": 1}]}}),
            "cannot shrink",
        ),
    ];
    for (what, body, words) in &updates {
        match lrcs
            .patch("valid", &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            Ok(_) => bail!("{what}: accepted"),
            Err(kube::Error::Api(e)) => {
                ensure!(
                    e.code == 422 && e.message.contains(words),
                    "{what}: {} {:?} lacks {words:?}",
                    e.code,
                    e.message
                );
                eprintln!("rejected ({what}): {}", e.message);
            }
            Err(e) => return Err(e.into()),
        }
    }
    // A playbook with an unknown condition type.
    let fpbs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &fpb_resource());
    let mut pb: Value = serde_yaml::from_str(&std::fs::read_to_string(
        roomkeeper_e2e::operator::repo_root().join("examples/default-playbook.yaml"),
    )?)?;
    pb["metadata"]["name"] = json!("bogus");
    pb["spec"]["tiers"][1]["trigger"]["condition"]["type"] = json!("moonPhase");
    let msg = rejection(&fpbs, pb).await.context("bogus playbook")?;
    ensure!(
        msg.contains("Unsupported value") && msg.contains("moonPhase"),
        "{msg}"
    );
    eprintln!("rejected (playbook condition type): {msg}");
    eprintln!(
        "{} invalid objects rejected with their messages",
        total + updates.len() + 1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_runs_a_three_region_cluster_end_to_end() {
    init_test_tracing();
    let started = Instant::now();
    let Some(h) = KubeHarness::start_or_skip("operator_e2e").await else {
        return;
    };
    let bin = roomkeeper_e2e::binary();
    let bridge = KubeletBridge::start(h.admin_client(), h.dir(), &bin)
        .await
        .expect("kubelet bridge");
    let mut ops: Vec<OperatorProcess> = Vec::new();
    let result = lifecycle(&h, &bridge, &bin, &mut ops).await;
    if let Err(e) = result {
        eprintln!("{}", h.dump_logs(30));
        let lrcs: Api<DynamicObject> = Api::namespaced_with(h.admin_client(), NS, &lrc_resource());
        eprintln!(
            "--- LiveRoomCluster status ---\n{:#}",
            lrc_status(&lrcs).await
        );
        if let Ok(t) = event_timeline(&h.admin_client()).await {
            for (at, note) in t {
                eprintln!("event {at} {note}");
            }
        }
        for op in &ops {
            eprintln!("--- operator {} ---\n{}", op.identity, op.log_tail(60));
        }
        for region in ["us-east", "eu-west", "ap-south"] {
            for i in 0..3 {
                let pod = format!("{LRC}-{region}-{i}");
                let tail = bridge.container_log_tail(NS, &pod, "node", 15);
                if !tail.trim().is_empty() {
                    eprintln!("--- {pod} ---\n{tail}");
                }
            }
        }
        panic!(
            "operator e2e failed after {:.0}s: {e:#}",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "operator e2e passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
}

async fn lrc_status(api: &Api<DynamicObject>) -> Value {
    roomkeeper_e2e::operator::lrc_status(api, LRC).await
}

async fn wait_ready_voters(api: &Api<DynamicObject>, want: &str, secs: u64) -> Result<Value> {
    eventually(
        Duration::from_secs(secs),
        &format!("readyVoters {want} and phase Running"),
        || async {
            let s = lrc_status(api).await;
            s["readyVoters"] == json!(want)
                && s["phase"] == json!("Running")
                && s["leader"].is_string()
        },
    )
    .await
    .with_context(|| format!("last status: {}", futures_status(api)))?;
    Ok(lrc_status(api).await)
}

fn futures_status(_: &Api<DynamicObject>) -> String {
    "see the operator log below".to_string()
}

async fn voter_ids(api: &Api<DynamicObject>) -> Vec<i64> {
    let s = lrc_status(api).await;
    let mut ids: Vec<i64> = s["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["role"] == json!("voter"))
                .filter_map(|m| m["nodeId"].as_i64())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

async fn lease_holder(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "roomkeeper-system");
    leases
        .get("roomkeeper-operator")
        .await
        .ok()?
        .spec?
        .holder_identity
}

/// The operator's NetworkPolicy holds between the node pods: Raft and the
/// client API pass from one cluster pod to another, the admin port (only for
/// operator pods) does not; the host, where the operator runs, reaches it.
async fn network_policy_is_enforced(admin: &Client, bridge: &KubeletBridge) -> Result<()> {
    bridge.wait_synced(Duration::from_secs(20)).await?;
    let pods = Api::<Pod>::namespaced(admin.clone(), NS)
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={LRC}")))
        .await?;
    let names: Vec<String> = pods
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .filter(|n| bridge.pod_ip(NS, n).is_some())
        .collect();
    ensure!(names.len() >= 2, "cluster pods running here: {names:?}");
    let (from, to) = (&names[0], &names[1]);
    let to_ip = bridge.pod_ip(NS, to).context("pod IP")?;
    let timeout = Duration::from_secs(2);
    for port in [7101, 7201] {
        bridge
            .connect_from_pod(NS, from, (to_ip, port).into(), timeout)
            .await
            .with_context(|| format!("{from} -> {to}:{port} should pass the NetworkPolicy"))?;
    }
    // The admin port is the operator's, the metrics port Prometheus's.
    for port in [7301, 7401] {
        let blocked = bridge
            .connect_from_pod(NS, from, (to_ip, port).into(), timeout)
            .await;
        let timed_out = blocked.as_ref().err().is_some_and(|e| {
            e.chain()
                .filter_map(|c| c.downcast_ref::<std::io::Error>())
                .any(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
        ensure!(
            timed_out,
            "{from} -> {to}:{port} should time out (dropped by the NetworkPolicy): {:?}",
            blocked.map(|_| "connected")
        );
    }
    let addr = std::net::SocketAddr::from((to_ip, 7301));
    tokio::task::spawn_blocking(move || std::net::TcpStream::connect_timeout(&addr, timeout))
        .await?
        .with_context(|| format!("the host -> {to}:7301"))?;
    eprintln!(
        "NetworkPolicy enforced: {from} -> {to} raft/api pass, admin and metrics blocked; host -> admin passes"
    );
    Ok(())
}

async fn lifecycle(
    h: &KubeHarness,
    bridge: &KubeletBridge,
    bin: &std::path::Path,
    ops: &mut Vec<OperatorProcess>,
) -> Result<()> {
    let env = OperatorEnv::prepare(h, bin, NS, &[]).await?;
    let (admin, sa_kubeconfig) = (env.admin.clone(), env.sa_kubeconfig.clone());
    // The operator's own credentials really are least-privilege: it cannot read Secrets in bulk.
    let sa = client_from_kubeconfig(&sa_kubeconfig).await?;
    ensure!(
        Api::<Secret>::all(sa.clone())
            .list(&ListParams::default())
            .await
            .is_err(),
        "the operator's ServiceAccount may list Secrets"
    );

    // Two replicas: exactly one holds the Lease and reconciles.
    env.start_operator("op-a", ops)?;
    eventually(Duration::from_secs(20), "op-a holds the Lease", || async {
        lease_holder(&admin).await.as_deref() == Some("op-a")
    })
    .await?;
    env.start_operator("op-b", ops)?;
    eventually(
        Duration::from_secs(20),
        "op-b answers /readyz as standby",
        || async {
            ops[1]
                .get("/readyz")
                .is_ok_and(|(c, b)| c == 200 && b.contains("standby"))
        },
    )
    .await?;
    ensure!(
        ops[0].metric("roomkeeper_operator_leader") == Some(1.0),
        "op-a leader metric"
    );
    ensure!(
        ops[1].metric("roomkeeper_operator_leader") == Some(0.0),
        "op-b leader metric"
    );

    apply_file(&admin, "examples/default-playbook.yaml", NS).await?;
    let (lrcs, _) = form_example_cluster(&admin, NS, Duration::from_secs(120)).await?;
    let example = roomkeeper_e2e::operator::example_cluster()?;
    let status = wait_ready_voters(&lrcs, "5/5", 20).await?;
    eprintln!(
        "cluster formed: leader {} term {} tier {}",
        status["leader"], status["term"], status["activeTier"]
    );
    ensure!(status["term"].as_i64().unwrap_or(0) >= 1, "term {status}");
    ensure!(status["bootstrapped"] == json!(true), "{status}");
    ensure!(status["activeTier"] == json!("T0 watch"), "tier {status}");
    let conds: BTreeMap<String, String> = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or("").to_string(),
                c["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for t in ["Ready", "Available", "PlaybookReady"] {
        ensure!(
            conds.get(t).map(String::as_str) == Some("True"),
            "condition {t}: {conds:?}"
        );
    }
    ensure!(
        conds.get("Degraded").map(String::as_str) == Some("False"),
        "{conds:?}"
    );

    // Owned objects with owner references to the cluster.
    let uid = lrcs.get(LRC).await?.metadata.uid.context("uid")?;
    let owned_by =
        |refs: Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
            refs.unwrap_or_default()
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true))
        };
    for region in ["us-east", "eu-west", "ap-south"] {
        let sts = Api::<StatefulSet>::namespaced(admin.clone(), NS)
            .get(&format!("{LRC}-{region}"))
            .await?;
        ensure!(
            owned_by(sts.metadata.owner_references),
            "StatefulSet {region} owner"
        );
        for svc in [format!("{LRC}-{region}"), format!("{LRC}-{region}-peers")] {
            let s = Api::<Service>::namespaced(admin.clone(), NS)
                .get(&svc)
                .await?;
            ensure!(owned_by(s.metadata.owner_references), "Service {svc} owner");
        }
        let pdb = Api::<PodDisruptionBudget>::namespaced(admin.clone(), NS)
            .get(&format!("{LRC}-{region}"))
            .await?;
        ensure!(
            owned_by(pdb.metadata.owner_references),
            "PDB {region} owner"
        );
    }
    let np = Api::<NetworkPolicy>::namespaced(admin.clone(), NS)
        .get(&format!("{LRC}-peers-only"))
        .await?;
    ensure!(
        owned_by(np.metadata.owner_references),
        "NetworkPolicy owner"
    );
    if bridge.network_policy_or_skip("operator: the cluster's NetworkPolicy is enforced") {
        network_policy_is_enforced(&admin, bridge).await?;
    }
    let ids_cm = Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get(&format!("{LRC}-identities"))
        .await?;
    // The identity map outlives the cluster object, like the volumes it names.
    ensure!(
        ids_cm.metadata.owner_references.is_none(),
        "the identity map must not be garbage-collected with the cluster"
    );
    let raft_ca =
        pods_run_mutual_tls_on_raft(&admin, &lrcs, bridge, &h.dir().join("raft-probe")).await?;
    pods_serve_tls_on_their_apis(&admin, bridge).await?;

    // `kubectl get lrc` columns, through the Table API kubectl uses.
    let req = http::Request::get(format!(
        "/apis/roomkeeper.dev/v1alpha1/namespaces/{NS}/liveroomclusters"
    ))
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())?;
    let table: Value = serde_json::from_str(&admin.request_text(req).await?)?;
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let row = &table["rows"][0]["cells"];
    eprintln!("kubectl get lrc:\n  {}\n  {}", columns.join("  "), row);
    for (i, want) in [
        (0, json!(LRC)),
        (1, json!("5/5")),
        (2, status["leader"].clone()),
        (3, status["term"].clone()),
        (5, json!("T0 watch")),
        (6, json!("Running")),
    ] {
        ensure!(
            row[i] == want,
            "column {} is {} not {want}",
            columns.get(i).unwrap_or(&"?"),
            row[i]
        );
    }

    // A reconcile that changes nothing writes nothing. First let the last
    // writes of formation land (status settles a moment after Running).
    let mut last = ops[0].metric("roomkeeper_operator_writes_total");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = ops[0].metric("roomkeeper_operator_writes_total");
        if now == last {
            break;
        }
        last = now;
    }
    let writes_before = ops[0]
        .metric("roomkeeper_operator_writes_total")
        .unwrap_or(0.0);
    let rv_before: Vec<String> = owned_versions(&admin).await?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let rv_after: Vec<String> = owned_versions(&admin).await?;
    ensure!(
        rv_before == rv_after,
        "owned objects changed while idle: {rv_before:?} -> {rv_after:?}"
    );
    let writes_after = ops[0]
        .metric("roomkeeper_operator_writes_total")
        .unwrap_or(0.0);
    ensure!(
        writes_before == writes_after,
        "idle reconciles wrote: {writes_before} -> {writes_after}"
    );
    ensure!(
        ops[0]
            .metric("roomkeeper_operator_reconciles_total")
            .unwrap_or(0.0)
            >= 2.0,
        "reconciles ran"
    );

    // A spec the API server accepts but the operator cannot carry out (a
    // region's kubeconfig Secret that does not exist) gets a condition and
    // an event, and the controller keeps going.
    let mut remote = example.clone();
    remote["metadata"]["name"] = json!("remote");
    remote["spec"]["regions"][2]["kubeconfigSecretRef"] = json!({"name": "ap-south-kubeconfig"});
    apply_yaml(&admin, &serde_yaml::to_string(&remote)?, NS).await?;
    eventually(
        Duration::from_secs(30),
        "the remote-region cluster marked Invalid",
        || async {
            let s = lrcs
                .get("remote")
                .await
                .ok()
                .and_then(|o| o.data.get("status").cloned())
                .unwrap_or(Value::Null);
            s["phase"] == json!("Invalid")
                && s["conditions"].as_array().is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["type"] == json!("Ready")
                            && c["reason"] == json!("InvalidSpec")
                            && c["message"].as_str().is_some_and(|m| {
                                m.contains("kubeconfigSecretRef")
                                    && m.contains("\"ap-south-kubeconfig\" not found")
                            })
                    })
                })
        },
    )
    .await?;
    lrcs.delete("remote", &DeleteParams::default()).await?;

    // ChaosDrills from the library, run by the operator against this cluster:
    // the same YAML as `roomkeeper drill run chaos/drills/<name>.yaml`.
    let ds = run_library_drill(&admin, "leader-kill").await?;
    ensure!(ds["acked"].as_i64().unwrap_or(0) > 100, "{ds}");
    let report_cm = ds["reportConfigMap"].as_str().context("report ConfigMap")?;
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get(report_cm)
        .await?;
    let kube_report: Value = serde_json::from_str(
        cm.data
            .as_ref()
            .and_then(|d| d.get("report.json"))
            .context("report.json in the report ConfigMap")?,
    )?;
    same_report_shape_as_a_local_run("leader-kill", &kube_report).await?;
    wait_ready_voters(&lrcs, "5/5", 60).await?;
    // Every pod restarted in turn under load, followers first, as an upgrade does.
    let ds = run_library_drill(&admin, "rolling-restart").await?;
    let restarted = ds["faults"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter(|l| l.as_str().is_some_and(|l| l.contains("restarted pod")))
                .count()
        })
        .unwrap_or(0);
    ensure!(restarted == 5, "every pod restarted once: {ds}");
    wait_ready_voters(&lrcs, "5/5", 60).await?;

    // The region holding the leader is cut off by NetworkPolicy: the others
    // elect a new leader (a new term), nothing acknowledged is lost, and the
    // partition is gone afterwards.
    let term_before = lrc_status(&lrcs).await["term"].as_i64().unwrap_or(0);
    let ds = run_library_drill(&admin, "partition-leader-region").await?;
    ensure!(
        ds["faults"].as_array().is_some_and(|f| f
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("cut off")))),
        "{ds}"
    );
    wait_ready_voters(&lrcs, "5/5", 60).await?;
    let term_after = lrc_status(&lrcs).await["term"].as_i64().unwrap_or(0);
    ensure!(
        term_after > term_before,
        "cutting off the leader's region forces an election: term {term_before} -> {term_after}"
    );
    let leftovers = Api::<Pod>::namespaced(admin.clone(), NS)
        .list(&ListParams::default().labels("roomkeeper.dev/partition"))
        .await?
        .items
        .len()
        + Api::<NetworkPolicy>::namespaced(admin.clone(), NS)
            .list(&ListParams::default().labels("roomkeeper.dev/partition-run"))
            .await?
            .items
            .len();
    ensure!(
        leftovers == 0,
        "the partition was healed: {leftovers} objects left"
    );

    let drills: Api<DynamicObject> = Api::namespaced_with(admin.clone(), NS, &drill_resource());
    // A schedule creates its first run at once, owned and labelled; a drill
    // the Kubernetes runner cannot carry out is refused with the field named.
    let mut pause: Value = serde_yaml::from_str(&std::fs::read_to_string(
        roomkeeper_e2e::operator::repo_root().join("chaos/drills/pause-leader.yaml"),
    )?)?;
    pause["spec"]["target"]["cluster"] = json!(LRC);
    let schedule = json!({
        "apiVersion": "roomkeeper.dev/v1alpha1",
        "kind": "ChaosDrillSchedule",
        "metadata": {"name": "weekly-pause"},
        "spec": {"intervalSecs": 604800, "historyLimit": 2, "drill": pause["spec"]}
    });
    apply_yaml(&admin, &serde_yaml::to_string(&schedule)?, NS).await?;
    eventually(
        Duration::from_secs(30),
        "the schedule's first run refused as Invalid",
        || async {
            let runs = drills
                .list(&ListParams::default().labels("roomkeeper.dev/schedule=weekly-pause"))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            runs.len() == 1
                && runs[0].data["status"]["phase"] == json!("Invalid")
                && runs[0].data["status"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("pauseNode"))
                && runs[0]
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|o| o[0].kind == "ChaosDrillSchedule")
        },
    )
    .await?;

    // Scale up to 7 voters; kill the reconciling operator mid-way: the standby
    // takes the Lease and finishes, with no action repeated or lost.
    let before = voter_ids(&lrcs).await;
    let scale = json!({"spec": {"regions": [
        {"name": "us-east", "voters": 2, "zones": ["us-east-1a", "us-east-1b"], "storage": {"size": "20Gi"}},
        {"name": "eu-west", "voters": 3, "zones": ["eu-west-1a", "eu-west-1b"], "storage": {"size": "20Gi"}},
        {"name": "ap-south", "voters": 2, "zones": ["ap-south-1a"], "storage": {"size": "20Gi"}}
    ]}});
    lrcs.patch(LRC, &PatchParams::default(), &Patch::Merge(&scale))
        .await?;
    eventually(
        Duration::from_secs(60),
        "the first new learner joined",
        || async {
            lrc_status(&lrcs).await["members"]
                .as_array()
                .is_some_and(|m| m.len() > 5)
        },
    )
    .await?;
    ops[0].kill();
    eprintln!("killed op-a mid-scale");
    eventually(Duration::from_secs(30), "op-b takes the Lease", || async {
        lease_holder(&admin).await.as_deref() == Some("op-b")
    })
    .await?;
    let status = wait_ready_voters(&lrcs, "7/7", 120).await?;
    let after = voter_ids(&lrcs).await;
    eprintln!("scaled: voters {before:?} -> {after:?}");
    ensure!(after.len() == 7, "{after:?}");
    ensure!(
        before.iter().all(|id| after.contains(id)),
        "old voters kept: {before:?} {after:?}"
    );
    ensure!(status["commitLag"].as_i64().is_some(), "{status}");
    // Each membership action happened at most once, though two operators
    // worked on it. An operator records its Event after the admin call
    // returns, so the kill of op-a may fall between the two: then the action
    // happened and its Event was never written. One kill loses at most one
    // Event; a second missing one, or any duplicate, is a bug.
    let notes = event_notes(&admin).await?;
    let mut missing = Vec::new();
    for id in after.iter().filter(|id| !before.contains(id)) {
        let added = notes
            .iter()
            .filter(|n| n.starts_with(&format!("added node {id} ")))
            .count();
        let promoted = notes
            .iter()
            .filter(|n| n.starts_with(&format!("promoted node {id} ")))
            .count();
        ensure!(
            added <= 1 && promoted <= 1,
            "node {id}: added {added}×, promoted {promoted}× ({notes:?})"
        );
        if added == 0 {
            missing.push(format!("added node {id}"));
        }
        if promoted == 0 {
            missing.push(format!("promoted node {id}"));
        }
    }
    ensure!(
        missing.len() <= 1,
        "more Events missing than one kill can explain: {missing:?} ({notes:?})"
    );
    if !missing.is_empty() {
        eprintln!("op-a died between an action and its Event: {missing:?}");
    }
    // The scale patch dropped us-east's resource requests: a template change,
    // so its pods restarted one at a time, the leader's only after it handed
    // leadership over.
    let timeline = event_timeline(&admin).await?;
    let restarts: Vec<&(String, String)> = timeline
        .iter()
        .filter(|(_, n)| n.starts_with("restarting flash-sale-us-east-"))
        .collect();
    ensure!(restarts.len() == 2, "rolling restart events: {timeline:?}");
    // Whichever pod led when its turn came handed leadership over first (the
    // drill above may have moved the leader away from the first one).
    for (at, note) in &restarts {
        let pod = note
            .trim_start_matches("restarting ")
            .split_whitespace()
            .next()
            .unwrap_or_default();
        if let Some((moved_at, _)) = timeline
            .iter()
            .find(|(_, n)| n.contains(&format!("{pod} restarts for an update")))
        {
            ensure!(
                moved_at <= at,
                "{pod} restarted before handing over: {timeline:?}"
            );
        }
    }
    let distinct: std::collections::BTreeSet<&String> = restarts.iter().map(|(_, n)| n).collect();
    ensure!(
        distinct.len() == 2,
        "each us-east pod restarted once: {timeline:?}"
    );
    // Node ids are unique and never reused.
    let (nodes, _) = identity_map(&admin).await?;
    let distinct: std::collections::BTreeSet<i64> = nodes.values().copied().collect();
    ensure!(
        distinct.len() == nodes.len(),
        "an id given twice: {nodes:?}"
    );

    // Scale back down to 5 voters: members leave before their pods go.
    env.start_operator("op-a2", ops)?;
    let down = json!({"spec": {"regions": [
        {"name": "us-east", "voters": 2, "zones": ["us-east-1a", "us-east-1b"], "storage": {"size": "20Gi"}},
        {"name": "eu-west", "voters": 2, "zones": ["eu-west-1a", "eu-west-1b"], "storage": {"size": "20Gi"}},
        {"name": "ap-south", "voters": 1, "zones": ["ap-south-1a"], "storage": {"size": "20Gi"}}
    ]}});
    lrcs.patch(LRC, &PatchParams::default(), &Patch::Merge(&down))
        .await?;
    wait_ready_voters(&lrcs, "5/5", 120).await?;
    eventually(Duration::from_secs(60), "5 voters and 5 pods", || async {
        let pods = Api::<Pod>::namespaced(admin.clone(), NS)
            .list(&ListParams::default().labels(&format!("roomkeeper.dev/cluster={LRC}")))
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        voter_ids(&lrcs).await.len() == 5
            && pods == 5
            && lrc_status(&lrcs).await["members"].as_array().map(Vec::len) == Some(5)
    })
    .await?;
    let final_voters = voter_ids(&lrcs).await;
    ensure!(
        final_voters.iter().all(|id| after.contains(id)),
        "{final_voters:?}"
    );
    eprintln!("scaled down: voters {final_voters:?}");
    // The pods that left gave up their ids: a later pod of that name gets a new one.
    let (nodes, _) = identity_map(&admin).await?;
    for gone in ["flash-sale-eu-west-2", "flash-sale-ap-south-1"] {
        ensure!(
            !nodes.contains_key(gone),
            "{gone} still holds an id: {nodes:?}"
        );
    }

    region_added_and_removed(&admin, &lrcs, &down).await?;
    wiped_volume_rejoins_under_a_new_id(&admin, &lrcs, bridge).await?;
    recreated_pod_is_reached_at_its_new_ip(&admin, &lrcs, bridge).await?;
    hook_drills_need_and_use_fault_hooks(&admin, &lrcs).await?;

    // The CA was never rewritten through scaling, rolling, a region added and
    // removed, a wiped volume and a moved pod.
    let ca_now = Api::<Secret>::namespaced(admin.clone(), NS)
        .get(&format!("{LRC}-raft-ca"))
        .await?;
    ensure!(
        ca_now.metadata.resource_version == raft_ca.metadata.resource_version
            && ca_now.data == raft_ca.data,
        "the Raft CA Secret changed"
    );

    // Delete (deletionPolicy Retain, the default): the finalizer removes the
    // workload, then the cluster goes.
    let before_delete = lrc_status(&lrcs).await;
    let voters_before_delete = voter_ids(&lrcs).await;
    let pod_names: Vec<String> = Api::<Pod>::namespaced(admin.clone(), NS)
        .list(&ListParams::default().labels(&format!("roomkeeper.dev/cluster={LRC}")))
        .await?
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let ips_before: Vec<_> = pod_names.iter().map(|p| bridge.pod_ip(NS, p)).collect();
    lrcs.delete(LRC, &DeleteParams::default()).await?;
    eventually(
        Duration::from_secs(90),
        "the cluster and everything it owned are gone",
        || async {
            let gone_lrc = matches!(lrcs.get_opt(LRC).await, Ok(None));
            let sts = Api::<StatefulSet>::namespaced(admin.clone(), NS)
                .list(&ListParams::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(1);
            let pods = Api::<Pod>::namespaced(admin.clone(), NS)
                .list(&ListParams::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(1);
            let svcs = Api::<Service>::namespaced(admin.clone(), NS)
                .list(&ListParams::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(1);
            gone_lrc && sts == 0 && pods == 0 && svcs == 0
        },
    )
    .await?;
    // What holds the data is kept: the volumes, the node ids, the keys.
    let by_cluster = ListParams::default().labels(&format!("roomkeeper.dev/cluster={LRC}"));
    let mut secrets: Vec<String> = Api::<Secret>::namespaced(admin.clone(), NS)
        .list(&by_cluster)
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    secrets.sort();
    // sa-east's certificates (Raft and API) went with the region.
    let kept: Vec<String> = [
        "ap-south-api-tls",
        "ap-south-raft-certs",
        "contact-keys",
        "eu-west-api-tls",
        "eu-west-raft-certs",
        "raft-ca",
        "tokens",
        "us-east-api-tls",
        "us-east-raft-certs",
    ]
    .iter()
    .map(|s| format!("{LRC}-{s}"))
    .collect();
    ensure!(
        secrets == kept,
        "tokens, contact keys, the Raft CA and certificates kept: {secrets:?}"
    );
    Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get(&format!("{LRC}-identities"))
        .await
        .context("the identity map is kept")?;
    let pvcs =
        Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(admin.clone(), NS)
            .list(&ListParams::default())
            .await?
            .items
            .len();
    ensure!(pvcs == 5, "the 5 members' volumes are kept, found {pvcs}");

    // Created again under the same name, the cluster resumes the same Raft
    // group from its volumes: same voters, nothing lost, no second bootstrap.
    // Every pod comes back on a new IP, as on a real cluster: with no leader
    // to record them, the operator tells each node where its peers are.
    bridge.set_sticky_ips(false);
    apply_yaml(&admin, &serde_yaml::to_string(&example)?, NS).await?;
    let resumed = wait_ready_voters(&lrcs, "5/5", 120).await;
    bridge.set_sticky_ips(true);
    let resumed = resumed?;
    let ips_after: Vec<_> = pod_names.iter().map(|p| bridge.pod_ip(NS, p)).collect();
    ensure!(
        ips_before.iter().zip(&ips_after).all(|(a, b)| a != b),
        "every pod moved: {ips_before:?} -> {ips_after:?}"
    );
    ensure!(
        event_notes(&admin)
            .await?
            .iter()
            .any(|n| n.starts_with("no leader and members moved")),
        "the operator seeded the new addresses"
    );
    let ca_resumed = Api::<Secret>::namespaced(admin.clone(), NS)
        .get(&format!("{LRC}-raft-ca"))
        .await?;
    ensure!(
        ca_resumed.data == raft_ca.data,
        "the recreated cluster resumes under the same Raft CA"
    );
    let voters_resumed = voter_ids(&lrcs).await;
    ensure!(
        voters_resumed == voters_before_delete,
        "the same voters resume: {voters_before_delete:?} -> {voters_resumed:?}"
    );
    let committed_before = before_delete["commitIndex"].as_i64().unwrap_or(i64::MAX);
    ensure!(
        resumed["commitIndex"].as_i64().unwrap_or(0) >= committed_before,
        "the log survived: commit index {} before, {resumed} after",
        before_delete["commitIndex"]
    );
    let bootstraps = event_notes(&admin)
        .await?
        .iter()
        .filter(|n| n.starts_with("initialized the Raft group"))
        .count();
    ensure!(bootstraps == 1, "bootstrapped {bootstraps} times");
    eprintln!(
        "resumed after delete/recreate: voters {voters_resumed:?}, commit index {} >= {committed_before}",
        resumed["commitIndex"]
    );

    // deletionPolicy Delete: the data goes with the cluster.
    lrcs.patch(
        LRC,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"deletionPolicy": "Delete"}})),
    )
    .await?;
    lrcs.delete(LRC, &DeleteParams::default()).await?;
    eventually(
        Duration::from_secs(90),
        "the cluster, its volumes, node ids and keys are gone",
        || async {
            let gone_lrc = matches!(lrcs.get_opt(LRC).await, Ok(None));
            let pvcs = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(
                admin.clone(),
                NS,
            )
            .list(&ListParams::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(1);
            let secrets = Api::<Secret>::namespaced(admin.clone(), NS)
                .list(&by_cluster)
                .await
                .map(|l| l.items.len())
                .unwrap_or(1);
            let ids = Api::<ConfigMap>::namespaced(admin.clone(), NS)
                .get_opt(&format!("{LRC}-identities"))
                .await
                .map(|c| c.is_some())
                .unwrap_or(true);
            let pods = Api::<Pod>::namespaced(admin.clone(), NS)
                .list(&ListParams::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(1);
            gone_lrc && pvcs == 0 && secrets == 0 && !ids && pods == 0
        },
    )
    .await?;
    for op in ops.iter_mut() {
        if op.is_running() {
            op.terminate(Duration::from_secs(15))?;
        }
    }
    ensure!(
        lease_holder(&admin).await.is_none_or(|h| h.is_empty()),
        "the Lease is released on SIGTERM"
    );
    Ok(())
}

/// `chaos/drills/<name>.yaml` as this test runs it: against this test's
/// cluster, without its playbookTier probes (on Kubernetes the StatefulSet,
/// not the playbook, brings pods back).
fn library_drill(name: &str) -> Result<Value> {
    let mut drill: Value = serde_yaml::from_str(&std::fs::read_to_string(
        roomkeeper_e2e::operator::repo_root().join(format!("chaos/drills/{name}.yaml")),
    )?)?;
    drill["spec"]["target"]["cluster"] = json!(LRC);
    if let Some(probes) = drill["spec"]["hypothesis"]["probes"].as_array_mut() {
        probes.retain(|p| p["kind"] != json!("playbookTier"));
    }
    Ok(drill)
}

/// The probe names of a report, in order.
fn probe_names(report: &Value) -> Vec<String> {
    report["probes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

/// The same ChaosDrill file gives the same report locally (`roomkeeper drill
/// run`, processes on loopback) and on Kubernetes (the operator): one runner,
/// so the same sections, the same probes, the same abort conditions, and on
/// both a timeline and an event log.
async fn same_report_shape_as_a_local_run(name: &str, kube_report: &Value) -> Result<()> {
    let drill = library_drill(name)?;
    let dir =
        std::env::temp_dir().join(format!("roomkeeper-op-local-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, serde_yaml::to_string(&drill)?)?;
    let out = dir.join("run");
    let started = Instant::now();
    let (file2, out2) = (file.clone(), out.clone());
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(roomkeeper_e2e::binary())
            .current_dir(roomkeeper_e2e::operator::repo_root())
            .args(["drill", "run"])
            .arg(&file2)
            .arg("--out")
            .arg(&out2)
            .args(["--seed", "42", "--base-port", "17720"])
            .env("ROOMKEEPER_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    })
    .await??;
    eprintln!(
        "local run of {name}: {status} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let local: Value = serde_json::from_slice(&std::fs::read(out.join("report.json"))?)?;
    let sections = |r: &Value| -> Vec<String> {
        r.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    ensure!(
        sections(&local) == sections(kube_report),
        "report sections differ: local {:?}, Kubernetes {:?}",
        sections(&local),
        sections(kube_report)
    );
    ensure!(
        !probe_names(&local).is_empty() && probe_names(&local) == probe_names(kube_report),
        "probes differ: local {:?}, Kubernetes {:?}",
        probe_names(&local),
        probe_names(kube_report)
    );
    ensure!(
        local["spec"]["abort"] == kube_report["spec"]["abort"]
            && local["abort_reason"] == kube_report["abort_reason"],
        "abort conditions differ: local {} / {}, Kubernetes {} / {}",
        local["spec"]["abort"],
        local["abort_reason"],
        kube_report["spec"]["abort"],
        kube_report["abort_reason"]
    );
    for r in [&local, kube_report] {
        ensure!(
            r["timeline"].as_array().is_some_and(|t| !t.is_empty())
                && r["events"].as_array().is_some_and(|e| !e.is_empty())
                && r["faults"][0]["end_ms"].is_u64(),
            "a timeline, events and a healed fault in {r}"
        );
    }
    // The operator's playbook decisions reach the report too (read from its
    // engine memory), as the local loop's do.
    ensure!(
        kube_report["decisions"].is_array(),
        "decisions: {}",
        kube_report["decisions"]
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs `chaos/drills/<name>.yaml` as a ChaosDrill against this test's
/// cluster and returns its status once it completed with a PASS verdict, no
/// acknowledged order lost and none oversold.
async fn run_library_drill(admin: &Client, name: &str) -> Result<Value> {
    let drill = library_drill(name)?;
    apply_yaml(admin, &serde_yaml::to_string(&drill)?, NS).await?;
    let drills: Api<DynamicObject> = Api::namespaced_with(admin.clone(), NS, &drill_resource());
    eventually(
        Duration::from_secs(180),
        &format!("drill {name} completed"),
        || async {
            drills
                .get(name)
                .await
                .ok()
                .and_then(|d| d.data.get("status").cloned())
                .is_some_and(|s| s["phase"] == json!("Completed"))
        },
    )
    .await?;
    let ds = drills.get(name).await?.data["status"].clone();
    eprintln!("drill {name} status: {ds:#}");
    ensure!(ds["verdict"] == json!("PASS"), "drill {name} verdict: {ds}");
    ensure!(ds["lost"] == json!(0) && ds["oversold"] == json!(0), "{ds}");
    Ok(ds)
}

/// A drill that slows nodes through their fault hooks is refused, naming the
/// field, while the cluster has them off; once `spec.orderStore.faultHooks`
/// rolls the pods onto `--enable-test-faults`, the library's disk-stall drill
/// runs and passes, and every pod's hooks are cleared when it heals; so does
/// the library's pause-leader drill, through the `paused` hook.
async fn hook_drills_need_and_use_fault_hooks(
    admin: &Client,
    lrcs: &Api<DynamicObject>,
) -> Result<()> {
    let drills: Api<DynamicObject> = Api::namespaced_with(admin.clone(), NS, &drill_resource());
    let mut refused = library_drill("disk-stall")?;
    refused["metadata"]["name"] = json!("disk-stall-hooks-off");
    apply_yaml(admin, &serde_yaml::to_string(&refused)?, NS).await?;
    eventually(
        Duration::from_secs(30),
        "a disk-stall drill against a cluster without fault hooks is Invalid",
        || async {
            drills
                .get("disk-stall-hooks-off")
                .await
                .ok()
                .and_then(|d| d.data.get("status").cloned())
                .is_some_and(|s| s["phase"] == json!("Invalid"))
        },
    )
    .await?;
    let status = drills.get("disk-stall-hooks-off").await?.data["status"].clone();
    let message = status["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("spec.faults[0].kind")
            && message.contains("spec.orderStore.faultHooks: true"),
        "{message}"
    );

    lrcs.patch(
        LRC,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"orderStore": {"faultHooks": true}}})),
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let hooked = |p: &Pod| {
        p.spec.as_ref().is_some_and(|s| {
            s.containers.iter().any(|c| {
                c.args
                    .as_ref()
                    .is_some_and(|a| a.iter().any(|a| a == "--enable-test-faults"))
            })
        })
    };
    eventually(
        Duration::from_secs(180),
        "every pod rolled onto --enable-test-faults",
        || async {
            let list = pods
                .list(&ListParams::default().labels(&format!("roomkeeper.dev/cluster={LRC}")))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            !list.is_empty()
                && list.iter().all(|p| {
                    let ready = p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    hooked(p) && p.metadata.deletion_timestamp.is_none() && ready
                })
        },
    )
    .await?;
    wait_ready_voters(lrcs, "5/5", 60).await?;

    let ds = run_library_drill(admin, "disk-stall").await?;
    let lines: Vec<&str> = ds["faults"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        lines.iter().any(|l| l.contains("takes 200 ms longer"))
            && lines.iter().any(|l| l.contains("fault hooks cleared")),
        "{ds}"
    );
    // The final sweep over every pod found nothing it could not clear.
    ensure!(
        !ds["message"]
            .as_str()
            .unwrap_or_default()
            .contains("fault hooks left"),
        "{ds}"
    );
    // pauseNode: no SIGSTOP reaches a pod, so the hook freezes the leader
    // from inside; the others elect, nothing acknowledged is lost.
    let ps = run_library_drill(admin, "pause-leader").await?;
    let lines: Vec<&str> = ps["faults"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        lines.iter().any(|l| l.contains("frozen"))
            && lines.iter().any(|l| l.contains("fault hooks cleared")),
        "{ps}"
    );
    // The heal lands on time: a frozen node's status is not waited for on
    // every tick (it used to stretch the 8 s pause to 15 s, long enough for
    // T1 to restart the node and hold full recovery past the probe).
    let at = |what: &str| {
        lines
            .iter()
            .find(|l| l.contains(what))
            .and_then(|l| l.split(" ms:").next()?.trim().parse::<u64>().ok())
    };
    let (fault, heal) = (at("FAULT 0"), at("HEAL 0"));
    tracing::info!(
        ?fault,
        ?heal,
        "pause-leader: fault and heal (ms into the drill)"
    );
    ensure!(
        matches!((fault, heal), (Some(f), Some(h)) if h.saturating_sub(f) <= 12_000),
        "the 8 s pause lasted {fault:?} → {heal:?} ms: {ps}"
    );
    Ok(())
}

/// A learner-only region joins, then leaves the spec: its learner leaves the
/// group, its StatefulSet shrinks and goes with its Services and budget.
async fn region_added_and_removed(
    admin: &Client,
    lrcs: &Api<DynamicObject>,
    three_regions: &Value,
) -> Result<()> {
    let mut four = three_regions.clone();
    if let Some(regions) = four["spec"]["regions"].as_array_mut() {
        regions.push(
            json!({"name": "sa-east", "voters": 0, "learners": 1, "storage": {"size": "20Gi"}}),
        );
    }
    lrcs.patch(LRC, &PatchParams::default(), &Patch::Merge(&four))
        .await?;
    eventually(
        Duration::from_secs(90),
        "the sa-east learner joined",
        || async {
            lrc_status(lrcs).await["members"]
                .as_array()
                .is_some_and(|m| {
                    m.iter().any(|m| {
                        m["pod"] == json!(format!("{LRC}-sa-east-0"))
                            && m["role"] == json!("learner")
                    })
                })
        },
    )
    .await?;
    lrcs.patch(LRC, &PatchParams::default(), &Patch::Merge(three_regions))
        .await?;
    let sts: Api<StatefulSet> = Api::namespaced(admin.clone(), NS);
    let svcs: Api<Service> = Api::namespaced(admin.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    eventually(
        Duration::from_secs(90),
        "region sa-east is gone",
        || async {
            let members = lrc_status(lrcs).await["members"]
                .as_array()
                .map(|m| m.iter().all(|m| m["region"] != json!("sa-east")) && m.len() == 5)
                .unwrap_or(false);
            let sets = sts
                .get_opt(&format!("{LRC}-sa-east"))
                .await
                .ok()
                .flatten()
                .is_none();
            let services = svcs
                .list(&ListParams::default().labels("roomkeeper.dev/region=sa-east"))
                .await
                .map(|l| l.items.is_empty())
                .unwrap_or(false);
            let no_pods = pods
                .list(&ListParams::default().labels("roomkeeper.dev/region=sa-east"))
                .await
                .map(|l| l.items.is_empty())
                .unwrap_or(false);
            members && sets && services && no_pods
        },
    )
    .await?;
    wait_ready_voters(lrcs, "5/5", 60).await?;
    let notes = event_notes(admin).await?;
    ensure!(
        notes
            .iter()
            .any(|n| n.starts_with("region sa-east removed")),
        "a RegionRemoved event: {notes:?}"
    );
    eprintln!("region sa-east added as a learner region and removed again");
    Ok(())
}

/// A follower's pod is recreated with another IP (as on most real clusters):
/// the operator records the member's new addresses, the leader reaches it
/// there, and the cluster is whole again.
async fn recreated_pod_is_reached_at_its_new_ip(
    admin: &Client,
    lrcs: &Api<DynamicObject>,
    bridge: &KubeletBridge,
) -> Result<()> {
    let (pod, id) = follower_voter(admin, lrcs).await?;
    let old_ip = bridge.pod_ip(NS, &pod).context("the pod has an IP")?;
    bridge.set_sticky_ips(false);
    Api::<Pod>::namespaced(admin.clone(), NS)
        .delete(
            &pod,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await?;
    let moved = eventually(
        Duration::from_secs(90),
        "the recreated pod's new address is recorded",
        || async {
            let Some(ip) = bridge.pod_ip(NS, &pod).filter(|ip| *ip != old_ip) else {
                return false;
            };
            let recorded = event_notes(admin).await.is_ok_and(|n| {
                n.iter()
                    .any(|n| n.starts_with(&format!("node {id} ({pod}) came back at {ip}:")))
            });
            let s = lrc_status(lrcs).await;
            recorded && s["readyVoters"] == json!("5/5") && s["phase"] == json!("Running")
        },
    )
    .await;
    bridge.set_sticky_ips(true);
    moved?;
    eprintln!(
        "{pod} (node {id}) moved from {old_ip} to {:?}; its new address was recorded",
        bridge.pod_ip(NS, &pod)
    );
    Ok(())
}

/// A voter that does not lead: its pod and node id.
async fn follower_voter(admin: &Client, lrcs: &Api<DynamicObject>) -> Result<(String, i64)> {
    let voters = voter_ids(lrcs).await;
    let (nodes, _) = identity_map(admin).await?;
    let leader = lrc_status(lrcs).await["leaderId"].as_i64();
    nodes
        .into_iter()
        .find(|(_, id)| voters.contains(id) && Some(*id) != leader)
        .context("a follower voter")
}

/// The identity map's `nodes` (pod → id) and `joined` ids.
async fn identity_map(
    admin: &Client,
) -> Result<(BTreeMap<String, i64>, std::collections::BTreeSet<i64>)> {
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get(&format!("{LRC}-identities"))
        .await?;
    let data = cm.data.unwrap_or_default();
    let mut nodes = BTreeMap::new();
    for line in data.get("nodes").map(String::as_str).unwrap_or("").lines() {
        let mut parts = line.split_whitespace();
        if let (Some(pod), Some(id)) = (parts.next(), parts.next()) {
            if !pod.starts_with('#') {
                nodes.insert(pod.to_string(), id.parse()?);
            }
        }
    }
    let joined = data
        .get("joined")
        .map(String::as_str)
        .unwrap_or("")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(str::split_whitespace)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    Ok((nodes, joined))
}

/// A follower's volume is wiped under it. Its node must not rejoin Raft under
/// its old id (it lost its log and its vote): it stays in quarantine, the
/// operator removes the old id from the group, retires it, and the pod
/// rejoins under a new id.
async fn wiped_volume_rejoins_under_a_new_id(
    admin: &Client,
    lrcs: &Api<DynamicObject>,
    bridge: &KubeletBridge,
) -> Result<()> {
    let voters = voter_ids(lrcs).await;
    let (nodes, joined) = identity_map(admin).await?;
    ensure!(
        voters.iter().all(|v| joined.contains(v)),
        "every voter is recorded as joined: voters {voters:?}, joined {joined:?}"
    );
    let (pod, old_id) = follower_voter(admin, lrcs).await?;
    let highest_before = nodes.values().copied().max().unwrap_or(0);
    let adds_before = event_notes(admin)
        .await?
        .iter()
        .filter(|n| n.starts_with(&format!("added node {old_id} ")))
        .count();
    ensure!(bridge.kill_pod_process(NS, &pod), "{pod} runs here");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let volume = bridge.pvc_dir(NS, &format!("data-{pod}"));
    std::fs::remove_dir_all(&volume).with_context(|| format!("wiping {}", volume.display()))?;
    std::fs::create_dir_all(&volume)?;
    eprintln!("wiped the volume of {pod} (node {old_id})");
    eventually(
        Duration::from_secs(120),
        "the wiped pod rejoins under a new id",
        || async {
            let Ok((nodes, _)) = identity_map(admin).await else {
                return false;
            };
            let now = voter_ids(lrcs).await;
            nodes
                .get(&pod)
                .is_some_and(|id| *id > highest_before && now.contains(id))
                && !now.contains(&old_id)
                && now.len() == 5
        },
    )
    .await?;
    wait_ready_voters(lrcs, "5/5", 60).await?;
    let (nodes, joined) = identity_map(admin).await?;
    let new_id = nodes.get(&pod).copied().unwrap_or_default();
    eprintln!("{pod}: node {old_id} retired, rejoined as node {new_id}");
    ensure!(
        !nodes.values().any(|id| *id == old_id) && !joined.contains(&old_id),
        "node {old_id} is retired for good: {nodes:?} {joined:?}"
    );
    ensure!(joined.contains(&new_id), "{joined:?}");
    let region = pod
        .strip_prefix(&format!("{LRC}-"))
        .and_then(|r| r.rsplit_once('-'))
        .map(|(r, _)| r.to_string())
        .context("the pod's region")?;
    let certs = secret_text(admin, &format!("{LRC}-{region}-raft-certs")).await?;
    ensure!(
        certs.contains_key(&format!("node-{new_id}.crt"))
            && certs.contains_key(&format!("node-{new_id}.key")),
        "node {new_id} has its Raft certificate: {:?}",
        certs.keys()
    );
    ensure!(
        !certs.contains_key(&format!("node-{old_id}.crt")),
        "retired node {old_id}'s certificate was dropped: {:?}",
        certs.keys()
    );
    let notes = event_notes(admin).await?;
    ensure!(
        notes
            .iter()
            .any(|n| n.starts_with(&format!("node {old_id} ({pod}) lost its volume"))),
        "a WipedVolume event: {notes:?}"
    );
    ensure!(
        notes
            .iter()
            .any(|n| n.starts_with(&format!("retired node {old_id} of {pod}"))),
        "a NodeIdRetired event: {notes:?}"
    );
    let adds_after = notes
        .iter()
        .filter(|n| n.starts_with(&format!("added node {old_id} ")))
        .count();
    ensure!(
        adds_after == adds_before,
        "node {old_id} was never added back: {notes:?}"
    );
    let log = std::fs::read_to_string(bridge.container_log_path(NS, &pod, "node"))?;
    ensure!(
        log.contains(&format!(
            "node {old_id} has been a Raft member but its data directory"
        )),
        "the quarantined node said why:\n{log}"
    );
    Ok(())
}

/// A Secret's data as text.
async fn secret_text(admin: &Client, name: &str) -> Result<BTreeMap<String, String>> {
    let s = Api::<Secret>::namespaced(admin.clone(), NS)
        .get(name)
        .await
        .with_context(|| format!("Secret {name}"))?;
    Ok(s.data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect())
}

/// The pods run mutual TLS on Raft with certificates the operator issued:
/// `--raft-tls-dir`, never `--insecure-plaintext-raft`; the CA Secret (kept
/// with the data, no owner); each region's Secret holds this CA and a pair
/// for every id of its pods. A plain TCP peer's forwarded order and read
/// index are refused by the leader, while the same read index over TLS with
/// a member's pair from the Secret is answered. Returns the CA Secret.
async fn pods_run_mutual_tls_on_raft(
    admin: &Client,
    lrcs: &Api<DynamicObject>,
    bridge: &KubeletBridge,
    probe_dir: &std::path::Path,
) -> Result<Secret> {
    let pods = Api::<Pod>::namespaced(admin.clone(), NS)
        .list(&ListParams::default().labels(&format!("roomkeeper.dev/cluster={LRC}")))
        .await?
        .items;
    ensure!(pods.len() == 5, "{} pods", pods.len());
    for p in &pods {
        let spec = p.spec.as_ref().context("pod spec")?;
        let args = spec.containers[0].args.clone().unwrap_or_default();
        ensure!(
            args.iter().any(|a| a == "--raft-tls-dir")
                && !args.iter().any(|a| a == "--insecure-plaintext-raft"),
            "{:?} runs {args:?}",
            p.metadata.name
        );
    }
    let ca = Api::<Secret>::namespaced(admin.clone(), NS)
        .get(&format!("{LRC}-raft-ca"))
        .await
        .context("the Raft CA Secret")?;
    ensure!(
        ca.metadata.owner_references.is_none(),
        "the Raft CA outlives the cluster object, like the other keys"
    );
    let ca_text = secret_text(admin, &format!("{LRC}-raft-ca")).await?;
    let ca_crt = ca_text.get("ca.crt").context("ca.crt")?;
    ensure!(ca_text.contains_key("ca.key"), "ca.key");
    let (nodes, _) = identity_map(admin).await?;
    for region in ["us-east", "eu-west", "ap-south"] {
        let certs = secret_text(admin, &format!("{LRC}-{region}-raft-certs")).await?;
        ensure!(
            certs.get("ca.crt") == Some(ca_crt),
            "{region}: the CA's certificate"
        );
        for (pod, id) in nodes
            .iter()
            .filter(|(p, _)| p.starts_with(&format!("{LRC}-{region}-")))
        {
            ensure!(
                certs.contains_key(&format!("node-{id}.crt"))
                    && certs.contains_key(&format!("node-{id}.key")),
                "{pod} (node {id}) has no pair in {region}'s Secret: {:?}",
                certs.keys()
            );
        }
    }

    // A hostile peer on the Raft port (the host reaches every pod).
    let status = lrc_status(lrcs).await;
    let leader = status["leaderId"].as_i64().context("a leader")?;
    let leader_pod = nodes
        .iter()
        .find(|(_, id)| **id == leader)
        .map(|(p, _)| p.clone())
        .context("the leader's pod")?;
    let (follower_pod, follower) = follower_voter(admin, lrcs).await?;
    let ip = bridge.pod_ip(NS, &leader_pod).context("the leader's IP")?;
    let addr = format!("{ip}:7101");
    let region = follower_pod
        .strip_prefix(&format!("{LRC}-"))
        .and_then(|r| r.rsplit_once('-'))
        .map(|(r, _)| r.to_string())
        .context("the follower's region")?;
    let certs = secret_text(admin, &format!("{LRC}-{region}-raft-certs")).await?;
    std::fs::create_dir_all(probe_dir)?;
    std::fs::write(probe_dir.join("ca.crt"), ca_crt)?;
    std::fs::write(
        probe_dir.join("tls.crt"),
        certs
            .get(&format!("node-{follower}.crt"))
            .context("the follower's certificate")?,
    )?;
    std::fs::write(
        probe_dir.join("tls.key"),
        certs
            .get(&format!("node-{follower}.key"))
            .context("the follower's key")?,
    )?;
    let tls_dir = probe_dir.display().to_string();
    let (from, to) = (
        u64::try_from(follower).context("id")?,
        u64::try_from(leader).context("id")?,
    );
    let (plain_forward, plain_read, member_read) = tokio::task::spawn_blocking(move || {
        let header = ("local", from, to);
        let forward = [
            "forward-order",
            "--room",
            "room-a",
            "--sku",
            "sku-1",
            "--buyer",
            "mallory",
            "--contact",
            "x",
        ];
        (
            roomkeeper_e2e::raft_probe(&addr, &[], header, &forward),
            roomkeeper_e2e::raft_probe(&addr, &[], header, &["read-index"]),
            roomkeeper_e2e::raft_probe(&addr, &["--tls-dir", &tls_dir], header, &["read-index"]),
        )
    })
    .await?;
    ensure!(
        plain_forward.is_err() && plain_read.is_err(),
        "plain TCP to the leader's Raft port was answered: {plain_forward:?} {plain_read:?}"
    );
    let member_read = member_read.map_err(|e| {
        anyhow::anyhow!("a member's pair from the Secret should reach the leader: {e}")
    })?;
    eprintln!(
        "Raft port of {leader_pod}: plain TCP refused ({}), node {follower}'s certificate answered ({member_read})",
        plain_forward
            .err()
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
    );
    Ok(ca)
}

/// The pods' client and admin APIs are TLS from the region's API certificate
/// (D46): plain HTTP gets no answer, the operator's certificate is answered
/// on the admin port, a client without it is refused there, and the plain
/// metrics listener serves `/metrics` and nothing else.
async fn pods_serve_tls_on_their_apis(admin: &Client, bridge: &KubeletBridge) -> Result<()> {
    use roomkeeper_e2e::http_client;
    let pods = Api::<Pod>::namespaced(admin.clone(), NS)
        .list(&ListParams::default().labels(&format!("roomkeeper.dev/cluster={LRC}")))
        .await?
        .items;
    for p in &pods {
        let args = p.spec.as_ref().context("pod spec")?.containers[0]
            .args
            .clone()
            .unwrap_or_default();
        ensure!(
            args.iter().any(|a| a == "--http-tls-dir")
                && !args.iter().any(|a| a == "--insecure-plaintext-http"),
            "{:?} runs {args:?}",
            p.metadata.name
        );
        // Tokens from the mounted Secret, in no environment.
        let env = p.spec.as_ref().context("pod spec")?.containers[0]
            .env
            .clone()
            .unwrap_or_default();
        ensure!(
            args.iter().any(|a| a == "--admin-token-file")
                && args.iter().any(|a| a == "--client-token-file")
                && env.iter().all(|e| !e.name.contains("TOKEN")),
            "{:?} takes its tokens from files: {args:?} {env:?}",
            p.metadata.name
        );
    }
    let region = "us-east";
    let api_tls = secret_text(admin, &format!("{LRC}-{region}-api-tls")).await?;
    let ca = secret_text(admin, &format!("{LRC}-raft-ca")).await?;
    ensure!(
        api_tls.get("ca.crt") == ca.get("ca.crt")
            && api_tls.contains_key("tls.crt")
            && api_tls.contains_key("tls.key"),
        "{region}'s API Secret holds a pair under the cluster's CA: {:?}",
        api_tls.keys()
    );
    let pod = format!("{LRC}-{region}-0");
    let ip = bridge.pod_ip(NS, &pod).context("the pod's IP")?;
    let admin_addr = format!("{ip}:7301");
    let t = Duration::from_secs(3);
    let get = |addr: &str, path: &str| http_client::build("GET", addr, path, None, None);
    let plain = http_client::request(&admin_addr, get(&admin_addr, "/healthz")?, t).await;
    ensure!(
        plain.is_err(),
        "plain HTTP to the admin API was answered: {plain:?}"
    );
    let operator = roomkeeper_e2e::operator::node_tls(admin, NS, LRC).await?;
    let r = http_client::request_tls(&admin_addr, &operator, get(&admin_addr, "/healthz")?, t)
        .await
        .context("the operator's certificate on the admin API")?;
    ensure!(
        r.status == 200,
        "admin /healthz over TLS: {} {}",
        r.status,
        r.text()
    );
    let no_cert = http_client::Tls::from_pem(ca.get("ca.crt").context("ca.crt")?.as_bytes(), None)?
        .expecting(&roomkeeper_api::raft_identity::api_server_name("local"));
    let refused =
        http_client::request_tls(&admin_addr, &no_cert, get(&admin_addr, "/healthz")?, t).await;
    ensure!(
        refused.is_err(),
        "the admin API answered a client without the operator's certificate"
    );
    // The client API takes TLS without a client certificate.
    let api_addr = format!("{ip}:7201");
    let r = http_client::request_tls(&api_addr, &no_cert, get(&api_addr, "/healthz")?, t).await?;
    ensure!(
        r.status < 500,
        "client API over TLS: {} {}",
        r.status,
        r.text()
    );
    let metrics_addr = format!("{ip}:7401");
    let r = http_client::request(&metrics_addr, get(&metrics_addr, "/metrics")?, t).await?;
    ensure!(
        r.status == 200 && r.text().contains("roomkeeper_"),
        "the metrics listener serves /metrics in plain HTTP: {}",
        r.status
    );
    let r = http_client::request(&metrics_addr, get(&metrics_addr, "/admin/status")?, t).await?;
    ensure!(
        r.status == 404,
        "the metrics listener must not serve /admin/status: {}",
        r.status
    );
    eprintln!("API ports of {pod}: TLS only; the admin API answers the operator's certificate alone; metrics plain and read-only");
    Ok(())
}

/// Versions of everything the cluster owns (pods excluded: their status is
/// the kubelet's to write).
async fn owned_versions(client: &Client) -> Result<Vec<String>> {
    let lp = ListParams::default().labels(&format!("roomkeeper.dev/cluster={LRC}"));
    let mut out = Vec::new();
    let rv = |m: &kube::api::ObjectMeta| {
        format!(
            "{}={}",
            m.name.clone().unwrap_or_default(),
            m.resource_version.clone().unwrap_or_default()
        )
    };
    // StatefulSets and budgets get status writes from the controller manager:
    // compare their spec generation instead.
    let generation = |m: &kube::api::ObjectMeta| {
        format!(
            "{}@{}",
            m.name.clone().unwrap_or_default(),
            m.generation.unwrap_or_default()
        )
    };
    out.extend(
        Api::<StatefulSet>::namespaced(client.clone(), NS)
            .list(&lp)
            .await?
            .items
            .iter()
            .map(|o| generation(&o.metadata)),
    );
    out.extend(
        Api::<Service>::namespaced(client.clone(), NS)
            .list(&lp)
            .await?
            .items
            .iter()
            .map(|o| rv(&o.metadata)),
    );
    out.extend(
        Api::<ConfigMap>::namespaced(client.clone(), NS)
            .list(&lp)
            .await?
            .items
            .iter()
            .map(|o| rv(&o.metadata)),
    );
    out.extend(
        Api::<PodDisruptionBudget>::namespaced(client.clone(), NS)
            .list(&lp)
            .await?
            .items
            .iter()
            .map(|o| generation(&o.metadata)),
    );
    out.extend(
        Api::<NetworkPolicy>::namespaced(client.clone(), NS)
            .list(&lp)
            .await?
            .items
            .iter()
            .map(|o| rv(&o.metadata)),
    );
    out.extend(
        Api::<Secret>::namespaced(client.clone(), NS)
            .list(&lp)
            .await?
            .items
            .iter()
            .map(|o| rv(&o.metadata)),
    );
    let lrc: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &lrc_resource());
    out.push(format!(
        "lrc={}",
        lrc.get(LRC)
            .await?
            .metadata
            .resource_version
            .unwrap_or_default()
    ));
    Ok(out)
}

/// Notes of every event about the cluster (each event counted once, however
/// many times a series repeated it).
async fn event_notes(client: &Client) -> Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(LRC))
        .filter_map(|e| e.note)
        .collect())
}

/// `(eventTime, note)` of every event about the cluster, oldest first.
async fn event_timeline(client: &Client) -> Result<Vec<(String, String)>> {
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let mut out: Vec<(String, String)> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(LRC))
        .map(|e| {
            let at = e.event_time.map(|t| t.0.to_string()).unwrap_or_default();
            (at, e.note.unwrap_or_default())
        })
        .collect();
    out.sort();
    Ok(out)
}
