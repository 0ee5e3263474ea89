//! The operator's actions that change where buyers go and whether they may
//! buy, on a real API server: traffic weights in a Gateway API `HTTPRoute`
//! (the upstream CRD, from `scripts/gateway-api-crds.sh`), and T4 pausing
//! sales in the store itself when quorum is lost.
//!
//! Needs the binaries from `scripts/k8s-test-bins.sh` (skipped loudly without
//! them, fails under CI), the Gateway API CRDs, and a built `roomkeeper`
//! (`ROOMKEEPER_BIN`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DynamicObject, ListParams};
use kube::Client;
use roomkeeper_e2e::buyers::{client_call, judge_sale, open_sale, require_clean, Auth, SaleLoad};
use roomkeeper_e2e::gateway::{
    httproute_crd_or_skip, install_crd, install_httproute_crd, GatewayCrds,
};
use roomkeeper_e2e::http_client;
use roomkeeper_e2e::k8s::{client_from_kubeconfig, eventually, init_test_tracing, KubeHarness};
use roomkeeper_e2e::kubelet::KubeletBridge;
use roomkeeper_e2e::operator::{
    apply_file, apply_yaml, evacuate_playbook, form_example_cluster, lrc_resource,
    voters_by_region, OperatorEnv, OperatorProcess,
};
use roomkeeper_operator::traffic::{HttpRouteRouter, TrafficRouter, FULL_WEIGHT};
use serde_json::{json, Value};

/// Serializes the tests that run a whole cluster (`--test-threads=2` in CI).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NS: &str = "shop";
const LRC: &str = "flash-sale";
const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// The route's weights by backend Service name.
async fn route_weights(client: &Client) -> Result<BTreeMap<String, u64>> {
    roomkeeper_e2e::operator::route_weights(client, NS, LRC).await
}

fn router(client: &Client) -> HttpRouteRouter {
    HttpRouteRouter::new(
        client.clone(),
        NS,
        LRC,
        REGIONS.iter().map(|r| r.to_string()).collect(),
        Default::default(),
        None,
    )
}

/// The router under the operator's own ServiceAccount (deploy/rbac.yaml):
/// without the CRD a weight change fails naming it; with it, the weights
/// live in the HTTPRoute and a new router (a restarted operator) reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_weights_live_in_an_httproute_and_a_missing_crd_is_named() {
    init_test_tracing();
    let Some(crd) = httproute_crd_or_skip("traffic weights") else {
        return;
    };
    let Some(h) = KubeHarness::start_or_skip("operator_traffic").await else {
        return;
    };
    if let Err(e) = traffic_weights(&h, &crd).await {
        eprintln!("{}", h.dump_logs(30));
        panic!("traffic weights: {e:#}");
    }
}

async fn traffic_weights(h: &KubeHarness, crd: &GatewayCrds) -> Result<()> {
    let env = OperatorEnv::prepare(h, &roomkeeper_e2e::binary(), NS, &[]).await?;
    let admin = env.admin.clone();
    let sa = client_from_kubeconfig(&env.sa_kubeconfig).await?;

    let missing = router(&sa)
        .set_weight("us-east", 0)
        .await
        .err()
        .context("a weight change without the HTTPRoute CRD must fail")?
        .to_string();
    ensure!(
        missing.contains("httproutes.gateway.networking.k8s.io")
            && missing.contains("not installed"),
        "the error must name the missing CRD: {missing}"
    );
    ensure!(
        router(&sa).ensure(&|_| FULL_WEIGHT).await.is_err(),
        "ensure without the CRD must fail too"
    );

    // HTTPRoute alone is not enough: the backends speak TLS, and a gateway
    // without the BackendTLSPolicy would send buyers plain HTTP.
    install_crd(
        &admin,
        &crd.httproute,
        "httproutes.gateway.networking.k8s.io",
    )
    .await?;
    let no_policy = router(&sa)
        .ensure(&|_| FULL_WEIGHT)
        .await
        .err()
        .context("ensure without the BackendTLSPolicy CRD must fail")?
        .to_string();
    ensure!(
        no_policy.contains("backendtlspolicies.gateway.networking.k8s.io"),
        "the error must name the missing CRD: {no_policy}"
    );
    install_httproute_crd(&admin, crd).await?;
    let weights = router(&sa).ensure(&|_| FULL_WEIGHT).await?;
    let policy = Api::<DynamicObject>::namespaced_with(
        admin.clone(),
        NS,
        &HttpRouteRouter::tls_policy_resource(),
    )
    .get(&format!("{LRC}-buyers-tls"))
    .await
    .context("the BackendTLSPolicy next to the route")?;
    let spec = &policy.data["spec"];
    let targets: Vec<&str> = spec["targetRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    ensure!(
        targets.len() == 3
            && REGIONS
                .iter()
                .all(|r| targets.contains(&format!("{LRC}-{r}").as_str())),
        "every region's client Service is a TLS backend: {spec}"
    );
    ensure!(
        spec["validation"]["hostname"] == "local.api.roomkeeper"
            && spec["validation"]["caCertificateRefs"][0]["name"] == format!("{LRC}-api-ca"),
        "verified under the cluster's CA by its API name: {spec}"
    );
    ensure!(
        weights.values().all(|w| *w == FULL_WEIGHT) && weights.len() == 3,
        "{weights:?}"
    );
    let want: BTreeMap<String, u64> = REGIONS
        .iter()
        .map(|r| (format!("{LRC}-{r}"), 100))
        .collect();
    ensure!(
        route_weights(&admin).await? == want,
        "the route lists every region's client Service at 100"
    );

    let words = router(&sa).set_weight("us-east", 0).await?;
    ensure!(words.contains("us-east 100 → 0"), "{words}");
    let got = route_weights(&admin).await?;
    ensure!(got[&format!("{LRC}-us-east")] == 0, "{got:?}");
    ensure!(got[&format!("{LRC}-eu-west")] == 100, "{got:?}");

    // A restarted operator: the weights come from the route, not from
    // `initial` (which would put every region back at 100).
    let again = router(&sa).ensure(&|_| FULL_WEIGHT).await?;
    ensure!(
        again["us-east"] == 0 && again["ap-south"] == 100,
        "{again:?}"
    );
    ensure!(
        route_weights(&admin).await?[&format!("{LRC}-us-east")] == 0,
        "ensure must not overwrite a weight"
    );

    let unknown = router(&sa).set_weight("mars", 0).await;
    ensure!(
        unknown
            .as_ref()
            .is_err_and(|e| e.to_string().contains("mars")),
        "{unknown:?}"
    );
    router(&sa).set_weight("us-east", 100).await?;
    ensure!(route_weights(&admin).await? == want, "weight restored");
    eprintln!("traffic weights: HTTPRoute {LRC}-buyers kept them across router restarts");
    Ok(())
}

