//! `kubectl roomkeeper` against a real API server: the binary runs as
//! `kubectl-roomkeeper` (a symlink in a temp dir, as krew installs it) with
//! a kubeconfig pointing at the test API server, and every verb is driven
//! on one three-region cluster formed once:
//!
//! - `status` matches `tests/golden/kubectl-status.txt` with times, terms,
//!   indexes and node ids masked (`ROOMKEEPER_BLESS=1` rewrites it), and
//!   `-o json` carries the same view;
//! - `pause`/`resume` flip `spec.paused` (and refuse without `--yes` when
//!   stdin is not a terminal: exit 2); `explain` names every tier;
//! - `deny` and `approve` answer FailoverApprovals as the kubeconfig's user
//!   (the admission policy checks `approvedBy`); a `failover` a guard
//!   forbids and a `switchover` to a node that is not a voter exit 3 with
//!   the reason; a `switchover --to-region` moves leadership;
//! - `drill run --wait`, `drill list`, `drill report`, `gameday`;
//! - `report` writes a bundle that holds the decisions and the Events but
//!   not the client token Secret's value nor the contact of an order placed
//!   during the test.
//!
//! Needs the binaries of `scripts/k8s-test-bins.sh` (skipped loudly without
//! them, fails under CI) and a built `roomkeeper` (`ROOMKEEPER_BIN`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use roomkeeper_e2e::k8s::{eventually, init_test_tracing, KubeHarness};
use roomkeeper_e2e::kubelet::KubeletBridge;
use roomkeeper_e2e::operator::{
    apply_file, apply_yaml, approver_account, leader_client_call, repo_root, wait_live_window,
    OperatorProcess,
};
use roomkeeper_e2e::Signal;
use serde_json::{json, Value};

const NS: &str = "plugin";
const LRC: &str = "desk";
const CONTACT_MARKER: &str = "CONTACT-MARKER-7f3a";

fn api(client: &Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("roomkeeper.dev", "v1alpha1", kind),
        plural,
    );
    Api::namespaced_with(client.clone(), NS, &ar)
}

