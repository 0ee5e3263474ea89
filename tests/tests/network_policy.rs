//! NetworkPolicy is enforced between the kubelet bridge's pods: three
//! `roomkeeper node` pods in their own network namespaces reach each other
//! without policies; a policy admitting the admin port only from pods labelled
//! `access=granted` blocks an unlabelled pod and admits a labelled one (and no
//! other port); taking the label away and giving it to another pod flips
//! reachability without restarting anything, and cuts an established
//! connection, which carries data again once the label is back; the host
//! always reaches every pod. The operator's own policy for a cluster admits
//! Raft only between its members, the order API only from its namespace and
//! the ingress namespace, the admin port only from the operator's pods, the
//! metrics port only from the monitoring namespace's Prometheus — and
//! refuses every other of those flows. A starting bridge removes what a dead test
//! process left behind; a dropped bridge leaves neither namespaces nor its
//! bridge device.
//!
//! Needs root with iproute2 and nftables, the binaries from
//! `scripts/k8s-test-bins.sh` and a built `roomkeeper` (`ROOMKEEPER_BIN`);
//! skipped loudly without them, failed under CI.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams, PostParams};
use roomkeeper_e2e::k8s::{eventually, init_test_tracing, KubeHarness};
use roomkeeper_e2e::kubelet::KubeletBridge;
use serde_json::json;

const NS: &str = "rk-netpol";
const ADMIN: u16 = 7301;
const API: u16 = 7201;
/// The plain, read-only metrics listener (`--metrics-addr`).
const METRICS: u16 = 7401;
/// How long a connection attempt may take before it counts as blocked.
const BLOCKED_AFTER: Duration = Duration::from_secs(2);

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policy_is_enforced_between_pods() {
    init_test_tracing();
    let started = Instant::now();
    let Some(h) = KubeHarness::start_or_skip("network_policy").await else {
        return;
    };
    let stale = (roomkeeper_e2e::netns::unavailable_reason().is_none())
        .then(|| leave_stale_network().expect("making a stale pod network"));
    let bin = roomkeeper_e2e::binary();
    let bridge = KubeletBridge::start(h.admin_client(), h.dir(), &bin)
        .await
        .expect("kubelet bridge");
    if !bridge.network_policy_or_skip("network_policy") {
        return;
    }
    // What a dead test process left behind is gone once a bridge started.
    if let Some((dev, netns, table)) = stale {
        let links = run(&["ip", "-o", "link", "show"]);
        assert!(
            !links.contains(&format!(" {dev}:")),
            "stale {dev} left:\n{links}"
        );
        let list = run(&["ip", "netns", "list"]);
        assert!(!list.contains(&netns), "stale netns {netns} left:\n{list}");
        let tables = run(&["nft", "list", "tables", "bridge"]);
        assert!(
            !tables.contains(&table),
            "stale table {table} left:\n{tables}"
        );
    }
    if let Err(e) = scenario(&h, &bridge).await {
        eprintln!("{}", h.dump_logs(40));
        for pod in ["server", "friend", "stranger"] {
            eprintln!(
                "--- container log {pod} ---\n{}",
                bridge.container_log_tail(NS, pod, "node", 20)
            );
        }
        eprintln!("--- rules ---\n{:?}", bridge.applied_rules());
        panic!("network policy scenario failed: {e:#}");
    }
    eprintln!("scenario passed in {:.1}s", started.elapsed().as_secs_f64());

    // Dropping the bridge removes the pod namespaces and the bridge device.
    let netns: Vec<_> = ["server", "friend", "stranger"]
        .iter()
        .filter_map(|p| bridge.pod_netns(NS, p))
        .collect();
    assert_eq!(netns.len(), 3, "every pod had a network namespace");
    let host_ip = bridge.host_ip();
    drop(bridge);
    for path in &netns {
        assert!(!path.exists(), "{} left behind", path.display());
    }
    let addrs = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("ip addr");
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(
        !addrs.contains(&format!("inet {host_ip}/")),
        "the bridge address {host_ip} is still configured:\n{addrs}"
    );
}

