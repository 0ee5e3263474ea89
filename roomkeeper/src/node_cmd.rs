//! `roomkeeper node`: runs one order-store replica until SIGINT/SIGTERM.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use roomkeeper_order_store::auth::TokenTable;
use roomkeeper_order_store::contact::ContactKeyring;
use roomkeeper_order_store::http_server::HttpLimits;
use roomkeeper_order_store::http_tls::{HttpSecurity, HttpTls};
use roomkeeper_order_store::quarantine::parse_joined_ids;
use roomkeeper_order_store::rate_limit::{Rate, RateLimits};
use roomkeeper_order_store::transport::ListenerLimits;
use roomkeeper_order_store::wire::FrameDeadline;
use roomkeeper_order_store::{NodeConfig, NodeHandle, RaftSecurity};

/// Flags of `roomkeeper node`.
#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("raft_security")
        .required(true)
        .args(["raft_tls_dir", "insecure_plaintext_raft"])
))]
#[command(group(
    clap::ArgGroup::new("http_security")
        .required(true)
        .args(["http_tls_dir", "insecure_plaintext_http"])
))]
pub struct NodeArgs {
    /// Raft node id: unique in the shard and never reused.
    #[arg(
        long,
        required_unless_present = "identity_file",
        conflicts_with = "identity_file"
    )]
    pub id: Option<u64>,
    /// Identity file written by the operator (ConfigMap): one line per pod,
    /// `<pod-name> <node-id> <zone>`. Sets the id and the zone of `--pod-name`.
    #[arg(long, requires = "pod_name")]
    pub identity_file: Option<PathBuf>,
    /// This pod's name, looked up in `--identity-file`.
    #[arg(long)]
    pub pod_name: Option<String>,
    /// File of node ids that have been Raft members (written by the operator).
    /// A node whose id is listed but whose data directory is empty (a wiped or
    /// replaced volume) does not join Raft: it serves a quarantine admin API
    /// until the operator gives its pod a new id. A missing file lists no ids.
    #[arg(long)]
    pub joined_ids_file: Option<PathBuf>,
    /// Directory for the Raft log and snapshots.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Listen address for node-to-node Raft traffic.
    #[arg(long, default_value = "127.0.0.1:7101")]
    pub raft_addr: String,
    /// Listen address for the client API.
    #[arg(long, default_value = "127.0.0.1:7201")]
    pub api_addr: String,
    /// Listen address for the admin API (status, membership, metrics).
    #[arg(long, default_value = "127.0.0.1:7301")]
    pub admin_addr: String,
    /// Also serve `/metrics`, `/healthz` and `/readyz` (read-only) in plain
    /// HTTP on this address: for Prometheus and kubelet probes when the admin
    /// API takes only the operator's certificate (`--http-tls-dir`).
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Also take orders over the framed protocol on this address: pipelined
    /// over one TCP connection, with the client API's tokens, TLS and
    /// connection caps (docs/framed-api.md). Off unless given.
    #[arg(long)]
    pub framed_api_addr: Option<String>,
    /// Region (failure domain) this node runs in.
    #[arg(long, default_value = "local")]
    pub region: String,
    /// Zone within the region.
    #[arg(long, default_value = "local-a")]
    pub zone: String,
    /// Key file that seals buyer contacts (`<id> <64 hex chars>
    /// [staged|retired]` per line; the highest id neither staged nor retired
    /// seals, every key opens).
    #[arg(long)]
    pub contact_key_file: PathBuf,
    /// How often the contact key file is checked for changes (0: never; a
    /// changed file is put in use without a restart).
    #[arg(long, default_value_t = 2000)]
    pub contact_key_reload_ms: u64,
    /// Bearer token required by the client API, with every scope (named
    /// `client-token`). Unset, and no `--client-tokens-file`: open, with a warning.
    #[arg(long, env = "ROOMKEEPER_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,
    /// `--client-token` read from a file (one line; a mounted Secret key):
    /// the token appears in no process listing or environment.
    #[arg(long, conflicts_with = "client_token")]
    pub client_token_file: Option<PathBuf>,
    /// Scoped client tokens: one per line, `<name> sha256:<hex> <rooms> <verbs>`
    /// (rooms `a,b,live-*` or `*`; verbs from order, manage_listings,
    /// read_contact, or `*`). `roomkeeper client-token-hash` prints the hash.
    #[arg(long)]
    pub client_tokens_file: Option<PathBuf>,
    /// Bearer token required by the admin API (unset: open, with a warning).
    #[arg(long, env = "ROOMKEEPER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// `--admin-token` read from a file (one line; a mounted Secret key).
    #[arg(long, conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// `/metrics` (on the admin listener and on `--metrics-addr`) answers only
    /// requests bearing this token (Prometheus: `authorization` credentials).
    /// A read-only credential of its own: the scraper never holds the admin
    /// token, which would travel in clear on the plain metrics listener.
    /// `/healthz` and `/readyz` stay open for probes.
    #[arg(long, env = "ROOMKEEPER_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// `--metrics-token` read from a file (one line; a mounted Secret key).
    #[arg(long, conflicts_with = "metrics_token")]
    pub metrics_token_file: Option<PathBuf>,
    /// Turns on the fault-injection hook of the admin API. For tests and drills only.
    #[arg(long)]
    pub enable_test_faults: bool,
    /// Raft heartbeat interval. A heartbeat's answer counts only within one
    /// interval: keep it above the slowest round trip to a peer, or an idle
    /// leader's lease lapses and it refuses writes.
    #[arg(long, default_value_t = 60)]
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    #[arg(long, default_value_t = 250)]
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    #[arg(long, default_value_t = 500)]
    pub election_timeout_max_ms: u64,
    /// Take a snapshot (and compact the log) after this many entries.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every_entries: u64,
    /// Entries kept behind the newest snapshot for lagging followers.
    #[arg(long, default_value_t = 2_000)]
    pub keep_entries_after_snapshot: u64,
    /// Client writes in flight beyond which new ones are refused at once with 429.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_inflight_writes: u64,
    /// Raft entries the leader keeps in flight; orders arriving meanwhile are
    /// batched into the next entry (fewer entries: larger batches, less work per order).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_inflight_entries: u64,
    /// Cluster id, named in every Raft frame and in every node certificate
    /// (`node-<id>.<cluster-id>.raft.roomkeeper`). A DNS name.
    #[arg(long, default_value = "local")]
    pub cluster_id: String,
    /// Directory holding `ca.crt` and this node's certificate and key:
    /// `node-<id>.crt` and `node-<id>.key` when present (the operator's
    /// per-region Secret), else `tls.crt` and `tls.key` (the cert-manager
    /// layout). Mutual TLS between nodes: peers must present a certificate of
    /// this cluster's CA naming their node id.
    #[arg(long)]
    pub raft_tls_dir: Option<PathBuf>,
    /// DANGEROUS: node-to-node traffic in plain text with no authentication;
    /// anyone who reaches the Raft port can write orders. Local experiments only.
    #[arg(long)]
    pub insecure_plaintext_raft: bool,
    /// Directory holding `tls.crt`, `tls.key` (this node's server certificate)
    /// and `ca.crt` (the cluster CA; the cert-manager layout): TLS on the
    /// client and admin APIs. The admin API then accepts only a client
    /// certificate of this CA naming `<cluster-id>.operator.roomkeeper`. The
    /// files are reloaded when they change (`--http-tls-reload-ms`).
    #[arg(long)]
    pub http_tls_dir: Option<PathBuf>,
    /// DANGEROUS: client and admin APIs in plain HTTP; tokens and buyer
    /// contacts cross the network readable. Local experiments and benchmarks.
    #[arg(long)]
    pub insecure_plaintext_http: bool,
    /// How often `--http-tls-dir` is checked for a new certificate; a pair
    /// that does not load is refused (logged) and the old one kept.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub http_tls_reload_ms: u64,
    /// Raft listener: open peer connections beyond this are closed at once.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub raft_max_connections: u64,
    /// Raft listener: open connections from one IP address beyond this are closed at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub raft_max_connections_per_address: u64,
    /// Raft listener: time a started frame (and a new connection's first
    /// frame) has to arrive, plus one second per 256 KiB of its length.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub raft_frame_timeout_ms: u64,
    /// Time a client of the client or admin API has to send a request head;
    /// also how long a keep-alive connection may sit idle between requests,
    /// and the time a framed request has to arrive whole.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_ms: u64,
    /// Time a client has to send a request body once its head arrived.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_body_timeout_ms: u64,
    /// Client API requests per second per token (every route); 0 turns the
    /// limit off. Over it: 429 `rate_limited` with Retry-After.
    #[arg(long, default_value_t = 50_000.0)]
    pub rate_limit_token_per_sec: f64,
    /// Requests a token may send at once above its rate.
    #[arg(long, default_value_t = 50_000.0)]
    pub rate_limit_token_burst: f64,
    /// Orders per second per buyer id; 0 turns the limit off.
    #[arg(long, default_value_t = 10.0)]
    pub rate_limit_buyer_per_sec: f64,
    /// Orders a buyer may place at once above its rate.
    #[arg(long, default_value_t = 20.0)]
    pub rate_limit_buyer_burst: f64,
    /// Buyers whose rate is tracked at once (memory bound: idle buyers, then
    /// the least recently seen, are forgotten first).
    #[arg(long, default_value_t = 100_000)]
    pub rate_limit_max_buyers: usize,
    /// Open connections accepted on each of the client and admin listeners.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_max_connections: u64,
    /// Open connections accepted from one IP address on each listener (behind
    /// an ingress every client shares its address: raise this to the total).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_max_connections_per_peer: u64,
}

