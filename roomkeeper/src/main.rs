//! `roomkeeper`: one binary for every role (node, bench, demo, …), as one
//! container image serves them all.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod bench;
mod demo;
mod node_cmd;

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
enum Cmd {
    /// Run one order-store replica (a Raft node of a shard).
    Node(node_cmd::NodeArgs),
    /// Run a local multi-region cluster with a flash-sale load and live status.
    Demo(demo::DemoArgs),
    /// Flash-sale load bench: roomkeeper against etcd and Redis in the same run.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("ROOMKEEPER_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Cmd::Node(args) => node_cmd::run(args).await,
            Cmd::Demo(args) => demo::run(args).await,
            Cmd::Bench(args) => bench::run(args).await,
        }
    })
}
