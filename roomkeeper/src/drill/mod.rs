//! `roomkeeper drill`: chaos drills on a local loopback cluster.
//!
//! - `drill run FILE` runs one `ChaosDrill` manifest and prints its verdict.
//! - `drill library` runs every drill of a directory and prints a table.
//! - `drill report RUN` prints a run's summary or writes its HTML page.
//! - `drill validate FILE…` checks drill files without running them.

pub(crate) mod gameday;
mod inject;
mod runner;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use roomkeeper_chaos::drill::DrillManifest;
use roomkeeper_chaos::report::{DrillReport, Verdict};
use roomkeeper_chaos::Violation;
use serde::Serialize;

use runner::{run_drill, RunOptions};

/// Flags of `roomkeeper drill`.
#[derive(Debug, Args)]
pub struct DrillArgs {
    #[command(subcommand)]
    pub command: DrillCmd,
}

#[derive(Debug, Subcommand)]
pub enum DrillCmd {
    /// Run one drill (a ChaosDrill YAML file) on a local cluster.
    Run(RunArgs),
    /// Run every drill of a directory and print a summary table.
    Library(LibraryArgs),
    /// Print a run's summary, or write its HTML report with --out.
    Report(ReportArgs),
    /// Check drill files without running them.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The drill file.
    pub file: PathBuf,
    /// Where history.json, report.json and report.html go (default: drill-runs/<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of every random choice (victims, skus); default: from the clock.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Game day: pause automation and time a human operator on this terminal.
    #[arg(long)]
    pub game_day: bool,
    /// First of the three ports each node uses.
    #[arg(long, default_value_t = 17300)]
    pub base_port: u16,
    /// Directory of the runbooks the game day checks answers against.
    #[arg(long, default_value = "runbooks")]
    pub runbooks: PathBuf,
}

#[derive(Debug, Args)]
pub struct LibraryArgs {
    /// Directory of drill files.
    #[arg(long, default_value = "chaos/drills")]
    pub dir: PathBuf,
    /// Only these drills (names or file stems, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where each drill's run directory and summary.md/summary.json go.
    #[arg(long, default_value = "drill-runs/library")]
    pub out: PathBuf,
    /// Seed of every drill (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// First port; each drill uses its own range above it.
    #[arg(long, default_value_t = 17400)]
    pub base_port: u16,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A run directory or its report.json.
    pub run: PathBuf,
    /// Write the HTML report here instead of printing the summary.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Drill files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

fn read_drill(path: &Path) -> anyhow::Result<DrillManifest> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    DrillManifest::from_yaml(&text).with_context(|| format!("drill {}", path.display()))
}

fn seed_or_clock(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    })
}

pub async fn run(args: DrillArgs) -> anyhow::Result<()> {
    match args.command {
        DrillCmd::Run(a) => run_one(a).await,
        DrillCmd::Library(a) => library(a).await,
        DrillCmd::Report(a) => report(a),
        DrillCmd::Validate(a) => validate(a),
    }
}

async fn run_one(a: RunArgs) -> anyhow::Result<()> {
    let m = read_drill(&a.file)?;
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from("drill-runs").join(&m.metadata.name));
    let opts = RunOptions {
        out_dir: out.clone(),
        seed: seed_or_clock(a.seed),
        base_port: a.base_port,
        game_day: a.game_day,
        binary: std::env::current_exe().context("locating the roomkeeper binary")?,
        runbooks_dir: Some(a.runbooks),
    };
    let r = run_drill(&m, &opts).await?;
    print!("{}", r.text());
    println!("report: {}", out.join("report.html").display());
    if r.verdict != Verdict::Pass {
        anyhow::bail!("drill {} {}", r.name, r.verdict.as_str());
    }
    Ok(())
}

/// One row of the library table.
#[derive(Debug, Serialize)]
struct Row {
    drill: String,
    faults: String,
    verdict: String,
    acked: usize,
    lost: usize,
    oversold: usize,
    double_effects: usize,
    unknown_ops: usize,
    rto_ms: u64,
    seconds: u64,
    note: String,
}

