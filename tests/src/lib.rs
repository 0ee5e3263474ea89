//! Harness for end-to-end tests: real `roomkeeper node` processes on loopback,
//! a blocking HTTP client, and helpers to kill, pause, restart and inspect
//! nodes. Every process is killed when the `Cluster` is dropped.
//!
//! The binary comes from `ROOMKEEPER_BIN`, else `target/release/roomkeeper`,
//! else `target/debug/roomkeeper` (build it first: `cargo build -p roomkeeper`).

pub mod buyers;
pub mod gateway;
pub mod http_client;
pub mod k8s;
pub mod kubelet;
pub mod netns;
pub mod netpol;
pub mod operator;
pub mod ports;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
use roomkeeper_api::client::{PlaceOrder, PutListing, PutRoom};
use roomkeeper_api::{leader_of, NodeInfo, NodeStatus};
use roomkeeper_order_state::{ListingState, RoomState};
use serde_json::{json, Value};

pub const CLIENT_TOKEN: &str = "client-secret-token";
pub const ADMIN_TOKEN: &str = "admin-secret-token";

/// Starts `roomkeeper demo <args>` on its own status address, node ports and
/// data directory, its output piped for the test to read.
pub fn spawn_demo(args: &[&str], status_addr: &str, base_port: u16, data_dir: &Path) -> Child {
    Command::new(binary())
        .arg("demo")
        .args(args)
        .args(["--status-addr", status_addr])
        .args(["--base-port", &base_port.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start demo")
}

/// Finds the roomkeeper binary to test.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("ROOMKEEPER_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("roomkeeper");
        if p.exists() {
            return p;
        }
    }
    panic!("roomkeeper binary not found: run `cargo build --release -p roomkeeper` or set ROOMKEEPER_BIN")
}

/// A response of [`http`]: the body as JSON when it is JSON, else as a string.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body.get("code").and_then(Value::as_str).unwrap_or("")
    }
}

/// One HTTP/1.1 request on a new connection (see [`http_client`]); the whole
/// exchange must finish within `timeout`. Errors are transport errors, named
/// with the request.
pub fn http(
    method: &str,
    addr: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
    timeout: Duration,
) -> std::io::Result<Reply> {
    http_via(None, method, addr, path, body, token, timeout)
}

/// `GET addr path` with no token and a 1 s timeout: how the tests poll a
/// demo's status and metrics endpoints.
pub fn get(addr: &str, path: &str) -> std::io::Result<Reply> {
    http("GET", addr, path, None, None, Duration::from_secs(1))
}

/// [`http`], over TLS when `tls` is given.
pub fn http_via(
    tls: Option<&http_client::Tls>,
    method: &str,
    addr: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
    timeout: Duration,
) -> std::io::Result<Reply> {
    let req = http_client::build(method, addr, path, body, token)?;
    let res = match tls {
        None => http_client::block_on(http_client::request(addr, req, timeout))?,
        Some(t) => http_client::block_on(http_client::request_tls(addr, t, req, timeout))?,
    };
    let text = res.text();
    Ok(Reply {
        status: res.status,
        retry_after: res.header("retry-after").map(str::to_string),
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    })
}

/// The cluster id of test clusters, in their frames and certificates.
pub const CLUSTER_ID: &str = "e2e";

