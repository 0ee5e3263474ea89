//! The container image that `scripts/image.sh` assembles, handled only by
//! real OCI tools (Debian's skopeo, umoci and runc), never by our own reader:
//!
//! - two builds of the same binary are byte-identical (a reproducible digest);
//! - skopeo reads the archive: user 65532:65532, the entrypoint, the version
//!   label;
//! - umoci unpacks it into a runtime bundle: the binary is the one given, and
//!   the root filesystem holds no shell and nothing outside what
//!   scripts/oci-image.py says it ships;
//! - runc runs three order-store nodes from that one read-only root
//!   filesystem, each with only its data directory mounted writable, as
//!   65532: they form a Raft group, take orders, and each stops cleanly on
//!   SIGTERM.
//!
//! Needs root, python3, skopeo, umoci and runc (`scripts/test.sh` installs
//! them); without them the test prints SKIPPED and passes, unless `CI` is set.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{chown, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use roomkeeper_api::client::{PutListing, PutRoom};
use roomkeeper_api::NodeInfo;
use roomkeeper_e2e::k8s::skip_or_panic;
use roomkeeper_e2e::operator::repo_root;
use roomkeeper_e2e::{
    binary, http, order_body, reserve_addr, to_json, wait_until, ADMIN_TOKEN, CLIENT_TOKEN,
};
use roomkeeper_order_state::{ListingState, RoomState};
use serde_json::{json, Value};

const NONROOT: u32 = 65532;
const TOOLS: [&str; 4] = ["python3", "skopeo", "umoci", "runc"];

fn tools_or_skip(test: &str) -> bool {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .collect();
    let root = nix::unistd::Uid::effective().is_root();
    if missing.is_empty() && root {
        return true;
    }
    let why = if root {
        format!("missing {}", missing.join(", "))
    } else {
        "not root (runc and the image's file owners need it)".to_string()
    };
    skip_or_panic(test, &format!("{why} (scripts/test.sh installs the tools)"));
    false
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn build_image(out: &Path) -> Result<String> {
    run(Command::new("bash")
        .arg(repo_root().join("scripts/image.sh"))
        .arg("--binary")
        .arg(binary())
        .arg("--out")
        .arg(out)
        // The same epoch for both builds, whatever the checkout's last commit.
        .env("SOURCE_DATE_EPOCH", "1700000000"))
}

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            let rel = path.strip_prefix(root)?.display().to_string();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
            out.push(rel);
        }
    }
    out.sort();
    Ok(out)
}

/// One node in a runc container; deleted (killed first) when dropped.
struct Container {
    id: String,
    child: Option<Child>,
    log: PathBuf,
    info: NodeInfo,
}

