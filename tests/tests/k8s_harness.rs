//! The Kubernetes harness against a real API server: RBAC is enforced for a
//! ServiceAccount's token; a StatefulSet of `roomkeeper node` pods is created
//! by the controller manager and run by the kubelet bridge; pods become Ready
//! on their pod IPs, come back after a crash and after deletion (same IP,
//! same volume), and are garbage-collected with their owner; the namespace is
//! deleted by the namespace controller.
//!
//! Needs the binaries from `scripts/k8s-test-bins.sh` (skipped loudly without
//! them, fails under CI) and a built `roomkeeper` (`ROOMKEEPER_BIN`).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use roomkeeper_e2e::k8s::{client_from_kubeconfig, eventually, init_test_tracing, KubeHarness};
use roomkeeper_e2e::kubelet::KubeletBridge;
use serde_json::json;

const NS: &str = "rk-e2e";
const STS: &str = "store";

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_rbac_statefulset_and_kubelet_bridge() {
    init_test_tracing();
    let started = Instant::now();
    let Some(h) = KubeHarness::start_or_skip("k8s_harness").await else {
        return;
    };
    eprintln!(
        "control plane up in {:.1}s at {}",
        started.elapsed().as_secs_f64(),
        h.server_url()
    );
    let bin = roomkeeper_e2e::binary();
    let bridge = KubeletBridge::start(h.admin_client(), h.dir(), &bin)
        .await
        .expect("kubelet bridge");
    let result = scenario(&h, &bridge).await;
    if let Err(e) = result {
        eprintln!("{}", h.dump_logs(40));
        for pod in ["store-1", "store-2"] {
            eprintln!(
                "--- container log {pod} ---\n{}",
                bridge.container_log_tail(NS, pod, "node", 30)
            );
        }
        panic!("k8s harness scenario failed: {e:#}");
    }
    eprintln!("scenario passed in {:.1}s", started.elapsed().as_secs_f64());
}

