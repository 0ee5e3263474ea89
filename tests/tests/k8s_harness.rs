//! The Kubernetes harness against a real API server: RBAC is enforced for a
//! ServiceAccount's token; a StatefulSet of `roomkeeper node` pods is created
//! by the controller manager and run by the kubelet bridge; pods become Ready
//! on their pod IPs, come back after a crash and after deletion (same IP,
//! same volume), and are garbage-collected with their owner; the namespace is
//! deleted by the namespace controller. Two API servers in one process, each
//! with its own kubelet bridge (two clusters, one flat pod network): their
//! pods reach each other through the host, and a NetworkPolicy of one
//! cluster admits a pod of the other only by its address (`ipBlock`).
//!
//! Needs the binaries from `scripts/k8s-test-bins.sh` (skipped loudly without
//! them, fails under CI) and a built `roomkeeper` (`ROOMKEEPER_BIN`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use roomkeeper_e2e::k8s::{
    client_from_kubeconfig, eventually, init_test_tracing, skip_or_panic, KubeHarness,
};
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

// ------------------------------------------------ two clusters, one network

const MESH_NS: &str = "rk-mesh";
const MESH_ADMIN: u16 = 7301;
const MESH_API: u16 = 7201;
/// How long a connection attempt may take before it counts as blocked.
const BLOCKED_AFTER: Duration = Duration::from_secs(2);

/// Two clusters (two API servers, two kubelet bridges) in one test process,
/// one pod network: a pod of cluster west reaches a pod of cluster east
/// through the host as long as no policy selects it; a NetworkPolicy of
/// east whose only peer is an ipBlock without west's pod refuses it (the
/// connection times out), also when the block holds it in `except`; an
/// ipBlock with west's pod /32 admits it again, on the rule's port only; a
/// block without ports on every port. The host reaches both pods
/// throughout, and east's isolated pod still opens connections to west.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clusters_one_pod_network_with_ip_block_policies() {
    const TEST: &str = "k8s_two_clusters";
    init_test_tracing();
    let started = Instant::now();
    let (east, west) = tokio::join!(
        KubeHarness::start_or_skip("k8s_two_clusters_east"),
        KubeHarness::start_or_skip("k8s_two_clusters_west")
    );
    let (Some(east), Some(west)) = (east, west) else {
        return;
    };
    if east.is_external() || west.is_external() {
        skip_or_panic(
            TEST,
            "it needs two local API servers, and ROOMKEEPER_E2E_USE_KUBECONFIG makes both \
             harnesses use one existing cluster",
        );
        return;
    }
    eprintln!(
        "two control planes up in {:.1}s: east {}, west {}",
        started.elapsed().as_secs_f64(),
        east.server_url(),
        west.server_url()
    );
    let bin = roomkeeper_e2e::binary();
    let east_bridge = KubeletBridge::start(east.admin_client(), east.dir(), &bin)
        .await
        .expect("east kubelet bridge");
    let west_bridge = KubeletBridge::start(west.admin_client(), west.dir(), &bin)
        .await
        .expect("west kubelet bridge");
    if !east_bridge.network_policy_or_skip(TEST) || !west_bridge.network_policy_or_skip(TEST) {
        return;
    }
    assert!(
        roomkeeper_e2e::netns::ipv4_forwarding(),
        "IPv4 forwarding is off after the pod networks were created (see the log): \
         pods of the two bridges cannot reach each other"
    );
    let east_side = Side {
        name: "east",
        h: &east,
        bridge: &east_bridge,
        pod: "east-0",
    };
    let west_side = Side {
        name: "west",
        h: &west,
        bridge: &west_bridge,
        pod: "west-0",
    };
    if let Err(e) = two_clusters(&east_side, &west_side).await {
        for side in [&east_side, &west_side] {
            eprintln!(
                "===== cluster {} =====\n{}",
                side.name,
                side.h.dump_logs(30)
            );
            eprintln!(
                "--- container log {} ---\n{}",
                side.pod,
                side.bridge
                    .container_log_tail(MESH_NS, side.pod, "node", 20)
            );
            eprintln!("--- rules ---\n{:?}", side.bridge.applied_rules());
        }
        panic!("two-cluster scenario failed: {e:#}");
    }
    eprintln!("scenario passed in {:.1}s", started.elapsed().as_secs_f64());
}

/// One cluster of the two-cluster test.
struct Side<'a> {
    name: &'static str,
    h: &'a KubeHarness,
    bridge: &'a KubeletBridge,
    pod: &'static str,
}

