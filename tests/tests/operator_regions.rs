//! Regions as Kubernetes clusters of their own (issue 12, D57): three real
//! API servers, one per region, each with its own kubelet bridge and pod
//! network. The operator runs against the home cluster (us-east) and reaches
//! eu-west and ap-south through kubeconfig Secrets for the least-privilege
//! ServiceAccount of `deploy/region-rbac.yaml`. One Raft group forms across
//! the three clusters; each region's objects live in its own cluster; the
//! NetworkPolicy of each cluster admits the other clusters' nodes by
//! address; orders are taken; deleting the cluster object empties the
//! regions' clusters.
//!
//! Needs the binaries from `scripts/k8s-test-bins.sh` (skipped loudly without
//! them, fails under CI) and a built `roomkeeper` (`ROOMKEEPER_BIN`).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Client, ResourceExt};
use roomkeeper_e2e::buyers::{judge_sale, open_sale, require_clean, Auth, SaleLoad};
use roomkeeper_e2e::k8s::{client_from_kubeconfig, eventually, init_test_tracing, KubeHarness};
use roomkeeper_e2e::kubelet::KubeletBridge;
use roomkeeper_e2e::operator::{
    apply_file, apply_yaml, ensure_namespace, evacuate_playbook, example_cluster,
    leader_client_call, lrc_resource, lrc_status, route_weights, voter_moves, voters_by_region,
    OperatorEnv, OperatorProcess,
};
use serde_json::{json, Value};

const NS: &str = "shop";
const LRC: &str = "flash-sale";
/// Region → the harness that plays its Kubernetes cluster (index into the
/// harness list); us-east runs where the operator does.
const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// Three API servers, each with its kubelet bridge: one per region.
struct Regions {
    harnesses: Vec<KubeHarness>,
    bridges: Vec<KubeletBridge>,
    /// A management cluster that runs the operator and no region (D58);
    /// without it the operator runs in us-east's cluster.
    hub: Option<KubeHarness>,
    ops: Vec<OperatorProcess>,
}

impl Regions {
    async fn start(test: &str, with_hub: bool) -> Option<Regions> {
        let hub = if with_hub {
            Some(KubeHarness::start_or_skip(&format!("{test}_hub")).await?)
        } else {
            None
        };
        let mut harnesses = Vec::new();
        for region in REGIONS {
            harnesses.push(KubeHarness::start_or_skip(&format!("{test}_{region}")).await?);
        }
        let bin = roomkeeper_e2e::binary();
        let mut bridges = Vec::new();
        for h in &harnesses {
            bridges.push(
                KubeletBridge::start(h.admin_client(), h.dir(), &bin)
                    .await
                    .expect("kubelet bridge"),
            );
        }
        Some(Regions {
            harnesses,
            bridges,
            hub,
            ops: Vec::new(),
        })
    }

    /// The cluster the operator and the LiveRoomCluster live in.
    fn home(&self) -> &KubeHarness {
        self.hub.as_ref().unwrap_or(&self.harnesses[0])
    }

    /// What a failed test leaves to read.
    async fn dump(&self) {
        for (h, region) in self.harnesses.iter().zip(REGIONS) {
            eprintln!("=== API server of {region} ===\n{}", h.dump_logs(15));
        }
        if let Some(hub) = &self.hub {
            eprintln!(
                "=== API server of the management cluster ===\n{}",
                hub.dump_logs(15)
            );
        }
        let home = self.home().admin_client();
        let lrcs = Api::namespaced_with(home.clone(), NS, &lrc_resource());
        eprintln!(
            "--- LiveRoomCluster status ---\n{:#}",
            lrc_status(&lrcs, LRC).await
        );
        if let Ok(events) = Api::<k8s_openapi::api::events::v1::Event>::namespaced(home, NS)
            .list(&ListParams::default())
            .await
        {
            for e in events.items {
                eprintln!(
                    "event {}: {}",
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default()
                );
            }
        }
        for op in &self.ops {
            eprintln!("--- operator {} ---\n{}", op.identity, op.log_tail(80));
        }
        for (bridge, region) in self.bridges.iter().zip(REGIONS) {
            for i in 0..3 {
                let pod = format!("{LRC}-{region}-{i}");
                let tail = bridge.container_log_tail(NS, &pod, "node", 15);
                if !tail.trim().is_empty() {
                    eprintln!("--- {pod} ---\n{tail}");
                }
            }
        }
    }
}