/// A token from a file: its one line, without surrounding whitespace; an
/// empty file is refused (it would mean "no token", i.e. an open API).
fn read_token_file(flag: &str, path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag}: reading {}", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "{flag}: {} is empty (an empty token would leave the API open)",
        path.display()
    );
    anyhow::ensure!(
        !token.contains(['\n', '\r']),
        "{flag}: {} holds more than one line",
        path.display()
    );
    Ok(token.to_string())
}

/// Fills the tokens given as files in from those files.
fn resolve_token_files(args: &mut NodeArgs) -> anyhow::Result<()> {
    if let Some(p) = &args.client_token_file {
        args.client_token = Some(read_token_file("--client-token-file", p)?);
    }
    if let Some(p) = &args.admin_token_file {
        args.admin_token = Some(read_token_file("--admin-token-file", p)?);
    }
    if let Some(p) = &args.metrics_token_file {
        args.metrics_token = Some(read_token_file("--metrics-token-file", p)?);
    }
    Ok(())
}

pub async fn run(mut args: NodeArgs) -> anyhow::Result<()> {
    resolve_token_files(&mut args)?;
    let keyring = ContactKeyring::from_file(&args.contact_key_file).with_context(|| {
        format!(
            "loading contact keys from {}",
            args.contact_key_file.display()
        )
    })?;
    let client_tokens = match &args.client_tokens_file {
        Some(path) => Some(
            TokenTable::from_file(path)
                .with_context(|| format!("loading client tokens from {}", path.display()))?,
        ),
        None => None,
    };
    if let Some(t) = &client_tokens {
        tracing::info!(tokens = t.len(), "client tokens loaded");
    }
    if args.client_token.is_none() && client_tokens.is_none() {
        tracing::warn!("client API has no token: anyone who reaches it can order");
    }
    if args.admin_token.is_none() {
        tracing::warn!("admin API has no token: anyone who reaches it can change membership");
    }
    if args.enable_test_faults {
        tracing::warn!("fault injection hooks are ON: never run a production node like this");
    }
    let (id, zone) = match (&args.identity_file, &args.pod_name, args.id) {
        (Some(file), Some(pod), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading identity file {}", file.display()))?;
            let identity = lookup_identity(&text, pod).with_context(|| {
                format!("looking up pod {pod} in identity file {}", file.display())
            })?;
            (identity.0, identity.1.unwrap_or(args.zone.clone()))
        }
        (_, _, Some(id)) => (id, args.zone.clone()),
        _ => anyhow::bail!("give --id, or --identity-file with --pod-name"),
    };
    if let Some(file) = &args.joined_ids_file {
        let joined = read_joined_ids(file)?;
        if joined.contains(&id) && !has_pinned_id(&args.data_dir)? {
            return serve_quarantined(&args, id).await;
        }
    }
    let _lock = lock_data_dir(&args.data_dir)?;
    let fresh_data_dir = pin_node_id(&args.data_dir, id)?;
    let http = http_security(&args);
    let mut cfg = NodeConfig::with_defaults(id, args.data_dir.clone(), keyring);
    cfg.contact_key_file = Some(args.contact_key_file.clone());
    cfg.contact_key_reload = std::time::Duration::from_millis(args.contact_key_reload_ms);
    cfg.raft_addr = args.raft_addr;
    cfg.api_addr = args.api_addr;
    cfg.admin_addr = args.admin_addr;
    cfg.metrics_addr = args.metrics_addr;
    cfg.framed_api_addr = args.framed_api_addr;
    cfg.region = args.region;
    cfg.zone = zone;
    cfg.client_token = args.client_token;
    cfg.client_tokens = client_tokens;
    cfg.rate_limits = RateLimits {
        per_token: rate(
            "token",
            args.rate_limit_token_per_sec,
            args.rate_limit_token_burst,
        )?,
        per_buyer: rate(
            "buyer",
            args.rate_limit_buyer_per_sec,
            args.rate_limit_buyer_burst,
        )?,
        max_tracked_buyers: args.rate_limit_max_buyers,
    };
    if let (Some(m), Some(a)) = (&args.metrics_token, &args.admin_token) {
        anyhow::ensure!(
            m != a,
            "--metrics-token must differ from the admin token: the scraper would hold the admin credential"
        );
    }
    cfg.admin_token = args.admin_token;
    cfg.metrics_token = args.metrics_token;
    cfg.test_faults_enabled = args.enable_test_faults;
    cfg.fresh_data_dir = fresh_data_dir;
    cfg.heartbeat_ms = args.heartbeat_ms;
    cfg.election_timeout_min_ms = args.election_timeout_min_ms;
    cfg.election_timeout_max_ms = args.election_timeout_max_ms;
    cfg.snapshot_every_entries = args.snapshot_every_entries;
    cfg.keep_entries_after_snapshot = args.keep_entries_after_snapshot;
    cfg.max_inflight_writes = usize::try_from(args.max_inflight_writes).unwrap_or(usize::MAX);
    cfg.max_inflight_entries = usize::try_from(args.max_inflight_entries).unwrap_or(1024);
    cfg.http_security = http;
    cfg.cluster_id = args.cluster_id;
    cfg.raft_security = match args.raft_tls_dir {
        Some(dir) => RaftSecurity::Tls(dir),
        None => RaftSecurity::InsecurePlaintext,
    };
    cfg.raft_limits = ListenerLimits {
        max_connections: usize::try_from(args.raft_max_connections).unwrap_or(usize::MAX),
        max_connections_per_address: usize::try_from(args.raft_max_connections_per_address)
            .unwrap_or(usize::MAX),
        frame: FrameDeadline {
            base: std::time::Duration::from_millis(args.raft_frame_timeout_ms),
            ..FrameDeadline::default()
        },
    };
    // A framed request has no head and body: it must arrive whole within
    // the head timeout, and a client must take its answers as fast.
    cfg.framed_limits.frame_timeout = Duration::from_millis(args.http_header_timeout_ms);
    cfg.http_limits = HttpLimits {
        header_read_timeout: Duration::from_millis(args.http_header_timeout_ms),
        body_timeout: Duration::from_millis(args.http_body_timeout_ms),
        max_connections: usize::try_from(args.http_max_connections).unwrap_or(usize::MAX),
        max_connections_per_peer: usize::try_from(args.http_max_connections_per_peer)
            .unwrap_or(usize::MAX),
    };
    let node = NodeHandle::start(cfg).await.with_context(|| {
        format!(
            "starting node {} with data in {}",
            id,
            args.data_dir.display()
        )
    })?;
    wait_for_shutdown_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// TLS on the client and admin APIs, or the explicit plaintext.
fn http_security(args: &NodeArgs) -> HttpSecurity {
    match &args.http_tls_dir {
        Some(dir) => HttpSecurity::Tls {
            dir: dir.clone(),
            reload_every: Duration::from_millis(args.http_tls_reload_ms),
        },
        None => HttpSecurity::InsecurePlaintext,
    }
}

/// A rate limit from its flags: finite, not negative, a burst of at least
/// one request when on.
fn rate(what: &str, per_sec: f64, burst: f64) -> anyhow::Result<Rate> {
    anyhow::ensure!(
        per_sec.is_finite() && per_sec >= 0.0 && burst.is_finite(),
        "--rate-limit-{what}-per-sec and -burst must be finite and not negative"
    );
    anyhow::ensure!(
        per_sec == 0.0 || burst >= 1.0,
        "--rate-limit-{what}-burst must be at least 1 when the limit is on"
    );
    Ok(Rate { per_sec, burst })
}

/// Finds `pod` in an identity file: lines `<pod-name> <node-id> [zone]`, `#`
/// comments and blank lines ignored.
pub fn lookup_identity(text: &str, pod: &str) -> anyhow::Result<(u64, Option<String>)> {
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        if parts.next() != Some(pod) {
            continue;
        }
        let id = parts
            .next()
            .ok_or_else(|| anyhow::anyhow!("line {}: no node id after the pod name", n + 1))?;
        let id: u64 = id
            .parse()
            .with_context(|| format!("line {}: node id {id:?} is not a number", n + 1))?;
        return Ok((id, parts.next().map(str::to_string)));
    }
    anyhow::bail!(
        "no node id assigned to this pod yet (the operator writes it before the pod may start)"
    )
}

