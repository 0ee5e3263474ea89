//! `roomkeeper node`: runs one order-store replica until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use roomkeeper_order_store::contact::ContactKeyring;
use roomkeeper_order_store::{NodeConfig, NodeHandle};

/// Flags of `roomkeeper node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Raft node id: unique in the shard and never reused.
    #[arg(long)]
    pub id: u64,
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
    /// Region (failure domain) this node runs in.
    #[arg(long, default_value = "local")]
    pub region: String,
    /// Zone within the region.
    #[arg(long, default_value = "local-a")]
    pub zone: String,
    /// Key file that seals buyer contacts (`<id> <64 hex chars>` per line).
    #[arg(long)]
    pub contact_key_file: PathBuf,
    /// Bearer token required by the client API (unset: open, with a warning).
    #[arg(long, env = "ROOMKEEPER_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,
    /// Bearer token required by the admin API (unset: open, with a warning).
    #[arg(long, env = "ROOMKEEPER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Turns on the fault-injection hook of the admin API. For tests and drills only.
    #[arg(long)]
    pub enable_test_faults: bool,
    /// Raft heartbeat interval.
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
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let keyring = ContactKeyring::from_file(&args.contact_key_file).with_context(|| {
        format!(
            "loading contact keys from {}",
            args.contact_key_file.display()
        )
    })?;
    if args.client_token.is_none() {
        tracing::warn!("client API has no token: anyone who reaches it can order");
    }
    if args.admin_token.is_none() {
        tracing::warn!("admin API has no token: anyone who reaches it can change membership");
    }
    if args.enable_test_faults {
        tracing::warn!("fault injection hooks are ON: never run a production node like this");
    }
    let mut cfg = NodeConfig::with_defaults(args.id, args.data_dir.clone(), keyring);
    cfg.raft_addr = args.raft_addr;
    cfg.api_addr = args.api_addr;
    cfg.admin_addr = args.admin_addr;
    cfg.region = args.region;
    cfg.zone = args.zone;
    cfg.client_token = args.client_token;
    cfg.admin_token = args.admin_token;
    cfg.test_faults_enabled = args.enable_test_faults;
    cfg.heartbeat_ms = args.heartbeat_ms;
    cfg.election_timeout_min_ms = args.election_timeout_min_ms;
    cfg.election_timeout_max_ms = args.election_timeout_max_ms;
    cfg.snapshot_every_entries = args.snapshot_every_entries;
    cfg.keep_entries_after_snapshot = args.keep_entries_after_snapshot;
    cfg.max_inflight_writes = usize::try_from(args.max_inflight_writes).unwrap_or(usize::MAX);
    let node = NodeHandle::start(cfg).await.with_context(|| {
        format!(
            "starting node {} with data in {}",
            args.id,
            args.data_dir.display()
        )
    })?;
    wait_for_shutdown_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
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