/// Runs `scenario` on three fresh region clusters; on failure prints what
/// they hold and fails the test.
async fn run<F>(test: &str, with_hub: bool, scenario: F)
where
    F: for<'a> FnOnce(&'a mut Regions) -> futures::future::LocalBoxFuture<'a, Result<()>>,
{
    init_test_tracing();
    let started = Instant::now();
    let Some(mut regions) = Regions::start(test, with_hub).await else {
        return;
    };
    if let Err(e) = scenario(&mut regions).await {
        regions.dump().await;
        panic!(
            "{test} failed after {:.0}s: {e:#}",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!("{test} passed in {:.0}s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_in_their_own_kubernetes_clusters_form_one_cluster_and_are_cleaned_up() {
    run("regions_form", false, |r| Box::pin(form_and_clean_up(r))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_region_cluster_is_evacuated_into_the_other_clusters_during_a_sale() {
    run("regions_loss", false, |r| {
        Box::pin(region_cluster_loss(r, false))
    })
    .await;
}

/// The control plane survives a region (D58): the operator runs in a
/// management cluster of its own, two replicas under its Lease, and every
/// region is a cluster of its own. ap-south is lost together with the
/// replica acting for the cluster (as if it ran there): the standby takes
/// the Lease and carries the evacuation out, each step once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_operator_finishes_a_lost_regions_evacuation_when_the_acting_one_is_lost_with_it(
) {
    run("regions_takeover", true, |r| {
        Box::pin(region_cluster_loss(r, true))
    })
    .await;
}

/// Makes `h` a region's cluster: the region RBAC, the namespace, and a
/// kubeconfig Secret for its ServiceAccount in the home cluster.
async fn enlist_region(h: &KubeHarness, home: &Client, region: &str) -> Result<String> {
    let admin = h.admin_client();
    apply_file(&admin, "deploy/region-rbac.yaml", "default").await?;
    ensure_namespace(&admin, NS).await?;
    let path = h
        .service_account_kubeconfig("roomkeeper-system", "roomkeeper-region")
        .await?;
    // Least privilege there too: no listing of Secrets.
    let sa = client_from_kubeconfig(&path).await?;
    ensure!(
        Api::<Secret>::all(sa)
            .list(&ListParams::default())
            .await
            .is_err(),
        "the region ServiceAccount may list Secrets in {region}'s cluster"
    );
    let name = format!("{region}-kubeconfig");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS},
    }))?;
    let secret = Secret {
        data: Some(
            [(
                "kubeconfig".to_string(),
                ByteString(std::fs::read(&path).with_context(|| path.display().to_string())?),
            )]
            .into(),
        ),
        ..secret
    };
    Api::<Secret>::namespaced(home.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| format!("creating Secret {name}"))?;
    Ok(name)
}