impl Container {
    fn start(
        bundle_template: &Value,
        rootfs: &Path,
        dir: &Path,
        node: u64,
        key_file: &Path,
    ) -> Result<Container> {
        let id = format!("roomkeeper-image-{}-{node}", std::process::id());
        let bundle = dir.join(format!("bundle-{node}"));
        let data = dir.join(format!("data-{node}"));
        fs::create_dir_all(&bundle)?;
        fs::create_dir_all(&data)?;
        chown(&data, Some(NONROOT), Some(NONROOT))?;
        // The servers bind host loopback ports the test reserved (SO_REUSEADDR,
        // tests/src/ports.rs): the containers share the host's network.
        let (raft_addr, raft) = reserve_addr();
        let (api_addr, api) = reserve_addr();
        let (admin_addr, admin) = reserve_addr();
        std::mem::forget((raft, api, admin));
        let region = format!("region-{node}");
        let mut config = bundle_template.clone();
        config["root"] = json!({ "path": rootfs, "readonly": true });
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!([
            "/usr/local/bin/roomkeeper",
            "node",
            "--id",
            node.to_string(),
            "--data-dir",
            "/data",
            "--raft-addr",
            raft_addr,
            "--api-addr",
            api_addr,
            "--admin-addr",
            admin_addr,
            "--region",
            region,
            "--zone",
            format!("{region}-a"),
            "--contact-key-file",
            "/keys/contact.key",
            "--client-token",
            CLIENT_TOKEN,
            "--admin-token",
            ADMIN_TOKEN,
            "--insecure-plaintext-raft",
            "--insecure-plaintext-http",
        ]);
        let namespaces = config["linux"]["namespaces"]
            .as_array()
            .context("the bundle's config.json has no linux.namespaces")?
            .iter()
            .filter(|n| n["type"] != "network")
            .cloned()
            .collect::<Vec<_>>();
        config["linux"]["namespaces"] = json!(namespaces);
        let mounts = config["mounts"]
            .as_array_mut()
            .context("the bundle's config.json has no mounts")?;
        mounts.push(json!({
            "destination": "/data", "type": "bind", "source": data,
            "options": ["rbind", "rw"]
        }));
        mounts.push(json!({
            "destination": "/keys/contact.key", "type": "bind", "source": key_file,
            "options": ["rbind", "ro"]
        }));
        fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        let log = dir.join(format!("node-{node}.log"));
        let out = fs::File::create(&log)?;
        let child = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("runc run")?;
        Ok(Container {
            id,
            child: Some(child),
            log,
            info: NodeInfo {
                raft_addr,
                api_addr,
                admin_addr,
                zone: format!("{region}-a"),
                region,
            },
        })
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The container's process id on the host, from `runc state`.
    fn pid(&self) -> Result<u32> {
        let state: Value =
            serde_json::from_str(&run(Command::new("runc").args(["state", &self.id]))?)?;
        state["pid"]
            .as_u64()
            .map(|p| p as u32)
            .context("runc state has no pid")
    }

    /// SIGTERM through runc; the node must exit 0 within 15 s.
    fn stop(&mut self) -> Result<()> {
        run(Command::new("runc").args(["kill", &self.id, "TERM"]))?;
        let mut child = self.child.take().context("already stopped")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait()? {
                // `runc run` deletes the container when its process exits.
                ensure!(
                    status.success(),
                    "node exited with {status} on SIGTERM:\n{}",
                    self.log_tail()
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node still running 15 s after SIGTERM:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn admin(
    c: &Container,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<roomkeeper_e2e::Reply> {
    Ok(http(
        method,
        &c.info.admin_addr,
        path,
        body.map(str::as_bytes),
        Some(ADMIN_TOKEN),
        Duration::from_secs(5),
    )?)
}

fn client(c: &Container, method: &str, path: &str, body: &str) -> Result<roomkeeper_e2e::Reply> {
    Ok(http(
        method,
        &c.info.api_addr,
        path,
        Some(body.as_bytes()),
        Some(CLIENT_TOKEN),
        Duration::from_secs(6),
    )?)
}

#[test]
fn the_image_runs_a_cluster_under_runc() {
    if !tools_or_skip("the_image_runs_a_cluster_under_runc") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("roomkeeper-image-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("test dir");
    if let Err(e) = scenario(&dir) {
        panic!("{e:#}\n(files kept in {})", dir.display());
    }
    let _ = fs::remove_dir_all(&dir);
}

fn scenario(dir: &Path) -> Result<()> {
    // Reproducible: two builds, the same bytes.
    let a = dir.join("a.oci.tar");
    let b = dir.join("b.oci.tar");
    let printed = build_image(&a)?;
    build_image(&b)?;
    ensure!(
        fs::read(&a)? == fs::read(&b)?,
        "two builds of the same binary differ"
    );
    ensure!(
        printed.contains("manifest  sha256:"),
        "image.sh printed no digest:\n{printed}"
    );
    let archive = format!("oci-archive:{}", a.display());

    // skopeo reads the image's configuration.
    let config: Value = serde_json::from_str(&run(
        Command::new("skopeo").args(["inspect", "--config", &archive])
    )?)?;
    let c = &config["config"];
    ensure!(c["User"] == "65532:65532", "image user: {}", c["User"]);
    ensure!(
        c["Entrypoint"] == json!(["/usr/local/bin/roomkeeper"]),
        "entrypoint: {}",
        c["Entrypoint"]
    );
    let version = env!("CARGO_PKG_VERSION");
    ensure!(
        c["Labels"]["org.opencontainers.image.version"] == version,
        "version label: {}",
        c["Labels"]
    );
    ensure!(config["os"] == "linux", "os: {}", config["os"]);

    // umoci unpacks it into a runtime bundle (rootfs + an OCI runtime config
    // derived from the image's).
    let layout = dir.join("layout");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", &archive])
        .arg(format!("oci:{}:roomkeeper", layout.display())))?;
    let unpacked = dir.join("unpacked");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:roomkeeper", layout.display()))
        .arg(&unpacked))?;
    let rootfs = unpacked.join("rootfs");
    ensure!(
        fs::read(rootfs.join("usr/local/bin/roomkeeper"))? == fs::read(binary())?,
        "the image's binary is not the one built"
    );
    let files = tree(&rootfs)?;
    for shell in [
        "bin/sh",
        "usr/bin/sh",
        "bin/bash",
        "usr/bin/apt-get",
        "usr/bin/dpkg",
    ] {
        ensure!(!rootfs.join(shell).exists(), "the image holds {shell}");
    }
    let allowed = [
        "etc",
        "home",
        "lib",
        "lib64",
        "tmp",
        "usr",
        "usr/lib",
        "usr/lib64",
        "usr/lib/x86_64-linux-gnu",
        "usr/lib/aarch64-linux-gnu",
        "usr/local",
        "usr/local/bin",
        "usr/share",
        "usr/share/doc",
        "var",
        "var/lib",
        "var/lib/dpkg",
    ];
    let stray: Vec<&String> = files
        .iter()
        .filter(|f| {
            !allowed.contains(&f.as_str())
                && ![
                    "etc/passwd",
                    "etc/group",
                    "etc/nsswitch.conf",
                    "etc/ssl",
                    "home/nonroot",
                    "usr/local/bin/roomkeeper",
                ]
                .contains(&f.as_str())
                && !f.starts_with("etc/ssl/certs")
                && !f.starts_with("usr/share/doc/")
                && !f.starts_with("var/lib/dpkg/status.d")
                && !f.starts_with("usr/lib/x86_64-linux-gnu/")
                && !f.starts_with("usr/lib/aarch64-linux-gnu/")
                && !f.starts_with("usr/lib64/")
                && !f.starts_with("lib64/")
        })
        .collect();
    ensure!(
        stray.is_empty(),
        "the image holds files it should not: {stray:?}"
    );
    let home = fs::metadata(rootfs.join("home/nonroot"))?;
    ensure!(
        home.uid() == NONROOT,
        "/home/nonroot is owned by {}",
        home.uid()
    );

    // runc runs three nodes from the one read-only root filesystem.
    let template: Value = serde_json::from_slice(&fs::read(unpacked.join("config.json"))?)?;
    ensure!(
        template["process"]["user"]["uid"] == NONROOT,
        "umoci's runtime config runs as {}",
        template["process"]["user"]
    );
    let key_file = dir.join("contact.key");
    fs::write(&key_file, format!("0 {}\n", "cd".repeat(32)))?;
    chown(&key_file, Some(NONROOT), Some(NONROOT))?;
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(Container::start(&template, &rootfs, dir, id, &key_file)?);
    }
    for n in &nodes {
        let addr = n.info.admin_addr.clone();
        let healthy = || {
            http(
                "GET",
                &addr,
                "/healthz",
                None,
                None,
                Duration::from_millis(300),
            )
            .map(|r| r.status == 200)
            .unwrap_or(false)
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !healthy() {
            ensure!(
                Instant::now() < deadline,
                "node at {addr} not healthy in its container:\n{}",
                n.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let status = fs::read_to_string(format!("/proc/{}/status", n.pid()?))?;
        let uid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap_or_default()
            .to_string();
        ensure!(
            uid.split_whitespace().skip(1).all(|u| u == "65532"),
            "the node runs as {uid}"
        );
    }
    let members: BTreeMap<String, NodeInfo> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| ((i + 1).to_string(), n.info.clone()))
        .collect();
    let r = admin(
        &nodes[0],
        "POST",
        "/admin/init",
        Some(&json!({ "members": members }).to_string()),
    )?;
    ensure!(r.status == 200, "init: {} {:?}", r.status, r.body);
    let mut leader = None;
    wait_until(
        Duration::from_secs(20),
        "a leader among the containers",
        || {
            leader = nodes.iter().position(|n| {
                admin(n, "GET", "/admin/status", None)
                    .map(|r| r.body["role"] == "leader")
                    .unwrap_or(false)
            });
            leader.is_some()
        },
    );
    let leader = &nodes[leader.context("no leader")?];
    let room = to_json(&PutRoom {
        title: "image".into(),
        home_region: "region-1".into(),
        state: RoomState::Live,
        live_windows: None,
    });
    let r = client(leader, "PUT", "/v1/rooms/r1", &room)?;
    ensure!(r.status == 200, "put room: {} {:?}", r.status, r.body);
    let listing = to_json(&PutListing {
        price_cents: 500,
        stock: 3,
        per_buyer_limit: 5,
        state: ListingState::Open,
    });
    let r = client(leader, "PUT", "/v1/rooms/r1/listings/s1", &listing)?;
    ensure!(r.status == 200, "put listing: {} {:?}", r.status, r.body);
    let mut accepted = 0;
    for i in 0..5 {
        let body = order_body("s1", &format!("buyer-{i}"), 1, &format!("k-{i}"));
        let r = client(leader, "POST", "/v1/rooms/r1/orders", &body)?;
        match (r.status, r.code()) {
            (201, _) => accepted += 1,
            (409, "sold_out") => {}
            (s, code) => bail!("order {i}: {s} {code} {:?}", r.body),
        }
    }
    ensure!(accepted == 3, "{accepted} orders accepted for a stock of 3");
    // Every node applied them (to its data directory, as 65532).
    wait_until(
        Duration::from_secs(10),
        "every container applied the orders",
        || {
            let applied: Vec<Option<u64>> = nodes
                .iter()
                .map(|n| {
                    admin(n, "GET", "/admin/status", None)
                        .ok()
                        .and_then(|r| r.body["applied_index"].as_u64())
                })
                .collect();
            applied.iter().all(|a| a.is_some() && *a == applied[0])
        },
    );
    let owners: Vec<u32> = fs::read_dir(dir.join("data-1"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.uid())
        .collect();
    ensure!(
        !owners.is_empty() && owners.iter().all(|u| *u == NONROOT),
        "data files owned by {owners:?}"
    );
    for n in &mut nodes {
        n.stop()?;
    }
    Ok(())
}