fn row(r: &DrillReport) -> Row {
    let count = |f: fn(&Violation) -> bool| r.check.violations.iter().filter(|v| f(v)).count();
    let failed: Vec<String> = r
        .probes
        .iter()
        .filter(|p| !p.passed)
        .map(|p| format!("{}: {}", p.name, p.measured))
        .chain(r.run_errors.iter().cloned())
        .chain(r.abort_reason.iter().cloned())
        .collect();
    let mut kinds: Vec<String> = r.spec.faults.iter().map(|f| f.kind.to_string()).collect();
    kinds.dedup();
    Row {
        drill: r.name.clone(),
        faults: kinds.join(" + "),
        verdict: r.verdict.as_str().to_string(),
        acked: r.check.acknowledged,
        lost: r.check.lost.len(),
        oversold: count(|v| matches!(v, Violation::Oversell { .. })),
        double_effects: count(|v| {
            matches!(
                v,
                Violation::DoubleEffect { .. } | Violation::ConflictingAcks { .. }
            )
        }),
        unknown_ops: r.orders.unknown_ops,
        rto_ms: r.check.rto_ms,
        seconds: r.duration_ms / 1000,
        note: failed.join("; "),
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| drill | faults | verdict | acked | lost | oversold | double effects | unknown ops | RTO ms | s |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.drill,
            r.faults,
            r.verdict,
            r.acked,
            r.lost,
            r.oversold,
            r.double_effects,
            r.unknown_ops,
            r.rto_ms,
            r.seconds
        ));
    }
    let notes: Vec<String> = rows
        .iter()
        .filter(|r| !r.note.is_empty())
        .map(|r| format!("- {}: {}", r.drill, r.note))
        .collect();
    if !notes.is_empty() {
        s.push('\n');
        s.push_str(&notes.join("\n"));
        s.push('\n');
    }
    s
}

async fn library(a: LibraryArgs) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&a.dir)
        .with_context(|| format!("reading {}", a.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let seed = seed_or_clock(a.seed);
    let binary = std::env::current_exe().context("locating the roomkeeper binary")?;
    let mut rows = Vec::new();
    let mut bad = 0;
    let mut selected = 0;
    for (i, f) in files.iter().enumerate() {
        let m = read_drill(f)?;
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        if !a.only.is_empty() && !a.only.iter().any(|o| *o == m.metadata.name || *o == stem) {
            continue;
        }
        selected += 1;
        eprintln!("\n=== drill {} ({}) ===", m.metadata.name, f.display());
        let opts = RunOptions {
            out_dir: a.out.join(&m.metadata.name),
            seed,
            base_port: a.base_port.saturating_add((i as u16 % 20) * 10),
            game_day: false,
            binary: binary.clone(),
            runbooks_dir: None,
        };
        match run_drill(&m, &opts).await {
            Ok(r) => {
                print!("{}", r.text());
                if r.verdict != Verdict::Pass {
                    bad += 1;
                }
                rows.push(row(&r));
            }
            Err(e) => {
                bad += 1;
                eprintln!("drill {} could not run: {e:#}", m.metadata.name);
                rows.push(Row {
                    drill: m.metadata.name.clone(),
                    faults: String::new(),
                    verdict: "ERROR".into(),
                    acked: 0,
                    lost: 0,
                    oversold: 0,
                    double_effects: 0,
                    unknown_ops: 0,
                    rto_ms: 0,
                    seconds: 0,
                    note: format!("{e:#}"),
                });
            }
        }
    }
    anyhow::ensure!(selected > 0, "no drill selected in {}", a.dir.display());
    let t = table(&rows);
    println!("\n{t}");
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    std::fs::write(a.out.join("summary.md"), &t).context("writing summary.md")?;
    std::fs::write(
        a.out.join("summary.json"),
        serde_json::to_vec_pretty(&rows)?,
    )
    .context("writing summary.json")?;
    anyhow::ensure!(bad == 0, "{bad} of {} drills did not pass", rows.len());
    Ok(())
}

fn report(a: ReportArgs) -> anyhow::Result<()> {
    let path = if a.run.is_dir() {
        a.run.join("report.json")
    } else {
        a.run.clone()
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let r: DrillReport = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a drill report", path.display()))?;
    match a.out {
        Some(out) => {
            std::fs::write(&out, r.html()).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {}", out.display());
        }
        None => print!("{}", r.text()),
    }
    Ok(())
}

fn validate(a: ValidateArgs) -> anyhow::Result<()> {
    let mut bad = 0;
    for f in &a.files {
        match read_drill(f) {
            Ok(m) => println!(
                "{}: ok ({}, {} fault(s), {} probe(s))",
                f.display(),
                m.metadata.name,
                m.spec.faults.len(),
                m.spec.hypothesis.probes.len()
            ),
            Err(e) => {
                bad += 1;
                println!("{}: {e:#}", f.display());
            }
        }
    }
    anyhow::ensure!(bad == 0, "{bad} invalid drill file(s)");
    Ok(())
}
