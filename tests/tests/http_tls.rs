//! TLS on the client and admin APIs against a real node process over real
//! sockets (issue 16, item 2): a TLS client is served, plain HTTP is refused
//! on both listeners, the admin API accepts only the operator's certificate
//! of this cluster's CA, and a replaced certificate is picked up by new
//! connections without a restart while a bad one is refused and the previous
//! one kept.

use std::path::Path;
use std::time::Duration;

use roomkeeper_api::client::PlaceOrder;
use roomkeeper_e2e::http_client::{self, Tls};
use roomkeeper_e2e::{
    http, http_via, raft_certs, wait_until, Cluster, ClusterOptions, ADMIN_TOKEN, CLIENT_TOKEN,
    CLUSTER_ID,
};

fn certs(args: &[&str]) {
    raft_certs(args);
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Replaces `dir/name` with `from/name` in one rename.
fn replace(dir: &Path, from: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.new"));
    std::fs::copy(from.join(name), &tmp).expect("copy");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

/// The value of node 1's series `name` whose labels include every one of
/// `labels` (the node's registry adds its own: node id, region, zone).
/// The scrape credential of `--metrics-token` (a read-only token of its own).
const METRICS_TOKEN: &str = "scrape-only-token";

fn metric(c: &Cluster, name: &str, labels: &[&str]) -> u64 {
    let r = http_via(
        c.admin_tls.as_ref(),
        "GET",
        &c.node(1).admin_addr,
        "/metrics",
        None,
        Some(METRICS_TOKEN),
        Duration::from_secs(5),
    )
    .expect("metrics");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let text = r.body.as_str().unwrap_or_default().to_string();
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && labels.iter().all(|want| l.contains(want)))
        .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// `roomkeeper_http_tls_reloads_total{result}` of node 1.
fn reloads(c: &Cluster, result: &str) -> u64 {
    metric(
        c,
        "roomkeeper_http_tls_reloads_total",
        &[&format!("result=\"{result}\"")],
    )
}

#[test]
fn tls_edges_refuse_plaintext_and_strangers_and_reload_certificates_without_a_restart() {
    // Three nodes: a one-node leader's quorum acknowledgement only moves with
    // writes, so after an idle second it refuses orders as `no_quorum`.
    let mut opts = ClusterOptions::nodes(3);
    opts.http_tls = true;
    opts.extra_args.extend(
        [
            "--metrics-addr",
            "127.0.0.1:0",
            "--metrics-token",
            METRICS_TOKEN,
        ]
        .map(String::from),
    );
    // Started and initialized through the TLS admin API with the operator's
    // certificate: the harness's own calls are the first accepted case.
    let c = Cluster::start_initialized(opts);
    let api = c.node(1).api_addr.clone();
    let admin = c.node(1).admin_addr.clone();
    let client_tls = c.client_tls.clone().expect("client TLS");
    c.create_room("room-a", &[("sku-1", 100, 10)]);
    let order = |key: &str| {
        serde_json::to_string(&PlaceOrder {
            sku: "sku-1".into(),
            buyer: format!("buyer-{key}"),
            qty: 1,
            idempotency_key: key.into(),
            contact: "+1 555 0100".into(),
        })
        .expect("json")
    };
    let r = c
        .client("POST", 1, "/v1/rooms/room-a/orders", Some(&order("k1")))
        .expect("order over TLS");
    assert_eq!(r.status, 201, "{:?}", r.body);

    // Plain HTTP is refused on both listeners (no answer, the connection is
    // closed by the TLS layer).
    let plain_api = http(
        "GET",
        &api,
        "/v1/rooms/room-a",
        None,
        Some(CLIENT_TOKEN),
        Duration::from_secs(3),
    );
    assert!(plain_api.is_err(), "plain HTTP served: {plain_api:?}");
    let plain_admin = http(
        "GET",
        &admin,
        "/admin/status",
        None,
        Some(ADMIN_TOKEN),
        Duration::from_secs(3),
    );
    assert!(plain_admin.is_err(), "plain HTTP served: {plain_admin:?}");

    // The admin API: only the operator's certificate of this CA.
    let ca = c.dir.join("raft-ca");
    let our_ca = ca.join("ca.crt");
    let other_ca = c.dir.join("other-ca");
    certs(&["ca", "--cluster-id", CLUSTER_ID, "--out", &s(&other_ca)]);
    let stranger = c.dir.join("stranger-operator");
    certs(&[
        "operator",
        "--cluster-id",
        CLUSTER_ID,
        "--ca-dir",
        &s(&other_ca),
        "--out",
        &s(&stranger),
    ]);
    let other_cluster = c.dir.join("other-cluster-operator");
    certs(&[
        "operator",
        "--cluster-id",
        CLUSTER_ID,
        "--ca-dir",
        &s(&ca),
        "--name-cluster",
        "other",
        "--out",
        &s(&other_cluster),
    ]);
    let with_cert = |dir: &Path| {
        Tls::from_files(&our_ca, Some((dir.join("tls.crt"), dir.join("tls.key")))).expect("tls")
    };
    let refused: Vec<(&str, Tls)> = vec![
        ("no client certificate", client_tls.clone()),
        ("the operator name from another CA", with_cert(&stranger)),
        (
            "this CA's operator of another cluster",
            with_cert(&other_cluster),
        ),
        (
            "this CA's certificate of node 1 (a peer, not the operator)",
            with_cert(&c.dir.join("node-1-tls")),
        ),
    ];
    for (who, tls) in &refused {
        let r = http_via(
            Some(tls),
            "GET",
            &admin,
            "/admin/status",
            None,
            Some(ADMIN_TOKEN),
            Duration::from_secs(3),
        );
        assert!(r.is_err(), "admin API served {who}: {r:?}");
    }
    let ok = c.admin("GET", 1, "/admin/status", None).expect("operator");
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    // Scrapers and kubelet probes have a plain listener of their own
    // (`--metrics-addr`, reported in the status): metrics, health and
    // readiness only — nothing there reads orders or changes the node.
    let metrics_addr = ok.body["metrics_addr"]
        .as_str()
        .expect("the status names the metrics listener")
        .to_string();
    let plain = |method: &str, path: &str| {
        http(
            method,
            &metrics_addr,
            path,
            None,
            None,
            Duration::from_secs(3),
        )
        .expect("the metrics listener answers plain HTTP")
    };
    // `--metrics-token`: the scrape needs the metrics token (not the admin
    // token, which the scraper never holds); the probes need none.
    let refused = plain("GET", "/metrics");
    assert_eq!(refused.status, 401, "{:?}", refused.body);
    assert_eq!(refused.code(), "unauthorized");
    let with_admin_token = http(
        "GET",
        &metrics_addr,
        "/metrics",
        None,
        Some(ADMIN_TOKEN),
        Duration::from_secs(3),
    )
    .expect("metrics listener");
    assert_eq!(
        with_admin_token.status, 401,
        "the admin token is not a scrape credential"
    );
    let scraped = http(
        "GET",
        &metrics_addr,
        "/metrics",
        None,
        Some(METRICS_TOKEN),
        Duration::from_secs(3),
    )
    .expect("scrape with the token");
    assert_eq!(scraped.status, 200);
    assert!(
        scraped
            .body
            .as_str()
            .is_some_and(|t| t.contains("roomkeeper_raft_term")),
        "{:?}",
        scraped.body
    );
    assert_eq!(plain("GET", "/healthz").status, 200);
    assert_eq!(plain("GET", "/readyz").status, 200);
    for (method, path) in [
        ("GET", "/admin/status"),
        ("POST", "/admin/sales"),
        ("POST", "/admin/transfer-leader"),
        ("GET", "/v1/rooms/room-a"),
    ] {
        assert_eq!(plain(method, path).status, 404, "{method} {path}");
    }
    // The key-rotation CLI reaches a TLS admin API with the operator's
    // certificate (`--tls-dir`), and not without it or with a stranger's.
    let keys_check = |tls_dir: Option<&Path>| {
        let mut cmd = std::process::Command::new(roomkeeper_e2e::binary());
        cmd.args([
            "contact-keys",
            "check",
            "--admin",
            &admin,
            "--admin-token",
            ADMIN_TOKEN,
            "--timeout-secs",
            "5",
        ]);
        if let Some(d) = tls_dir {
            cmd.arg("--tls-dir").arg(d);
        }
        cmd.output().expect("run roomkeeper contact-keys check")
    };
    let out = keys_check(Some(&c.dir.join("operator-tls")));
    assert!(
        out.status.success(),
        "contact-keys check over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ok\":true"));
    assert!(
        !keys_check(None).status.success(),
        "plain HTTP to a TLS admin API"
    );
    assert!(
        !keys_check(Some(&stranger)).status.success(),
        "another CA's operator certificate"
    );
    // Each refusal (the plain request and the four strangers) is counted.
    let refused_handshakes = metric(
        &c,
        "roomkeeper_http_connection_errors_total",
        &["listener=\"admin\"", "kind=\"tls_handshake\""],
    );
    assert!(
        refused_handshakes >= 5,
        "{refused_handshakes} refused admin handshakes counted"
    );
    // A client that trusts another CA does not take the node's certificate.
    let wrong_trust = Tls::from_files(&other_ca.join("ca.crt"), None).expect("tls");
    let r = http_via(
        Some(&wrong_trust),
        "GET",
        &api,
        "/v1/rooms/room-a",
        None,
        Some(CLIENT_TOKEN),
        Duration::from_secs(3),
    );
    assert!(
        r.is_err(),
        "a client of another CA accepted the node: {r:?}"
    );

    // Reload: a new certificate in the directory reaches new connections of
    // the same process (the harness restarts nodes only when told to).
    let peer_cert =
        |addr: &str| http_client::block_on(client_tls.peer_certificate(addr)).expect("handshake");
    let before = peer_cert(&api);
    assert_eq!(
        before,
        peer_cert(&admin),
        "one certificate for both listeners"
    );
    let node_dir = c.http_tls_dir(1);
    let fresh = c.dir.join("fresh-http");
    certs(&[
        "http",
        "--cluster-id",
        CLUSTER_ID,
        "--ca-dir",
        &s(&ca),
        "--name",
        "127.0.0.1",
        "--out",
        &s(&fresh),
    ]);
    replace(&node_dir, &fresh, "tls.key");
    replace(&node_dir, &fresh, "tls.crt");
    wait_until(
        Duration::from_secs(10),
        "the new certificate served",
        || peer_cert(&api) != before && peer_cert(&admin) != before,
    );
    let after = peer_cert(&api);
    let loaded = reloads(&c, "loaded");
    assert!(loaded >= 1, "no reload counted");
    let r = c
        .client("POST", 1, "/v1/rooms/room-a/orders", Some(&order("k2")))
        .expect("order after reload");
    assert_eq!(r.status, 201, "{:?}", r.body);

    // A bad pair (a key that is not the certificate's) is refused: logged,
    // counted, the previous certificate still served.
    let refused_before = reloads(&c, "refused");
    let spare = c.dir.join("spare-http");
    certs(&[
        "http",
        "--cluster-id",
        CLUSTER_ID,
        "--ca-dir",
        &s(&ca),
        "--name",
        "127.0.0.1",
        "--out",
        &s(&spare),
    ]);
    replace(&node_dir, &spare, "tls.key");
    wait_until(Duration::from_secs(10), "the bad pair refused", || {
        reloads(&c, "refused") > refused_before
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        peer_cert(&api),
        after,
        "the refused pair replaced the good one"
    );
    assert_eq!(
        reloads(&c, "loaded"),
        loaded,
        "a bad pair counted as loaded"
    );
    let r = c
        .client("POST", 1, "/v1/rooms/room-a/orders", Some(&order("k3")))
        .expect("order after a refused reload");
    assert_eq!(r.status, 201, "{:?}", r.body);
    let log = std::fs::read_to_string(&c.node(1).log_path).expect("log");
    assert!(
        log.contains("new HTTP TLS certificate refused"),
        "the refusal is not logged"
    );
}