async fn scenario(h: &KubeHarness, bridge: &KubeletBridge) -> Result<()> {
    let admin = h.admin_client();
    let pp = PostParams::default();
    if !h.is_external() {
        let v = admin.apiserver_version().await?;
        ensure!(
            v.major == "1" && v.minor == "37" && v.git_version == roomkeeper_e2e::k8s::K8S_VERSION,
            "the API server reports version {v:?}"
        );
    }
    Api::<Namespace>::all(admin.clone())
        .create(&pp, &obj(json!({"metadata": {"name": NS}})))
        .await?;

    rbac_is_enforced(h, &admin).await?;

    // Secrets the pods read through a volume and env.
    Api::<Secret>::namespaced(admin.clone(), NS)
        .create(
            &pp,
            &obj(json!({
                "metadata": {"name": "store-keys"},
                "stringData": {
                    "contact.key": format!("0 {}\n", "ab".repeat(32)),
                    "client-token": roomkeeper_e2e::CLIENT_TOKEN,
                    "admin-token": roomkeeper_e2e::ADMIN_TOKEN,
                },
            })),
        )
        .await?;

    let sts: Api<StatefulSet> = Api::namespaced(admin.clone(), NS);
    sts.create(&pp, &obj(statefulset())).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);

    // The controller manager creates the pods and PVCs, the bridge binds and
    // runs them; both become Ready with their own pod IPs.
    let names = ["store-1", "store-2"];
    let mut first = Vec::new();
    for name in names {
        let p = wait_ready(&pods, name, Duration::from_secs(120)).await?;
        let ip = pod_ip(&p)?;
        ensure!(
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("harness-node"),
            "{name} not bound to harness-node"
        );
        healthz(&ip)
            .await
            .with_context(|| format!("{name} /healthz"))?;
        first.push((name, ip, p.metadata.uid.clone().unwrap_or_default()));
    }
    ensure!(first[0].1 != first[1].1, "pods share an IP");
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), NS)
        .list(&ListParams::default())
        .await?;
    let mut claims: Vec<String> = pvcs
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    claims.sort();
    ensure!(
        claims == ["data-store-1", "data-store-2"],
        "PVCs: {claims:?}"
    );
    let data_dir = bridge.pvc_dir(NS, "data-store-1");
    ensure!(
        std::fs::read_dir(&data_dir)?.next().is_some(),
        "node wrote nothing under its PVC dir {}",
        data_dir.display()
    );

    // A crash: the bridge restarts the process and counts it.
    ensure!(
        bridge.kill_pod_process(NS, "store-1"),
        "store-1 not running"
    );
    eventually(
        Duration::from_secs(60),
        "store-1 restarted and Ready",
        || {
            let pods = pods.clone();
            async move {
                match pods.get("store-1").await {
                    Ok(p) => restart_count(&p) >= 1 && is_ready(&p),
                    Err(_) => false,
                }
            }
        },
    )
    .await?;

    // Deletion: the StatefulSet controller recreates the pod, which keeps its
    // IP and its volume.
    pods.delete("store-1", &DeleteParams::default()).await?;
    let old_uid = first[0].2.clone();
    eventually(
        Duration::from_secs(90),
        "store-1 recreated and Ready",
        || {
            let pods = pods.clone();
            let old_uid = old_uid.clone();
            async move {
                match pods.get("store-1").await {
                    Ok(p) => p.metadata.uid.as_deref() != Some(old_uid.as_str()) && is_ready(&p),
                    Err(_) => false,
                }
            }
        },
    )
    .await?;
    let p = pods.get("store-1").await?;
    ensure!(pod_ip(&p)? == first[0].1, "recreated pod changed its IP");
    healthz(&first[0].1).await?;

    // Owner deleted: the garbage collector removes the pods, the bridge stops
    // them and performs the final delete.
    sts.delete(STS, &DeleteParams::background()).await?;
    eventually(Duration::from_secs(90), "pods garbage-collected", || {
        let pods = pods.clone();
        async move {
            matches!(pods.list(&ListParams::default()).await, Ok(l) if l.items.is_empty())
        }
    })
    .await?;
    for (name, ip, _) in &first {
        ensure!(
            healthz(ip).await.is_err(),
            "{name} still answers after deletion"
        );
    }

    // Namespace deletion by the namespace controller.
    Api::<Namespace>::all(admin.clone())
        .delete(NS, &DeleteParams::default())
        .await?;
    let nss = Api::<Namespace>::all(admin.clone());
    eventually(Duration::from_secs(90), "namespace deleted", || {
        let nss = nss.clone();
        async move { matches!(nss.get_opt(NS).await, Ok(None)) }
    })
    .await?;
    Ok(())
}

/// A ServiceAccount bound to a Role that may read and create ConfigMaps, and
/// nothing else: its token can list and create them, and gets 403 otherwise.
async fn rbac_is_enforced(h: &KubeHarness, admin: &Client) -> Result<()> {
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(admin.clone(), NS)
        .create(&pp, &obj(json!({"metadata": {"name": "operator"}})))
        .await?;
    Api::<Role>::namespaced(admin.clone(), NS)
        .create(
            &pp,
            &obj(json!({
                "metadata": {"name": "configmaps-rw"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                           "verbs": ["get", "list", "watch", "create"]}],
            })),
        )
        .await?;
    Api::<RoleBinding>::namespaced(admin.clone(), NS)
        .create(
            &pp,
            &obj(json!({
                "metadata": {"name": "operator-configmaps"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmaps-rw"},
                "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": NS}],
            })),
        )
        .await?;
    let kubeconfig = h.service_account_kubeconfig(NS, "operator").await?;
    let sa = client_from_kubeconfig(&kubeconfig).await?;
    let cms: Api<ConfigMap> = Api::namespaced(sa.clone(), NS);
    cms.list(&ListParams::default())
        .await
        .context("allowed list")?;
    cms.create(
        &pp,
        &obj(json!({"metadata": {"name": "allowed"}, "data": {"k": "v"}})),
    )
    .await
    .context("allowed create")?;
    let forbidden = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
        other => bail!("expected 403, got {other:?}"),
    };
    forbidden(
        cms.delete("allowed", &DeleteParams::default())
            .await
            .map(|_| ()),
    )
    .context("delete configmap")?;
    forbidden(
        Api::<Secret>::namespaced(sa.clone(), NS)
            .list(&ListParams::default())
            .await
            .map(|_| ()),
    )
    .context("list secrets")?;
    forbidden(
        Api::<ConfigMap>::namespaced(sa, "default")
            .list(&ListParams::default())
            .await
            .map(|_| ()),
    )
    .context("list configmaps in another namespace")?;
    Ok(())
}

