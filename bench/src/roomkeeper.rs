//! Our store: three `roomkeeper node` processes on loopback (fsync on),
//! bootstrapped through the admin API, or existing nodes named with
//! `--roomkeeper-api`. Orders go over HTTP/JSON to the leader (found through
//! `/admin/status`); on 503 or a broken connection the buyer re-discovers the
//! leader and retries the same idempotency key, so a retried order is never
//! counted twice.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use roomkeeper_api::client::{PlaceOrder, PutListing, PutRoom};
use roomkeeper_api::{leader_of, NodeInfo, NodeStatus};
use roomkeeper_order_state::{ListingState, RoomState};
use serde_json::{json, Value};

use crate::framed::FramedConn;
use crate::http::{HttpConn, Response};
use crate::leader::LeaderCell;
use crate::procs::{self, free_ports, kill_all, loopback, Proc, ProcSpec, WorkDir};
use crate::report::{Audit, TargetResult};
use crate::workload::{self, sku_name, Ack, Driver, LoadStats, OrderReq, Outcome, Plan};
use crate::{Ctx, RkClient, Scenario, PER_BUYER_LIMIT, PRICE_CENTS};

pub const TARGET: &str = "roomkeeper";
/// Which client drives this target, for the report.
pub fn client_name(ctx: &Ctx) -> String {
    match ctx.rk_client {
        RkClient::Http => {
            "hyper, HTTP/1.1 keep-alive with JSON bodies: one connection per buyer, to the leader"
                .into()
        }
        RkClient::Framed => format!(
            "the bench's framed-protocol client (docs/framed-api.md): JSON bodies pipelined over \
             {} TCP connections shared by the buyers, to the leader",
            ctx.framed_connections
        ),
    }
}
const REGION: &str = "local";
/// Parallel connections for setup, audit and read-back.
const AUX_CONNS: usize = 32;

// ---------------------------------------------------------------- pure parts

pub fn order_body(sku: &str, req: &OrderReq) -> Result<Vec<u8>> {
    serde_json::to_vec(&PlaceOrder {
        sku: sku.to_string(),
        buyer: req.buyer.clone(),
        qty: 1,
        idempotency_key: req.idempotency_key.clone(),
        contact: req.contact.clone(),
    })
    .context("encoding order")
}

fn error_code(body: &[u8]) -> (String, Option<u64>) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = v
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let after = v.get("retry_after_ms").and_then(Value::as_u64);
    (code, after)
}

/// An order id as JSON number or string.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Maps a place-order answer to an outcome, and whether the leader should be
/// looked up again before the retry.
pub fn classify(resp: &Response, want_id: bool) -> (Outcome, bool) {
    match resp.status {
        200 | 201 => {
            let order_id = if want_id {
                serde_json::from_slice::<Value>(&resp.body)
                    .ok()
                    .and_then(|v| v.get("order_id").and_then(id_text))
            } else {
                None
            };
            (
                Outcome::Ok {
                    order_id,
                    conflicts: 0,
                },
                false,
            )
        }
        409 => {
            let (code, _) = error_code(&resp.body);
            if code == "sold_out" || code == "limit_exceeded" {
                (Outcome::Rejected { code }, false)
            } else {
                (
                    Outcome::Error {
                        reason: format!("409 {code}"),
                    },
                    false,
                )
            }
        }
        429 | 503 => {
            let (code, after) = error_code(&resp.body);
            let after_ms = after.or(resp.retry_after_ms).unwrap_or(50);
            (
                Outcome::Retry {
                    reason: format!("{} {code}", resp.status),
                    after_ms,
                },
                resp.status == 503,
            )
        }
        500..=599 => {
            let (code, after) = error_code(&resp.body);
            (
                Outcome::Retry {
                    reason: format!("{} {code}", resp.status),
                    after_ms: after.unwrap_or(50),
                },
                true,
            )
        }
        other => {
            let (code, _) = error_code(&resp.body);
            (
                Outcome::Error {
                    reason: format!("{other} {code}"),
                },
                false,
            )
        }
    }
}

/// A node's `/admin/status` answer, in the API's own type.
pub fn parse_status(body: &[u8]) -> Result<NodeStatus> {
    serde_json::from_slice(body).context("admin status is not the API's NodeStatus")
}

/// The `/admin/init` body: every member a voter.
pub fn init_body(nodes: &[(u64, NodeAddrs)]) -> Value {
    let members: BTreeMap<String, NodeInfo> = nodes
        .iter()
        .map(|(id, a)| {
            (
                id.to_string(),
                NodeInfo {
                    raft_addr: a.raft.to_string(),
                    api_addr: a.api.to_string(),
                    admin_addr: a.admin.to_string(),
                    region: REGION.to_string(),
                    zone: a.zone.clone(),
                },
            )
        })
        .collect();
    json!({ "members": members })
}

/// Percent-encoding for a path segment (ids are usually plain numbers).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ------------------------------------------------------------ talking to nodes

#[derive(Clone, Debug)]
pub struct NodeAddrs {
    pub raft: SocketAddr,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    /// The framed order protocol's listener, when the bench drives it.
    pub framed: Option<SocketAddr>,
    pub zone: String,
}

