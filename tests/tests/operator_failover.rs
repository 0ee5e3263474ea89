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
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DynamicObject, ListParams};
use kube::Client;
use roomkeeper_e2e::gateway::{httproute_crd_or_skip, install_httproute_crd};
use roomkeeper_e2e::http_client;
use roomkeeper_e2e::k8s::{client_from_kubeconfig, eventually, init_test_tracing, KubeHarness};
use roomkeeper_e2e::kubelet::KubeletBridge;
use roomkeeper_e2e::operator::{
    apply_file, apply_yaml, form_example_cluster, lrc_resource, OperatorEnv, OperatorProcess,
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
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &HttpRouteRouter::resource());
    let route = routes.get(&format!("{LRC}-buyers")).await?;
    Ok(route.data["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["name"].as_str()?.to_string(), r["weight"].as_u64()?)))
        .collect())
}

fn router(client: &Client) -> HttpRouteRouter {
    HttpRouteRouter::new(
        client.clone(),
        NS,
        LRC,
        REGIONS.iter().map(|r| r.to_string()).collect(),
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

async fn traffic_weights(h: &KubeHarness, crd: &str) -> Result<()> {
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

    install_httproute_crd(&admin, crd).await?;
    let weights = router(&sa).ensure(&|_| FULL_WEIGHT).await?;
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
async fn place(ip: &str, token: &str, room: &str, sku: &str, key: &str) -> (u16, String) {
    let body = json!({
        "sku": sku, "buyer": key, "qty": 1, "idempotency_key": key, "contact": "+1-555-0000",
    })
    .to_string();
    let addr = format!("{ip}:7201");
    let path = format!("/v1/rooms/{room}/orders");
    let Ok(req) = http_client::build("POST", &addr, &path, Some(body.as_bytes()), Some(token))
    else {
        return (0, "bad request".into());
    };
    match http_client::request(&addr, req, Duration::from_secs(2)).await {
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

async fn client_call(
    ip: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Value,
) -> Result<Value> {
    let addr = format!("{ip}:7201");
    let text = body.to_string();
    let req = http_client::build(method, &addr, path, Some(text.as_bytes()), Some(token))?;
    let r = http_client::request(&addr, req, Duration::from_secs(5)).await?;
    ensure!(
        r.status < 300,
        "{method} {path}: HTTP {} {}",
        r.status,
        r.text()
    );
    Ok(serde_json::from_slice(&r.body)?)
}

/// What every pod answers to an order now (`placed` for a 2xx).
async fn answers(ips: &[(String, String)], token: &str, room: &str) -> BTreeMap<String, String> {
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
    crd: &str,
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
    crd: &str,
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
            Some(&token),
        )?;
        serde_json::from_slice(
            &http_client::request(&addr, req, Duration::from_secs(5))
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
            Some(&token),
        )?;
        let r = http_client::request(&addr, req, Duration::from_secs(5)).await?;
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
    crd: &str,
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