async fn names_of<K>(client: &Client, selector: &str) -> Vec<String>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut names: Vec<String> = Api::<K>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items.iter().map(|o| o.name_any()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// `status.regions[].kubernetesApi` of `region`.
fn kubernetes_api(status: &Value, region: &str) -> Option<String> {
    status["regions"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == json!(region))?["kubernetesApi"]
        .as_str()
        .map(str::to_string)
}

/// Waits (30 s at most) until the cluster is Running and shows `region`'s
/// API server as `want`.
async fn wait_kubernetes_api(lrcs: &Api<DynamicObject>, region: &str, want: &str) -> Result<()> {
    eventually(
        Duration::from_secs(30),
        &format!("{region}'s API server shown {want}, the cluster Running"),
        || async {
            let s = lrc_status(lrcs, LRC).await;
            s["phase"] == json!("Running") && kubernetes_api(&s, region).as_deref() == Some(want)
        },
    )
    .await
}

/// Whether an Event of the home cluster's namespace has `reason` and a note
/// holding every one of `words`.
async fn has_event(home: &Client, reason: &str, words: &[&str]) -> Result<bool> {
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(home.clone(), NS)
        .list(&ListParams::default())
        .await?;
    Ok(events.items.iter().any(|e| {
        e.reason.as_deref() == Some(reason)
            && e.note
                .as_deref()
                .is_some_and(|n| words.iter().all(|w| n.contains(w)))
    }))
}

/// The /32 blocks a cluster's NetworkPolicy admits to the Raft port.
async fn raft_blocks(client: &Client) -> Result<Vec<String>> {
    let np = Api::<NetworkPolicy>::namespaced(client.clone(), NS)
        .get(&format!("{LRC}-peers-only"))
        .await?;
    let rules = np
        .spec
        .and_then(|s| s.ingress)
        .context("the policy has ingress rules")?;
    let mut blocks: Vec<String> = rules[0]
        .from
        .iter()
        .flatten()
        .filter_map(|p| Some(p.ip_block.as_ref()?.cidr.clone()))
        .collect();
    blocks.sort();
    Ok(blocks)
}

/// The pod IPs of `region` as its bridge gave them, each as a /32.
fn region_blocks(bridge: &KubeletBridge, region: &str, count: usize) -> Vec<String> {
    (0..count)
        .filter_map(|i| bridge.pod_ip(NS, &format!("{LRC}-{region}-{i}")))
        .map(|ip| format!("{ip}/32"))
        .collect()
}

/// The operator (against the home cluster, us-east) and the example cluster
/// with eu-west and ap-south in their own clusters, formed 5/5 Running;
/// `playbook` as `default` (the example's own default playbook otherwise).
async fn form(
    r: &mut Regions,
    playbook: Option<Value>,
) -> Result<(Client, Api<DynamicObject>, OperatorEnv)> {
    let bin = roomkeeper_e2e::binary();
    let env = OperatorEnv::prepare(r.home(), &bin, NS, &[]).await?;
    let home = env.admin.clone();
    let mut example = example_cluster()?;
    // With a management cluster every region is a cluster of its own.
    let first_remote = if r.hub.is_some() { 0 } else { 1 };
    for (i, region) in REGIONS.iter().enumerate().skip(first_remote) {
        let secret = enlist_region(&r.harnesses[i], &home, region).await?;
        example["spec"]["regions"][i]["kubeconfigSecretRef"] = json!({"name": secret});
    }
    env.start_operator("op-a", &mut r.ops)?;
    match playbook {
        Some(p) => {
            apply_yaml(&home, &serde_yaml::to_string(&p)?, NS).await?;
        }
        None => {
            apply_file(&home, "examples/default-playbook.yaml", NS).await?;
        }
    }
    apply_yaml(&home, &serde_yaml::to_string(&example)?, NS).await?;
    let lrcs = Api::namespaced_with(home.clone(), NS, &lrc_resource());
    eventually(
        Duration::from_secs(180),
        "5/5 voters over three Kubernetes clusters, Running",
        || async {
            let s = lrc_status(&lrcs, LRC).await;
            s["readyVoters"] == json!("5/5") && s["phase"] == json!("Running")
        },
    )
    .await?;
    let status = lrc_status(&lrcs, LRC).await;
    eprintln!(
        "formed across the regions' API servers: leader {} term {}",
        status["leader"], status["term"]
    );
    Ok((home, lrcs, env))
}

async fn form_and_clean_up(r: &mut Regions) -> Result<()> {
    let (home, lrcs, _env) = form(r, None).await?;
    // The region RBAC grants every call the operator makes there.
    let log = r.ops[0].log_tail(5000);
    ensure!(
        !log.contains("forbidden"),
        "the operator was refused in a region's cluster: {}",
        log.lines()
            .filter(|l| l.contains("forbidden"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (harnesses, bridges) = (&r.harnesses, &r.bridges);
    // Each region's objects in its own cluster, and only there.
    let clients: Vec<Client> = harnesses.iter().map(|h| h.admin_client()).collect();
    let by_cluster = format!("roomkeeper.dev/cluster={LRC}");
    let voters = [2usize, 2, 1];
    for (i, region) in REGIONS.iter().enumerate() {
        let sets = names_of::<StatefulSet>(&clients[i], &by_cluster).await;
        ensure!(
            sets == [format!("{LRC}-{region}")],
            "{region}'s cluster holds StatefulSets {sets:?}"
        );
        let pods = names_of::<Pod>(&clients[i], &by_cluster).await;
        let want: Vec<String> = (0..voters[i])
            .map(|o| format!("{LRC}-{region}-{o}"))
            .collect();
        ensure!(pods == want, "{region}'s cluster runs pods {pods:?}");
        // What its pods mount is there: the node-id map, tokens, contact
        // keys, and its own certificates.
        for secret in [
            format!("{LRC}-tokens"),
            format!("{LRC}-contact-keys"),
            format!("{LRC}-{region}-raft-certs"),
            format!("{LRC}-{region}-api-tls"),
        ] {
            let s = Api::<Secret>::namespaced(clients[i].clone(), NS)
                .get(&secret)
                .await
                .with_context(|| format!("Secret {secret} in {region}'s cluster"))?;
            ensure!(
                i == 0 || s.metadata.owner_references.is_none(),
                "{secret} in {region}'s cluster names an owner of another cluster"
            );
        }
        Api::<ConfigMap>::namespaced(clients[i].clone(), NS)
            .get(&format!("{LRC}-identities"))
            .await
            .with_context(|| format!("the node-id map in {region}'s cluster"))?;
        if i > 0 {
            let sts = Api::<StatefulSet>::namespaced(clients[i].clone(), NS)
                .get(&format!("{LRC}-{region}"))
                .await?;
            ensure!(
                sts.metadata.owner_references.is_none(),
                "a remote StatefulSet names an owner of another cluster"
            );
        }
    }

    // Each cluster's policy admits the other clusters' nodes by address.
    eventually(
        Duration::from_secs(30),
        "each NetworkPolicy admits exactly the other clusters' nodes",
        || async {
            let mut ok = true;
            for (i, _) in REGIONS.iter().enumerate() {
                let mut want: Vec<String> = REGIONS
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .flat_map(|(j, r)| region_blocks(&bridges[j], r, voters[j]))
                    .collect();
                want.sort();
                ok &= raft_blocks(&clients[i]).await.is_ok_and(|b| b == want);
            }
            ok
        },
    )
    .await?;

    // The leader takes orders wherever it runs.
    let leader = lrc_status(&lrcs, LRC).await["leader"]
        .as_str()
        .context("a leader")?
        .to_string();
    let leader_bridge = bridges
        .iter()
        .find(|b| b.pod_ip(NS, &leader).is_some())
        .context("the leader's bridge")?;
    let call = |method: &'static str, path: String, body: Value| {
        let home = home.clone();
        async move { leader_client_call(&home, leader_bridge, NS, LRC, method, &path, &body).await }
    };
    call(
        "PUT",
        "/v1/rooms/r1".into(),
        json!({"title": "across clusters", "home_region": "eu-west", "state": "live"}),
    )
    .await?;
    call(
        "PUT",
        "/v1/rooms/r1/listings/s1".into(),
        json!({"price_cents": 100, "stock": 10, "per_buyer_limit": 2, "state": "open"}),
    )
    .await?;
    for buyer in ["b1", "b2", "b3"] {
        let r = call(
            "POST",
            "/v1/rooms/r1/orders".into(),
            json!({"sku": "s1", "buyer": buyer, "qty": 1, "idempotency_key": format!("k-{buyer}")}),
        )
        .await?;
        ensure!(
            r.status == 201 || r.status == 200,
            "order {buyer}: {}",
            r.text()
        );
    }
    let listing = call("GET", "/v1/rooms/r1/listings/s1".into(), Value::Null).await?;
    let listing: Value = serde_json::from_str(&listing.text())?;
    ensure!(listing["stock_left"] == json!(7), "3 of 10 sold: {listing}");

    // A region's kubeconfig that stops working (a bad rotation) does not
    // stop the cluster: the region counts as unreachable, saying why, and is
    // back once the Secret is fixed.
    let secrets = Api::<Secret>::namespaced(home.clone(), NS);
    let good = secrets.get("eu-west-kubeconfig").await?;
    secrets
        .patch(
            "eu-west-kubeconfig",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"stringData": {"kubeconfig": "not: [a kubeconfig"}})),
        )
        .await?;
    wait_kubernetes_api(&lrcs, "eu-west", "Unreachable").await?;
    ensure!(
        has_event(
            &home,
            "RegionApiUnreachable",
            &["eu-west", "not a usable kubeconfig"]
        )
        .await?,
        "a RegionApiUnreachable Event says eu-west's kubeconfig is unusable"
    );
    secrets
        .patch(
            "eu-west-kubeconfig",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"data": good.data})),
        )
        .await?;
    wait_kubernetes_api(&lrcs, "eu-west", "Reachable").await?;
    // The same when the Secret is deleted by mistake.
    let good = secrets.get("eu-west-kubeconfig").await?;
    secrets
        .delete("eu-west-kubeconfig", &DeleteParams::default())
        .await?;
    wait_kubernetes_api(&lrcs, "eu-west", "Unreachable").await?;
    let restored = Secret {
        metadata: kube::api::ObjectMeta {
            name: good.metadata.name.clone(),
            namespace: good.metadata.namespace.clone(),
            ..Default::default()
        },
        data: good.data.clone(),
        ..Secret::default()
    };
    secrets.create(&PostParams::default(), &restored).await?;
    wait_kubernetes_api(&lrcs, "eu-west", "Reachable").await?;

    // Deleting the cluster object empties every region's cluster.
    lrcs.delete(LRC, &DeleteParams::default()).await?;
    eventually(
        Duration::from_secs(90),
        "no StatefulSet or pod of the cluster left in any region's cluster",
        || async {
            let mut left = 0;
            for c in &clients {
                left += names_of::<StatefulSet>(c, &by_cluster).await.len();
                left += names_of::<Pod>(c, &by_cluster).await.len();
            }
            left == 0
        },
    )
    .await?;
    for (i, region) in REGIONS.iter().enumerate().skip(1) {
        ensure!(
            Api::<NetworkPolicy>::namespaced(clients[i].clone(), NS)
                .get_opt(&format!("{LRC}-peers-only"))
                .await?
                .is_none(),
            "the NetworkPolicy is left in {region}'s cluster"
        );
    }
    Ok(())
}