/// How a client finds where to send writes.
pub struct Routing {
    /// Admin endpoints to ask for the leader; empty: use `apis` round-robin.
    admins: Vec<SocketAddr>,
    apis: Vec<SocketAddr>,
    admin_token: Option<String>,
    client_token: Option<String>,
    leader: LeaderCell,
}

impl Routing {
    async fn status(&self, admin: SocketAddr) -> Result<NodeStatus> {
        status_of(admin, self.admin_token.clone()).await
    }

    /// The status of every node that answers, asked concurrently.
    async fn statuses(&self) -> Vec<NodeStatus> {
        let mut set = tokio::task::JoinSet::new();
        for admin in self.admins.iter().copied() {
            set.spawn(status_of(admin, self.admin_token.clone()));
        }
        let mut out = Vec::with_capacity(self.admins.len());
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(st)) => out.push(st),
                Ok(Err(e)) => tracing::debug!(error = %e, "status"),
                Err(e) => tracing::debug!(error = %e, "status task"),
            }
        }
        out
    }

    async fn leader_status(&self) -> Result<NodeStatus> {
        let all = self.statuses().await;
        leader_of(&all)
            .cloned()
            .ok_or_else(|| anyhow!("no node leads in the newest term ({} answered)", all.len()))
    }

    /// The api address of the leader.
    async fn discover(&self) -> Result<SocketAddr> {
        let st = self.leader_status().await?;
        let me = st
            .members
            .get(&st.node_id.to_string())
            .ok_or_else(|| anyhow!("leader {} does not list its own api_addr", st.node_id))?;
        resolve(&me.api_addr).await
    }

    /// The framed listener of the leader (its `framed_api_addr`).
    async fn discover_framed(&self) -> Result<SocketAddr> {
        let st = self.leader_status().await?;
        let addr = st.framed_api_addr.as_deref().ok_or_else(|| {
            anyhow!(
                "leader {} has no framed listener (start it with --framed-api-addr, \
                 or use --roomkeeper-client http)",
                st.node_id
            )
        })?;
        resolve(addr).await
    }

    fn uses_leader(&self) -> bool {
        !self.admins.is_empty()
    }

    async fn refresh(&self, seen: u64) -> (u64, SocketAddr) {
        self.leader.refresh(seen, || self.discover()).await
    }

    /// A connection to the current write endpoint.
    fn conn(&self, client: usize) -> Result<(u64, HttpConn)> {
        let (gen, addr) = if self.uses_leader() {
            self.leader.get()
        } else {
            (0, self.apis[client % self.apis.len()])
        };
        Ok((gen, HttpConn::new(addr, self.client_token.as_deref())?))
    }
}

async fn status_of(admin: SocketAddr, token: Option<String>) -> Result<NodeStatus> {
    let mut c =
        HttpConn::new_admin(admin, token.as_deref())?.with_timeout(Duration::from_millis(500));
    let resp = c.get("/admin/status").await?;
    if !resp.is_success() {
        bail!(
            "{admin} /admin/status: HTTP {}: {}",
            resp.status,
            resp.body_text()
        );
    }
    parse_status(&resp.body)
}

async fn resolve(addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to nothing"))
}

async fn resolve_all(addrs: &[String]) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        out.push(resolve(a.trim()).await?);
    }
    Ok(out)
}

