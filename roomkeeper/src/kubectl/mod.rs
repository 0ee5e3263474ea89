//! `kubectl roomkeeper`: the kubectl plugin, part of the single binary.
//!
//! Invoked as `kubectl-roomkeeper` (argv[0]; install a symlink or a copy of
//! `roomkeeper` under that name on PATH) it parses the plugin's verbs; the
//! same verbs are `roomkeeper kubectl <verb>` without the symlink. It drives
//! the operator's objects through the API server with the user's kubeconfig:
//! `LiveRoomCluster` (status, pause/resume), `FailoverApproval`
//! (approve/deny), `Switchover`/`Failover`, `ChaosDrill`; `simulate` runs the
//! shared control loop offline. Exit codes: [`EXIT_CODES`].

mod act;
mod explain;
mod gameday;
mod report;
mod simulate;
mod status;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use roomkeeper_operator::crd::LiveRoomCluster;

/// The exit codes, as `--help` prints them.
pub const EXIT_CODES: &str = "Exit codes:
  0  done (a drill whose verdict is FAIL is still 0: read its verdict)
  1  error (API server unreachable, object not found, an action failed)
  2  usage (bad arguments; a destructive verb without --yes when stdin is not a terminal)
  3  refused by a guard of the playbook or by the API server's policy (RBAC 403, admission)
  4  timed out waiting for the outcome (the request stays; check it later)
  5  cancelled at the confirmation prompt";

/// Why the plugin stopped, mapped to its exit code.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    Usage(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl PluginError {
    pub fn exit_code(&self) -> i32 {
        match self {
            PluginError::Other(_) => 1,
            PluginError::Kube { source, .. } => match source {
                // 403: RBAC or an admission policy; 422: a CRD rule (CEL).
                kube::Error::Api(s) if s.code == 403 || s.code == 422 => 3,
                _ => 1,
            },
            PluginError::Usage(_) => 2,
            PluginError::Refused(_) => 3,
            PluginError::Timeout(_) => 4,
            PluginError::Cancelled => 5,
        }
    }
}

/// Adds what was being done to a kube error.
pub trait KubeContext<T> {
    fn ctx(self, what: impl Into<String>) -> Result<T, PluginError>;
}

impl<T> KubeContext<T> for Result<T, kube::Error> {
    fn ctx(self, what: impl Into<String>) -> Result<T, PluginError> {
        self.map_err(|source| PluginError::Kube {
            context: what.into(),
            source,
        })
    }
}

/// `kubectl-roomkeeper` as its own program (argv[0]).
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-roomkeeper",
    bin_name = "kubectl roomkeeper",
    version,
    about = "kubectl roomkeeper: is the live room safe, what is the operator doing, and why",
    after_help = EXIT_CODES
)]
pub struct PluginCli {
    #[command(flatten)]
    pub args: KubectlArgs,
}

/// Flags and verbs of the plugin (also `roomkeeper kubectl …`).
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct KubectlArgs {
    #[command(flatten)]
    pub global: Globals,
    #[command(subcommand)]
    pub verb: Verb,
}

/// Flags every verb takes.
#[derive(Debug, Args, Clone)]
pub struct Globals {
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Answer yes to the confirmation of destructive verbs (required when stdin is not a terminal).
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,
    /// How long to wait for the outcome of a request, in seconds.
    #[arg(long, global = true, default_value_t = 120)]
    pub timeout: u64,
}

/// Output format of verbs that print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// One screen for people.
    #[default]
    Text,
    /// The text screen with more columns.
    Wide,
    Json,
    Yaml,
}