/// Hold-down of the evacuate tier plus the 10 s the issue allows.
const EVACUATED_WITHIN: Duration = Duration::from_secs(5 + 10);
/// What losing the acting operator adds: its Lease (6 s) runs out before
/// the standby acts.
const TAKEOVER: Duration = Duration::from_secs(6);

/// The pod addresses buyers may use now: every pod of a region the route
/// still weighs above 0, as its own cluster's bridge gave them.
async fn buyer_targets(r: &Regions, home: &Client) -> Vec<String> {
    let Ok(weights) = route_weights(home, NS, LRC).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (bridge, region) in r.bridges.iter().zip(REGIONS) {
        if weights
            .get(&format!("{LRC}-{region}"))
            .is_none_or(|w| *w == 0)
        {
            continue;
        }
        for i in 0..3 {
            if let Some(ip) = bridge.pod_ip(NS, &format!("{LRC}-{region}-{i}")) {
                out.push(ip.to_string());
            }
        }
    }
    out
}

/// A whole region lost during a sale: ap-south's API server and every one of
/// its nodes stop. The operator, which can no longer reach that cluster,
/// sees its nodes silent; within hold-down + 10 s the HTTPRoute weighs it 0
/// (a `ServiceImport` backend, as a region in another cluster is) and its
/// voter is replaced in a surviving region's own cluster (that cluster's
/// StatefulSet grows). The history checker finds nothing lost or oversold.
/// With `takeover`, the operator replica acting then is lost too (a standby
/// runs beside it): the standby finishes, and the move took each step once.
async fn region_cluster_loss(r: &mut Regions, takeover: bool) -> Result<()> {
    let Some(crd) = roomkeeper_e2e::gateway::httproute_crd_or_skip("region cluster loss") else {
        return Ok(());
    };
    roomkeeper_e2e::gateway::install_httproute_crd(&r.home().admin_client(), &crd).await?;
    let (home, lrcs, env) = form(r, Some(evacuate_playbook())).await?;
    if takeover {
        env.start_operator("op-b", &mut r.ops)?;
    }
    let route = roomkeeper_e2e::operator::route_weights(&home, NS, LRC).await;
    eventually(
        Duration::from_secs(30),
        "the HTTPRoute weighs every region 100",
        || async {
            route_weights(&home, NS, LRC)
                .await
                .is_ok_and(|w| w.len() == 3 && w.values().all(|w| *w == 100))
        },
    )
    .await
    .with_context(|| format!("route {route:?}"))?;
    let routes: Api<DynamicObject> = Api::namespaced_with(
        home.clone(),
        NS,
        &roomkeeper_operator::traffic::HttpRouteRouter::resource(),
    );
    let refs =
        routes.get(&format!("{LRC}-buyers")).await?.data["spec"]["rules"][0]["backendRefs"].clone();
    let kinds: Vec<&str> = refs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["kind"].as_str())
        .collect();
    let want: &[&str] = if r.hub.is_some() {
        &["ServiceImport", "ServiceImport", "ServiceImport"]
    } else {
        &["Service", "ServiceImport", "ServiceImport"]
    };
    ensure!(
        kinds == want,
        "regions in other clusters are ServiceImport backends: {refs}"
    );

    let tokens = Api::<Secret>::namespaced(home.clone(), NS)
        .get(&format!("{LRC}-tokens"))
        .await?;
    let token = secret_text(&tokens, "client-token")?;
    let token = Auth::new(token, &home, NS, LRC).await?;
    let voters_before = voters_by_region(&lrcs, LRC).await;
    ensure!(
        voters_before.get("ap-south").map(Vec::len) == Some(1),
        "ap-south holds one voter: {voters_before:?}"
    );
    let (room, sku, stock) = ("evac-room", "hot", 300u32);
    let targets = buyer_targets(r, &home).await;
    ensure!(targets.len() == 5, "buyers reach every pod: {targets:?}");
    open_sale(&targets[0], &token, (room, sku, stock), "us-east").await?;
    let status = lrc_status(&lrcs, LRC).await;
    ensure!(
        kubernetes_api(&status, "ap-south").as_deref() == Some("Reachable")
            && kubernetes_api(&status, "us-east").is_none() == r.hub.is_none(),
        "kubernetesApi shown for regions in their own clusters only: {}",
        status["regions"]
    );
    let load = SaleLoad::start(3, &token, room, sku, targets);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcome: Result<()> = async {
        ensure!(load.rec.acked() > 0, "no order acknowledged before the loss");
        // ap-south is gone: its API server, its controller manager, its etcd,
        // its nodes and its pod network.
        let lost_at = Instant::now();
        let lost_ms = load.rec.now_ms();
        drop(r.harnesses.pop());
        if let Some(mut b) = r.bridges.pop() {
            b.stop();
        }
        if takeover {
            r.ops[0].kill();
        }
        eprintln!(
            "regions: ap-south's cluster and nodes are gone{}",
            if takeover { ", and operator op-a with them" } else { "" }
        );
        eventually(
            Duration::from_secs(60),
            "ap-south at weight 0 in the HTTPRoute",
            || async {
                let targets = buyer_targets(r, &home).await;
                if !targets.is_empty() {
                    load.retarget(targets);
                }
                route_weights(&home, NS, LRC)
                    .await
                    .is_ok_and(|w| w.get(&format!("{LRC}-ap-south")) == Some(&0))
            },
        )
        .await?;
        let drained_after = lost_at.elapsed();
        // Taking over adds the Lease running out (6 s) before the standby acts.
        let budget = EVACUATED_WITHIN + if takeover { TAKEOVER } else { Duration::ZERO };
        ensure!(
            drained_after <= budget,
            "drained {drained_after:?} after the region was lost: later than {budget:?}"
        );
        eventually(
            Duration::from_secs(90),
            "status members: 5 voters, none in ap-south",
            || async {
                load.retarget(buyer_targets(r, &home).await);
                let v = voters_by_region(&lrcs, LRC).await;
                !v.contains_key("ap-south") && v.values().map(Vec::len).sum::<usize>() == 5
            },
        )
        .await?;
        let replaced_after = lost_at.elapsed();
        let voters_after = voters_by_region(&lrcs, LRC).await;
        eprintln!(
            "regions: ap-south drained after {:.1} s, its voter replaced after {:.1} s: {voters_before:?} → {voters_after:?}",
            drained_after.as_secs_f64(),
            replaced_after.as_secs_f64()
        );
        ensure!(
            replaced_after <= budget + Duration::from_secs(15),
            "voters replaced {replaced_after:?} after the region was lost"
        );
        if takeover {
            ensure!(
                !r.ops[0].is_running() && r.ops[1].is_running(),
                "op-a was lost, op-b finished"
            );
            // The move is recorded in the management cluster; every step
            // once, in order.
            use roomkeeper_operator::evacuate::MoveStep;
            eventually(Duration::from_secs(10), "the move recorded done", || async {
                voter_moves(&home, NS, LRC)
                    .await
                    .is_ok_and(|m| m.moves.len() == 1 && m.moves.values().all(|m| m.done()))
            })
            .await?;
            let moves = voter_moves(&home, NS, LRC).await?;
            let steps: Vec<MoveStep> = moves
                .moves
                .values()
                .flat_map(|m| m.steps.iter().map(|s| s.step))
                .collect();
            ensure!(
                steps
                    == [
                        MoveStep::Recorded,
                        MoveStep::Scaled,
                        MoveStep::LearnerAdded,
                        MoveStep::Promoted,
                        MoveStep::OldRemoved
                    ],
                "each step of the move once, in order: {moves:?}"
            );
        }
        // The new voter's pod runs in its region's own cluster: that
        // StatefulSet grew there.
        let (into, _) = voters_after
            .iter()
            .find(|(region, v)| v.len() > voters_before.get(*region).map_or(0, Vec::len))
            .context("a region gained a voter")?;
        let i = REGIONS
            .iter()
            .position(|r| r == into)
            .context("a known region")?;
        let sts = Api::<StatefulSet>::namespaced(r.harnesses[i].admin_client(), NS)
            .get(&format!("{LRC}-{into}"))
            .await?;
        ensure!(
            sts.spec.replicas == Some(3),
            "{into}'s StatefulSet in its own cluster grew to 3: {:?}",
            sts.spec.replicas
        );
        let after_loss = load
            .rec
            .ops()
            .iter()
            .filter(|o| matches!(o.result, roomkeeper_chaos::history::OpResult::Placed { .. }))
            .filter(|o| o.complete_ms.is_some_and(|c| c > lost_ms))
            .count();
        ensure!(after_loss > 0, "no order acknowledged after the loss");
        let status = lrc_status(&lrcs, LRC).await;
        ensure!(
            kubernetes_api(&status, "ap-south").as_deref() == Some("Unreachable"),
            "ap-south's API server shown unreachable: {}",
            status["regions"]
        );
        ensure!(
            has_event(&home, "RegionApiUnreachable", &["ap-south"]).await?,
            "a RegionApiUnreachable Event names ap-south"
        );
        ensure!(
            status["decisions"].to_string().contains("ap-south"),
            "status decisions explain the evacuation: {}",
            status["decisions"]
        );
        Ok(())
    }
    .await;
    let (rec, buyers) = load.stop().await?;
    outcome?;
    let live = buyer_targets(r, &home).await;
    let report = judge_sale(&rec, &buyers, &live, &token, (room, sku, stock)).await?;
    require_clean("regions", &rec, &report)
}

fn secret_text(s: &Secret, key: &str) -> Result<String> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .with_context(|| format!("Secret has no {key}"))
}