/// Runs `roomkeeper raft-certs <args>` and insists it worked.
pub fn raft_certs(args: &[&str]) {
    let out = Command::new(binary())
        .arg("raft-certs")
        .args(args)
        .output()
        .expect("run roomkeeper raft-certs");
    assert!(
        out.status.success(),
        "roomkeeper raft-certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `roomkeeper raft-probe` (a hostile peer) against the Raft port at
/// `addr`: `tls` is its transport flags (none: plain TCP; `--tls-no-cert`;
/// `--tls-dir DIR` with `tls.crt`/`tls.key`), `header` the frame's cluster,
/// sender and target. `Ok(answer)` when the node answered, `Err(why)` when it
/// closed or refused the connection.
pub fn raft_probe(
    addr: &str,
    tls: &[&str],
    header: (&str, u64, u64),
    request: &[&str],
) -> Result<String, String> {
    let (cluster, from, to) = header;
    let out = Command::new(binary())
        .args(["raft-probe", "--addr", addr])
        .args(tls)
        .args([
            "--cluster-id",
            cluster,
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
        ])
        .args(request)
        .output()
        .expect("run raft-probe");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A loopback address picked by the kernel, as `ip:port`, and its reservation.
pub fn reserve_addr() -> (String, ports::Reserved) {
    let r = ports::reserve().unwrap_or_else(|e| panic!("reserving a loopback port: {e:#}"));
    (r.addr().to_string(), r)
}

/// One node process and its addresses.
pub struct Node {
    pub id: u64,
    pub region: String,
    pub data_dir: PathBuf,
    pub raft_addr: String,
    pub api_addr: String,
    pub admin_addr: String,
    pub child: Option<Child>,
    pub log_path: PathBuf,
    /// Holds the three ports for the life of the cluster, so that the node
    /// binds them again after a restart (see [`ports`]).
    pub reserved: Vec<ports::Reserved>,
}

impl Node {
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            raft_addr: self.raft_addr.clone(),
            api_addr: self.api_addr.clone(),
            admin_addr: self.admin_addr.clone(),
            region: self.region.clone(),
            zone: format!("{}-a", self.region),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// Options for a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Region of each node, in node-id order (ids start at 1).
    pub regions: Vec<String>,
    pub snapshot_every_entries: u64,
    pub keep_entries_after_snapshot: u64,
    /// Extra flags for every node.
    pub extra_args: Vec<String>,
    /// TLS on the client and admin APIs (server certificates from the
    /// cluster's CA, the harness presents the operator's certificate to the
    /// admin API); otherwise `--insecure-plaintext-http`.
    pub http_tls: bool,
}

impl ClusterOptions {
    pub fn nodes(n: usize) -> Self {
        Self {
            regions: (0..n).map(|i| format!("region-{}", i % 3 + 1)).collect(),
            snapshot_every_entries: 10_000,
            keep_entries_after_snapshot: 2_000,
            extra_args: Vec::new(),
            http_tls: false,
        }
    }
}

/// A cluster of real node processes in a temporary directory.
pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    pub opts: ClusterOptions,
    key_file: PathBuf,
    /// With `http_tls`: trusts the cluster CA (client API) …
    pub client_tls: Option<http_client::Tls>,
    /// … and presents the operator's certificate (admin API).
    pub admin_tls: Option<http_client::Tls>,
}

static CLUSTER_SEQ: AtomicU64 = AtomicU64::new(0);

impl Cluster {
    /// Starts the processes (not yet initialized).
    pub fn start(opts: ClusterOptions) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "roomkeeper-e2e-{}-{}",
            std::process::id(),
            CLUSTER_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create cluster dir");
        let key_file = dir.join("contact.key");
        std::fs::write(&key_file, format!("0 {}\n", "ab".repeat(32))).expect("write key");
        raft_certs(&[
            "ca",
            "--cluster-id",
            CLUSTER_ID,
            "--out",
            &dir.join("raft-ca").display().to_string(),
        ]);
        let nodes = opts
            .regions
            .iter()
            .enumerate()
            .map(|(i, region)| {
                let id = i as u64 + 1;
                let (raft_addr, raft) = reserve_addr();
                let (api_addr, api) = reserve_addr();
                let (admin_addr, admin) = reserve_addr();
                Node {
                    id,
                    region: region.clone(),
                    data_dir: dir.join(format!("node-{id}")),
                    raft_addr,
                    api_addr,
                    admin_addr,
                    child: None,
                    log_path: dir.join(format!("node-{id}.log")),
                    reserved: vec![raft, api, admin],
                }
            })
            .collect();
        let (client_tls, admin_tls) = if opts.http_tls {
            let op = dir.join("operator-tls");
            raft_certs(&[
                "operator",
                "--cluster-id",
                CLUSTER_ID,
                "--ca-dir",
                &dir.join("raft-ca").display().to_string(),
                "--out",
                &op.display().to_string(),
            ]);
            (
                Some(http_client::Tls::from_dir(&op, false).expect("client TLS")),
                Some(http_client::Tls::from_dir(&op, true).expect("operator TLS")),
            )
        } else {
            (None, None)
        };
        let mut c = Self {
            dir,
            nodes,
            opts,
            key_file,
            client_tls,
            admin_tls,
        };
        for id in c.ids() {
            c.spawn(id);
        }
        for id in c.ids() {
            c.wait_healthy(id);
        }
        c
    }

    /// Starts, initializes with every node a voter, and waits for a leader.
    pub fn start_initialized(opts: ClusterOptions) -> Self {
        let c = Self::start(opts);
        c.initialize();
        c
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Spawns (or respawns) a node process.
    pub fn spawn(&mut self, id: u64) {
        let bin = binary();
        let key = self.key_file.clone();
        let opts = self.opts.clone();
        // Mutual TLS between nodes, a node certificate from the cluster's
        // throwaway CA, unless the test asks for plaintext.
        let tls_dir = self.dir.join(format!("node-{id}-tls"));
        let tls_args: Vec<String> = if opts
            .extra_args
            .iter()
            .any(|a| a == "--insecure-plaintext-raft")
        {
            Vec::new()
        } else {
            let ca = self.dir.join("raft-ca").display().to_string();
            let out = tls_dir.display().to_string();
            raft_certs(&[
                "node",
                "--cluster-id",
                CLUSTER_ID,
                "--ca-dir",
                &ca,
                "--id",
                &id.to_string(),
                "--out",
                &out,
            ]);
            vec![
                "--cluster-id".into(),
                CLUSTER_ID.into(),
                "--raft-tls-dir".into(),
                out,
            ]
        };
        let http_args: Vec<String> = if opts.http_tls {
            let out = self.http_tls_dir(id);
            raft_certs(&[
                "http",
                "--cluster-id",
                CLUSTER_ID,
                "--ca-dir",
                &self.dir.join("raft-ca").display().to_string(),
                "--name",
                "127.0.0.1",
                "--name",
                "localhost",
                "--out",
                &out.display().to_string(),
            ]);
            let mut args: Vec<String> = Vec::new();
            if tls_args.is_empty() {
                args.extend(["--cluster-id".into(), CLUSTER_ID.into()]);
            }
            args.extend([
                "--http-tls-dir".into(),
                out.display().to_string(),
                "--http-tls-reload-ms".into(),
                "200".into(),
            ]);
            args
        } else {
            vec!["--insecure-plaintext-http".into()]
        };
        let n = self.node_mut(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log_path)
            .expect("open node log");
        let child = Command::new(bin)
            .args(["node", "--id", &n.id.to_string()])
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args([
                "--raft-addr",
                &n.raft_addr,
                "--api-addr",
                &n.api_addr,
                "--admin-addr",
                &n.admin_addr,
            ])
            .args(["--region", &n.region, "--zone", &format!("{}-a", n.region)])
            .arg("--contact-key-file")
            .arg(&key)
            .args([
                "--client-token",
                CLIENT_TOKEN,
                "--admin-token",
                ADMIN_TOKEN,
                "--enable-test-faults",
            ])
            .args([
                "--snapshot-every-entries",
                &opts.snapshot_every_entries.to_string(),
            ])
            .args([
                "--keep-entries-after-snapshot",
                &opts.keep_entries_after_snapshot.to_string(),
            ])
            .args(&tls_args)
            .args(&http_args)
            .args(&opts.extra_args)
            // ROOMKEEPER_E2E_NODE_LOG overrides the nodes' log filter when a
            // failing test needs more than the default.
            .env(
                "ROOMKEEPER_LOG",
                std::env::var("ROOMKEEPER_E2E_NODE_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn roomkeeper node");
        n.child = Some(child);
    }

    /// Waits until the node's admin API answers /healthz.
    pub fn wait_healthy(&self, id: u64) {
        let addr = self.node(id).admin_addr.clone();
        wait_until(
            Duration::from_secs(15),
            &format!("node {id} healthy"),
            || {
                http_via(
                    self.admin_tls.as_ref(),
                    "GET",
                    &addr,
                    "/healthz",
                    None,
                    None,
                    Duration::from_millis(300),
                )
                .map(|r| r.status == 200)
                .unwrap_or(false)
            },
        );
    }

    /// Bootstraps the group on node 1 with every node a voter.
    pub fn initialize(&self) {
        let members: BTreeMap<String, NodeInfo> = self
            .nodes
            .iter()
            .map(|n| (n.id.to_string(), n.info()))
            .collect();
        let body = json!({ "members": members }).to_string();
        let r = self
            .admin("POST", 1, "/admin/init", Some(&body))
            .expect("init request");
        assert_eq!(r.status, 200, "init failed: {:?}", r.body);
        self.wait_leader(Duration::from_secs(15));
    }

    /// The directory of node `id`'s HTTP certificate (with `http_tls`).
    pub fn http_tls_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}-http-tls"))
    }

    pub fn admin(
        &self,
        method: &str,
        id: u64,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<Reply> {
        http_via(
            self.admin_tls.as_ref(),
            method,
            &self.node(id).admin_addr,
            path,
            body.map(str::as_bytes),
            Some(ADMIN_TOKEN),
            Duration::from_secs(5),
        )
    }

    pub fn client(
        &self,
        method: &str,
        id: u64,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<Reply> {
        http_via(
            self.client_tls.as_ref(),
            method,
            &self.node(id).api_addr,
            path,
            body.map(str::as_bytes),
            Some(CLIENT_TOKEN),
            Duration::from_secs(6),
        )
    }

    pub fn status(&self, id: u64) -> Option<Value> {
        self.admin("GET", id, "/admin/status", None)
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.body)
    }

    /// A node's `/admin/status`, typed; `None` when it does not answer.
    pub fn node_status(&self, id: u64) -> Option<NodeStatus> {
        self.status(id)
            .and_then(|v| serde_json::from_value::<NodeStatus>(v).ok())
    }

    /// The leader among the running nodes' answers, by the one rule every
    /// plane uses ([`roomkeeper_api::leader_of`]: the claim in the newest term).
    pub fn leader(&self) -> Option<u64> {
        let statuses: Vec<NodeStatus> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter_map(|n| self.node_status(n.id))
            .collect();
        leader_of(&statuses).map(|s| s.node_id)
    }

    pub fn wait_leader(&self, timeout: Duration) -> u64 {
        let mut found = None;
        wait_until(timeout, "a leader", || {
            found = self.leader();
            found.is_some()
        });
        found.unwrap_or_default()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.node_mut(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (SIGSTOP / SIGCONT: a stalled process) to a running node.
    pub fn signal(&self, id: u64, sig: Signal) {
        if let Some(pid) = self.node(id).pid() {
            if let Err(e) = signal_pid(pid, sig) {
                panic!("{sig} to node {id} (pid {pid}) failed: {e}");
            }
        }
    }

    pub fn restart(&mut self, id: u64) {
        self.kill(id);
        self.spawn(id);
        self.wait_healthy(id);
    }

    /// The sum of a metric's series whose line contains `label` (`""`: all
    /// of them) on a node, from its `/metrics` (0 when absent).
    pub fn metric(&self, id: u64, name: &str, label: &str) -> f64 {
        let r = self.admin("GET", id, "/metrics", None).expect("metrics");
        r.body
            .as_str()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sets injected faults on a node (the node runs with --enable-test-faults).
    pub fn faults(&self, id: u64, body: Value) {
        let r = self
            .admin("POST", id, "/admin/faults", Some(&body.to_string()))
            .expect("faults request");
        assert_eq!(r.status, 200, "faults: {:?}", r.body);
    }

    /// Creates a live room with listings, through the leader.
    pub fn create_room(&self, room: &str, skus: &[(&str, u32, u32)]) {
        let body = to_json(&PutRoom {
            title: "flash sale".into(),
            home_region: "region-1".into(),
            state: RoomState::Live,
            live_windows: None,
        });
        let r = self.put_as_told(&format!("/v1/rooms/{room}"), &body);
        assert_eq!(r.status, 200, "put room: {:?}", r.body);
        for (sku, stock, limit) in skus {
            let body = to_json(&PutListing {
                price_cents: 1999,
                stock: *stock,
                per_buyer_limit: *limit,
                state: ListingState::Open,
            });
            let r = self.put_as_told(&format!("/v1/rooms/{room}/listings/{sku}"), &body);
            assert_eq!(r.status, 200, "put listing: {:?}", r.body);
        }
    }

    /// `PUT path` (idempotent) to the leader, retried as a client is told to
    /// when leadership moves under it (`not_leader`, `no_leader`: a young
    /// cluster's first election can still settle), for up to 10 s.
    fn put_as_told(&self, path: &str, body: &str) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let via = self.wait_leader(Duration::from_secs(10));
            let r = self.client("PUT", via, path, Some(body)).expect("PUT");
            let moved = r.status == 503 && matches!(r.code(), "not_leader" | "no_leader");
            if !moved || Instant::now() >= deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running node has applied the same index as the leader.
    pub fn wait_converged(&self, timeout: Duration) {
        wait_until(
            timeout,
            "all running nodes applied the leader's log",
            || {
                let Some(l) = self.leader() else { return false };
                let Some(ls) = self.status(l) else {
                    return false;
                };
                let target = ls["committed_index"].as_u64().unwrap_or(0);
                self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                    self.status(n.id)
                        .map(|s| s["applied_index"].as_u64().unwrap_or(0) >= target)
                        .unwrap_or(false)
                })
            },
        );
    }

    /// Asserts every running node reports its invariants intact.
    pub fn assert_invariants(&self) {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let r = self
                .admin("GET", n.id, "/admin/invariants", None)
                .expect("invariants");
            assert_eq!(
                r.body["ok"],
                json!(true),
                "node {} broke an invariant: {:?}",
                n.id,
                r.body
            );
        }
    }

    /// The contact key file every node reads (and reloads when it changes).
    pub fn contact_key_file(&self) -> &Path {
        &self.key_file
    }

    pub fn node_log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log_path).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                // A stopped process is killed too, but resumed it exits at once.
                let _ = signal_pid(c.id(), Signal::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "cluster files kept for inspection in {}",
                self.dir.display()
            );
        }
    }
}