/// The plugin as kubectl runs it: `kubectl-roomkeeper` on PATH.
struct Plugin {
    exe: PathBuf,
    kubeconfig: PathBuf,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Plugin {
    fn new(bin: &Path, dir: &Path, kubeconfig: &Path) -> Result<Plugin> {
        let bin_dir = dir.join("plugin-bin");
        std::fs::create_dir_all(&bin_dir)?;
        let exe = bin_dir.join("kubectl-roomkeeper");
        if !exe.exists() {
            std::os::unix::fs::symlink(bin, &exe)?;
        }
        Ok(Plugin {
            exe,
            kubeconfig: kubeconfig.to_path_buf(),
        })
    }

    /// Runs a verb with stdin closed (not a terminal).
    fn run(&self, args: &[&str]) -> Result<Out> {
        let out = Command::new(&self.exe)
            .args(["-n", NS])
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("ROOMKEEPER_LOG")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running kubectl-roomkeeper {args:?}"))?;
        let o = Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "$ kubectl roomkeeper {} → {}\n{}{}",
            args.join(" "),
            o.code,
            o.stdout,
            o.stderr
        );
        Ok(o)
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        let o = self.run(args)?;
        ensure!(o.code == 0, "{args:?} exited {}: {}", o.code, o.stderr);
        Ok(o.stdout)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_of_the_kubectl_plugin_against_a_real_api_server() {
    init_test_tracing();
    let started = Instant::now();
    let Some(h) = KubeHarness::start_or_skip("kubectl_plugin").await else {
        return;
    };
    let bin = roomkeeper_e2e::binary();
    let bridge = KubeletBridge::start(h.admin_client(), h.dir(), &bin)
        .await
        .expect("kubelet bridge");
    let mut ops: Vec<OperatorProcess> = Vec::new();
    if let Err(e) = scenario(&h, &bridge, &bin, &mut ops).await {
        eprintln!("{}", h.dump_logs(30));
        for op in &ops {
            eprintln!("--- operator ---\n{}", op.log_tail(80));
        }
        panic!(
            "kubectl plugin e2e failed after {:.0}s: {e:#}",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "kubectl plugin e2e passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
}

/// The roomkeeper CRDs (the harness's `install_crds`), then the operator's
/// and the approvers' RBAC.
async fn install(admin: &Client) -> Result<()> {
    roomkeeper_e2e::operator::install_crds(admin).await?;
    apply_file(admin, "deploy/rbac.yaml", "default").await?;
    apply_file(admin, "deploy/approver-rbac.yaml", "default").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

async fn lrc_status(admin: &Client) -> Value {
    api(admin, "LiveRoomCluster", "liveroomclusters")
        .get(LRC)
        .await
        .ok()
        .and_then(|o| o.data.get("status").cloned())
        .unwrap_or(Value::Null)
}

async fn wait_running(admin: &Client, secs: u64) -> Result<Value> {
    eventually(
        Duration::from_secs(secs),
        "readyVoters 3/3, Running, a leader",
        || async {
            let s = lrc_status(admin).await;
            s["readyVoters"] == json!("3/3")
                && s["phase"] == json!("Running")
                && s["leader"].is_string()
                && s["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().all(|m| m["replicating"] == json!(true)))
        },
    )
    .await?;
    Ok(lrc_status(admin).await)
}

/// A follower voter not in `not`: (pod, node id, region).
async fn follower(admin: &Client, not: &[i64]) -> Result<(String, i64, String)> {
    let s = lrc_status(admin).await;
    let leader = s["leaderId"].as_i64();
    s["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == json!("voter") && m["nodeId"].as_i64() != leader)
        .filter(|m| m["nodeId"].as_i64().is_some_and(|id| !not.contains(&id)))
        .filter_map(|m| {
            Some((
                m["pod"].as_str()?.to_string(),
                m["nodeId"].as_i64()?,
                m["region"].as_str()?.to_string(),
            ))
        })
        .min_by(|a, b| a.0.cmp(&b.0))
        .with_context(|| format!("no follower in {s}"))
}

/// The pending FailoverApproval about `node`.
async fn pending_approval(admin: &Client, node: i64) -> Result<String> {
    let faps = api(admin, "FailoverApproval", "failoverapprovals");
    let target = json!(format!("node {node}"));
    let find = || async {
        faps.list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .find(|a| {
                a.data["spec"]["target"] == target && a.data["status"]["phase"] == json!("Pending")
            })
            .and_then(|a| a.metadata.name)
    };
    eventually(
        Duration::from_secs(60),
        &format!("an approval for node {node}"),
        || async { find().await.is_some() },
    )
    .await?;
    find().await.context("the approval vanished")
}

/// Masks what changes from run to run: digits (times, terms, indexes, node
/// ids, pod ordinals), which pod leads, runs of spaces.
fn mask(text: &str, leader_pod: &str) -> String {
    let text = text
        .replace(
            &format!("Leader:   {leader_pod} "),
            "Leader:   <leader-pod> ",
        )
        .replace(" (leader)", "");
    roomkeeper_e2e::mask_digit_runs(&text)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn check_golden(name: &str, got: &str) -> Result<()> {
    let path = repo_root().join("tests/golden").join(name);
    if std::env::var_os("ROOMKEEPER_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().context("golden dir")?)?;
        std::fs::write(&path, got)?;
    }
    let want = std::fs::read_to_string(&path)
        .with_context(|| format!("{} (ROOMKEEPER_BLESS=1 writes it)", path.display()))?;
    ensure!(
        want == got,
        "{} differs (ROOMKEEPER_BLESS=1 rewrites it):\n--- want\n{want}--- got\n{got}",
        path.display()
    );
    Ok(())
}

fn drill_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: roomkeeper.dev/v1alpha1
kind: ChaosDrill
metadata:
  name: {name}
spec:
  description: steady state, no fault
  target:
    cluster: {LRC}
  durationSecs: 6
  faults: []
  load:
    clients: 2
    thinkTimeMs: 50
    catalog: {{skus: 2, stock: 100000, hotSkus: 1, hotStock: 100}}
  hypothesis:
    probes:
      - {{kind: invariants}}
      - {{kind: rpo, max: 0}}
"
        ),
    )?;
    Ok(path)
}

/// One order with the contact marker, through the leader's client port.
async fn order_with_contact(admin: &Client, bridge: &KubeletBridge) -> Result<()> {
    for (method, path, body) in [
        (
            "PUT",
            "/v1/rooms/r1",
            json!({"title": "R", "home_region": "a", "state": "live"}),
        ),
        (
            "PUT",
            "/v1/rooms/r1/listings/s1",
            json!({"price_cents": 100, "stock": 10, "per_buyer_limit": 1, "state": "open"}),
        ),
        (
            "POST",
            "/v1/rooms/r1/orders",
            json!({"sku": "s1", "buyer": "b1", "qty": 1, "idempotency_key": "k1", "contact": CONTACT_MARKER}),
        ),
    ] {
        leader_client_call(admin, bridge, NS, LRC, method, path, &body).await?;
    }
    Ok(())
}

async fn scenario(
    h: &KubeHarness,
    bridge: &KubeletBridge,
    bin: &Path,
    ops: &mut Vec<OperatorProcess>,
) -> Result<()> {
    let admin = h.admin_client();
    install(&admin).await?;
    let sa = h
        .service_account_kubeconfig("roomkeeper-system", "roomkeeper-operator")
        .await?;
    ops.push(OperatorProcess::start(bin, &sa, h.dir(), "op-a", 6)?);
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await?;
    // T1 asks a person before restarting a node; nobody answering in 60 s means no.
    apply_yaml(
        &admin,
        &json!({
            "apiVersion": "roomkeeper.dev/v1alpha1", "kind": "FailoverPlaybook",
            "metadata": {"name": "ask-first"},
            "spec": {"tiers": [{
                "name": "heal", "level": 1,
                "trigger": {"condition": {"type": "nodeUnhealthy"}, "forMs": 3000, "clearForMs": 5000},
                "actions": ["restartNode"],
                "approval": {"timeoutMs": 60000, "onTimeout": "reject"}
            }], "guards": {"cooldownMs": 5000}}
        })
        .to_string(),
        NS,
    )
    .await?;
    apply_yaml(
        &admin,
        &json!({
            "apiVersion": "roomkeeper.dev/v1alpha1", "kind": "LiveRoomCluster",
            "metadata": {"name": LRC},
            "spec": {"image": "roomkeeper:e2e", "playbookRef": {"name": "ask-first"},
                     "orderStore": {"faultHooks": true},
                     "regions": [{"name": "a", "voters": 1}, {"name": "b", "voters": 1}, {"name": "c", "voters": 1}]}
        })
        .to_string(),
        NS,
    )
    .await?;
    let plugin = Plugin::new(bin, h.dir(), h.kubeconfig_path())?;
    let st = wait_running(&admin, 120).await?;
    let formed = Instant::now();

    // status: the golden screen, and the same view as JSON.
    let leader_pod = st["leader"].as_str().context("leader")?.to_string();
    let screen = plugin.ok(&["status", LRC])?;
    check_golden("kubectl-status.txt", &mask(&screen, &leader_pod))?;
    let v: Value = serde_json::from_str(&plugin.ok(&["status", "-o", "json"])?)?;
    ensure!(
        v["safe"] == json!(true) && v["nodes"].as_array().map(Vec::len) == Some(3),
        "{v}"
    );
    ensure!(
        v["ordersAtRisk"]["belowRegionMajorityEntries"] == json!(0),
        "{v}"
    );
    ensure!(plugin
        .ok(&["status", "-o", "wide"])?
        .contains("REPLICATING"));
    ensure!(plugin
        .ok(&["status", "-o", "yaml"])?
        .contains("ordersAtRisk:"));

    // pause / resume; a destructive verb without --yes and without a terminal.
    let o = plugin.run(&["pause", LRC])?;
    ensure!(
        o.code == 2 && o.stderr.contains("--yes"),
        "pause without --yes: {}",
        o.code
    );
    plugin.ok(&["pause", LRC, "--yes"])?;
    ensure!(lrc_status(&admin).await["phase"] == json!("Paused"));
    ensure!(plugin.ok(&["status"])?.contains("automation is paused"));
    plugin.ok(&["resume", LRC, "--yes"])?;
    wait_running(&admin, 60).await?;

    // explain names every tier of the playbook and the guards.
    let e = plugin.ok(&["explain", LRC])?;
    ensure!(e.contains("T1 heal") && e.contains("rate limit"), "{e}");

    // A hung follower: T1 asks; a failover a guard forbids is refused (exit
    // 3); the request is denied as the kubeconfig's user.
    let (pod, node, _) = follower(&admin, &[]).await?;
    let denied = node;
    ensure!(
        bridge.signal_pod_process(NS, &pod, Signal::SIGSTOP),
        "{pod} not here"
    );
    let leader_region = {
        let s = lrc_status(&admin).await;
        let l = s["leaderId"].clone();
        s["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["nodeId"] == l)
            .and_then(|m| m["region"].as_str())
            .context("leader region")?
            .to_string()
    };
    let name = pending_approval(&admin, node).await?;
    ensure!(
        plugin.ok(&["status"])?.contains(&name),
        "status does not list {name}"
    );
    let o = plugin.run(&[
        "failover",
        LRC,
        "--region",
        &leader_region,
        "--yes",
        "--reason",
        "e2e",
    ])?;
    ensure!(
        o.code == 3 && o.stderr.contains("neverBelowQuorum"),
        "failover: {} {}",
        o.code,
        o.stderr
    );
    let out = plugin.ok(&["deny", &name, "--yes", "--reason", "false alarm"])?;
    ensure!(out.contains("Denied"), "{out}");
    let fap = api(&admin, "FailoverApproval", "failoverapprovals")
        .get(&name)
        .await?;
    let who = fap.data["spec"]["approvedBy"]
        .as_str()
        .unwrap_or("")
        .to_string();
    ensure!(
        !who.is_empty() && fap.data["status"]["by"] == json!(who),
        "{:?}",
        fap.data
    );
    ensure!(bridge.signal_pod_process(NS, &pod, Signal::SIGCONT));
    wait_running(&admin, 60).await?;

    // The next hang (another node: a denied action is not asked again at
    // once) is approved: the node is restarted.
    let (pod, node, _) = follower(&admin, &[denied]).await?;
    ensure!(bridge.signal_pod_process(NS, &pod, Signal::SIGSTOP));
    let name = pending_approval(&admin, node).await?;
    let out = plugin.ok(&["approve", &name, "--yes"])?;
    ensure!(out.contains("Approved"), "{out}");
    wait_running(&admin, 90).await?;

    // Switchovers: to a node that is no voter (refused, exit 3), to a region.
    let o = plugin.run(&["switchover", LRC, "--to-node", "99", "--yes"])?;
    ensure!(
        o.code == 3 && o.stderr.contains("node 99"),
        "switchover: {} {}",
        o.code,
        o.stderr
    );
    let (_, _, region) = follower(&admin, &[]).await?;
    plugin.ok(&[
        "switchover",
        LRC,
        "--to-region",
        &region,
        "--yes",
        "--reason",
        "e2e",
    ])?;
    let s = lrc_status(&admin).await;
    let leads_in = s["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["nodeId"] == s["leaderId"])
        .map(|m| m["region"].clone());
    ensure!(
        leads_in == Some(json!(region)),
        "leader not in {region}: {s}"
    );

    // Drills.
    let steady = drill_file(h.dir(), "steady")?;
    let out = plugin.ok(&[
        "drill",
        "run",
        steady.to_str().context("path")?,
        "--wait",
        "--yes",
    ])?;
    ensure!(out.contains("Drill steady: Completed"), "{out}");
    ensure!(plugin.ok(&["drill", "list"])?.contains("steady"));
    let r: Value = serde_json::from_str(&plugin.ok(&["drill", "report", "steady", "-o", "json"])?)?;
    ensure!(
        r["phase"] == json!("Completed") && r["lost"] == json!(0),
        "{r}"
    );

    // report: no Secret value, no buyer contact.
    order_with_contact(&admin, bridge).await?;
    let token = Api::<Secret>::namespaced(admin.clone(), NS)
        .get(&format!("{LRC}-tokens"))
        .await?
        .data
        .and_then(|d| d.get("client-token").cloned())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .context("client token")?;
    let bundle = h.dir().join("bundle.tar.gz");
    plugin.ok(&["report", LRC, "--output", bundle.to_str().context("path")?])?;
    let unpacked = h.dir().join("bundle");
    std::fs::create_dir_all(&unpacked)?;
    let st = Command::new("tar")
        .arg("xzf")
        .arg(&bundle)
        .arg("-C")
        .arg(&unpacked)
        .status()?;
    ensure!(st.success(), "tar xzf");
    let mut all = String::new();
    for entry in walk(&unpacked)? {
        all.push_str(&std::fs::read_to_string(&entry).unwrap_or_default());
    }
    ensure!(
        all.contains("restartNode") && all.contains("transferLeadershipAway"),
        "no decisions in the bundle"
    );
    ensure!(
        !token.is_empty() && !all.contains(&token),
        "the client token is in the bundle"
    );
    ensure!(
        !all.contains(CONTACT_MARKER),
        "the buyer contact is in the bundle"
    );

    // gameday: the playbook in dry-run, a follower frozen; a scripted on-call
    // answers once the status shows the node down, restarts it, and is
    // scored by what the restart changed. Automation comes back at the end.
    game_day(&admin, &plugin, h.dir()).await?;
    // approve: a switchover a live window holds waits for someone else.
    approve_a_held_switchover(h, &admin, bridge, &plugin, bin).await?;
    // Ctrl-C ends a game day and hands automation back at once.
    interrupted_game_day(&admin, &plugin, h.dir()).await?;
    eprintln!(
        "every verb checked {:.0}s after the cluster formed",
        formed.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn approve_a_held_switchover(
    h: &KubeHarness,
    admin: &Client,
    bridge: &KubeletBridge,
    plugin: &Plugin,
    bin: &Path,
) -> Result<()> {
    api(admin, "FailoverPlaybook", "failoverplaybooks")
        .patch(
            "ask-first",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"spec": {"guards": {"liveWindow": "requireApproval"}}}),
            ),
        )
        .await?;
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let room = |windows: Value| json!({"title": "On air", "home_region": "a", "state": "live", "live_windows": windows});
    leader_client_call(
        admin,
        bridge,
        NS,
        LRC,
        "PUT",
        "/v1/rooms/on-air",
        &room(json!([{"start_ms": now_ms - 1_000, "end_ms": now_ms + 600_000, "expected_peak_orders_per_s": 500}])),
    )
    .await?;
    wait_live_window(
        &api(admin, "LiveRoomCluster", "liveroomclusters"),
        LRC,
        "on-air",
    )
    .await?;
    let (_, to, _) = follower(admin, &[]).await?;
    let out = plugin.ok(&["switchover", LRC, "--to-node", &to.to_string(), "--yes"])?;
    let name = out
        .split_whitespace()
        .nth(1)
        .map(|n| n.trim_end_matches(':').to_string())
        .filter(|_| out.contains("AwaitingApproval"))
        .with_context(|| format!("the switchover did not wait for approval: {out}"))?;
    // The status screen shows the window and the command it holds.
    let screen = plugin.ok(&["status", LRC])?;
    ensure!(
        screen.contains("room on-air (home a):")
            && screen.contains(&format!("Switchover {name} requested by")),
        "{screen}"
    );
    // The requester cannot approve their own request.
    let o = plugin.run(&["approve", &name, "--yes"])?;
    ensure!(
        o.code == 3 && o.stderr.contains("someone else approves"),
        "self-approval: {} {}",
        o.code,
        o.stderr
    );
    // A second on-call person can.
    approver_account(admin, NS, "second").await?;
    let second_dir = h.dir().join("second");
    std::fs::create_dir_all(&second_dir)?;
    let second = Plugin::new(
        bin,
        &second_dir,
        &h.service_account_kubeconfig(NS, "second").await?,
    )?;
    let out = second.ok(&["approve", &name, "--yes"])?;
    ensure!(out.contains("Succeeded"), "{out}");
    eventually(
        Duration::from_secs(20),
        &format!("node {to} leads after the approved switchover"),
        || async { lrc_status(admin).await["leaderId"] == json!(to) },
    )
    .await?;
    leader_client_call(
        admin,
        bridge,
        NS,
        LRC,
        "PUT",
        "/v1/rooms/on-air",
        &room(json!([])),
    )
    .await?;
    Ok(())
}

async fn interrupted_game_day(admin: &Client, plugin: &Plugin, dir: &Path) -> Result<()> {
    let file = dir.join("gd-interrupted.yaml");
    std::fs::write(
        &file,
        std::fs::read_to_string(repo_root().join("chaos/drills/game-day-pause-follower.yaml"))?
            .replace("cluster: local", &format!("cluster: {LRC}"))
            .replace("name: game-day-pause-follower", "name: gd-interrupted"),
    )?;
    let child = Command::new(&plugin.exe)
        .args(["-n", NS, "gameday"])
        .arg(&file)
        .arg("--yes")
        .env("KUBECONFIG", &plugin.kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting kubectl-roomkeeper gameday")?;
    let lrcs = api(admin, "LiveRoomCluster", "liveroomclusters");
    eventually(
        Duration::from_secs(30),
        "the game day put the playbook in dry-run",
        || async {
            lrcs.get(LRC)
                .await
                .is_ok_and(|l| l.data["spec"]["dryRun"] == json!(true))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    roomkeeper_e2e::signal_pid(child.id(), Signal::SIGINT)?;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    ensure!(
        out.status.code() == Some(5),
        "an interrupted game day exits 5 (cancelled), not {}",
        out.status
    );
    let spec = lrcs.get(LRC).await?.data["spec"].clone();
    ensure!(
        spec["dryRun"] == json!(false),
        "Ctrl-C left the playbook in dry-run: {spec}"
    );
    Ok(())
}

/// The member the leader does not hear from, by the cluster's status.
async fn silent_member(admin: &Client) -> Option<i64> {
    let s = lrc_status(admin).await;
    s["members"]
        .as_array()?
        .iter()
        .find(|m| m["replicating"] == json!(false))
        .and_then(|m| m["nodeId"].as_i64())
}

async fn game_day(admin: &Client, plugin: &Plugin, dir: &Path) -> Result<()> {
    // Kubernetes heals a killed pod by itself: not a game day.
    let kill = dir.join("gd-kill.yaml");
    std::fs::write(
        &kill,
        std::fs::read_to_string(repo_root().join("chaos/drills/game-day-follower-kill.yaml"))?
            .replace("cluster: local", &format!("cluster: {LRC}")),
    )?;
    let o = plugin.run(&["gameday", kill.to_str().context("path")?, "--yes"])?;
    ensure!(
        o.code == 3
            && o.stderr.contains("spec.faults[0].kind: killNode")
            && o.stderr.contains("StatefulSet"),
        "a killNode game day must be refused: {}",
        o.stderr
    );
    // The library's game day for both bindings, aimed at this cluster.
    let file = dir.join("gd-pause.yaml");
    std::fs::write(
        &file,
        std::fs::read_to_string(repo_root().join("chaos/drills/game-day-pause-follower.yaml"))?
            .replace("cluster: local", &format!("cluster: {LRC}")),
    )?;
    let mut child = Command::new(&plugin.exe)
        .args(["-n", NS, "gameday"])
        .arg(&file)
        .arg("--yes")
        .arg("--runbooks")
        .arg(repo_root().join("runbooks"))
        .env("KUBECONFIG", &plugin.kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting kubectl-roomkeeper gameday")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut say = |line: &str| -> Result<()> {
        use std::io::Write;
        eprintln!("on-call> {line}");
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()?;
        Ok(())
    };
    eventually(
        Duration::from_secs(60),
        "the status shows a member the leader does not hear from",
        || async { silent_member(admin).await.is_some() },
    )
    .await?;
    let node = silent_member(admin).await.context("silent member")?;
    say("")?;
    say("runbooks/tier-t1-heal.md")?;
    say(&format!("restart {node}"))?;
    eventually(
        Duration::from_secs(60),
        "the restarted member replicates again",
        || async {
            let s = lrc_status(admin).await;
            s["members"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["nodeId"] == json!(node) && m["replicating"] == json!(true))
        },
    )
    .await?;
    say("done")?;
    drop(stdin);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("$ kubectl roomkeeper gameday → {}\n{stdout}", out.status);
    ensure!(out.status.success(), "gameday exited {}", out.status);
    ensure!(stdout.contains("Game day: score"), "{stdout}");
    ensure!(
        stdout.contains(&format!(
            "[restart {node}] changed the fault's state: node {node} was down and answers again"
        )),
        "the restart is credited with what it changed: {stdout}"
    );
    ensure!(!stdout.contains("score 0/100"), "{stdout}");
    // Automation is back, and the record is kept on the drill.
    let lrc = api(admin, "LiveRoomCluster", "liveroomclusters")
        .get(LRC)
        .await?;
    ensure!(
        lrc.data["spec"]["dryRun"] == json!(false) && lrc.data["spec"]["paused"] != json!(true),
        "automation not handed back: {}",
        lrc.data["spec"]
    );
    let r: Value = serde_json::from_str(&plugin.ok(&[
        "drill",
        "report",
        "game-day-pause-follower",
        "-o",
        "json",
    ])?)?;
    ensure!(
        r["phase"] == json!("Completed")
            && r["lost"] == json!(0)
            && r["gameDay"]["score"].as_u64().is_some_and(|s| s > 0),
        "{r}"
    );
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}
