//! `roomkeeper operator`: run the Kubernetes operator, or render its CRDs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use roomkeeper_operator::runtime::{self, OperatorConfig};

#[derive(Debug, Args)]
pub struct OperatorArgs {
    #[command(subcommand)]
    command: OperatorCmd,
}

#[derive(Debug, Subcommand)]
enum OperatorCmd {
    /// Run the operator (uses KUBECONFIG, or the in-cluster service account).
    Run(RunArgs),
    /// Render the CustomResourceDefinitions into a folder (one YAML file per CRD).
    Crds(CrdArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "roomkeeper-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "roomkeeper-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (defaults to the pod name, else host and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Lease duration: a standby takes over this long after the holder stops renewing.
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// This replica's pod IP (the chart sets it): regions in other
    /// Kubernetes clusters admit the node admin port from it.
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<std::net::IpAddr>,
}

#[derive(Debug, Args)]
struct CrdArgs {
    /// Folder to write into.
    #[arg(long, default_value = "crds")]
    out: PathBuf,
    /// Do not write: fail when the folder differs from what the types render.
    #[arg(long)]
    check: bool,
}

pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    match args.command {
        OperatorCmd::Run(a) => {
            let identity = a.identity.unwrap_or_else(|| {
                let host =
                    std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "operator".into());
                format!("{}-{}", host.trim(), std::process::id())
            });
            let lease_duration = Duration::from_secs(a.lease_duration_secs.max(3));
            let cfg = OperatorConfig {
                lease_namespace: a.lease_namespace,
                lease_name: a.lease_name,
                identity,
                lease_duration,
                renew_every: lease_duration / 3,
                http_addr: a.http_addr,
                pod_ip: a.pod_ip,
            };
            runtime::run(cfg, crate::node_cmd::wait_for_shutdown_signal())
                .await
                .context("operator stopped")
        }
        OperatorCmd::Crds(a) => write_crds(&a.out, a.check),
    }
}

fn write_crds(dir: &Path, check: bool) -> anyhow::Result<()> {
    let rendered = roomkeeper_operator::crd::render_crds().context("rendering CRDs")?;
    if check {
        let mut stale = Vec::new();
        for (file, text) in &rendered {
            let path = dir.join(file);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path.display().to_string());
            }
        }
        anyhow::ensure!(
            stale.is_empty(),
            "CRDs out of date: {}; run `roomkeeper operator crds --out {}`",
            stale.join(", "),
            dir.display()
        );
        println!(
            "{} CRDs in {} match the types",
            rendered.len(),
            dir.display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, text) in &rendered {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
