//! `roomkeeper raft-certs`: a CA per cluster, node certificates for the Raft
//! transport's mutual TLS, server certificates for the client and admin APIs
//! and the operator's client certificate, for local clusters and tests.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use roomkeeper_api::raft_identity::ClusterCa;

/// Flags of `roomkeeper raft-certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCmd,
}

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Make a new CA for a cluster: writes `ca.crt` and `ca.key` into `--out`.
    Ca {
        #[arg(long)]
        cluster_id: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue node `--id`'s certificate from the CA in `--ca-dir`: writes
    /// `ca.crt`, `tls.crt`, `tls.key` into `--out` (give it to `--raft-tls-dir`).
    Node {
        #[arg(long)]
        cluster_id: String,
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        id: u64,
        #[arg(long)]
        out: PathBuf,
        /// Name a node of this cluster instead (security tests: a certificate
        /// of the right CA for the wrong cluster).
        #[arg(long, hide = true)]
        name_cluster: Option<String>,
    },
    /// Issue a server certificate for a node's client and admin APIs naming
    /// every `--name` (DNS names or IP addresses, as clients dial the node):
    /// writes `ca.crt`, `tls.crt`, `tls.key` into `--out` (give it to
    /// `--http-tls-dir`).
    Http {
        #[arg(long)]
        cluster_id: String,
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue the operator's client certificate (`<cluster-id>.operator.roomkeeper`),
    /// the only identity a TLS admin API accepts: writes `ca.crt`, `tls.crt`,
    /// `tls.key` into `--out`.
    Operator {
        #[arg(long)]
        cluster_id: String,
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Name the operator of this cluster instead (security tests).
        #[arg(long, hide = true)]
        name_cluster: Option<String>,
    },
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        CertsCmd::Ca { cluster_id, out } => {
            let ca = ClusterCa::generate(&cluster_id)?;
            ca.write(&out)
                .with_context(|| format!("writing the CA into {}", out.display()))?;
        }
        CertsCmd::Node {
            cluster_id,
            ca_dir,
            id,
            out,
            name_cluster,
        } => {
            let ca = ClusterCa::read(&ca_dir, &cluster_id)?;
            let named = name_cluster.unwrap_or(cluster_id);
            ca.write_node_dir_named(&named, id, &out).with_context(|| {
                format!("writing node {id}'s certificate into {}", out.display())
            })?;
        }
        CertsCmd::Http {
            cluster_id,
            ca_dir,
            names,
            out,
        } => {
            let ca = ClusterCa::read(&ca_dir, &cluster_id)?;
            let cert = ca.server_cert(&names)?;
            ca.write_dir(&cert, &out)
                .with_context(|| format!("writing the HTTP certificate into {}", out.display()))?;
        }
        CertsCmd::Operator {
            cluster_id,
            ca_dir,
            out,
            name_cluster,
        } => {
            let ca = ClusterCa::read(&ca_dir, &cluster_id)?;
            let cert = ca.operator_cert_named(name_cluster.as_deref().unwrap_or(&cluster_id))?;
            ca.write_dir(&cert, &out).with_context(|| {
                format!("writing the operator certificate into {}", out.display())
            })?;
        }
    }
    Ok(())
}

/// Flags of `roomkeeper raft-probe` (security tests: a hostile peer).
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The Raft address to send to.
    #[arg(long)]
    pub addr: String,
    /// Connect with TLS presenting the certificate in this directory.
    #[arg(long, conflicts_with = "tls_no_cert")]
    pub tls_dir: Option<PathBuf>,
    /// Connect with TLS and no client certificate (else plain TCP).
    #[arg(long)]
    pub tls_no_cert: bool,
    /// Cluster id the frame names.
    #[arg(long)]
    pub cluster_id: String,
    /// Shard (Raft group) the frame names.
    #[arg(long, default_value_t = 0)]
    pub shard: u32,
    /// Sender the frame claims.
    #[arg(long)]
    pub from: u64,
    /// Node the frame is for.
    #[arg(long)]
    pub to: u64,
    #[command(subcommand)]
    pub request: ProbeCmd,
}

#[derive(Debug, Subcommand)]
pub enum ProbeCmd {
    /// A forwarded order carrying `--contact` unsealed (or sealed with
    /// `--seal-with`), on behalf of the token `--token-name`.
    ForwardOrder {
        #[arg(long)]
        room: String,
        #[arg(long)]
        sku: String,
        #[arg(long)]
        buyer: String,
        #[arg(long)]
        contact: String,
        /// Seal the contact with this contact key file, as a node would.
        #[arg(long)]
        seal_with: Option<std::path::PathBuf>,
        /// The client token the order claims to come from.
        #[arg(long, default_value = "client-token")]
        token_name: String,
        /// The rooms the forwarded scope claims (token file syntax).
        #[arg(long, default_value = "*")]
        token_rooms: String,
        /// The verbs the forwarded scope claims (token file syntax).
        #[arg(long, default_value = "*")]
        token_verbs: String,
    },
    /// A linearizable read index.
    ReadIndex,
    /// A vote request.
    Vote {
        #[arg(long)]
        candidate: u64,
        #[arg(long)]
        term: u64,
    },
    /// An empty append (heartbeat) claiming leadership.
    Append {
        #[arg(long)]
        leader: u64,
        #[arg(long)]
        term: u64,
    },
}

/// Prints the answer on stdout and exits 0, or prints why none came and exits 1.
pub async fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    use roomkeeper_order_store::probe::{self, ProbeHeader, ProbeRequest, ProbeTransport};
    let transport = match (args.tls_dir, args.tls_no_cert) {
        (Some(dir), _) => ProbeTransport::TlsWithCert(dir),
        (None, true) => ProbeTransport::TlsNoCert,
        (None, false) => ProbeTransport::Plain,
    };
    let request = match args.request {
        ProbeCmd::ForwardOrder {
            room,
            sku,
            buyer,
            contact,
            seal_with,
            token_name,
            token_rooms,
            token_verbs,
        } => ProbeRequest::ForwardOrder {
            room,
            sku,
            buyer,
            contact,
            seal_with,
            principal: roomkeeper_order_store::auth::Principal {
                name: token_name,
                scope: roomkeeper_order_store::auth::Scope::parse(&token_rooms, &token_verbs)
                    .map_err(anyhow::Error::msg)?,
            },
        },
        ProbeCmd::ReadIndex => ProbeRequest::ReadIndex,
        ProbeCmd::Vote { candidate, term } => ProbeRequest::Vote { candidate, term },
        ProbeCmd::Append { leader, term } => ProbeRequest::Append { leader, term },
    };
    let header = ProbeHeader {
        cluster: args.cluster_id,
        shard: args.shard,
        from: args.from,
        to: args.to,
    };
    match probe::probe(&args.addr, transport, header, request).await {
        Ok(answer) => {
            println!("{answer}");
            Ok(())
        }
        Err(why) => anyhow::bail!("no answer: {why}"),
    }
}
