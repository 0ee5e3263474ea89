//! Child processes (etcd, redis-server, roomkeeper nodes) started by the bench
//! in a scratch directory, and torn down at the end: explicitly on the normal
//! path, through `kill_on_drop` (SIGKILL) when the bench future is dropped on
//! an error or Ctrl-C.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// A scratch directory under the system temp dir, removed on drop unless kept.
pub struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    pub fn create(label: &str, keep: bool) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "roomkeeper-bench-{label}-{}-{nanos:08x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating scratch dir {}", path.display()))?;
        Ok(Self { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: kept scratch dir {}", self.path.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove scratch dir");
        }
    }
}

/// How to (re)start one child process.
#[derive(Clone, Debug)]
pub struct ProcSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

pub struct Proc {
    pub spec: ProcSpec,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(spec: ProcSpec) -> Result<Self> {
        let mut p = Self { spec, child: None };
        p.start()?;
        Ok(p)
    }

    /// Starts the process (again), appending its output to its log file.
    pub fn start(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.spec.log)
            .with_context(|| format!("opening log {}", self.spec.log.display()))?;
        let log2 = log
            .try_clone()
            .with_context(|| format!("duplicating log {}", self.spec.log.display()))?;
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} ({})",
                self.spec.name,
                self.spec.program.display()
            )
        })?;
        tracing::debug!(name = %self.spec.name, pid = ?child.id(), "started");
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Fails if the process has exited (with the tail of its log).
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running", self.spec.name);
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited ({status}); last log lines:\n{}",
                self.spec.name,
                log_tail(&self.spec.log, 15)
            ),
            Err(e) => Err(e).with_context(|| format!("checking {}", self.spec.name)),
        }
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.start_kill() {
                // Already exited: nothing to kill.
                tracing::debug!(name = %self.spec.name, error = %e, "kill");
            }
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(e).with_context(|| format!("waiting for {}", self.spec.name))
                }
                Err(_) => bail!("{} did not exit after SIGKILL", self.spec.name),
            }
        }
        Ok(())
    }

    /// Resident set size in bytes (Linux `/proc`), if running.
    pub fn rss_bytes(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status.lines().find_map(|l| {
            let rest = l.strip_prefix("VmRSS:")?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
    }
}

/// Kills every process, reporting the first failure.
pub async fn kill_all(procs: &mut [Proc]) -> Result<()> {
    let mut first = None;
    for p in procs.iter_mut() {
        if let Err(e) = p.kill().await {
            first.get_or_insert(e);
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// `n` distinct free loopback ports (all listeners are held until every port
/// is chosen, so none is handed out twice).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
        held.push(l);
    }
    held.iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .context("local address of probe listener")
        })
        .collect()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Looks a program up on PATH (or takes it as a path if it has a slash).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf)
}

pub fn random_hex(n_bytes: usize) -> Result<String> {
    Ok(random_bytes(n_bytes)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(8).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 8);
    }

    #[test]
    fn random_hex_has_the_right_length() {
        let h = random_hex(32).unwrap();
        assert_eq!(h.len(), 64);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