/// A scoped client token for a node's `--client-tokens-file`.
pub struct ScopedToken<'a> {
    pub name: &'a str,
    pub secret: &'a str,
    pub rooms: &'a str,
    pub verbs: &'a str,
}

/// Writes a client token file (hashes only, made by `roomkeeper
/// client-token-hash`) and returns its path, unique per call.
pub fn write_client_tokens(tokens: &[ScopedToken]) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut text = String::from("# name secret rooms verbs\n");
    for t in tokens {
        let mut child = Command::new(binary())
            .arg("client-token-hash")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run roomkeeper client-token-hash");
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            writeln!(stdin, "{}", t.secret).expect("write the secret");
        }
        let out = child.wait_with_output().expect("client-token-hash");
        assert!(out.status.success(), "client-token-hash failed");
        let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            !hash.contains(t.secret),
            "the token file must not hold the secret"
        );
        text.push_str(&format!("{} {hash} {} {}\n", t.name, t.rooms, t.verbs));
    }
    let path = std::env::temp_dir().join(format!(
        "roomkeeper-tokens-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).expect("write the client token file");
    path
}

/// The body of one order (`POST /v1/rooms/{room}/orders`), without contact data.
pub fn order_body(sku: &str, buyer: &str, qty: u32, key: &str) -> String {
    to_json(&PlaceOrder {
        sku: sku.to_string(),
        buyer: buyer.to_string(),
        qty,
        idempotency_key: key.to_string(),
        contact: String::new(),
    })
}

/// A request body of the roomkeeper API as JSON text.
pub fn to_json<T: serde::Serialize>(body: &T) -> String {
    serde_json::to_string(body).unwrap_or_else(|e| panic!("serializing a request body: {e}"))
}

/// Every file under `dir`, at any depth (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Panics naming the first file under `dir` whose bytes hold `needle` (a
/// marker contact that must never be written in plain text).
pub fn assert_in_no_file(dir: &Path, needle: &[u8]) {
    for file in files_under(dir) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "plain-text {:?} found in {}",
            String::from_utf8_lossy(needle),
            file.display()
        );
    }
}

