//! `roomkeeper contact-keys`: the admin side of contact key rotation
//! (order-store/src/contact.rs has the key file format): re-seal every stored
//! contact under the newest key, and check that no record uses a retired key.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use roomkeeper_api::admin::{ContactKeysReport, ResealReply};
use roomkeeper_control::http::JsonClient;
use serde_json::json;

/// Flags of `roomkeeper contact-keys`.
#[derive(Debug, Args)]
pub struct ContactKeysArgs {
    #[command(subcommand)]
    pub command: ContactKeysCmd,
}

#[derive(Debug, Subcommand)]
pub enum ContactKeysCmd {
    /// Re-seal every stored contact not under the newest key, through Raft
    /// (asked of the leader among `--admin`). Safe to run again.
    Reseal {
        #[command(flatten)]
        target: Target,
        /// Contacts per Raft entry (1 to 256).
        #[arg(long, default_value_t = 256)]
        batch: u32,
    },
    /// Count each node's stored contacts per key id; exit non-zero if any is
    /// under a key marked `retired` or a key the node does not hold.
    Check {
        #[command(flatten)]
        target: Target,
    },
}

/// The nodes to ask.
#[derive(Debug, Args)]
pub struct Target {
    /// A node's admin address (`host:port`); repeat for every node.
    #[arg(long = "admin", required = true)]
    pub admins: Vec<String>,
    /// The admin API's bearer token.
    #[arg(long, env = "ROOMKEEPER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// How long one request may take (a re-seal of many contacts takes a while).
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Speak TLS to nodes run with `--http-tls-dir`: a directory with the
    /// cluster's `ca.crt` and the operator's `tls.crt`/`tls.key` (`roomkeeper
    /// raft-certs operator`), the only identity their admin API accepts.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
}

impl Target {
    fn client(&self) -> anyhow::Result<JsonClient> {
        match &self.tls_dir {
            None => Ok(JsonClient::new()),
            Some(dir) => JsonClient::with_tls(dir, true)
                .with_context(|| format!("--tls-dir {}", dir.display())),
        }
    }
}

pub async fn run(args: ContactKeysArgs) -> anyhow::Result<()> {
    match args.command {
        ContactKeysCmd::Reseal { target, batch } => {
            let http = target.client()?;
            let timeout = Duration::from_secs(target.timeout_secs);
            let body = json!({ "batch": batch });
            let mut refusals = Vec::new();
            for addr in &target.admins {
                let r = http
                    .post(
                        addr,
                        "/admin/contact-keys/reseal",
                        &body,
                        target.admin_token.as_deref(),
                        timeout,
                    )
                    .await
                    .with_context(|| format!("re-seal on {addr}"))?;
                if r.status == 200 {
                    let reply: ResealReply = serde_json::from_value(r.body)
                        .with_context(|| format!("reading the re-seal answer of {addr}"))?;
                    println!("{}", serde_json::to_string_pretty(&reply)?);
                    return Ok(());
                }
                if r.code() != "not_leader" {
                    anyhow::bail!("re-seal on {addr}: HTTP {}: {}", r.status, r.body);
                }
                refusals.push(format!("{addr}: {}", r.body));
            }
            anyhow::bail!("no node among --admin is the leader: {refusals:?}")
        }
        ContactKeysCmd::Check { target } => {
            let http = target.client()?;
            let timeout = Duration::from_secs(target.timeout_secs);
            let mut failed = Vec::new();
            for addr in &target.admins {
                let r = http
                    .get(
                        addr,
                        "/admin/contact-keys",
                        target.admin_token.as_deref(),
                        timeout,
                    )
                    .await
                    .with_context(|| format!("contact key check on {addr}"))?;
                anyhow::ensure!(
                    r.status == 200,
                    "contact key check on {addr}: HTTP {}: {}",
                    r.status,
                    r.body
                );
                let report: ContactKeysReport = serde_json::from_value(r.body)
                    .with_context(|| format!("reading the contact key report of {addr}"))?;
                println!("{}", serde_json::to_string(&report)?);
                if !report.ok {
                    failed.push(format!(
                        "node {} ({addr}): {} contacts under retired keys, {} under keys it does not hold",
                        report.node_id, report.under_retired_keys, report.under_unknown_keys
                    ));
                }
            }
            anyhow::ensure!(failed.is_empty(), "{}", failed.join("; "));
            Ok(())
        }
    }
}