fn statefulset() -> serde_json::Value {
    let secret_env = |name: &str, key: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": "store-keys", "key": key}}});
    json!({
        "metadata": {"name": STS},
        "spec": {
            "replicas": 2,
            "ordinals": {"start": 1},
            "serviceName": STS,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": STS}},
            "template": {
                "metadata": {"labels": {"app": STS}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "node",
                        "image": "ghcr.io/example/roomkeeper:test",
                        "command": ["roomkeeper"],
                        "args": [
                            "node", "--id", "$(NODE_ID)",
                            "--data-dir", "/var/lib/roomkeeper/node",
                            "--raft-addr", "$(POD_IP):7101",
                            "--api-addr", "$(POD_IP):7201",
                            "--admin-addr", "$(POD_IP):7301",
                            "--region", "harness-region", "--zone", "harness-zone-a",
                            "--contact-key-file", "/etc/roomkeeper/keys/contact.key",
                            // The harness checks pod lifecycle, not peer authentication.
                            "--insecure-plaintext-raft",
                            "--insecure-plaintext-http",
                        ],
                        "env": [
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "NODE_ID", "valueFrom": {"fieldRef":
                                {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}},
                            secret_env("ROOMKEEPER_CLIENT_TOKEN", "client-token"),
                            secret_env("ROOMKEEPER_ADMIN_TOKEN", "admin-token"),
                            {"name": "ROOMKEEPER_LOG", "value": "info,openraft=warn"},
                        ],
                        "ports": [
                            {"name": "raft", "containerPort": 7101},
                            {"name": "api", "containerPort": 7201},
                            {"name": "admin", "containerPort": 7301},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}, "periodSeconds": 1},
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/var/lib/roomkeeper"},
                            {"name": "keys", "mountPath": "/etc/roomkeeper/keys", "readOnly": true},
                        ],
                    }],
                    "volumes": [{"name": "keys", "secret": {"secretName": "store-keys"}}],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            }],
        },
    })
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn restart_count(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map(|c| c.restart_count)
        .unwrap_or(0)
}

fn pod_ip(p: &Pod) -> Result<String> {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod has no podIP")
}

async fn wait_ready(pods: &Api<Pod>, name: &str, timeout: Duration) -> Result<Pod> {
    let start = Instant::now();
    loop {
        if let Ok(Some(p)) = pods.get_opt(name).await {
            if is_ready(&p) && pod_ip(&p).is_ok() {
                return Ok(p);
            }
        }
        if start.elapsed() > timeout {
            let state = pods.get_opt(name).await.ok().flatten().map(|p| p.status);
            bail!("{name} not Ready after {timeout:?}: {state:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET /healthz on the node's admin port at the pod IP.
async fn healthz(ip: &str) -> Result<()> {
    let addr = format!("{ip}:7301");
    let r = tokio::task::spawn_blocking(move || {
        roomkeeper_e2e::http("GET", &addr, "/healthz", None, None, Duration::from_secs(2))
    })
    .await??;
    ensure!(r.status == 200, "healthz answered {}", r.status);
    Ok(())
}