impl Side<'_> {
    fn ip(&self) -> Result<Ipv4Addr> {
        self.bridge
            .pod_ip(MESH_NS, self.pod)
            .with_context(|| format!("{} has no IP", self.pod))
    }

    /// Whether a fresh connection from this side's pod to `to:port` is
    /// established (and, on the admin port, answers `/healthz` with 200);
    /// false when it times out, an error otherwise.
    async fn reaches(&self, to: Ipv4Addr, port: u16) -> Result<bool> {
        let from = self.pod;
        match self
            .bridge
            .connect_from_pod(MESH_NS, from, SocketAddr::from((to, port)), BLOCKED_AFTER)
            .await
        {
            Ok(mut s) => {
                if port == MESH_ADMIN {
                    let code =
                        tokio::task::spawn_blocking(move || healthz_over(&mut s, BLOCKED_AFTER))
                            .await??;
                    ensure!(
                        code == 200,
                        "{from} -> {to}:{port}: /healthz answered {code}"
                    );
                }
                Ok(true)
            }
            Err(e) => {
                let timed_out = e
                    .chain()
                    .filter_map(|c| c.downcast_ref::<std::io::Error>())
                    .any(|io| io.kind() == std::io::ErrorKind::TimedOut);
                ensure!(
                    timed_out,
                    "{from} -> {to}:{port}: {e:#} (expected success or a timeout)"
                );
                Ok(false)
            }
        }
    }

    /// Waits until this side's nftables rules match its API server.
    async fn sync(&self) -> Result<()> {
        self.bridge.wait_synced(Duration::from_secs(20)).await
    }

    async fn expect_reaches(&self, to: &Side<'_>, port: u16, want: bool) -> Result<()> {
        let got = self.reaches(to.ip()?, port).await?;
        ensure!(
            got == want,
            "{} ({}) -> {} ({}):{port} {}, expected it {}",
            self.pod,
            self.name,
            to.pod,
            to.name,
            if got { "connected" } else { "was blocked" },
            if want { "to connect" } else { "to be blocked" }
        );
        Ok(())
    }

    /// The host (this test process) reaches this side's pod: `/healthz` on
    /// the admin port, and a connection to the order API.
    async fn host_reaches(&self) -> Result<()> {
        let ip = self.ip()?;
        let pod = self.pod;
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut s =
                TcpStream::connect_timeout(&SocketAddr::from((ip, MESH_ADMIN)), BLOCKED_AFTER)
                    .with_context(|| format!("host -> {pod} {ip}:{MESH_ADMIN}"))?;
            let code = healthz_over(&mut s, BLOCKED_AFTER)?;
            ensure!(code == 200, "host -> {pod}: /healthz answered {code}");
            TcpStream::connect_timeout(&SocketAddr::from((ip, MESH_API)), BLOCKED_AFTER)
                .with_context(|| format!("host -> {pod} {ip}:{MESH_API}"))?;
            Ok(())
        })
        .await?
    }
}