async fn lrc_status(api: &Api<DynamicObject>) -> Value {
    roomkeeper_e2e::operator::lrc_status(api, LRC).await
}

/// One order on one pod: the HTTP status and the error code (or the order id).
async fn place(ip: &str, token: &Auth, room: &str, sku: &str, key: &str) -> (u16, String) {
    let body = json!({
        "sku": sku, "buyer": key, "qty": 1, "idempotency_key": key, "contact": "+1-555-0000",
    })
    .to_string();
    let addr = format!("{ip}:7201");
    let path = format!("/v1/rooms/{room}/orders");
    let Ok(req) = http_client::build(
        "POST",
        &addr,
        &path,
        Some(body.as_bytes()),
        Some(&token.token),
    ) else {
        return (0, "bad request".into());
    };
    match token.request(&addr, req, Duration::from_secs(2)).await {
        Ok(r) => {
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            let what = v["code"]
                .as_str()
                .map(str::to_string)
                .or_else(|| v["order_id"].as_u64().map(|id| id.to_string()))
                .unwrap_or_default();
            (r.status, what)
        }
        Err(_) => (0, "unreachable".into()),
    }
}

/// What every pod answers to an order now (`placed` for a 2xx).
async fn answers(ips: &[(String, String)], token: &Auth, room: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (pod, ip) in ips {
        let (status, what) =
            place(ip, token, room, "absent-sku", &format!("probe-{}", nanos())).await;
        let word = if (200..300).contains(&status) {
            "placed".to_string()
        } else {
            what
        };
        out.insert(pod.clone(), word);
    }
    out
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Quorum loss on Kubernetes: three of five voters hang (SIGSTOP: they
/// neither answer nor die) while buyers order. T4 pauses sales in the store:
/// every node that answers refuses orders with `sales_paused`; when quorum
/// is back (T1 replaces the hung pods, or they go on) the tier's exit
/// criteria resume sales. Nothing acknowledged is lost, nothing oversold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_pauses_sales_in_the_store_and_they_resume() {
    // One cluster at a time: the drain is timed to the second, and two
    // five-pod clusters on two cores would time each other.
    let _serial = SERIAL.lock().await;
    init_test_tracing();
    let started = Instant::now();
    let Some(crd) = httproute_crd_or_skip("T4 on Kubernetes") else {
        return;
    };
    let Some(h) = KubeHarness::start_or_skip("operator_t4").await else {
        return;
    };
    let bin = roomkeeper_e2e::binary();
    let bridge = KubeletBridge::start(h.admin_client(), h.dir(), &bin)
        .await
        .expect("kubelet bridge");
    let mut ops: Vec<OperatorProcess> = Vec::new();
    if let Err(e) = quorum_loss(&h, &bridge, &bin, &crd, &mut ops).await {
        eprintln!("{}", h.dump_logs(30));
        let lrcs: Api<DynamicObject> = Api::namespaced_with(h.admin_client(), NS, &lrc_resource());
        eprintln!(
            "--- LiveRoomCluster status ---\n{:#}",
            lrc_status(&lrcs).await
        );
        for op in &ops {
            eprintln!("--- operator {} ---\n{}", op.identity, op.log_tail(80));
        }
        panic!(
            "T4 on Kubernetes failed after {:.0}s: {e:#}",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "T4 on Kubernetes passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
}

async fn pod_ips(admin: &Client, bridge: &KubeletBridge) -> Result<Vec<(String, String)>> {
    let pods = Api::<Pod>::namespaced(admin.clone(), NS)
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={LRC}")))
        .await?;
    Ok(pods
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .filter_map(|n| Some((n.clone(), bridge.pod_ip(NS, &n)?.to_string())))
        .collect())
}

/// The operator (its own ServiceAccount) and the example three-region
/// cluster (5 voters, 2+2+1) under `playbook` (the default when `None`),
/// formed and Running,
/// its HTTPRoute at 100 for every region (in the route and in status).
async fn form_cluster(
    h: &KubeHarness,
    bin: &std::path::Path,
    crd: &GatewayCrds,
    ops: &mut Vec<OperatorProcess>,
    playbook: Option<Value>,
) -> Result<(OperatorEnv, Api<DynamicObject>)> {
    let env = OperatorEnv::prepare(h, bin, NS, &[]).await?;
    let admin = env.admin.clone();
    install_httproute_crd(&admin, crd).await?;
    env.start_operator("op-a", ops)?;
    match playbook {
        None => {
            apply_file(&admin, "examples/default-playbook.yaml", NS).await?;
        }
        Some(p) => {
            apply_yaml(&admin, &serde_json::to_string(&p)?, NS).await?;
        }
    }
    let (lrcs, _) = form_example_cluster(&admin, NS, Duration::from_secs(150)).await?;
    eventually(
        Duration::from_secs(30),
        "trafficWeight 100 in status",
        || async {
            let w = region_weights(&lrcs).await;
            !w.is_empty() && w.values().all(|w| *w == 100)
        },
    )
    .await?;
    let weights = route_weights(&admin).await?;
    ensure!(
        weights.len() == 3 && weights.values().all(|w| *w == 100),
        "HTTPRoute {LRC}-buyers: {weights:?}"
    );
    Ok((env, lrcs))
}

/// `status.regions[].trafficWeight` by region (empty until all three show one).
async fn region_weights(lrcs: &Api<DynamicObject>) -> BTreeMap<String, i64> {
    let s = lrc_status(lrcs).await;
    let w: BTreeMap<String, i64> = s["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["name"].as_str()?.to_string(),
                r["trafficWeight"].as_i64()?,
            ))
        })
        .collect();
    if w.len() == 3 {
        w
    } else {
        BTreeMap::new()
    }
}

