//! `roomkeeper`: one binary for every role (node, bench, demo, …), as one
//! container image serves them all.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc: measured cheaper per order than glibc malloc (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod certs_cmd;
mod contact_keys_cmd;
mod demo;
mod drill;
mod kubectl;
mod node_cmd;
mod operator_cmd;

#[derive(Debug, Parser)]
#[command(
    name = "roomkeeper",
    version,
    about = "Keeps live-commerce rooms selling through failures"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// Run one order-store replica (a Raft node of a shard).
    Node(node_cmd::NodeArgs),
    /// Make a cluster CA and node certificates for the Raft transport's mutual TLS.
    RaftCerts(certs_cmd::CertsArgs),
    /// Security tests: send one hand-made request to a Raft port, as a hostile peer would.
    #[command(hide = true)]
    RaftProbe(certs_cmd::ProbeArgs),
    /// Print the secret column of a client token file (`sha256:<hex>`) for a
    /// token read from standard input (one line; the newline is not hashed).
    ClientTokenHash,
    /// Contact key rotation: re-seal stored contacts under the newest key,
    /// check that none uses a retired key.
    ContactKeys(contact_keys_cmd::ContactKeysArgs),
    /// Run a local multi-region cluster with a flash-sale load and live status.
    Demo(demo::DemoArgs),
    /// Chaos drills on a local cluster: run one, run the library, render reports.
    Drill(drill::DrillArgs),
    /// The Kubernetes operator: run it, or render its CustomResourceDefinitions.
    Operator(operator_cmd::OperatorArgs),
    /// The kubectl plugin's verbs (`kubectl roomkeeper …` when installed as `kubectl-roomkeeper`).
    Kubectl(kubectl::KubectlArgs),
    /// Flash-sale load bench: roomkeeper against etcd and Redis in the same run.
    #[cfg(feature = "bench")]
    Bench(roomkeeper_bench::BenchArgs),
    /// Flash-sale load bench (not in this build: `--features bench`, see scripts/bench.sh).
    #[cfg(not(feature = "bench"))]
    Bench(NoBench),
}

/// `roomkeeper bench` in a binary built without the benchmark.
#[cfg(not(feature = "bench"))]
#[derive(clap::Args, Debug)]
struct NoBench {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

/// The environment a node runs with, set by `roomkeeper node` re-executing
/// itself unless each variable is already set (set it to override):
///
/// - `MALLOC_ARENA_MAX=2`: glibc gives every thread that allocates its own
///   heap arena (up to eight per core) and keeps freed memory in each; what
///   still allocates through glibc stays in two.
/// - `MIMALLOC_ALLOW_THP=0`: no transparent huge pages for the process
///   (mimalloc asks for them, and the kernel then backs each touched 2 MiB
///   whole). Measured in pairs: 27 MiB less resident at idle, ~35 bytes less
///   per stored order, p99 lower in 3 of 3 pairs, CPU per order unchanged
///   (docs/decisions.md D56).
#[cfg(unix)]
fn set_node_environment() {
    use std::os::unix::process::CommandExt;
    const NODE_ENV: [(&str, &str); 2] = [("MALLOC_ARENA_MAX", "2"), ("MIMALLOC_ALLOW_THP", "0")];
    let mut args = std::env::args_os();
    let is_node = args.nth(1).is_some_and(|a| a == "node");
    let missing: Vec<(&str, &str)> = NODE_ENV
        .into_iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .collect();
    if !is_node || missing.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(missing.iter().copied())
        .exec();
    eprintln!("roomkeeper: could not re-execute with {missing:?} ({err}); continuing");
}

/// The plugin's verbs, on a small runtime, exiting with the plugin's codes
/// (`kubectl::EXIT_CODES`).
fn run_plugin(args: kubectl::KubectlArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(kubectl::main(args));
    std::process::exit(code)
}

fn main() -> anyhow::Result<()> {
    #[cfg(unix)]
    set_node_environment();
    // Colours only on a terminal: node logs go to files. openraft's stream
    // append logs an ERROR when its core stops, which is every normal
    // shutdown; a real fatal error is reported by the core itself.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("ROOMKEEPER_LOG").unwrap_or_else(|_| {
                // The plugin's output is its answer: only warnings besides.
                if kubectl::invoked_as_plugin()
                    || std::env::args().nth(1).is_some_and(|a| a == "kubectl")
                {
                    // kube's client logs every failed request at ERROR;
                    // the plugin reports (or records) each failure itself.
                    EnvFilter::new("warn,kube_client::client::builder=off")
                } else {
                    EnvFilter::new("info,openraft=warn,openraft::raft::stream_append=off")
                }
            }),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if kubectl::invoked_as_plugin() {
        let cli = kubectl::PluginCli::parse();
        return run_plugin(cli.args);
    }
    let cli = Cli::parse();
    if let Cmd::Kubectl(args) = cli.command {
        return run_plugin(args);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Cmd::Node(args) => node_cmd::run(args).await,
            Cmd::RaftCerts(args) => certs_cmd::run(args),
            Cmd::RaftProbe(args) => certs_cmd::probe(args).await,
            Cmd::ClientTokenHash => {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                let secret = line.trim_end_matches(['\n', '\r']);
                anyhow::ensure!(!secret.is_empty(), "no token on standard input");
                println!(
                    "{}",
                    roomkeeper_order_store::auth::token_file_secret(secret.as_bytes())
                );
                Ok(())
            }
            Cmd::ContactKeys(args) => contact_keys_cmd::run(args).await,
            Cmd::Demo(args) => demo::run(args).await,
            Cmd::Drill(args) => drill::run(args).await,
            #[cfg(feature = "bench")]
            Cmd::Bench(args) => Ok(roomkeeper_bench::run(args).await?),
            #[cfg(not(feature = "bench"))]
            Cmd::Bench(_) => anyhow::bail!(
                "this roomkeeper was built without the benchmark: run scripts/bench.sh, or build with `cargo build --release -p roomkeeper --features bench` (its etcd client needs protoc: apt-get install protobuf-compiler libprotobuf-dev)"
            ),
            Cmd::Operator(args) => operator_cmd::run(args).await,
            Cmd::Kubectl(_) => unreachable!("run before the runtime of the other commands"),
        }
    })
}