async fn two_clusters(east: &Side<'_>, west: &Side<'_>) -> Result<()> {
    let pp = PostParams::default();
    for side in [east, west] {
        let admin = side.h.admin_client();
        Api::<Namespace>::all(admin.clone())
            .create(&pp, &obj(json!({"metadata": {"name": MESH_NS}})))
            .await?;
        Api::<Secret>::namespaced(admin.clone(), MESH_NS)
            .create(
                &pp,
                &obj(json!({"metadata": {"name": "keys"},
                    "stringData": {"contact.key": format!("0 {}\n", "ab".repeat(32))}})),
            )
            .await?;
        Api::<Pod>::namespaced(admin, MESH_NS)
            .create(&pp, &mesh_pod(side.pod))
            .await?;
    }
    for side in [east, west] {
        let pods: Api<Pod> = Api::namespaced(side.h.admin_client(), MESH_NS);
        wait_ready(&pods, side.pod, Duration::from_secs(90)).await?;
    }
    let (east_ip, west_ip) = (east.ip()?, west.ip()?);
    ensure!(
        east_ip.octets()[..3] != west_ip.octets()[..3],
        "the two bridges share a subnet: {east_ip} and {west_ip}"
    );
    eprintln!(
        "east-0 is {east_ip} (host {}), west-0 is {west_ip} (host {})",
        east.bridge.host_ip(),
        west.bridge.host_ip()
    );

    // (a) No policy: each cluster's pod reaches the other's, through the host.
    east.sync().await?;
    west.sync().await?;
    west.expect_reaches(east, MESH_ADMIN, true).await?;
    west.expect_reaches(east, MESH_API, true).await?;
    east.expect_reaches(west, MESH_ADMIN, true).await?;
    east.host_reaches().await?;
    west.host_reaches().await?;

    // (b) East's pod admits only an ipBlock without west's pod: east's own
    // subnet.
    let policies: Api<NetworkPolicy> = Api::namespaced(east.h.admin_client(), MESH_NS);
    let [a, b, c, _] = east_ip.octets();
    let policy = |from: serde_json::Value, ports: Option<serde_json::Value>| {
        let mut rule = json!({"from": from});
        if let Some(ports) = ports {
            rule["ports"] = ports;
        }
        json!({
            "metadata": {"name": "store-ingress"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "store"}},
                "policyTypes": ["Ingress"],
                "ingress": [rule],
            },
        })
    };
    policies
        .create(
            &pp,
            &obj(policy(
                json!([{"ipBlock": {"cidr": format!("{a}.{b}.{c}.0/24")}}]),
                None,
            )),
        )
        .await?;
    east.sync().await?;
    let t = Instant::now();
    west.expect_reaches(east, MESH_ADMIN, false).await?;
    west.expect_reaches(east, MESH_API, false).await?;
    eprintln!(
        "(b) west refused by an ipBlock of east's subnet ({:?})",
        t.elapsed()
    );
    // East's pod is isolated, yet still opens connections to west (the
    // answers are judged as answers), and the host reaches both.
    east.expect_reaches(west, MESH_ADMIN, true).await?;
    east.host_reaches().await?;
    west.host_reaches().await?;
    let rules = east
        .bridge
        .applied_rules()
        .context("east's rules applied")?;
    ensure!(
        rules.isolated.contains(&east_ip)
            && rules.blocks_any.contains(&(
                Ipv4Addr::new(a, b, c, 0),
                Ipv4Addr::new(a, b, c, 255),
                east_ip
            )),
        "east's rules: {rules:?}"
    );

    // ... and a block holding west's pod in `except`: the whole pod network
    // but west-0.
    let merge = PatchParams::default();
    let replace = |v: serde_json::Value| Patch::Merge(json!({"spec": v["spec"].clone()}));
    policies
        .patch(
            "store-ingress",
            &merge,
            &replace(policy(
                json!([{"ipBlock": {"cidr": "10.64.0.0/10", "except": [format!("{west_ip}/32")]}}]),
                None,
            )),
        )
        .await?;
    east.sync().await?;
    west.expect_reaches(east, MESH_ADMIN, false).await?;

    // (c) An ipBlock of west's pod /32 on the admin port: admitted there, not
    // on the order API.
    policies
        .patch(
            "store-ingress",
            &merge,
            &replace(policy(
                json!([{"ipBlock": {"cidr": format!("{west_ip}/32")}}]),
                Some(json!([{"protocol": "TCP", "port": MESH_ADMIN}])),
            )),
        )
        .await?;
    east.sync().await?;
    west.expect_reaches(east, MESH_ADMIN, true).await?;
    west.expect_reaches(east, MESH_API, false).await?;
    east.host_reaches().await?;
    // West's whole subnet without ports: every port.
    let [a, b, c, _] = west_ip.octets();
    policies
        .patch(
            "store-ingress",
            &merge,
            &replace(policy(
                json!([{"ipBlock": {"cidr": format!("{a}.{b}.{c}.0/24")}}]),
                None,
            )),
        )
        .await?;
    east.sync().await?;
    west.expect_reaches(east, MESH_ADMIN, true).await?;
    west.expect_reaches(east, MESH_API, true).await?;

    // (d) The host reached both pods throughout; once more at the end.
    east.host_reaches().await?;
    west.host_reaches().await?;
    Ok(())
}

/// A single-node `roomkeeper node` pod labelled `app=store`, serving
/// `/healthz` on the admin port and the order API.
fn mesh_pod(name: &str) -> Pod {
    obj(json!({
        "metadata": {"name": name, "labels": {"app": "store"}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "node",
                "image": "ghcr.io/example/roomkeeper:test",
                "command": ["roomkeeper"],
                "args": [
                    "node", "--id", "1",
                    "--data-dir", "/var/lib/roomkeeper/node",
                    "--raft-addr", "$(POD_IP):7101",
                    "--api-addr", format!("$(POD_IP):{MESH_API}"),
                    "--admin-addr", format!("$(POD_IP):{MESH_ADMIN}"),
                    "--region", "harness-region", "--zone", "harness-zone-a",
                    "--contact-key-file", "/etc/roomkeeper/keys/contact.key",
                    // These pods test network flows, not peer authentication.
                    "--insecure-plaintext-raft",
                    "--insecure-plaintext-http",
                ],
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "ROOMKEEPER_CLIENT_TOKEN", "value": roomkeeper_e2e::CLIENT_TOKEN},
                    {"name": "ROOMKEEPER_ADMIN_TOKEN", "value": roomkeeper_e2e::ADMIN_TOKEN},
                    {"name": "ROOMKEEPER_LOG", "value": "info,openraft=warn"},
                ],
                "ports": [
                    {"name": "api", "containerPort": MESH_API},
                    {"name": "admin", "containerPort": MESH_ADMIN},
                ],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}, "periodSeconds": 1},
                "volumeMounts": [
                    {"name": "data", "mountPath": "/var/lib/roomkeeper"},
                    {"name": "keys", "mountPath": "/etc/roomkeeper/keys", "readOnly": true},
                ],
            }],
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "keys", "secret": {"secretName": "keys"}},
            ],
        },
    }))
}

/// One `GET /healthz` on an open connection: the status code, or an error
/// when no full answer arrives within `timeout`.
fn healthz_over(s: &mut TcpStream, timeout: Duration) -> Result<u16> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: pod\r\nconnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            return head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("no status code in {head:?}"));
        }
        let n = s.read(&mut chunk).context("reading the answer")?;
        if n == 0 {
            bail!("connection closed before an answer");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