/// Sends a setup/read request, retrying 429/503/transport errors for up to 30 s.
async fn with_retries(
    conn: &mut HttpConn,
    method: hyper::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Response> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bytes = match body {
            Some(b) => Some(serde_json::to_vec(b).context("encoding JSON")?),
            None => None,
        };
        let err = match conn.send(method.clone(), path, bytes).await {
            Ok(r) if matches!(r.status, 429 | 502 | 503 | 504) => {
                format!("HTTP {}: {}", r.status, r.body_text())
            }
            Ok(r) => return Ok(r),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{method} {path}: still failing after 30 s: {err}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ensure_ok(resp: Response, what: &str) -> Result<Response> {
    if resp.is_success() {
        Ok(resp)
    } else {
        bail!("{what}: HTTP {}: {}", resp.status, resp.body_text())
    }
}

pub struct RkDriver {
    transport: Transport,
    client: usize,
    seen: u64,
    rotation: usize,
    routing: Arc<Routing>,
    orders_path: String,
    room: Arc<str>,
    skus: Arc<Vec<String>>,
    want_ids: bool,
}

enum Transport {
    /// One HTTP/1.1 connection of the buyer's own.
    Http(HttpConn),
    /// A framed connection shared with other buyers.
    Framed(Arc<FramedPool>),
}

/// The framed connections the buyers share (buyer `i` uses `i % n`), all to
/// the leader's framed listener, found through the admin API.
pub struct FramedPool {
    slots: Vec<FramedSlot>,
    leader: LeaderCell,
    routing: Arc<Routing>,
}

#[derive(Default)]
struct FramedSlot {
    conn: std::sync::Mutex<Option<Arc<FramedConn>>>,
    /// One buyer reconnects a slot; the others wait for its connection.
    connecting: tokio::sync::Mutex<()>,
}

impl FramedPool {
    async fn new(routing: Arc<Routing>, connections: usize) -> Result<Self> {
        if !routing.uses_leader() {
            bail!(
                "the framed client finds the leader's framed listener through the admin API: \
                 give --roomkeeper-admin, or use --roomkeeper-client http"
            );
        }
        let first = routing.discover_framed().await?;
        Ok(Self {
            slots: (0..connections.max(1))
                .map(|_| FramedSlot::default())
                .collect(),
            leader: LeaderCell::new(first),
            routing,
        })
    }

    /// The buyer's connection to the current leader, opened if it has none.
    async fn conn(&self, client: usize) -> Result<Arc<FramedConn>> {
        let slot = &self.slots[client % self.slots.len()];
        let (_, addr) = self.leader.get();
        let usable = |c: &Option<Arc<FramedConn>>| {
            c.as_ref()
                .filter(|c| !c.is_dead() && c.addr() == addr)
                .cloned()
        };
        if let Some(c) = usable(&slot.conn.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(c);
        }
        let _one = slot.connecting.lock().await;
        if let Some(c) = usable(&slot.conn.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(c);
        }
        let token = self.routing.client_token.as_deref();
        let fresh = Arc::new(FramedConn::connect(addr, token, crate::http::DEFAULT_TIMEOUT).await?);
        *slot.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }

    async fn reroute(&self, seen: u64) -> u64 {
        self.leader
            .refresh(seen, || self.routing.discover_framed())
            .await
            .0
    }
}

impl RkDriver {
    async fn reroute(&mut self) {
        if let Transport::Framed(pool) = &self.transport {
            self.seen = pool.reroute(self.seen).await;
            return;
        }
        let addr = if self.routing.uses_leader() {
            let (gen, addr) = self.routing.refresh(self.seen).await;
            self.seen = gen;
            addr
        } else {
            self.rotation += 1;
            let apis = &self.routing.apis;
            apis[(self.client + self.rotation) % apis.len()]
        };
        if let Transport::Http(conn) = &mut self.transport {
            if let Err(e) = conn.retarget(addr) {
                tracing::debug!(error = %e, "retarget");
            }
        }
    }

    async fn send(&mut self, body: Vec<u8>) -> Result<Response> {
        match &mut self.transport {
            Transport::Http(conn) => {
                if self.routing.uses_leader() {
                    let (gen, addr) = self.routing.leader.get();
                    if gen != self.seen {
                        self.seen = gen;
                        conn.retarget(addr)?;
                    }
                }
                conn.send(hyper::Method::POST, &self.orders_path, Some(body))
                    .await
            }
            Transport::Framed(pool) => {
                self.seen = pool.leader.get().0;
                let conn = pool.conn(self.client).await?;
                conn.place_order(&self.room, &body).await
            }
        }
    }
}

impl Driver for RkDriver {
    async fn place(&mut self, req: &OrderReq) -> Outcome {
        let body = match order_body(&self.skus[req.sku], req) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Error {
                    reason: format!("{e:#}"),
                }
            }
        };
        match self.send(body).await {
            Ok(resp) => {
                let (out, reroute) = classify(&resp, self.want_ids);
                if reroute {
                    self.reroute().await;
                }
                out
            }
            Err(e) => {
                self.reroute().await;
                Outcome::Retry {
                    reason: format!("transport: {}", e.root_cause()),
                    after_ms: 10,
                }
            }
        }
    }
}

// ------------------------------------------------------------------ cluster

/// `--http-tls`: a throwaway CA in `dir`, a server certificate per node
/// (`<dir>/http-<id>`), and the bench's connections switched to TLS (the admin
/// ones with the operator's certificate). Returns `dir`.
fn bench_tls(dir: &std::path::Path) -> Result<PathBuf> {
    use roomkeeper_api::raft_identity::ClusterCa;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    // The nodes' default cluster id: the operator identity names it.
    let ca = ClusterCa::generate("local").context("making the bench's CA")?;
    for id in 1..=3u64 {
        let cert = ca.server_cert(&["127.0.0.1".to_string()])?;
        ca.write_dir(&cert, &dir.join(format!("http-{id}")))?;
    }
    let op = ca.operator_cert()?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())?)?;
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let admin = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(op.cert_pem.as_bytes())?],
            PrivateKeyDer::from_pem_slice(op.key_pem.as_bytes())?,
        )?;
    crate::http::use_tls(crate::http::BenchTls {
        client: tokio_rustls::TlsConnector::from(Arc::new(client)),
        admin: tokio_rustls::TlsConnector::from(Arc::new(admin)),
    });
    Ok(dir.to_path_buf())
}

/// The node flags of the HTTP edges: TLS from `<dir>/http-<id>`, or plain.
fn http_args(tls_dir: &Option<PathBuf>, id: u64) -> Result<Vec<String>> {
    Ok(match tls_dir {
        Some(dir) => vec![
            "--http-tls-dir".into(),
            dir.join(format!("http-{id}")).display().to_string(),
        ],
        // Compared with etcd and Redis, which the bench runs without TLS.
        None => vec!["--insecure-plaintext-http".into()],
    })
}