async fn quorum_loss(
    h: &KubeHarness,
    bridge: &KubeletBridge,
    bin: &std::path::Path,
    crd: &GatewayCrds,
    ops: &mut Vec<OperatorProcess>,
) -> Result<()> {
    let (env, lrcs) = form_cluster(h, bin, crd, ops, None).await?;
    let admin = env.admin.clone();
    let token = Api::<Secret>::namespaced(admin.clone(), NS)
        .get(&format!("{LRC}-tokens"))
        .await?
        .data
        .and_then(|d| d.get("client-token").cloned())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .context("client token")?;
    let token = Auth::new(token, &admin, NS, LRC).await?;
    let ips = pod_ips(&admin, bridge).await?;
    ensure!(ips.len() == 5, "pods {ips:?}");
    let (room, sku, stock) = ("t4-room", "hot", 60u64);
    let via = &ips[0].1;
    client_call(
        via,
        &token,
        "PUT",
        &format!("/v1/rooms/{room}"),
        json!({"title": "T4", "home_region": "us-east", "state": "live"}),
    )
    .await?;
    client_call(
        via,
        &token,
        "PUT",
        &format!("/v1/rooms/{room}/listings/{sku}"),
        json!({"price_cents": 100, "stock": stock, "per_buyer_limit": 1, "state": "open"}),
    )
    .await?;

    // Buyers: one order every 150 ms, round robin over the pods, each with
    // its own key; what every node answered is kept.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let buyers = {
        let (ips, token, stop) = (ips.clone(), token.clone(), stop.clone());
        tokio::spawn(async move {
            let mut log: Vec<(Instant, u16, String)> = Vec::new();
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ip = &ips[n % ips.len()].1;
                let (status, what) = place(ip, &token, room, sku, &format!("buyer-{n}")).await;
                log.push((Instant::now(), status, what));
                n += 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            log
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Three of five voters hang, one per region first: no majority answers.
    let hung: Vec<String> = ["us-east-0", "eu-west-0", "ap-south-0"]
        .iter()
        .map(|p| format!("{LRC}-{p}"))
        .collect();
    for pod in &hung {
        ensure!(
            bridge.signal_pod_process(NS, pod, nix::sys::signal::Signal::SIGSTOP),
            "{pod} is not running here"
        );
    }
    let fault_at = Instant::now();
    let live: Vec<(String, String)> = ips
        .iter()
        .filter(|(p, _)| !hung.contains(p))
        .cloned()
        .collect();
    let mut last = BTreeMap::new();
    let paused_after = loop {
        ensure!(
            fault_at.elapsed() < Duration::from_secs(60),
            "the nodes that answer never refused orders with sales_paused: {last:?}; tier {}",
            lrc_status(&lrcs).await["activeTier"]
        );
        last = answers(&live, &token, room).await;
        if last.values().all(|c| c == "sales_paused") {
            break fault_at.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "T4: every answering node refuses orders with sales_paused {:.1} s after 3 of 5 voters hung",
        paused_after.as_secs_f64()
    );
    // The status is written when the reconcile that paused ends.
    eventually(
        Duration::from_secs(20),
        "activeTier T4 protect in status",
        || async {
            lrc_status(&lrcs).await["activeTier"]
                .as_str()
                .is_some_and(|t| t.contains("protect"))
        },
    )
    .await?;

    // Quorum comes back: the hung processes go on (T1 may have replaced
    // their pods already; then the signal finds nothing).
    tokio::time::sleep(Duration::from_secs(5)).await;
    for pod in &hung {
        bridge.signal_pod_process(NS, pod, nix::sys::signal::Signal::SIGCONT);
    }
    let healed_at = Instant::now();
    eventually(
        Duration::from_secs(120),
        "sales resumed on every node",
        || async {
            match pod_ips(&admin, bridge).await {
                Ok(now) if now.len() == 5 => answers(&now, &token, room)
                    .await
                    .values()
                    .all(|c| c == "listing_not_found"),
                _ => false,
            }
        },
    )
    .await?;
    eprintln!(
        "sales resumed {:.1} s after quorum could return (the tier's clear-for is 30 s); tier {}",
        healed_at.elapsed().as_secs_f64(),
        lrc_status(&lrcs).await["activeTier"]
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let log = buyers.await?;

    // Nothing oversold, nothing acknowledged lost.
    let placed: Vec<u64> = log
        .iter()
        .filter(|(_, s, _)| (200..300).contains(s))
        .filter_map(|(_, _, id)| id.parse().ok())
        .collect();
    let paused = log.iter().filter(|(_, _, c)| c == "sales_paused").count();
    let placed_after_resume = log
        .iter()
        .filter(|(at, s, _)| *at > healed_at && (200..300).contains(s))
        .count();
    ensure!(paused > 0, "buyers never saw sales_paused");
    ensure!(
        placed_after_resume > 0 || placed.len() as u64 >= stock,
        "no order after the resume"
    );
    let now = pod_ips(&admin, bridge).await?;
    let listing: Value = {
        let addr = format!("{}:7201", now[0].1);
        let req = http_client::build(
            "GET",
            &addr,
            &format!("/v1/rooms/{room}/listings/{sku}"),
            None,
            Some(&token.token),
        )?;
        serde_json::from_slice(
            &token
                .request(&addr, req, Duration::from_secs(5))
                .await?
                .body,
        )?
    };
    let sold = stock - listing["stock_left"].as_u64().context("stock_left")?;
    ensure!(
        (placed.len() as u64) <= stock && sold >= placed.len() as u64,
        "acknowledged {} orders, stock {stock}, sold {sold}: oversold or lost",
        placed.len()
    );
    for id in &placed {
        let addr = format!("{}:7201", now[0].1);
        let req = http_client::build(
            "GET",
            &addr,
            &format!("/v1/orders/{id}"),
            None,
            Some(&token.token),
        )?;
        let r = token.request(&addr, req, Duration::from_secs(5)).await?;
        ensure!(
            r.status == 200,
            "acknowledged order {id} lost: HTTP {} {}",
            r.status,
            r.text()
        );
    }
    eprintln!(
        "buyers: {} orders sent, {} acknowledged (all found), {paused} refused with sales_paused, sold {sold} of {stock}",
        log.len(),
        placed.len()
    );
    Ok(())
}

/// A playbook whose only tier drains a lost region and restores it: the
/// operator's `set_traffic_weight` through the HTTPRoute, both ways.
fn drain_playbook() -> Value {
    json!({
        "apiVersion": "roomkeeper.dev/v1alpha1",
        "kind": "FailoverPlaybook",
        "metadata": {"name": "default"},
        "spec": {
            "guards": {"cooldownMs": 1000},
            "tiers": [{
                "name": "evacuate",
                "level": 3,
                "trigger": {"condition": {"type": "regionLost"}, "forMs": 5000, "clearForMs": 10000},
                "actions": ["setTrafficWeightZero", "recordEvent"],
                "standDownActions": ["restoreTrafficWeight", "recordEvent"]
            }]
        }
    })
}

/// A region lost (its one voter hangs): the operator sets the region's
/// HTTPRoute weight to 0, status and an Event say why; when it is back and
/// stays so the weight returns to 100. Drained within hold-down + 10 s: the
/// operator ticks the playbook every 2 s while a node does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_region_is_drained_in_the_httproute_and_restored() {
    // One cluster at a time: the drain is timed to the second, and two
    // five-pod clusters on two cores would time each other.
    let _serial = SERIAL.lock().await;
    init_test_tracing();
    let started = Instant::now();
    let Some(crd) = httproute_crd_or_skip("region drain on Kubernetes") else {
        return;
    };
    let Some(h) = KubeHarness::start_or_skip("operator_drain").await else {
        return;
    };
    let bin = roomkeeper_e2e::binary();
    let bridge = KubeletBridge::start(h.admin_client(), h.dir(), &bin)
        .await
        .expect("kubelet bridge");
    let mut ops: Vec<OperatorProcess> = Vec::new();
    if let Err(e) = region_drain(&h, &bridge, &bin, &crd, &mut ops).await {
        eprintln!("{}", h.dump_logs(30));
        let lrcs: Api<DynamicObject> = Api::namespaced_with(h.admin_client(), NS, &lrc_resource());
        eprintln!(
            "--- LiveRoomCluster status ---\n{:#}",
            lrc_status(&lrcs).await
        );
        for op in &ops {
            eprintln!("--- operator {} ---\n{}", op.identity, op.log_tail(80));
        }
        panic!(
            "region drain failed after {:.0}s: {e:#}",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "region drain passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
}

async fn decision_events(client: &Client) -> Result<Vec<String>> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("PlaybookDecision"))
        .filter_map(|e| e.note)
        .collect())
}

async fn region_drain(
    h: &KubeHarness,
    bridge: &KubeletBridge,
    bin: &std::path::Path,
    crd: &GatewayCrds,
    ops: &mut Vec<OperatorProcess>,
) -> Result<()> {
    let (env, lrcs) = form_cluster(h, bin, crd, ops, Some(drain_playbook())).await?;
    let admin = env.admin.clone();
    let pod = format!("{LRC}-ap-south-0");
    ensure!(
        bridge.signal_pod_process(NS, &pod, nix::sys::signal::Signal::SIGSTOP),
        "{pod} is not running here"
    );
    let lost_at = Instant::now();
    eventually(
        Duration::from_secs(60),
        "ap-south at weight 0 in the HTTPRoute",
        || async {
            route_weights(&admin)
                .await
                .is_ok_and(|w| w.get(&format!("{LRC}-ap-south")) == Some(&0))
        },
    )
    .await?;
    let drained_after = lost_at.elapsed();
    // Hold-down 5 s + 10 s, plus the 3 s status timeout that first shows
    // the node silent.
    ensure!(
        drained_after <= Duration::from_secs(18),
        "drained {drained_after:?} after the region was lost: later than hold-down + 10 s"
    );
    let w = route_weights(&admin).await?;
    ensure!(
        w[&format!("{LRC}-us-east")] == 100 && w[&format!("{LRC}-eu-west")] == 100,
        "only the lost region is drained: {w:?}"
    );
    eventually(
        Duration::from_secs(20),
        "status shows ap-south at 0",
        || async { region_weights(&lrcs).await.get("ap-south") == Some(&0) },
    )
    .await?;
    let notes = decision_events(&admin).await?;
    ensure!(
        notes.iter().any(|n| n.contains("ap-south")),
        "an Event explains the drain: {notes:?}"
    );
    // A T3 decision needs a person: its Event links the tier's runbook.
    ensure!(
        notes
            .iter()
            .any(|n| n.contains("ap-south")
                && n.ends_with("; runbook: runbooks/tier-t3-evacuate.md")),
        "the drain's Event links runbooks/tier-t3-evacuate.md: {notes:?}"
    );
    // The operator's own view, for the invariant alerts: 2 of 3 regions
    // answer, and no committed entry went missing.
    eventually(
        Duration::from_secs(20),
        "the operator exports 2 of 3 regions visible",
        || async {
            ops.iter().any(|o| {
                o.metric("roomkeeper_operator_regions_visible") == Some(2.0)
                    && o.metric("roomkeeper_operator_regions_total") == Some(3.0)
            })
        },
    )
    .await?;
    ensure!(
        ops.iter()
            .any(|o| o.metric("roomkeeper_operator_committed_entries_lost_total") == Some(0.0)),
        "the commit audit runs and finds nothing lost"
    );
    eprintln!(
        "ap-south drained {:.1} s after its node hung; events: {:?}",
        drained_after.as_secs_f64(),
        notes
    );

    ensure!(
        bridge.signal_pod_process(NS, &pod, nix::sys::signal::Signal::SIGCONT),
        "{pod} is not running here"
    );
    let back_at = Instant::now();
    eventually(
        Duration::from_secs(90),
        "ap-south restored to 100",
        || async {
            route_weights(&admin)
                .await
                .is_ok_and(|w| w.values().all(|v| *v == 100))
                && region_weights(&lrcs).await.get("ap-south") == Some(&100)
        },
    )
    .await?;
    eprintln!(
        "ap-south restored {:.1} s after its node went on (clear-for 10 s)",
        back_at.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Hold-down of the evacuate tier plus the 10 s the issue allows.
const EVACUATED_WITHIN: Duration = Duration::from_secs(5 + 10);
/// What an operator killed mid-move adds: its lease runs out (6 s) before
/// the standby acts, which then takes the remaining membership steps one
/// reconcile at a time (2 s apart) after the new pod starts.
const TAKEOVER: Duration = Duration::from_secs(6 + 10);

/// A region lost during a sale on Kubernetes: every node of ap-south stops
/// for good (the kubelet bridge kills its processes and never restarts them). Within hold-down + 10 s its
/// HTTPRoute weight is 0 and its voter is replaced in a surviving region
/// (membership has no ap-south voter, the ap-south StatefulSet shrinks);
/// status and Events say why; the drills' history checker finds no
/// acknowledged order lost and nothing oversold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_region_is_evacuated_and_its_voters_replaced_elsewhere() {
    run_region_kill("operator_region_kill", false).await;
}

/// The same, with the acting operator killed between two steps of the voter
/// move (after the move is recorded, before the new node is a learner): the
/// standby takes over and finishes the move; no step is taken twice (one new
/// pod, one new id, one learner addition, one promotion, one removal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restarted_mid_evacuation_resumes_it_without_repeating_a_step() {
    run_region_kill("operator_evacuate_restart", true).await;
}

async fn run_region_kill(name: &str, restart: bool) {
    let _serial = SERIAL.lock().await;
    init_test_tracing();
    let started = Instant::now();
    let Some(crd) = httproute_crd_or_skip("region kill on Kubernetes") else {
        return;
    };
    let Some(h) = KubeHarness::start_or_skip(name).await else {
        return;
    };
    let bin = roomkeeper_e2e::binary();
    let bridge = KubeletBridge::start(h.admin_client(), h.dir(), &bin)
        .await
        .expect("kubelet bridge");
    let mut ops: Vec<OperatorProcess> = Vec::new();
    if let Err(e) = region_kill(&h, &bridge, &bin, &crd, &mut ops, restart).await {
        eprintln!("{}", h.dump_logs(30));
        let admin = h.admin_client();
        let lrcs: Api<DynamicObject> = Api::namespaced_with(admin.clone(), NS, &lrc_resource());
        eprintln!(
            "--- LiveRoomCluster status ---\n{:#}",
            lrc_status(&lrcs).await
        );
        eprintln!("--- voter moves ---\n{:?}", voter_moves(&admin).await);
        for (reason, note) in all_events(&admin).await.unwrap_or_default() {
            eprintln!("event {reason}: {note}");
        }
        for op in &ops {
            eprintln!("--- operator {} ---\n{}", op.identity, op.log_tail(80));
        }
        panic!(
            "{name} failed after {:.0}s: {e:#}",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!("{name} passed in {:.0}s", started.elapsed().as_secs_f64());
}

async fn all_events(client: &Client) -> Result<Vec<(String, String)>> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let mut items = events.list(&ListParams::default()).await?.items;
    items.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    Ok(items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

async fn voter_moves(client: &Client) -> Result<roomkeeper_operator::evacuate::VoterMoves> {
    roomkeeper_e2e::operator::voter_moves(client, NS, LRC).await
}

/// Voters by region as the Raft leader reports them (`/admin/status` of
/// every pod that answers within a second; regions from its membership).
async fn raft_voters(
    admin: &Client,
    bridge: &KubeletBridge,
    admin_token: &Auth,
) -> BTreeMap<String, Vec<u64>> {
    let Ok(pods) = pod_ips(admin, bridge).await else {
        return BTreeMap::new();
    };
    let calls = pods.iter().map(|(_, ip)| async move {
        let addr = format!("{ip}:7301");
        let req = http_client::build(
            "GET",
            &addr,
            "/admin/status",
            None,
            Some(&admin_token.token),
        )
        .ok()?;
        let r = admin_token
            .request(&addr, req, Duration::from_secs(1))
            .await
            .ok()?;
        serde_json::from_slice::<roomkeeper_api::NodeStatus>(&r.body).ok()
    });
    let statuses: Vec<roomkeeper_api::NodeStatus> = futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect();
    let Some(leader) = roomkeeper_api::leader_of(statuses.iter()) else {
        return BTreeMap::new();
    };
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for id in &leader.voters {
        let region = leader
            .members
            .get(&id.to_string())
            .map_or_else(|| "?".to_string(), |m| m.region.clone());
        out.entry(region).or_default().push(*id);
    }
    out
}

async fn node_ids(client: &Client) -> Result<BTreeMap<String, i64>> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get(&format!("{LRC}-identities"))
        .await?;
    Ok(cm
        .data
        .and_then(|d| d.get("nodes").cloned())
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((p.next()?.to_string(), p.next()?.parse().ok()?))
        })
        .collect())
}

/// Where buyers may go now: pods with an IP in regions the HTTPRoute still
/// weighs above 0 (a storefront following the route).
async fn buyer_targets(admin: &Client, bridge: &KubeletBridge) -> Vec<String> {
    let Ok(weights) = route_weights(admin).await else {
        return Vec::new();
    };
    let Ok(pods) = Api::<Pod>::namespaced(admin.clone(), NS)
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={LRC}")))
        .await
    else {
        return Vec::new();
    };
    pods.items
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("roomkeeper.dev/region"))
                .is_some_and(|r| weights.get(&format!("{LRC}-{r}")).is_some_and(|w| *w > 0))
        })
        .filter_map(|p| {
            let name = p.metadata.name.as_deref()?;
            Some(bridge.pod_ip(NS, name)?.to_string())
        })
        .collect()
}

