//! docs/install.md, run as a new user would run it: every ```` ```sh ````
//! block of the page, in order, through `bash` with the real tools on PATH
//! (`helm`, `kubectl` and `kubectl-roomkeeper`), against a fresh API server
//! whose pods the kubelet bridge runs. So the chart's operator runs as a pod
//! under its own ServiceAccount, and forms the example cluster from there.
//! Each block must succeed, and print what the page's ```` ```text ```` block
//! after it shows, with times, ages, counts and which pod leads masked.
//! `ROOMKEEPER_BLESS=1` rewrites the `text` blocks from the run.
//!
//! Needs the Kubernetes binaries with kubectl (`scripts/k8s-test-bins.sh`)
//! and helm (`scripts/helm-bin.sh`); without them the test prints SKIPPED and
//! passes, unless `CI` is set.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use roomkeeper_e2e::binary;
use roomkeeper_e2e::k8s::{bin_dir, init_test_tracing, skip_or_panic, KubeHarness};
use roomkeeper_e2e::kubelet::KubeletBridge;
use roomkeeper_e2e::operator::{helm_path, repo_root};

const PAGE: &str = "docs/install.md";

/// A fenced block of the page: its info string, its body, and the line range
/// it spans (fences included).
#[derive(Debug, Clone)]
struct Block {
    info: String,
    body: String,
    start: usize,
    end: usize,
}

fn blocks(text: &str) -> Result<Vec<Block>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(info) = lines[i].strip_prefix("```") {
            let start = i;
            let mut body = String::new();
            i += 1;
            while i < lines.len() && lines[i] != "```" {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            ensure!(
                i < lines.len(),
                "{PAGE}: the block at line {} is not closed",
                start + 1
            );
            out.push(Block {
                info: info.trim().to_string(),
                body,
                start,
                end: i,
            });
        }
        i += 1;
    }
    Ok(out)
}

/// Each `sh` block with the index of the `text` block right after it (only
/// blank lines between), if any.
fn runs(text: &str, blocks: &[Block]) -> Vec<(usize, Option<usize>)> {
    let lines: Vec<&str> = text.lines().collect();
    blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| b.info == "sh")
        .map(|(i, b)| {
            let next = blocks.get(i + 1).filter(|n| {
                n.info == "text"
                    && lines[b.end + 1..n.start]
                        .iter()
                        .all(|l| l.trim().is_empty())
            });
            (i, next.map(|_| i + 1))
        })
        .collect()
}

/// What changes from run to run: the deploy time, ages, digits, which
/// region's pod leads, `(leader)` marks, kubectl's progress lines, runs of
/// spaces.
fn mask(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("Waiting for deployment") {
            continue;
        }
        let line = if line.starts_with("LAST DEPLOYED:") {
            "LAST DEPLOYED: <time>".to_string()
        } else {
            line.replace(" (leader)", "")
        };
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| {
                // Pod names of the example: the leader's region varies.
                let w = ["us-east", "eu-west", "ap-south"]
                    .iter()
                    .fold(w.to_string(), |w, r| {
                        w.replace(&format!("flash-sale-{r}-"), "flash-sale-<region>-")
                    });
                // kubectl ages: 5s, 2m3s, 4h, 3d...
                let is_age = !w.is_empty()
                    && w.chars().next().is_some_and(|c| c.is_ascii_digit())
                    && w.chars().all(|c| c.is_ascii_digit() || "smhd".contains(c))
                    && w.chars().last().is_some_and(|c| "smhd".contains(c));
                if is_age {
                    return "<age>".to_string();
                }
                roomkeeper_e2e::mask_digit_runs(&w)
            })
            .collect();
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