/// The ids listed in a joined-ids file: numbers separated by white space,
/// `#` comments. A file that does not exist lists none (the operator writes
/// it once the first member joined).
pub fn read_joined_ids(file: &std::path::Path) -> anyhow::Result<BTreeSet<u64>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("reading joined-ids file {}", file.display()))
        }
    };
    parse_joined_ids(&text).with_context(|| format!("in joined-ids file {}", file.display()))
}

/// Whether the data directory already belongs to a node id (see [`pin_node_id`]).
pub fn has_pinned_id(data_dir: &std::path::Path) -> anyhow::Result<bool> {
    let file = data_dir.join("node-id");
    match std::fs::metadata(&file) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("checking {}", file.display())),
    }
}

/// A member whose volume was wiped forgot its log and its vote: speaking Raft
/// under its old id could elect two leaders in one term. It touches nothing on
/// disk, binds only the admin address and says why until it is stopped.
async fn serve_quarantined(args: &NodeArgs, id: u64) -> anyhow::Result<()> {
    let message = format!(
        "node {id} has been a Raft member but its data directory {} is empty: the \
         volume was wiped or replaced. It will not rejoin as node {id} (it lost its \
         log and its vote); the operator removes node {id} from the group and restarts \
         this pod under a new id (see runbooks/wiped-volume.md)",
        args.data_dir.display()
    );
    tracing::error!(node_id = id, data_dir = %args.data_dir.display(), "{message}");
    let listener = tokio::net::TcpListener::bind(&args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on admin address {}", args.admin_addr))?;
    let tls = match http_security(args) {
        HttpSecurity::Tls { dir, reload_every } => {
            let tls = HttpTls::load(&dir, &args.cluster_id)
                .with_context(|| format!("loading {}", dir.display()))?;
            Some((tls, reload_every))
        }
        HttpSecurity::InsecurePlaintext => None,
    };
    let server = roomkeeper_order_store::quarantine::serve_wiped(
        listener,
        id,
        message,
        args.admin_token.clone(),
        tls,
    );
    tokio::select! {
        r = server => r.context("quarantine admin server stopped")?,
        () = wait_for_shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}

/// Takes an exclusive lock on the data directory for the life of the process:
/// two processes on one Raft log (a force-deleted pod whose replacement
/// started on the same volume, a mistyped `--data-dir`) would corrupt it.
pub fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "data directory {} is in use by another node process; refusing to start \
             (two processes on one Raft log would corrupt it)",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// A data directory belongs to one node id forever: the first start records it,
/// later starts with another id refuse, so a reused volume can never make one
/// Raft member impersonate another.
/// Returns whether the directory was new (no id recorded yet).
pub fn pin_node_id(data_dir: &std::path::Path, id: u64) -> anyhow::Result<bool> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let file = data_dir.join("node-id");
    match std::fs::read_to_string(&file) {
        Ok(existing) => {
            let existing = existing.trim();
            if existing != id.to_string() {
                anyhow::bail!(
                    "data directory {} belongs to node {existing}, not node {id}; \
                     refusing to start (see runbooks/node-id-mismatch.md)",
                    data_dir.display()
                );
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = data_dir.join("node-id.tmp");
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::io::Write::write_all(&mut f, format!("{id}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &file)
                .with_context(|| format!("renaming to {}", file.display()))?;
            std::fs::File::open(data_dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("syncing {}", data_dir.display()))?;
            Ok(true)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    #[test]
    fn the_raft_transport_is_tls_or_explicitly_plaintext_never_by_default() {
        use clap::Parser;
        let base = [
            "x",
            "--id",
            "1",
            "--data-dir",
            "d",
            "--contact-key-file",
            "k",
            "--insecure-plaintext-http",
        ];
        let err = Cli::try_parse_from(base).expect_err("neither flag");
        let msg = err.to_string();
        assert!(
            msg.contains("--raft-tls-dir") && msg.contains("--insecure-plaintext-raft"),
            "{msg}"
        );
        let tls = Cli::try_parse_from(base.iter().chain(&["--raft-tls-dir", "t"])).expect("tls");
        assert_eq!(tls.node.raft_tls_dir, Some(PathBuf::from("t")));
        let plain =
            Cli::try_parse_from(base.iter().chain(&["--insecure-plaintext-raft"])).expect("plain");
        assert!(plain.node.insecure_plaintext_raft);
        Cli::try_parse_from(base.iter().chain(&[
            "--raft-tls-dir",
            "t",
            "--insecure-plaintext-raft",
        ]))
        .expect_err("both");
    }

    #[test]
    fn tokens_from_files_replace_the_flags_and_an_empty_or_missing_file_is_refused() {
        use clap::Parser;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p.display().to_string()
        };
        let (client, admin) = (file("client", "c-secret\n"), file("admin", "a-secret"));
        let metrics = file("metrics", "  m-secret  \n");
        let base = [
            "x",
            "--id",
            "1",
            "--data-dir",
            "d",
            "--contact-key-file",
            "k",
            "--insecure-plaintext-raft",
            "--insecure-plaintext-http",
        ];
        let mut args = Cli::try_parse_from(base.iter().chain(&[
            "--client-token-file",
            client.as_str(),
            "--admin-token-file",
            admin.as_str(),
            "--metrics-token-file",
            metrics.as_str(),
        ]))
        .expect("files")
        .node;
        resolve_token_files(&mut args).expect("read");
        assert_eq!(args.client_token.as_deref(), Some("c-secret"));
        assert_eq!(args.admin_token.as_deref(), Some("a-secret"));
        assert_eq!(args.metrics_token.as_deref(), Some("m-secret"));
        // A token and its file at once: which one counts would be a guess.
        Cli::try_parse_from(base.iter().chain(&[
            "--admin-token",
            "x",
            "--admin-token-file",
            admin.as_str(),
        ]))
        .expect_err("both");
        for bad in [
            file("empty", " \n"),
            file("two", "a\nb\n"),
            file("gone", ""),
        ] {
            let _ = std::fs::remove_file(dir.path().join("gone"));
            let mut args =
                Cli::try_parse_from(base.iter().chain(&["--admin-token-file", bad.as_str()]))
                    .expect("parse")
                    .node;
            let err = resolve_token_files(&mut args)
                .expect_err("refused")
                .to_string();
            assert!(err.contains("--admin-token-file"), "{err}");
        }
    }

    #[test]
    fn the_http_apis_are_tls_or_explicitly_plaintext_never_by_default() {
        use clap::Parser;
        let base = [
            "x",
            "--id",
            "1",
            "--data-dir",
            "d",
            "--contact-key-file",
            "k",
            "--insecure-plaintext-raft",
        ];
        let msg = Cli::try_parse_from(base)
            .expect_err("neither flag")
            .to_string();
        assert!(
            msg.contains("--http-tls-dir") && msg.contains("--insecure-plaintext-http"),
            "{msg}"
        );
        let tls = Cli::try_parse_from(base.iter().chain(&["--http-tls-dir", "h"])).expect("tls");
        assert!(matches!(
            http_security(&tls.node),
            HttpSecurity::Tls { ref dir, reload_every }
                if dir == &PathBuf::from("h") && reload_every == Duration::from_secs(5)
        ));
        let plain =
            Cli::try_parse_from(base.iter().chain(&["--insecure-plaintext-http"])).expect("plain");
        assert!(matches!(
            http_security(&plain.node),
            HttpSecurity::InsecurePlaintext
        ));
        Cli::try_parse_from(base.iter().chain(&[
            "--http-tls-dir",
            "h",
            "--insecure-plaintext-http",
        ]))
        .expect_err("both");
    }

    #[test]
    fn identity_lines_are_looked_up_by_pod_name() {
        let text = "# written by the operator\nlrc-us-0 4 us-a\nlrc-us-1 7\n";
        assert_eq!(
            lookup_identity(text, "lrc-us-0").unwrap(),
            (4, Some("us-a".into()))
        );
        assert_eq!(lookup_identity(text, "lrc-us-1").unwrap(), (7, None));
        let missing = lookup_identity(text, "lrc-us-2").unwrap_err().to_string();
        assert!(missing.contains("no node id assigned"), "{missing}");
        assert!(lookup_identity("p x\n", "p").is_err());
    }

    #[test]
    fn a_missing_joined_ids_file_lists_no_ids() {
        let missing = std::env::temp_dir().join("rk-no-such-joined-ids-file");
        assert!(read_joined_ids(&missing).unwrap().is_empty());
    }

    #[test]
    fn a_data_directory_serves_one_process_at_a_time() {
        let dir = std::env::temp_dir().join(format!("rk-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let held = lock_data_dir(&dir).unwrap();
        let err = lock_data_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("in use by another node process"), "{err}");
        drop(held);
        assert!(lock_data_dir(&dir).is_ok(), "the lock goes with its holder");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_data_directory_keeps_its_node_id() {
        let dir = std::env::temp_dir().join(format!("rk-pin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!has_pinned_id(&dir).unwrap());
        assert!(pin_node_id(&dir, 3).unwrap(), "a new directory is fresh");
        assert!(has_pinned_id(&dir).unwrap());
        assert!(!pin_node_id(&dir, 3).unwrap(), "a known directory is not");
        let err = pin_node_id(&dir, 9).unwrap_err().to_string();
        assert!(err.contains("belongs to node 3"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