async fn region_kill(
    h: &KubeHarness,
    bridge: &KubeletBridge,
    bin: &std::path::Path,
    crd: &GatewayCrds,
    ops: &mut Vec<OperatorProcess>,
    restart: bool,
) -> Result<()> {
    use roomkeeper_operator::evacuate::MoveStep;

    let (env, lrcs) = form_cluster(h, bin, crd, ops, Some(evacuate_playbook())).await?;
    let admin = env.admin.clone();
    if restart {
        env.start_operator("op-b", ops)?;
    }
    let token = Api::<Secret>::namespaced(admin.clone(), NS)
        .get(&format!("{LRC}-tokens"))
        .await?
        .data
        .and_then(|d| d.get("client-token").cloned())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .context("client token")?;
    let admin_token = Api::<Secret>::namespaced(admin.clone(), NS)
        .get(&format!("{LRC}-tokens"))
        .await?
        .data
        .and_then(|d| d.get("admin-token").cloned())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .context("admin token")?;
    let token = Auth::new(token, &admin, NS, LRC).await?;
    let admin_token = Auth::new(admin_token, &admin, NS, LRC).await?;
    let ids_before = node_ids(&admin).await?;
    let voters_before = voters_by_region(&lrcs, LRC).await;
    ensure!(
        voters_before.get("ap-south").map(Vec::len) == Some(1),
        "ap-south holds one voter: {voters_before:?}"
    );
    let old = voters_before["ap-south"][0];
    // Enough stock to sell through the fault and the evacuation, and to
    // sell out before the end (so overselling would show).
    let (room, sku, stock) = ("evac-room", "hot", 300u32);
    let targets = buyer_targets(&admin, bridge).await;
    ensure!(targets.len() == 5, "buyers reach every pod: {targets:?}");
    open_sale(&targets[0], &token, (room, sku, stock), "us-east").await?;

    // Steady load: three buyers' clients, one order each 150 ms, each order
    // its own buyer and key, to the pods the route still sends buyers to.
    let load = SaleLoad::start(3, &token, room, sku, targets.clone());
    let rec = load.rec.clone();
    // The storefront follows the route: refreshed every half second.
    let follow = async {
        loop {
            let t = buyer_targets(&admin, bridge).await;
            if !t.is_empty() {
                load.retarget(t);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let scenario = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(rec.acked() > 0, "no order acknowledged before the fault");

        // Every node of ap-south stops for good (the bridge never restarts it).
        let lost: Vec<String> = ids_before
            .keys()
            .filter(|p| p.starts_with(&format!("{LRC}-ap-south-")))
            .cloned()
            .collect();
        for pod in &lost {
            ensure!(
                bridge.stop_pod_for_good(NS, pod),
                "{pod} is not running here"
            );
        }
        let lost_at = Instant::now();
        let lost_ms = rec.now_ms();
        eprintln!("region-kill: ap-south ({lost:?}, voter {old}) stopped for good");

        let mut killed_at_steps = None;
        if restart {
            // Between two steps: the move is recorded, its learner not yet added.
            let mut last = None;
            loop {
                ensure!(
                    lost_at.elapsed() < Duration::from_secs(40),
                    "the move of voter {old} was never recorded: {last:?}"
                );
                let moves = voter_moves(&admin).await?;
                if let Some(m) = moves.moves.get(&(old as u64)) {
                    ensure!(
                        !m.has(MoveStep::LearnerAdded),
                        "the move went past its learner before the operator could be killed: {m:?}"
                    );
                    killed_at_steps = Some(m.steps.iter().map(|s| s.step).collect::<Vec<_>>());
                    ops[0].kill();
                    break;
                }
                last = Some(moves);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!(
                "region-kill: operator op-a killed {:.1} s after the loss, the move at {killed_at_steps:?}; op-b takes over",
                lost_at.elapsed().as_secs_f64()
            );
        }

        eventually(
            Duration::from_secs(60),
            "ap-south at weight 0 in the HTTPRoute",
            || async {
                route_weights(&admin)
                    .await
                    .is_ok_and(|w| w.get(&format!("{LRC}-ap-south")) == Some(&0))
            },
        )
        .await?;
        let drained_after = lost_at.elapsed();
        ensure!(
            drained_after <= EVACUATED_WITHIN,
            "drained {drained_after:?} after the region was lost: later than hold-down + 10 s"
        );
        // The Raft membership itself (the status follows a reconcile later).
        eventually(
            Duration::from_secs(90),
            "5 Raft voters, none in ap-south",
            || async {
                let v = raft_voters(&admin, bridge, &admin_token).await;
                !v.contains_key("ap-south") && v.values().map(Vec::len).sum::<usize>() == 5
            },
        )
        .await?;
        let replaced_after = lost_at.elapsed();
        let budget = if restart {
            EVACUATED_WITHIN + TAKEOVER
        } else {
            EVACUATED_WITHIN
        };
        ensure!(
            replaced_after <= budget,
            "voters replaced {replaced_after:?} after the region was lost: later than {budget:?}"
        );
        eventually(
            Duration::from_secs(30),
            "status members: 5 voters, none in ap-south",
            || async {
                let v = voters_by_region(&lrcs, LRC).await;
                !v.contains_key("ap-south") && v.values().map(Vec::len).sum::<usize>() == 5
            },
        )
        .await?;
        let voters_after = voters_by_region(&lrcs, LRC).await;
        eprintln!(
            "region-kill: ap-south drained after {:.1} s, its voter replaced after {:.1} s: voters {voters_before:?} → {voters_after:?}",
            drained_after.as_secs_f64(),
            replaced_after.as_secs_f64()
        );

        // The move, durable and done; every step once.
        let moves = voter_moves(&admin).await?;
        ensure!(moves.moves.len() == 1, "one move: {moves:?}");
        let m = moves
            .moves
            .get(&(old as u64))
            .context("the move of the ap-south voter")?;
        eventually(
            Duration::from_secs(10),
            "the move recorded done",
            || async {
                voter_moves(&admin)
                    .await
                    .is_ok_and(|ms| ms.moves.values().all(|m| m.done()))
            },
        )
        .await?;
        let m = voter_moves(&admin)
            .await?
            .moves
            .get(&(old as u64))
            .cloned()
            .unwrap_or_else(|| m.clone());
        let steps: Vec<MoveStep> = m.steps.iter().map(|s| s.step).collect();
        ensure!(
            steps
                == [
                    MoveStep::Recorded,
                    MoveStep::Scaled,
                    MoveStep::LearnerAdded,
                    MoveStep::Promoted,
                    MoveStep::OldRemoved
                ],
            "each step once, in order: {m:?}"
        );
        let new = m.new_id.context("the move names its new node")?;
        ensure!(
            voters_after
                .get(&m.into)
                .is_some_and(|v| v.contains(&(new as i64))),
            "node {new} votes in {}: {voters_after:?}",
            m.into
        );
        // One new pod and one new id, nothing more; the lost region's
        // StatefulSet shrinks behind its departed voter.
        let ids_after = node_ids(&admin).await?;
        let added: Vec<(&String, &i64)> = ids_after
            .iter()
            .filter(|(p, _)| !ids_before.contains_key(*p))
            .collect();
        ensure!(
            added.len() == 1 && *added[0].0 == m.pod && *added[0].1 == new as i64,
            "one new node id, for {}: {ids_before:?} → {ids_after:?}",
            m.pod
        );
        eventually(
            Duration::from_secs(30),
            "StatefulSets: ap-south 0, the target region one more",
            || async {
                let sets =
                    Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(admin.clone(), NS);
                let replicas = |r: String| {
                    let sets = sets.clone();
                    async move {
                        sets.get(&format!("{LRC}-{r}"))
                            .await
                            .ok()
                            .and_then(|s| s.spec.replicas)
                    }
                };
                replicas("ap-south".into()).await == Some(0)
                    && replicas(m.into.clone()).await == Some(3)
            },
        )
        .await?;
        // Status and Events say why; each membership change happened once.
        let status = lrc_status(&lrcs).await;
        ensure!(
            status["activeTier"]
                .as_str()
                .is_some_and(|t| t.contains("evacuate")),
            "activeTier: {}",
            status["activeTier"]
        );
        let history = status["decisions"].to_string();
        ensure!(
            history.contains("ap-south"),
            "status decisions explain the evacuation: {history}"
        );
        let events = all_events(&admin).await?;
        let notes = |pred: &dyn Fn(&str, &str) -> bool| {
            events
                .iter()
                .filter(|(r, n)| pred(r, n))
                .map(|(_, n)| n.clone())
                .collect::<Vec<_>>()
        };
        let decided = notes(&|r, n| r == "PlaybookDecision" && n.contains("ap-south"));
        ensure!(
            !decided.is_empty(),
            "a PlaybookDecision Event names ap-south: {events:?}"
        );
        let pod = &m.pod;
        let learner = notes(&|_, n| n.contains(pod.as_str()) && n.contains("learner"));
        let promoted = notes(&|_, n| n.contains(pod.as_str()) && n.contains("promoted"));
        let removed = notes(&|_, n| {
            n.contains(&format!("removed node {old} "))
                || n.contains(&format!("voter {old} of ap-south removed"))
        });
        // A step taken just before the kill may have no Event (the operator
        // died before publishing it); none is ever taken twice.
        let once = |n: usize| if restart { n <= 1 } else { n == 1 };
        ensure!(
            once(learner.len()) && once(promoted.len()) && once(removed.len()),
            "one learner addition, one promotion, one removal: {learner:?} {promoted:?} {removed:?}"
        );
        if restart {
            ensure!(
                !ops[0].is_running() && ops[1].is_running(),
                "op-a was killed, op-b finished"
            );
            let before_kill = killed_at_steps.unwrap_or_default();
            ensure!(
                steps.starts_with(&before_kill) && before_kill.len() < steps.len(),
                "op-b went on from where op-a stopped ({before_kill:?}): {m:?}"
            );
        }
        eprintln!(
            "region-kill: move {:?}; events: {learner:?} {promoted:?} {removed:?}",
            m.steps
        );
        // Buyers kept buying through the loss and the evacuation.
        let after_loss = rec
            .ops()
            .iter()
            .filter(|o| matches!(o.result, roomkeeper_chaos::history::OpResult::Placed { .. }))
            .filter(|o| o.complete_ms.is_some_and(|c| c > lost_ms))
            .count();
        ensure!(
            after_loss > 0,
            "no order acknowledged after the region was lost"
        );
        let acked = rec.acked();
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(
            rec.acked() > acked || rec.acked() >= u64::from(stock),
            "no order acknowledged after the evacuation"
        );
        eprintln!("region-kill: {after_loss} orders acknowledged after the loss");
        Ok(())
    };
    let outcome = tokio::select! {
        r = scenario => r,
        () = follow => unreachable!("the route follower never ends"),
    };
    let (rec, buyers) = load.stop().await?;
    outcome?;

    // The history, judged by the drills' checker on the healed cluster.
    let live = buyer_targets(&admin, bridge).await;
    let report = judge_sale(&rec, &buyers, &live, &token, (room, sku, stock)).await?;
    require_clean("region-kill history", &rec, &report)
}