/// Sends `sig` to one process.
pub fn signal_pid(pid: u32, sig: Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::ESRCH)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
}

/// Polls `cond` until true or panics after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// The client API addresses of a cluster, for load threads.
#[derive(Clone, Debug)]
pub struct ClientView {
    pub api_addrs: Vec<String>,
}

impl Cluster {
    pub fn client_view(&self) -> ClientView {
        ClientView {
            api_addrs: self.nodes.iter().map(|n| n.api_addr.clone()).collect(),
        }
    }
}

/// Runs `threads` buyers placing orders (qty 1, unique keys) round-robin over
/// `skus` until `stop` is set; returns every attempt's result.
pub fn run_buyers(
    view: ClientView,
    room: &str,
    skus: Vec<String>,
    threads: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<Attempt>>> {
    (0..threads)
        .map(|t| {
            let view = view.clone();
            let room = room.to_string();
            let skus = skus.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let sku = &skus[(n as usize + t) % skus.len()];
                    let buyer = format!("buyer-{t}-{n}");
                    let key = format!("key-{t}-{n}");
                    let deadline = Instant::now() + Duration::from_secs(20);
                    out.push(place_order_with_retries(
                        &view, &room, sku, &buyer, &key, 1, deadline,
                    ));
                    n += 1;
                }
                out
            })
        })
        .collect()
}