/// `-o json|yaml|wide`.
#[derive(Debug, Args, Clone, Copy)]
pub struct OutputFlag {
    /// Output format: text (default), wide, json or yaml.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Is it safe, what is it doing, why: regions, nodes, tier, approvals, orders at risk, decisions.
    Status {
        /// The LiveRoomCluster (default: the only one in the namespace).
        cluster: Option<String>,
        #[command(flatten)]
        out: OutputFlag,
    },
    /// Approve a FailoverApproval, or a Switchover/Failover a live window holds, as yourself (spec.approvedBy is your user name).
    Approve {
        /// The FailoverApproval (`<cluster>-approval-<id>`), Switchover or Failover.
        name: String,
        /// Why, kept in the decision record.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deny a FailoverApproval as yourself.
    Deny {
        /// The FailoverApproval (`<cluster>-approval-<id>`).
        name: String,
        /// Why, kept in the decision record.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Pause the cluster: the operator stops reconciling and the playbook only records (spec.paused).
    Pause { cluster: Option<String> },
    /// Resume a paused cluster (spec.paused = false).
    Resume { cluster: Option<String> },
    /// Move Raft leadership to a node or region (creates a Switchover and waits for its outcome).
    #[command(group(clap::ArgGroup::new("to").required(true).args(["to_region", "to_node"])))]
    Switchover {
        cluster: Option<String>,
        /// The region whose live voter least behind should lead.
        #[arg(long)]
        to_region: Option<String>,
        /// The Raft node id that should lead.
        #[arg(long)]
        to_node: Option<i64>,
        /// Why, kept in the decision record.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Fail over away from a region (creates a Failover and waits for its outcome).
    Failover {
        cluster: Option<String>,
        /// The region to move away from.
        #[arg(long)]
        region: String,
        /// Why, kept in the decision record.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Why the playbook did or did not act, per tier and guard, in the engine's words.
    Explain {
        cluster: Option<String>,
        #[command(flatten)]
        out: OutputFlag,
    },
    /// Run the playbook engine over a health timeline (no cluster needed) and print its decisions.
    Simulate {
        /// A playbook file (a FailoverPlaybook or its spec); default: the built-in playbook.
        #[arg(long)]
        playbook: Option<PathBuf>,
        /// The timeline (YAML, see docs/kubectl-plugin.md).
        #[arg(long)]
        timeline: PathBuf,
        #[command(flatten)]
        out: OutputFlag,
    },
    /// Chaos drills as ChaosDrill objects: run, list, report.
    Drill {
        #[command(subcommand)]
        cmd: DrillVerb,
    },
    /// A game day on Kubernetes: pause automation, run a drill, score the on-call's answers on stdin.
    Gameday {
        /// The drill file (as for `roomkeeper drill run`; `spec.gameDay` is implied).
        file: PathBuf,
        /// The LiveRoomCluster (default: the drill's spec.target.cluster).
        #[arg(long)]
        cluster: Option<String>,
        /// Where the runbooks are, to check the one named (default: ./runbooks).
        #[arg(long, default_value = "runbooks")]
        runbooks: PathBuf,
        #[command(flatten)]
        out: OutputFlag,
    },
    /// A redacted support bundle: specs, statuses, Events, decisions, logs if reachable.
    Report {
        cluster: Option<String>,
        /// A directory, or a file ending in .tar.gz (made with the system `tar`).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DrillVerb {
    /// Create a ChaosDrill from a drill file (the YAML of `roomkeeper drill run`).
    Run {
        file: PathBuf,
        /// Run it against this LiveRoomCluster instead of the file's spec.target.cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Wait until the drill completes and print its report.
        #[arg(long)]
        wait: bool,
    },
    /// The ChaosDrills of the namespace.
    List {
        #[command(flatten)]
        out: OutputFlag,
    },
    /// A drill's report, from its status.
    Report {
        name: String,
        #[command(flatten)]
        out: OutputFlag,
    },
}

/// Whether this process was started as `kubectl-roomkeeper`.
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .is_some_and(|f| f == "kubectl-roomkeeper" || f == "kubectl-roomkeeper.exe")
}

/// Runs the plugin and returns the process exit code; errors go to stderr.
pub async fn main(args: KubectlArgs) -> i32 {
    match run(args).await {
        Ok(()) => 0,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("error: {}", error_chain(&e));
            code
        }
    }
}

fn error_chain(e: &PluginError) -> String {
    match e {
        PluginError::Kube { context, source } => match source {
            kube::Error::Api(s) => format!("{context}: {} ({} {})", s.message, s.code, s.reason),
            other => format!("{context}: {other}"),
        },
        PluginError::Other(a) => format!("{a:#}"),
        other => other.to_string(),
    }
}

async fn run(args: KubectlArgs) -> Result<(), PluginError> {
    let g = args.global;
    match args.verb {
        // Offline: no kubeconfig needed.
        Verb::Simulate {
            playbook,
            timeline,
            out,
        } => simulate::run(playbook.as_deref(), &timeline, out.output).await,
        verb => {
            let kube = Kube::connect(&g).await?;
            match verb {
                Verb::Status { cluster, out } => status::run(&kube, cluster, out.output).await,
                Verb::Approve { name, reason } => {
                    act::answer(&kube, &g, &name, true, &reason).await
                }
                Verb::Deny { name, reason } => act::answer(&kube, &g, &name, false, &reason).await,
                Verb::Pause { cluster } => act::pause(&kube, &g, cluster, true).await,
                Verb::Resume { cluster } => act::pause(&kube, &g, cluster, false).await,
                Verb::Switchover {
                    cluster,
                    to_region,
                    to_node,
                    reason,
                } => act::switchover(&kube, &g, cluster, to_region, to_node, &reason).await,
                Verb::Failover {
                    cluster,
                    region,
                    reason,
                } => act::failover(&kube, &g, cluster, &region, &reason).await,
                Verb::Explain { cluster, out } => explain::run(&kube, cluster, out.output).await,
                Verb::Drill { cmd } => match cmd {
                    DrillVerb::Run {
                        file,
                        cluster,
                        wait,
                    } => act::drill_run(&kube, &g, &file, cluster, wait).await,
                    DrillVerb::List { out } => act::drill_list(&kube, out.output).await,
                    DrillVerb::Report { name, out } => {
                        act::drill_report(&kube, &name, out.output).await
                    }
                },
                Verb::Gameday {
                    file,
                    cluster,
                    runbooks,
                    out,
                } => gameday::run(&kube, &g, &file, cluster, Some(&runbooks))
                    .await
                    .and_then(|r| match out.output {
                        Format::Json | Format::Yaml => print_structured(&r, out.output),
                        _ => {
                            print!("{}", gameday::record_text(&r));
                            Ok(())
                        }
                    }),
                Verb::Report { cluster, output } => report::run(&kube, cluster, output).await,
                Verb::Simulate { .. } => unreachable!("handled above"),
            }
        }
    }
}

/// A client and the namespace to work in.
pub struct Kube {
    pub client: Client,
    pub namespace: String,
}

impl Kube {
    async fn connect(g: &Globals) -> Result<Kube, PluginError> {
        let opts = KubeConfigOptions {
            context: g.context.clone(),
            cluster: None,
            user: None,
        };
        let config = match &g.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
                Config::from_custom_kubeconfig(kc, &opts).await
            }
            None => Config::from_kubeconfig(&opts).await,
        }
        .map_err(|e| anyhow::anyhow!("kubeconfig: {e}"))?;
        let namespace = g
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| anyhow::anyhow!("client: {e}"))?;
        Ok(Kube { client, namespace })
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The cluster named, or the only LiveRoomCluster of the namespace.
    pub async fn cluster(&self, name: Option<String>) -> Result<LiveRoomCluster, PluginError> {
        let lrcs: Api<LiveRoomCluster> = self.api();
        if let Some(n) = name {
            return lrcs
                .get(&n)
                .await
                .ctx(format!("LiveRoomCluster {}/{n}", self.namespace));
        }
        let mut all = lrcs
            .list(&ListParams::default())
            .await
            .ctx(format!("listing LiveRoomClusters in {}", self.namespace))?
            .items;
        match all.len() {
            1 => Ok(all.remove(0)),
            0 => Err(PluginError::Usage(format!(
                "no LiveRoomCluster in namespace {} (use -n)",
                self.namespace
            ))),
            _ => Err(PluginError::Usage(format!(
                "{} LiveRoomClusters in namespace {}: name one ({})",
                all.len(),
                self.namespace,
                all.iter()
                    .filter_map(|c| c.metadata.name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The authenticated user's name, as the API server sees it
    /// (SelfSubjectReview, authentication.k8s.io/v1).
    pub async fn whoami(&self) -> Result<String, PluginError> {
        let api: Api<SelfSubjectReview> = Api::all(self.client.clone());
        let review = api
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .ctx("asking the API server who you are (SelfSubjectReview)")?;
        review
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| anyhow::anyhow!("the API server did not say who you are").into())
    }
}

/// Asks before a destructive verb: `--yes` skips it; without a terminal on
/// stdin it refuses (exit 2) rather than guess.
pub fn confirm(g: &Globals, what: &str) -> Result<(), PluginError> {
    if g.yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(PluginError::Usage(format!(
            "{what}: stdin is not a terminal, so nobody can confirm; pass --yes"
        )));
    }
    eprint!("{what}. Continue? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?;
    if matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(PluginError::Cancelled)
    }
}

/// Prints `value` as JSON or YAML.
pub fn print_structured<T: serde::Serialize>(value: &T, f: Format) -> Result<(), PluginError> {
    let text = match f {
        Format::Yaml => serde_yaml::to_string(value).map_err(|e| anyhow::anyhow!("yaml: {e}"))?,
        _ => {
            let mut t =
                serde_json::to_string_pretty(value).map_err(|e| anyhow::anyhow!("json: {e}"))?;
            t.push('\n');
            t
        }
    };
    print!("{text}");
    Ok(())
}

/// Polls `check` every second until it says done, or times out.
pub async fn wait_for<T, F, Fut>(
    timeout: Duration,
    what: &str,
    mut check: F,
) -> Result<T, PluginError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, PluginError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PluginError::Timeout(format!(
                "{what} after {} s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<PluginCli, clap::Error> {
        PluginCli::try_parse_from(std::iter::once("kubectl-roomkeeper").chain(args.iter().copied()))
    }

    #[test]
    fn globals_go_anywhere_and_output_formats_parse() {
        let cli = parse(&[
            "status",
            "shop",
            "-n",
            "live",
            "--context",
            "prod",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.args.global.namespace.as_deref(), Some("live"));
        assert_eq!(cli.args.global.context.as_deref(), Some("prod"));
        match cli.args.verb {
            Verb::Status { cluster, out } => {
                assert_eq!(cluster.as_deref(), Some("shop"));
                assert_eq!(out.output, Format::Json);
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["-n", "x", "--yes", "pause"]).unwrap();
        assert!(cli.args.global.yes);
        assert!(matches!(cli.args.verb, Verb::Pause { cluster: None }));
        assert!(parse(&["status", "-o", "xml"]).is_err());
    }

    #[test]
    fn switchover_needs_exactly_one_destination() {
        assert!(parse(&["switchover"]).is_err());
        assert!(parse(&["switchover", "--to-region", "a", "--to-node", "2"]).is_err());
        let cli = parse(&["switchover", "shop", "--to-node", "2", "--reason", "kernel"]).unwrap();
        match cli.args.verb {
            Verb::Switchover {
                to_node,
                to_region,
                reason,
                ..
            } => {
                assert_eq!(
                    (to_node, to_region, reason.as_str()),
                    (Some(2), None, "kernel")
                );
            }
            other => panic!("{other:?}"),
        }
        // A usage error is exit code 2, as the table says.
        assert_eq!(parse(&["failover"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn report_output_is_a_path_and_drill_verbs_nest() {
        let cli = parse(&["report", "shop", "--output", "b.tar.gz"]).unwrap();
        assert!(
            matches!(cli.args.verb, Verb::Report { output: Some(ref p), .. } if p.ends_with("b.tar.gz"))
        );
        let cli = parse(&["drill", "report", "d1", "-o", "yaml"]).unwrap();
        assert!(matches!(
            cli.args.verb,
            Verb::Drill { cmd: DrillVerb::Report { ref name, out } } if name == "d1" && out.output == Format::Yaml
        ));
        assert!(parse(&["simulate", "--timeline", "t.yaml"]).is_ok());
        assert!(parse(&["simulate"]).is_err());
    }

    #[test]
    fn exit_codes_follow_the_table() {
        assert_eq!(PluginError::Usage("x".into()).exit_code(), 2);
        assert_eq!(PluginError::Refused("x".into()).exit_code(), 3);
        assert_eq!(PluginError::Timeout("x".into()).exit_code(), 4);
        assert_eq!(PluginError::Cancelled.exit_code(), 5);
        let forbidden = PluginError::Kube {
            context: "patch".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("no", "Forbidden")
                    .with_code(403)
                    .boxed(),
            ),
        };
        assert_eq!(forbidden.exit_code(), 3);
        assert!(EXIT_CODES.contains("4  timed out"));
    }
}