struct Node {
    id: u64,
    addrs: NodeAddrs,
    proc: Proc,
}

pub struct RkCluster {
    nodes: Vec<Node>,
    // Dropped after the nodes (field order): processes die first.
    dir: WorkDir,
}

impl RkCluster {
    pub async fn start(ctx: &Ctx, client_token: &str, admin_token: &str) -> Result<Self> {
        let exe = match &ctx.node_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("locating the roomkeeper binary")?,
        };
        let dir = WorkDir::create("roomkeeper", ctx.keep_dir)?;
        let key_file = dir.path().join("contact.key");
        std::fs::write(&key_file, format!("0 {}\n", procs::random_hex(32)?))
            .with_context(|| format!("writing {}", key_file.display()))?;
        let ports = free_ports(12)?;
        let tls_dir = if ctx.http_tls {
            Some(bench_tls(dir.path())?)
        } else {
            None
        };
        let mut nodes = Vec::new();
        for i in 0..3usize {
            let id = i as u64 + 1;
            let framed = ctx.rk_client == RkClient::Framed;
            let addrs = NodeAddrs {
                raft: loopback(ports[4 * i]),
                api: loopback(ports[4 * i + 1]),
                admin: loopback(ports[4 * i + 2]),
                framed: framed.then(|| loopback(ports[4 * i + 3])),
                zone: format!("{REGION}-{}", char::from(b'a' + i as u8)),
            };
            let data: PathBuf = dir.path().join(format!("node-{id}"));
            let spec = ProcSpec {
                name: format!("node {id}"),
                program: exe.clone(),
                args: vec![
                    "node".into(),
                    "--id".into(),
                    id.to_string(),
                    "--data-dir".into(),
                    data.display().to_string(),
                    "--raft-addr".into(),
                    addrs.raft.to_string(),
                    "--api-addr".into(),
                    addrs.api.to_string(),
                    "--admin-addr".into(),
                    addrs.admin.to_string(),
                    "--region".into(),
                    REGION.into(),
                    "--zone".into(),
                    addrs.zone.clone(),
                    "--contact-key-file".into(),
                    key_file.display().to_string(),
                    // Compared with etcd and Redis, which the bench runs
                    // without TLS either.
                    "--insecure-plaintext-raft".into(),
                ]
                .into_iter()
                .chain(http_args(&tls_dir, id)?)
                .chain(
                    addrs
                        .framed
                        .iter()
                        .flat_map(|a| ["--framed-api-addr".to_string(), a.to_string()]),
                )
                .collect(),
                env: vec![
                    ("ROOMKEEPER_CLIENT_TOKEN".into(), client_token.into()),
                    ("ROOMKEEPER_ADMIN_TOKEN".into(), admin_token.into()),
                    ("ROOMKEEPER_LOG".into(), ctx.node_log.clone()),
                ],
                log: dir.path().join(format!("node-{id}.log")),
            };
            nodes.push(Node {
                id,
                addrs,
                proc: Proc::spawn(spec)?,
            });
        }
        let mut cluster = Self { nodes, dir };
        cluster.bootstrap(admin_token).await?;
        Ok(cluster)
    }

    async fn wait_healthy(&mut self, idx: usize, admin_token: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let node = &mut self.nodes[idx];
            node.proc.check_alive()?;
            let mut c = HttpConn::new_admin(node.addrs.admin, Some(admin_token))?
                .with_timeout(Duration::from_millis(500));
            if let Ok(r) = c.get("/healthz").await {
                if r.is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} not healthy after 30 s; log {}",
                    node.id,
                    node.proc.spec.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn bootstrap(&mut self, admin_token: &str) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.wait_healthy(i, admin_token).await?;
        }
        let members: Vec<(u64, NodeAddrs)> =
            self.nodes.iter().map(|n| (n.id, n.addrs.clone())).collect();
        let mut c = HttpConn::new_admin(self.nodes[0].addrs.admin, Some(admin_token))?
            .with_timeout(Duration::from_secs(10));
        let resp = c
            .post_json("/admin/init", &init_body(&members))
            .await
            .context("POST /admin/init")?;
        ensure_ok(resp, "POST /admin/init on node 1")?;
        let routing = self.routing(admin_token, "");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for n in &mut self.nodes {
                n.proc.check_alive()?;
            }
            if let Ok(st) = routing.leader_status().await {
                if st.voters.len() == self.nodes.len() {
                    tracing::info!(leader = st.node_id, term = st.term, "bench: cluster formed");
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no leader with {} voters 30 s after /admin/init; logs in {}",
                    self.nodes.len(),
                    self.dir.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn routing(&self, admin_token: &str, client_token: &str) -> Routing {
        Routing {
            admins: self.nodes.iter().map(|n| n.addrs.admin).collect(),
            apis: self.nodes.iter().map(|n| n.addrs.api).collect(),
            admin_token: Some(admin_token.to_string()),
            client_token: Some(client_token.to_string()),
            leader: LeaderCell::new(self.nodes[0].addrs.api),
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.proc.pid()).collect()
    }

    fn max_rss_mib(&self) -> Option<f64> {
        self.nodes
            .iter()
            .filter_map(|n| n.proc.rss_bytes())
            .max()
            .map(|b| b as f64 / 1048576.0)
    }

    pub async fn shutdown(mut self) -> Result<()> {
        let mut procs: Vec<Proc> = self.nodes.drain(..).map(|n| n.proc).collect();
        kill_all(&mut procs).await
    }
}

// --------------------------------------------------------------- the run

async fn setup_catalog(routing: &Routing, ctx: &Ctx) -> Result<()> {
    let leader = routing.apis_for_setup().await?;
    let mut c = HttpConn::new(leader, routing.client_token.as_deref())?;
    let room_path = format!("/v1/rooms/{}", path_segment(&ctx.room));
    let resp = with_retries(
        &mut c,
        hyper::Method::PUT,
        &room_path,
        Some(&serde_json::to_value(PutRoom {
            title: "roomkeeper bench flash sale".into(),
            home_region: REGION.into(),
            state: RoomState::Live,
            live_windows: None,
        })?),
    )
    .await?;
    ensure_ok(resp, "PUT room")?;
    let skus = ctx.catalog.skus();
    let listing = serde_json::to_value(PutListing {
        price_cents: PRICE_CENTS,
        stock: u32::try_from(ctx.catalog.stock()).context("stock per SKU above u32")?,
        per_buyer_limit: u32::try_from(PER_BUYER_LIMIT).context("per-buyer limit above u32")?,
        state: ListingState::Open,
    })?;
    let listing = Arc::new(listing);
    let room_path = Arc::new(room_path);
    let mut set = tokio::task::JoinSet::new();
    for w in 0..AUX_CONNS.min(skus) {
        let mut c = HttpConn::new(leader, routing.client_token.as_deref())?;
        let listing = listing.clone();
        let room_path = room_path.clone();
        set.spawn(async move {
            for i in (w..skus).step_by(AUX_CONNS) {
                let path = format!("{room_path}/listings/{}", sku_name(i));
                let resp = with_retries(&mut c, hyper::Method::PUT, &path, Some(&listing)).await?;
                ensure_ok(resp, "PUT listing")?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("setup task")??;
    }
    Ok(())
}

impl Routing {
    /// Where setup writes go: the leader if we can find it, else the first api.
    async fn apis_for_setup(&self) -> Result<SocketAddr> {
        if self.uses_leader() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match self.discover().await {
                    Ok(a) => {
                        self.leader
                            .refresh(self.leader.get().0, || async { Ok(a) })
                            .await;
                        return Ok(a);
                    }
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        self.apis
            .first()
            .copied()
            .ok_or_else(|| anyhow!("no roomkeeper api address"))
    }
}

/// Stock sold per the store (linearizable reads), against what was acknowledged.
async fn audit(routing: &Routing, ctx: &Ctx, stats: &LoadStats) -> Result<Audit> {
    let addr = routing.apis_for_setup().await?;
    let skus = ctx.catalog.skus();
    let room_path = Arc::new(format!("/v1/rooms/{}", path_segment(&ctx.room)));
    let mut set = tokio::task::JoinSet::new();
    for w in 0..AUX_CONNS.min(skus) {
        let mut c = HttpConn::new(addr, routing.client_token.as_deref())?;
        let room_path = room_path.clone();
        set.spawn(async move {
            let mut sold = 0u64;
            for i in (w..skus).step_by(AUX_CONNS) {
                let path = format!(
                    "{room_path}/listings/{}?consistency=linearizable",
                    sku_name(i)
                );
                let resp = ensure_ok(
                    with_retries(&mut c, hyper::Method::GET, &path, None).await?,
                    "GET listing",
                )?;
                let v = resp.json()?;
                let total = v.get("stock_total").and_then(Value::as_u64);
                let left = v.get("stock_left").and_then(Value::as_u64);
                match (total, left) {
                    (Some(t), Some(l)) if l <= t => sold += t - l,
                    _ => bail!(
                        "listing {} has no sane stock_total/stock_left: {v}",
                        sku_name(i)
                    ),
                }
            }
            Ok::<_, anyhow::Error>(sold)
        });
    }
    let mut sold = 0;
    while let Some(r) = set.join_next().await {
        sold += r.context("audit task")??;
    }
    let acknowledged = stats.ok_total;
    let unknown = stats.abandoned;
    Ok(Audit {
        sold,
        acknowledged,
        unknown,
        ok: sold >= acknowledged && sold <= acknowledged + unknown,
    })
}

#[derive(Debug, Default)]
pub struct Verification {
    pub verified: u64,
    pub lost: u64,
    pub mismatched: u64,
    pub unverifiable: u64,
    pub samples: Vec<String>,
}

/// Reads every acknowledged order back by id.
async fn verify_acks(
    routing: &Routing,
    skus: &Arc<Vec<String>>,
    acks: Vec<Ack>,
) -> Result<Verification> {
    let addr = routing.apis_for_setup().await?;
    let acks = Arc::new(acks);
    let mut set = tokio::task::JoinSet::new();
    for w in 0..AUX_CONNS {
        let mut c = HttpConn::new(addr, routing.client_token.as_deref())?;
        let acks = acks.clone();
        let skus = skus.clone();
        set.spawn(async move {
            let mut v = Verification::default();
            for a in acks.iter().skip(w).step_by(AUX_CONNS) {
                if a.order_id.is_empty() {
                    v.unverifiable += 1;
                    continue;
                }
                let path = format!("/v1/orders/{}", path_segment(&a.order_id));
                let resp = match with_retries(&mut c, hyper::Method::GET, &path, None).await {
                    Ok(r) => r,
                    Err(e) => {
                        v.unverifiable += 1;
                        if v.samples.len() < 3 {
                            v.samples.push(format!("{}: {e:#}", a.order_id));
                        }
                        continue;
                    }
                };
                match resp.status {
                    200 => {
                        let o = resp.json().unwrap_or(Value::Null);
                        let same = o.get("sku").and_then(Value::as_str)
                            == Some(skus[a.sku].as_str())
                            && o.get("buyer").and_then(Value::as_str) == Some(a.buyer.as_str())
                            && o.get("qty").and_then(Value::as_u64) == Some(1);
                        if same {
                            v.verified += 1;
                        } else {
                            v.mismatched += 1;
                            if v.samples.len() < 3 {
                                v.samples.push(format!(
                                    "order {} (key {}) differs: {o}",
                                    a.order_id, a.idempotency_key
                                ));
                            }
                        }
                    }
                    404 => {
                        v.lost += 1;
                        if v.samples.len() < 3 {
                            v.samples.push(format!(
                                "acknowledged order {} (key {}) not found",
                                a.order_id, a.idempotency_key
                            ));
                        }
                    }
                    other => {
                        v.unverifiable += 1;
                        if v.samples.len() < 3 {
                            v.samples.push(format!(
                                "order {}: HTTP {other}: {}",
                                a.order_id,
                                resp.body_text()
                            ));
                        }
                    }
                }
            }
            v
        });
    }
    let mut total = Verification::default();
    while let Some(r) = set.join_next().await {
        let v = r.context("verification task")?;
        total.verified += v.verified;
        total.lost += v.lost;
        total.mismatched += v.mismatched;
        total.unverifiable += v.unverifiable;
        for s in v.samples {
            if total.samples.len() < 5 {
                total.samples.push(s);
            }
        }
    }
    Ok(total)
}

async fn drivers(
    ctx: &Ctx,
    routing: &Arc<Routing>,
    skus: &Arc<Vec<String>>,
    want_ids: bool,
) -> Result<Vec<RkDriver>> {
    let orders_path = format!("/v1/rooms/{}/orders", path_segment(&ctx.room));
    let pool = match ctx.rk_client {
        RkClient::Framed => Some(Arc::new(
            FramedPool::new(routing.clone(), ctx.framed_connections).await?,
        )),
        RkClient::Http => None,
    };
    let room: Arc<str> = ctx.room.as_str().into();
    (0..ctx.clients)
        .map(|client| {
            let (seen, transport) = match &pool {
                Some(pool) => (pool.leader.get().0, Transport::Framed(pool.clone())),
                None => {
                    let (seen, conn) = routing.conn(client)?;
                    (seen, Transport::Http(conn))
                }
            };
            Ok(RkDriver {
                transport,
                client,
                seen,
                rotation: 0,
                routing: routing.clone(),
                orders_path: orders_path.clone(),
                room: room.clone(),
                skus: skus.clone(),
                want_ids,
            })
        })
        .collect()
}

fn plan(ctx: &Ctx, record_acks: bool, cluster: Option<&RkCluster>) -> Plan {
    ctx.plan(
        TARGET,
        record_acks,
        cluster.map(RkCluster::pids).unwrap_or_default(),
    )
}

pub async fn run(ctx: &Ctx) -> Result<TargetResult> {
    if !ctx.rk_api.is_empty() {
        if ctx.scenario == Scenario::LeaderKill {
            bail!("--scenario leader-kill needs a cluster started by the bench (omit --roomkeeper-api)");
        }
        let routing = Routing {
            admins: resolve_all(&ctx.rk_admin).await?,
            apis: resolve_all(&ctx.rk_api).await?,
            admin_token: ctx.admin_token.clone(),
            client_token: ctx.client_token.clone(),
            leader: LeaderCell::new(resolve(ctx.rk_api[0].trim()).await?),
        };
        eprintln!(
            "== roomkeeper: existing nodes {:?}{}",
            routing.apis,
            if routing.uses_leader() {
                " (writes to the leader found through the admin API)"
            } else {
                " (writes spread over the given nodes; followers forward)"
            }
        );
        return steady(ctx, Arc::new(routing), None).await;
    }
    let client_token = procs::random_hex(16)?;
    let admin_token = procs::random_hex(16)?;
    eprintln!("== roomkeeper: starting three nodes");
    let mut cluster = RkCluster::start(ctx, &client_token, &admin_token).await?;
    let routing = Arc::new(cluster.routing(&admin_token, &client_token));
    let result = match ctx.scenario {
        Scenario::Steady => steady(ctx, routing, Some(&cluster)).await,
        Scenario::LeaderKill => leader_kill(ctx, routing, &mut cluster, &admin_token).await,
    };
    if result.is_err() {
        eprintln!("roomkeeper node logs: {}", cluster.dir.path().display());
    }
    let stopped = cluster.shutdown().await;
    let result = result?;
    stopped.context("stopping roomkeeper nodes")?;
    Ok(result)
}

async fn steady(
    ctx: &Ctx,
    routing: Arc<Routing>,
    cluster: Option<&RkCluster>,
) -> Result<TargetResult> {
    setup_catalog(&routing, ctx).await?;
    let skus = Arc::new((0..ctx.catalog.skus()).map(sku_name).collect::<Vec<_>>());
    let drivers = drivers(ctx, &routing, &skus, false).await?;
    let stats = workload::run_load(&plan(ctx, false, cluster), drivers, Instant::now()).await?;
    let mut r = TargetResult::from_stats(
        TARGET,
        ctx.scenario.name(),
        ctx.catalog.name(),
        ctx.clients,
        &stats,
    );
    r.server_rss_mib = cluster.and_then(RkCluster::max_rss_mib);
    match audit(&routing, ctx, &stats).await {
        Ok(a) => {
            if !a.ok {
                eprintln!(
                    "!!!!! roomkeeper audit FAILED: store sold {} units, bench saw {} acknowledged (+{} unknown)",
                    a.sold, a.acknowledged, a.unknown
                );
            }
            r.orders_in_store = Some(a.sold);
            r.audit = Some(a);
        }
        Err(e) => {
            eprintln!("roomkeeper audit could not run: {e:#}");
            r.note = Some(format!("audit could not run: {e:#}"));
        }
    }
    Ok(r)
}

async fn leader_kill(
    ctx: &Ctx,
    routing: Arc<Routing>,
    cluster: &mut RkCluster,
    admin_token: &str,
) -> Result<TargetResult> {
    setup_catalog(&routing, ctx).await?;
    let skus = Arc::new((0..ctx.catalog.skus()).map(sku_name).collect::<Vec<_>>());
    let drivers = drivers(ctx, &routing, &skus, true).await?;
    let plan = plan(ctx, true, Some(&*cluster));
    let start = Instant::now();
    let kill_at = ctx.kill_at();
    let killer = {
        let routing = routing.clone();
        let nodes = &mut cluster.nodes;
        async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(start + kill_at)).await;
            let st = routing.leader_status().await?;
            let idx = nodes
                .iter()
                .position(|n| n.id == st.node_id)
                .ok_or_else(|| anyhow!("leader id {} is not one of our nodes", st.node_id))?;
            let event = crate::KillEvent::now(format!("node {}", st.node_id), start);
            eprintln!(
                "  >>> SIGKILL roomkeeper leader node {} at {:.1} s (unix ms {})",
                st.node_id,
                event.at.as_secs_f64(),
                event.unix_ms
            );
            nodes[idx].proc.kill().await?;
            Ok::<_, anyhow::Error>((idx, event))
        }
    };
    let (stats, killed) = tokio::join!(workload::run_load(&plan, drivers, start), killer);
    let mut stats = stats?;
    let (idx, event) = killed?;
    let killed_name = event.name.clone();

    // Heal: restart the killed node and let it catch up before reading back.
    eprintln!("  restarting {killed_name} and waiting for it to catch up");
    cluster.nodes[idx].proc.start()?;
    cluster.wait_healthy(idx, admin_token).await?;
    let caught_up = wait_caught_up(&routing, cluster.nodes[idx].addrs.admin).await;
    if let Err(e) = &caught_up {
        eprintln!("  warning: {killed_name} did not catch up: {e:#}");
    }
    let acks = std::mem::take(&mut stats.acks);
    eprintln!("  reading back {} acknowledged orders", acks.len());
    let v = verify_acks(&routing, &skus, acks).await?;
    for s in &v.samples {
        eprintln!("  verification: {s}");
    }
    let mut r = TargetResult::from_stats(
        TARGET,
        ctx.scenario.name(),
        ctx.catalog.name(),
        ctx.clients,
        &stats,
    );
    r.server_rss_mib = cluster.max_rss_mib();
    match audit(&routing, ctx, &stats).await {
        Ok(a) => {
            r.orders_in_store = Some(a.sold);
            r.audit = Some(a);
        }
        Err(e) => r.note = Some(format!("audit could not run: {e:#}")),
    }
    r.leader_kill = Some(crate::kill_report(&stats, event, Some(&v)));
    Ok(r)
}

async fn wait_caught_up(routing: &Routing, admin: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (leader, me) = (routing.leader_status().await, routing.status(admin).await);
        tracing::debug!(?leader, ?me, "waiting for the restarted node to catch up");
        if let (Ok(leader), Ok(me)) = (leader, me) {
            // Caught up: it knows the current term and applied what the
            // leader had committed.
            if me.term >= leader.term && me.applied_index >= leader.committed_index {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("not caught up after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn resp(status: u16, body: &str, retry_after_ms: Option<u64>) -> Response {
        Response {
            status,
            retry_after_ms,
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn classifies_answers() {
        let created = resp(
            201,
            r#"{"order_id":42,"status":"placed","replayed":false}"#,
            None,
        );
        assert_eq!(
            classify(&created, true).0,
            Outcome::Ok {
                order_id: Some("42".into()),
                conflicts: 0
            }
        );
        assert_eq!(
            classify(&created, false).0,
            Outcome::Ok {
                order_id: None,
                conflicts: 0
            }
        );
        let replayed = resp(200, r#"{"order_id":"s0-7","replayed":true}"#, None);
        assert_eq!(
            classify(&replayed, true).0,
            Outcome::Ok {
                order_id: Some("s0-7".into()),
                conflicts: 0
            }
        );
        let sold = resp(409, r#"{"code":"sold_out","message":"no stock"}"#, None);
        assert_eq!(
            classify(&sold, false),
            (
                Outcome::Rejected {
                    code: "sold_out".into()
                },
                false
            )
        );
        let closed = resp(409, r#"{"code":"not_on_sale","message":"closed"}"#, None);
        assert!(matches!(classify(&closed, false).0, Outcome::Error { .. }));
        let busy = resp(
            429,
            r#"{"code":"overloaded","retry_after_ms":20}"#,
            Some(1000),
        );
        assert_eq!(
            classify(&busy, false),
            (
                Outcome::Retry {
                    reason: "429 overloaded".into(),
                    after_ms: 20
                },
                false
            )
        );
        let no_leader = resp(503, "", Some(1000));
        assert_eq!(
            classify(&no_leader, false),
            (
                Outcome::Retry {
                    reason: "503 unknown".into(),
                    after_ms: 1000
                },
                true
            )
        );
        let bad = resp(400, r#"{"code":"invalid_quantity"}"#, None);
        assert_eq!(
            classify(&bad, false).0,
            Outcome::Error {
                reason: "400 invalid_quantity".into()
            }
        );
    }

    #[test]
    fn parses_admin_status() {
        let body = r#"{"node_id":2,"region":"local","zone":"local-b","role":"leader","term":3,
            "leader_id":2,"last_log_index":10,"committed_index":9,"applied_index":8,
            "snapshot_index":0,"purged_index":0,"millis_since_quorum_ack":3,"orders":7,
            "sales_paused":false,"test_faults_enabled":false,
            "voters":[1,2,3],"learners":[],
            "members":{"1":{"raft_addr":"127.0.0.1:1","api_addr":"127.0.0.1:2","admin_addr":"127.0.0.1:3","region":"local","zone":"local-a"},
                       "2":{"raft_addr":"127.0.0.1:4","api_addr":"127.0.0.1:5","admin_addr":"127.0.0.1:6","region":"local","zone":"local-b"}},
            "replication":{"1":{"matched_index":9,"lag":0}}}"#;
        let st = parse_status(body.as_bytes()).unwrap();
        assert_eq!(st.node_id, 2);
        assert_eq!(st.role, "leader");
        assert_eq!(st.leader_id, Some(2));
        assert_eq!(st.voters, vec![1, 2, 3]);
        assert_eq!(st.committed_index, 9);
        assert_eq!(st.applied_index, 8);
        assert_eq!(st.members["2"].api_addr, "127.0.0.1:5");
        let partial =
            parse_status(br#"{"node_id":1,"role":"follower","leader_id":null}"#).unwrap_err();
        assert!(
            format!("{partial:#}").contains("missing field"),
            "{partial:#}"
        );
        assert!(parse_status(b"{}").is_err());
    }

    #[test]
    fn init_body_lists_every_member() {
        let a = |p: u16| loopback(p);
        let nodes = vec![
            (
                1,
                NodeAddrs {
                    raft: a(1),
                    api: a(2),
                    admin: a(3),
                    framed: None,
                    zone: "local-a".into(),
                },
            ),
            (
                2,
                NodeAddrs {
                    raft: a(4),
                    api: a(5),
                    admin: a(6),
                    framed: None,
                    zone: "local-b".into(),
                },
            ),
        ];
        let body = init_body(&nodes);
        assert_eq!(body["members"]["1"]["api_addr"], "127.0.0.1:2");
        assert_eq!(body["members"]["2"]["raft_addr"], "127.0.0.1:4");
        assert_eq!(body["members"]["2"]["zone"], "local-b");
        assert_eq!(body["members"]["1"]["region"], REGION);
    }

    #[test]
    fn order_body_is_the_contract() {
        let req = OrderReq {
            sku: 3,
            buyer: "buyer-9".into(),
            idempotency_key: "r-0-1".into(),
            contact: "+15550000001".into(),
        };
        let v: Value = serde_json::from_slice(&order_body("sku-00003", &req).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"sku":"sku-00003","buyer":"buyer-9","qty":1,"idempotency_key":"r-0-1","contact":"+15550000001"})
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("bench-ab12"), "bench-ab12");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }
}