fn run(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Leaves a bridge device, a network namespace and an nftables table as a
/// test process that was killed would: named and tagged with a pid that is
/// no longer alive. Returns their names.
fn leave_stale_network() -> Result<(String, String, String)> {
    let mut child = std::process::Command::new("true").spawn()?;
    let pid = child.id();
    child.wait()?;
    let dev = format!("rkhs{}", pid % 100_000);
    let netns = format!("rkh-{pid}-stale-1");
    let table = format!("rkh_{pid}_stale");
    run(&["ip", "link", "add", &dev, "type", "bridge"]);
    run(&[
        "ip",
        "link",
        "set",
        &dev,
        "alias",
        &format!("roomkeeper-harness pid={pid}"),
    ]);
    run(&["ip", "netns", "add", &netns]);
    run(&["nft", "add", "table", "bridge", &table]);
    Ok((dev, netns, table))
}

fn node_pod(name: &str, id: u32, labels: serde_json::Value) -> Pod {
    obj(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "node",
                "image": "ghcr.io/example/roomkeeper:test",
                "command": ["roomkeeper"],
                "args": [
                    "node", "--id", id.to_string(),
                    "--data-dir", "/var/lib/roomkeeper/node",
                    "--raft-addr", "$(POD_IP):7101",
                    "--api-addr", format!("$(POD_IP):{API}"),
                    "--admin-addr", format!("$(POD_IP):{ADMIN}"),
                    "--metrics-addr", format!("$(POD_IP):{METRICS}"),
                    "--region", "harness-region", "--zone", "harness-zone-a",
                    "--contact-key-file", "/etc/roomkeeper/keys/contact.key",
                    // These pods test NetworkPolicy flows, not peer auth.
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
                    {"name": "raft", "containerPort": 7101},
                    {"name": "api", "containerPort": API},
                    {"name": "admin", "containerPort": ADMIN},
                    {"name": "metrics", "containerPort": METRICS},
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

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One `GET /healthz` on an open connection (HTTP/1.1 keep-alive): the
/// status code, or an error when no full answer arrives within `timeout`.
fn healthz_on(s: &mut TcpStream, timeout: Duration) -> Result<u16> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: pod\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let code = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .context("no status code")?;
                return Ok(code);
            }
        }
        let n = s.read(&mut chunk).context("reading the answer")?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// Whether a fresh connection from pod `from` of namespace `ns` to `to:port` is established
/// (and, for the admin port, answers `/healthz` with 200).
async fn reaches_from(
    bridge: &KubeletBridge,
    ns: &str,
    from: &str,
    to: Ipv4Addr,
    port: u16,
) -> Result<bool> {
    match bridge
        .connect_from_pod(ns, from, addr(to, port), BLOCKED_AFTER)
        .await
    {
        Ok(mut s) => {
            if port == ADMIN || port == METRICS {
                let code = tokio::task::spawn_blocking(move || healthz_on(&mut s, BLOCKED_AFTER))
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

async fn expect(
    bridge: &KubeletBridge,
    from: &str,
    to: (&str, Ipv4Addr),
    port: u16,
    want: bool,
) -> Result<()> {
    expect_from(bridge, NS, from, to, port, want).await
}

/// [`expect`] from a pod of namespace `ns`.
async fn expect_from(
    bridge: &KubeletBridge,
    ns: &str,
    from: &str,
    to: (&str, Ipv4Addr),
    port: u16,
    want: bool,
) -> Result<()> {
    let got = reaches_from(bridge, ns, from, to.1, port).await?;
    ensure!(
        got == want,
        "{from} -> {}:{port} {}, expected it {}",
        to.0,
        if got { "connected" } else { "was blocked" },
        if want { "to connect" } else { "to be blocked" }
    );
    Ok(())
}

/// The host (this test process, on the bridge IP) reaches `ip:port`.
async fn host_reaches(ip: Ipv4Addr, port: u16) -> Result<()> {
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut s = TcpStream::connect_timeout(&addr(ip, port), BLOCKED_AFTER)
            .with_context(|| format!("host -> {ip}:{port}"))?;
        if port == ADMIN || port == METRICS {
            let code = healthz_on(&mut s, BLOCKED_AFTER)?;
            ensure!(code == 200, "host -> {ip}:{port}: /healthz answered {code}");
        }
        Ok(())
    })
    .await?
}

async fn scenario(h: &KubeHarness, bridge: &KubeletBridge) -> Result<()> {
    let admin = h.admin_client();
    let pp = PostParams::default();
    Api::<Namespace>::all(admin.clone())
        .create(&pp, &obj(json!({"metadata": {"name": NS}})))
        .await?;
    Api::<Secret>::namespaced(admin.clone(), NS)
        .create(&pp, &keys_secret())
        .await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    pods.create(&pp, &node_pod("server", 1, json!({"app": "server"})))
        .await?;
    pods.create(&pp, &node_pod("friend", 2, json!({"access": "granted"})))
        .await?;
    pods.create(&pp, &node_pod("stranger", 3, json!({})))
        .await?;
    // Ready means the bridge's probe (from the host) reached each pod.
    for name in ["server", "friend", "stranger"] {
        eventually(Duration::from_secs(90), &format!("{name} Ready"), || {
            let pods = pods.clone();
            async move { pods.get(name).await.is_ok_and(|p| is_ready(&p)) }
        })
        .await?;
    }
    let ip = |name: &str| {
        bridge
            .pod_ip(NS, name)
            .with_context(|| format!("{name} has no IP"))
    };
    let server = ("server", ip("server")?);
    let stranger = ("stranger", ip("stranger")?);
    let friend = ("friend", ip("friend")?);
    let host = bridge.host_ip();
    ensure!(
        !server.1.is_loopback() && !host.is_loopback(),
        "pods and host on loopback: {server:?} {host}"
    );
    let p = pods.get("server").await?;
    let status = p.status.unwrap_or_default();
    ensure!(
        status.pod_ip == Some(server.1.to_string()) && status.host_ip == Some(host.to_string()),
        "server status: podIP {:?} hostIP {:?}",
        status.pod_ip,
        status.host_ip
    );

    // (a) No policy: every pod reaches every pod.
    bridge.wait_synced(Duration::from_secs(20)).await?;
    let t = Instant::now();
    expect(bridge, "friend", server, ADMIN, true).await?;
    expect(bridge, "stranger", server, ADMIN, true).await?;
    expect(bridge, "stranger", server, API, true).await?;
    expect(bridge, "server", stranger, ADMIN, true).await?;
    eprintln!("(a) open network checked in {:?}", t.elapsed());

    // (b) The admin port of app=server only from access=granted pods.
    let policies: Api<NetworkPolicy> = Api::namespaced(admin.clone(), NS);
    policies
        .create(
            &pp,
            &obj(json!({
                "metadata": {"name": "server-admin"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "server"}},
                    "policyTypes": ["Ingress"],
                    "ingress": [{
                        "from": [{"podSelector": {"matchLabels": {"access": "granted"}}}],
                        "ports": [{"protocol": "TCP", "port": ADMIN}],
                    }],
                },
            })),
        )
        .await?;
    let t = Instant::now();
    bridge.wait_synced(Duration::from_secs(20)).await?;
    eprintln!("policy programmed {:?} after its creation", t.elapsed());
    expect(bridge, "friend", server, ADMIN, true).await?;
    expect(bridge, "stranger", server, ADMIN, false).await?;
    // Only the admin port is admitted, even for the labelled pod.
    expect(bridge, "friend", server, API, false).await?;
    // The server is not isolated the other way round; unselected pods still
    // accept everything.
    expect(bridge, "server", stranger, ADMIN, true).await?;
    expect(bridge, "stranger", friend, API, true).await?;
    // (d) The host reaches every port of every pod.
    host_reaches(server.1, ADMIN).await?;
    host_reaches(server.1, API).await?;
    host_reaches(stranger.1, ADMIN).await?;

    // (c) An established connection from friend carries data ...
    let mut conn = bridge
        .connect_from_pod(NS, "friend", addr(server.1, ADMIN), BLOCKED_AFTER)
        .await?;
    let mut conn2 = conn.try_clone()?;
    let code = tokio::task::spawn_blocking(move || healthz_on(&mut conn2, BLOCKED_AFTER)).await??;
    ensure!(code == 200, "established connection: {code}");
    // ... until friend loses the label; the stranger gains it. Nothing restarts.
    let pp_merge = PatchParams::default();
    pods.patch(
        "friend",
        &pp_merge,
        &Patch::Merge(json!({"metadata": {"labels": {"access": null}}})),
    )
    .await?;
    pods.patch(
        "stranger",
        &pp_merge,
        &Patch::Merge(json!({"metadata": {"labels": {"access": "granted"}}})),
    )
    .await?;
    let t = Instant::now();
    bridge.wait_synced(Duration::from_secs(20)).await?;
    eprintln!("label change programmed in {:?}", t.elapsed());
    expect(bridge, "friend", server, ADMIN, false).await?;
    expect(bridge, "stranger", server, ADMIN, true).await?;
    let mut conn2 = conn.try_clone()?;
    let cut =
        tokio::task::spawn_blocking(move || healthz_on(&mut conn2, Duration::from_secs(3))).await?;
    ensure!(
        cut.is_err(),
        "the established connection still carried data after the policy denied it: {cut:?}"
    );
    // The label back: the same connection (TCP retransmits the request)
    // carries the answer again.
    pods.patch(
        "friend",
        &pp_merge,
        &Patch::Merge(json!({"metadata": {"labels": {"access": "granted"}}})),
    )
    .await?;
    bridge.wait_synced(Duration::from_secs(20)).await?;
    let t = Instant::now();
    let resumed = tokio::task::spawn_blocking(move || -> Result<u16> {
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut buf = [0u8; 256];
        let n = conn.read(&mut buf).context("reading the delayed answer")?;
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        head.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status in {head:?}"))
    })
    .await??;
    ensure!(resumed == 200, "resumed connection: {resumed}");
    eprintln!(
        "established connection carried data again {:?} after the label came back",
        t.elapsed()
    );
    expect(bridge, "friend", server, ADMIN, true).await?;

    // Removing the policy opens everything again.
    policies.delete("server-admin", &Default::default()).await?;
    bridge.wait_synced(Duration::from_secs(20)).await?;
    expect(bridge, "friend", server, API, true).await?;
    let rules = bridge.applied_rules().context("rules applied")?;
    ensure!(
        rules.isolated.is_empty() && rules.pods.len() == 3,
        "after the policy's deletion: {rules:?}"
    );

    // (e) The operator's own policy.
    let t = Instant::now();
    operator_policy(h, bridge, server, friend).await?;
    eprintln!("(e) the operator's policy checked in {:?}", t.elapsed());
    Ok(())
}

const RAFT: u16 = 7101;
const INGRESS_NS: &str = "rk-netpol-ingress";
const MONITORING_NS: &str = "rk-netpol-monitoring";
const ROLE: &str = "roomkeeper.dev/test-role";

/// The policy the operator makes for a LiveRoomCluster `shop` whose members
/// are `server` and `friend`, with the ingress and monitoring namespaces
/// named by label: each flow that exists is admitted, the others refused.
async fn operator_policy(
    h: &KubeHarness,
    bridge: &KubeletBridge,
    server: (&str, Ipv4Addr),
    friend: (&str, Ipv4Addr),
) -> Result<()> {
    let admin = h.admin_client();
    let pp = PostParams::default();
    // A gateway in the ingress namespace, and Prometheus in the monitoring
    // one. The gateway carries the Prometheus label too: only Prometheus of
    // the monitoring namespace may scrape.
    let others = [
        (INGRESS_NS, "ingress", "gateway", 5),
        (MONITORING_NS, "monitoring", "prometheus", 4),
    ];
    for (ns, role, pod, id) in others {
        Api::<Namespace>::all(admin.clone())
            .create(
                &pp,
                &obj(json!({"metadata": {"name": ns, "labels": {ROLE: role}}})),
            )
            .await?;
        Api::<Secret>::namespaced(admin.clone(), ns)
            .create(&pp, &keys_secret())
            .await?;
        Api::<Pod>::namespaced(admin.clone(), ns)
            .create(
                &pp,
                &node_pod(pod, id, json!({"app.kubernetes.io/name": "prometheus"})),
            )
            .await?;
    }
    for (ns, _, pod, _) in others {
        let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
        eventually(Duration::from_secs(90), &format!("{pod} Ready"), || {
            let pods = pods.clone();
            async move { pods.get(pod).await.is_ok_and(|p| is_ready(&p)) }
        })
        .await?;
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let merge = PatchParams::default();
    for member in ["server", "friend"] {
        pods.patch(
            member,
            &merge,
            &Patch::Merge(json!({"metadata": {"labels": {"roomkeeper.dev/cluster": "shop"}}})),
        )
        .await?;
    }
    let spec: roomkeeper_operator::crd::LiveRoomClusterSpec = serde_json::from_value(json!({
        "regions": [{"name": "east", "voters": 3}],
        "image": "ghcr.io/example/roomkeeper:test",
        "network": {
            "clientNamespaceSelector": {"matchLabels": {ROLE: "ingress"}},
            "monitoringNamespaceSelector": {"matchLabels": {ROLE: "monitoring"}},
        },
    }))?;
    let mut lrc = roomkeeper_operator::crd::LiveRoomCluster::new("shop", spec);
    lrc.metadata.namespace = Some(NS.to_string());
    let np = roomkeeper_operator::resources::network_policy(&lrc);
    let np_name = np.metadata.name.clone().context("policy name")?;
    let policies: Api<NetworkPolicy> = Api::namespaced(admin.clone(), NS);
    policies.create(&pp, &np).await?;
    bridge.wait_synced(Duration::from_secs(20)).await?;

    // Raft: members only (not a pod of the namespace, not another namespace).
    expect_from(bridge, NS, "friend", server, RAFT, true).await?;
    expect_from(bridge, NS, "server", friend, RAFT, true).await?;
    expect_from(bridge, NS, "stranger", server, RAFT, false).await?;
    expect_from(bridge, INGRESS_NS, "gateway", server, RAFT, false).await?;
    expect_from(bridge, MONITORING_NS, "prometheus", server, RAFT, false).await?;
    // The order API: this namespace and the ingress namespace.
    expect_from(bridge, NS, "stranger", server, API, true).await?;
    expect_from(bridge, INGRESS_NS, "gateway", server, API, true).await?;
    expect_from(bridge, MONITORING_NS, "prometheus", server, API, false).await?;
    // The metrics port: Prometheus of the monitoring namespace; not a
    // member, not a pod of the namespace, not Prometheus elsewhere.
    expect_from(bridge, MONITORING_NS, "prometheus", server, METRICS, true).await?;
    expect_from(bridge, INGRESS_NS, "gateway", server, METRICS, false).await?;
    expect_from(bridge, NS, "friend", server, METRICS, false).await?;
    expect_from(bridge, NS, "stranger", server, METRICS, false).await?;
    // The admin port: the operator's alone, not even Prometheus.
    expect_from(bridge, MONITORING_NS, "prometheus", server, ADMIN, false).await?;
    expect_from(bridge, INGRESS_NS, "gateway", server, ADMIN, false).await?;
    expect_from(bridge, NS, "friend", server, ADMIN, false).await?;
    expect_from(bridge, NS, "stranger", server, ADMIN, false).await?;
    // ... and the operator's pods.
    pods.patch(
        "stranger",
        &merge,
        &Patch::Merge(
            json!({"metadata": {"labels": {"app.kubernetes.io/name": "roomkeeper-operator"}}}),
        ),
    )
    .await?;
    bridge.wait_synced(Duration::from_secs(20)).await?;
    expect_from(bridge, NS, "stranger", server, ADMIN, true).await?;
    expect_from(bridge, NS, "stranger", server, METRICS, false).await?;
    expect_from(bridge, NS, "stranger", server, RAFT, false).await?;
    policies.delete(&np_name, &Default::default()).await?;
    bridge.wait_synced(Duration::from_secs(20)).await?;
    expect_from(bridge, NS, "stranger", server, RAFT, true).await?;
    Ok(())
}

fn keys_secret() -> Secret {
    obj(json!({"metadata": {"name": "keys"},
        "stringData": {"contact.key": format!("0 {}\n", "ab".repeat(32))}}))
}