/// A directory with the page's tools under the names a user has.
fn tool_dir(dir: &Path, helm: &Path) -> Result<PathBuf> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let link = |target: &Path, name: &str| -> Result<()> {
        std::os::unix::fs::symlink(target, bin.join(name))
            .with_context(|| format!("linking {name} to {}", target.display()))
    };
    link(&bin_dir().join("kubectl"), "kubectl")?;
    link(helm, "helm")?;
    link(&binary(), "roomkeeper")?;
    link(&binary(), "kubectl-roomkeeper")?;
    Ok(bin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_page_runs_as_written() {
    init_test_tracing();
    let helm = Some(helm_path()).filter(|p| p.is_file());
    let kubectl = bin_dir().join("kubectl");
    if helm.is_none() || !kubectl.is_file() {
        let why = format!(
            "helm ({}) or kubectl ({}) is missing: run scripts/helm-bin.sh and scripts/k8s-test-bins.sh",
            helm.as_deref().map(|p| p.display().to_string()).unwrap_or("not found".into()),
            kubectl.display()
        );
        skip_or_panic("the_install_page_runs_as_written", &why);
        return;
    }
    let Some(h) = KubeHarness::start_or_skip("install-page").await else {
        return;
    };
    let mut bridge = KubeletBridge::start(h.admin_client(), h.dir(), &binary())
        .await
        .expect("kubelet bridge");
    let result = scenario(&h, helm.as_deref().unwrap_or(Path::new("helm"))).await;
    if let Err(e) = result {
        let pods = h.dir().join("kubelet");
        panic!(
            "{e:#}\n--- kube-apiserver\n{}\n(pod logs under {})",
            h.log_tail("kube-apiserver", 20),
            pods.display()
        );
    }
    bridge.stop();
}

async fn scenario(h: &KubeHarness, helm: &Path) -> Result<()> {
    let path = repo_root().join(PAGE);
    let text = std::fs::read_to_string(&path)?;
    let blocks = blocks(&text)?;
    let runs = runs(&text, &blocks);
    ensure!(runs.len() >= 4, "{PAGE} has {} sh blocks", runs.len());
    let tools = tool_dir(h.dir(), helm)?;
    let home = h.dir().join("home");
    std::fs::create_dir_all(&home)?;
    let path_var = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );

    let root = repo_root().canonicalize()?.display().to_string();
    let mut recorded: Vec<(usize, String)> = Vec::new();
    let mut mismatches = Vec::new();
    for (i, text_block) in &runs {
        let script = &blocks[*i].body;
        let started = Instant::now();
        let h_kubeconfig = h.kubeconfig_path().to_path_buf();
        let (tools_path, home2, script2) = (path_var.clone(), home.clone(), script.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .args(["-euo", "pipefail", "-c", &format!("exec 2>&1\n{script2}")])
                .current_dir(repo_root())
                .env_clear()
                .env("PATH", tools_path)
                .env("HOME", &home2)
                .env("KUBECONFIG", h_kubeconfig)
                .env("HELM_CONFIG_HOME", home2.join(".config/helm"))
                .env("HELM_CACHE_HOME", home2.join(".cache/helm"))
                .env("HELM_DATA_HOME", home2.join(".local/share/helm"))
                .stdin(Stdio::null())
                .output()
        })
        .await??;
        // The checkout's path (in helm's notes on the chart's symlinks) as a
        // user's would read.
        let printed = String::from_utf8_lossy(&out.stdout).replace(&root, "~/roomkeeper");
        tracing::info!(block = %script.trim(), secs = started.elapsed().as_secs(), "ran");
        if !out.status.success() {
            bail!(
                "{PAGE}: the block at line {} failed ({}):\n{}\n--- it printed\n{printed}",
                blocks[*i].start + 1,
                out.status,
                script.trim()
            );
        }
        match text_block {
            Some(t) => {
                let (want, got) = (mask(&blocks[*t].body), mask(&printed));
                if want != got {
                    mismatches.push(format!(
                        "the block at line {}:\n{}\n--- the page shows (masked)\n{want}--- it printed (masked)\n{got}",
                        blocks[*i].start + 1,
                        script.trim()
                    ));
                }
                recorded.push((*t, printed));
            }
            None => ensure!(
                printed.trim().is_empty(),
                "{PAGE}: the block at line {} prints, but no text block shows it:\n{printed}",
                blocks[*i].start + 1
            ),
        }
    }

    if std::env::var_os("ROOMKEEPER_BLESS").is_some() {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        for (t, printed) in recorded.iter().rev() {
            let b = &blocks[*t];
            let mut new: Vec<String> = vec!["```text".to_string()];
            new.extend(printed.lines().map(|l| l.trim_end().to_string()));
            new.push("```".to_string());
            lines.splice(b.start..=b.end, new);
        }
        std::fs::write(&path, lines.join("\n") + "\n")?;
        return Ok(());
    }
    ensure!(
        mismatches.is_empty(),
        "{PAGE} shows outputs the commands no longer print (ROOMKEEPER_BLESS=1 rewrites them):\n\n{}",
        mismatches.join("\n\n")
    );
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn blocks_and_their_outputs_pair_up() {
        let page = "a\n```sh\necho hi\n```\n\n```text\nhi\n```\n```shell\nno\n```\n```sh\ntrue\n```\nx\n```text\nnot mine\n```\n";
        let b = blocks(page).unwrap();
        assert_eq!(b.len(), 5);
        let r = runs(page, &b);
        assert_eq!(r, vec![(0, Some(1)), (3, None)]);
        assert_eq!(b[0].body, "echo hi\n");
    }

    #[test]
    fn masking_hides_what_varies_and_keeps_what_matters() {
        assert_eq!(
            mask("flash-sale   5/5   flash-sale-eu-west-1   3   0   T0   Running   95s\n"),
            mask("flash-sale 5/5 flash-sale-us-east-0 12 0 T0 Running 2m3s\n")
        );
        assert_ne!(mask("STATUS: deployed\n"), mask("STATUS: failed\n"));
        assert_eq!(
            mask("LAST DEPLOYED: Mon Dec  7 10:00:00 2026\nWaiting for deployment x\ndone\n"),
            "LAST DEPLOYED: <time>\ndone\n"
        );
    }
}