/// What a client learned about one order attempt.
#[derive(Debug, Clone)]
pub enum Attempt {
    Acked {
        order_id: u64,
        buyer: String,
        key: String,
        qty: u64,
    },
    Rejected {
        code: String,
    },
    Unknown {
        buyer: String,
        key: String,
    },
}

/// Places one order, retrying the same idempotency key across nodes on
/// transient errors until `deadline`. Returns what is known.
pub fn place_order_with_retries(
    c: &ClientView,
    room: &str,
    sku: &str,
    buyer: &str,
    key: &str,
    qty: u64,
    deadline: Instant,
) -> Attempt {
    let body = to_json(&PlaceOrder {
        sku: sku.to_string(),
        buyer: buyer.to_string(),
        qty: u32::try_from(qty).unwrap_or(u32::MAX),
        idempotency_key: key.to_string(),
        contact: "+1 555 0100".to_string(),
    });
    let mut i = key.len();
    while Instant::now() < deadline {
        let addr = &c.api_addrs[i % c.api_addrs.len()];
        i += 1;
        match http(
            "POST",
            addr,
            &format!("/v1/rooms/{room}/orders"),
            Some(body.as_bytes()),
            Some(CLIENT_TOKEN),
            Duration::from_secs(5),
        ) {
            Ok(r) if r.status == 201 || r.status == 200 => {
                return Attempt::Acked {
                    order_id: r.body["order_id"].as_u64().unwrap_or(0),
                    buyer: buyer.to_string(),
                    key: key.to_string(),
                    qty,
                }
            }
            Ok(r) if r.status == 409 || r.status == 404 || r.status == 400 => {
                return Attempt::Rejected {
                    code: r.code().to_string(),
                }
            }
            _ => std::thread::sleep(Duration::from_millis(30)),
        }
    }
    Attempt::Unknown {
        buyer: buyer.to_string(),
        key: key.to_string(),
    }
}

/// Each run of ASCII digits replaced by one `#`: what golden outputs compare
/// once times, terms, indexes and ordinals are taken out.
pub fn mask_digit_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last_digit = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('#');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    out
}

/// A path a test tool lives at: the environment variable `var` when set and
/// not empty, else `rel` under `~/.cache/roomkeeper`, where the set-up
/// scripts (`scripts/*-bin.sh`) put what they build.
pub fn env_or_cached(var: &str, rel: impl AsRef<Path>) -> PathBuf {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/roomkeeper")
        .join(rel)
}
