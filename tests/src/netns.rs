//! Pod networking for the kubelet bridge: a Linux bridge with a host address,
//! one network namespace per pod joined to it by a veth pair, and an nftables
//! table on the bridge that enforces NetworkPolicy (see [`crate::netpol`]).
//!
//! Everything is done with the `ip` and `nft` commands and needs root. Names
//! are claimed per bridge so that test processes (and several bridges of one
//! test process) running at once never collide: the bridge device
//! `rkh<idx>` (its creation is the claim on subnet `10.64.0.0/10`'s
//! `/24` number `idx`), veths `rkh<idx>p<n>`, namespaces
//! `rkh-<pid>-<idx>-<n>` and the nftables table `bridge rkh_<pid>_<idx>`.
//! Devices carry the alias `roomkeeper-harness pid=<pid>`, so that leftovers
//! of a process that died without cleaning up are removed by the next one.
//!
//! Pods of different bridges (one Kubernetes cluster per bridge, a flat pod
//! network across them as with a multi-cluster CNI) reach each other through
//! the host: each pod's default route is its bridge's host address, and
//! [`PodNetwork::create`] turns IPv4 forwarding on
//! (`net.ipv4.ip_forward=1`, logged when it changes it). Forwarding is a
//! host-wide setting that bridges of other test processes may be relying on,
//! so it is left on when a network is destroyed. Reverse-path filtering
//! (`rp_filter`, strict or loose) passes the routed packets whatever its
//! setting: a pod's address is routed through the very bridge its packets
//! arrive on. A forward-hook chain of another firewall with a `drop` policy
//! (Docker sets iptables' FORWARD policy to DROP) would drop them: creating
//! a network warns when it finds one. A packet routed into a bridge leaves
//! it through the bridge's output hook, where the policy table judges it as
//! it judges traffic between the bridge's own pods (see [`crate::netpol`]).

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};

use crate::netpol::Ruleset;

const ALIAS_PREFIX: &str = "roomkeeper-harness pid=";
/// `/24` subnets handed out: 10.64.0.0/10, i.e. 16384 of them.
const SUBNETS: u32 = 1 << 14;
/// Pod addresses per bridge: .1 to .253 (the host takes .254).
const MAX_PODS: u32 = 253;

static BRIDGE_SEQ: AtomicU32 = AtomicU32::new(0);

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Held while turning forwarding on, so that bridges created at once log the
/// change once.
static FORWARDING: Mutex<()> = Mutex::new(());

fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `nft <args>` with `script` on its stdin.
fn nft_stdin(args: &[&str], script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running nft {}", args.join(" ")))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("nft has no stdin"))?
        .write_all(script.as_bytes())
        .context("writing the nft script")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft {} failed ({}): {}\nscript:\n{script}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether the host routes IPv4 between its interfaces
/// (`net.ipv4.ip_forward`), which pods of different bridges need to reach
/// each other.
pub fn ipv4_forwarding() -> bool {
    std::fs::read_to_string(IP_FORWARD).is_ok_and(|v| v.trim() == "1")
}

/// Turns IPv4 forwarding on for pods of different bridges to reach each
/// other (and leaves it on: see the module docs), then reports what could
/// still get in the way of the packets the host routes through `bridge`.
fn route_between_bridges(bridge: &str) {
    {
        let _once = crate::kubelet::lock(&FORWARDING);
        if !ipv4_forwarding() {
            match std::fs::write(IP_FORWARD, "1") {
                Ok(()) => tracing::info!(
                    "pod network: turned IPv4 forwarding on (net.ipv4.ip_forward=1) so that \
                     pods of different bridges reach each other; it stays on"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "pod network: cannot turn IPv4 forwarding on; pods of different bridges \
                     will not reach each other"
                ),
            }
        }
    }
    let rp_filter = |dev: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|e| format!("unreadable ({e})"))
    };
    // Strict or loose, it passes: a pod's address is routed through the
    // bridge its packets come in on.
    tracing::debug!(
        %bridge,
        all = %rp_filter("all"),
        dev = %rp_filter(bridge),
        "pod network: rp_filter (the kernel applies the higher of the two)"
    );
    for chain in forward_drop_chains() {
        tracing::warn!(
            %chain,
            "pod network: a forward-hook chain with a drop policy may drop packets the \
             host routes between pod bridges (pods of different clusters); accept them \
             there, e.g. iptables -I FORWARD -i rkh+ -o rkh+ -j ACCEPT"
        );
    }
}

/// Forward-hook chains of the host's IPv4 firewall whose policy is drop
/// (nftables, which includes iptables-nft, and iptables), described.
fn forward_drop_chains() -> Vec<String> {
    let mut found = run(&["nft", "list", "chains"])
        .map(|list| nft_forward_drop_chains(&list))
        .unwrap_or_default();
    // iptables-legacy rules are not in nftables' listing.
    if let Ok(rules) = run(&["iptables", "-S", "FORWARD"]) {
        let drop = rules.lines().any(|l| l.trim() == "-P FORWARD DROP");
        if drop && !found.iter().any(|c| c.ends_with("chain FORWARD")) {
            found.push("iptables FORWARD".to_string());
        }
    }
    found
}

/// The IPv4 (`ip`, `inet`) forward-hook chains with a drop policy in the
/// output of `nft list chains`.
fn nft_forward_drop_chains(list: &str) -> Vec<String> {
    let mut found = Vec::new();
    let (mut table, mut chain) = (String::new(), String::new());
    for line in list.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix("table ") {
            table = t.trim_end_matches('{').trim().to_string();
        } else if let Some(c) = line.strip_prefix("chain ") {
            chain = c.trim_end_matches('{').trim().to_string();
        } else if line.contains("hook forward")
            && line.contains("policy drop")
            && (table.starts_with("ip ") || table.starts_with("inet "))
        {
            found.push(format!("nft table {table} chain {chain}"));
        }
    }
    found
}

fn pid_alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

/// Why per-pod network namespaces cannot be used here, if they cannot.
pub fn unavailable_reason() -> Option<String> {
    if std::env::var("ROOMKEEPER_E2E_POD_NETWORK").as_deref() == Ok("loopback") {
        return Some("ROOMKEEPER_E2E_POD_NETWORK=loopback".to_string());
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".to_string());
    }
    for tool in [["ip", "-V"], ["nft", "--version"]] {
        if let Err(e) = run(&tool) {
            return Some(format!(
                "`{}` is not usable ({e:#}); install iproute2 and nftables",
                tool[0]
            ));
        }
    }
    None
}

/// Removes namespaces, devices and nftables tables left by harness processes
/// that are gone. Best effort: failures are logged.
pub fn clean_stale() {
    if let Ok(list) = run(&["ip", "netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(pid) = name
                .strip_prefix("rkh-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !pid_alive(pid) {
                match run(&["ip", "netns", "delete", name]) {
                    Ok(_) => tracing::info!(netns = name, "pod network: removed a stale namespace"),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "pod network: stale namespace")
                    }
                }
            }
        }
    }
    if let Ok(list) = run(&["ip", "-o", "link", "show"]) {
        // `ip -o` puts the alias on the device's line: "... alias <text>".
        for line in list.lines() {
            let Some(pid) = line
                .split_once(ALIAS_PREFIX)
                .and_then(|(_, r)| r.split_whitespace().next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(dev) = line
                .split(':')
                .nth(1)
                .map(|d| d.trim().split('@').next().unwrap_or("").to_string())
            else {
                continue;
            };
            if dev.starts_with("rkh") && !pid_alive(pid) {
                match run(&["ip", "link", "delete", &dev]) {
                    Ok(_) => tracing::info!(%dev, "pod network: removed a stale device"),
                    Err(e) => {
                        tracing::debug!(error = %format!("{e:#}"), "pod network: stale device")
                    }
                }
            }
        }
    }
    if let Ok(list) = run(&["nft", "list", "tables", "bridge"]) {
        for table in list.lines().filter_map(|l| l.strip_prefix("table bridge ")) {
            let table = table.trim();
            let Some(pid) = table
                .strip_prefix("rkh_")
                .and_then(|r| r.split('_').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !pid_alive(pid) {
                match run(&["nft", "delete", "table", "bridge", table]) {
                    Ok(_) => tracing::info!(table, "pod network: removed a stale nftables table"),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "pod network: stale table"),
                }
            }
        }
    }
}

/// The IPv4 prefixes routed on this host (main table), to keep clear of.
fn routed_prefixes() -> Vec<(u32, u32)> {
    let Ok(out) = run(&["ip", "-4", "route", "show", "table", "all"]) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let mut first = words.next()?;
            if matches!(first, "local" | "broadcast" | "unicast" | "multicast") {
                first = words.next()?;
            }
            let (net, len) = match first.split_once('/') {
                Some((n, l)) => (n, l.parse::<u32>().ok()?),
                None => (first, 32),
            };
            let net: Ipv4Addr = net.parse().ok()?;
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            Some((u32::from(net) & mask, mask))
        })
        .collect()
}

fn subnet_base(idx: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 64 + (idx >> 8) as u8, (idx & 0xff) as u8, 0)
}

/// One pod's network namespace.
#[derive(Clone, Debug)]
pub struct PodNet {
    pub ip: Ipv4Addr,
    /// The namespace's name under /run/netns.
    pub netns: String,
    veth: String,
}

impl PodNet {
    /// The namespace file to `setns(2)` into.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }
}

/// The bridge, the pods' namespaces and the policy table.
pub struct PodNetwork {
    idx: u32,
    bridge: String,
    host_ip: Ipv4Addr,
    table: String,
    pods: Mutex<HashMap<String, PodNet>>,
    next: Mutex<u32>,
    destroyed: AtomicBool,
}

impl PodNetwork {
    /// Creates the bridge on a free `/24` and an nftables table that admits
    /// everything (no policy yet).
    pub fn create() -> Result<PodNetwork> {
        let pid = std::process::id();
        let routed = routed_prefixes();
        let start = pid
            .wrapping_mul(64)
            .wrapping_add(BRIDGE_SEQ.fetch_add(1, Ordering::Relaxed) * 7);
        let mut last_err = None;
        for k in 0..SUBNETS {
            let idx = (start + k) % SUBNETS;
            let base = u32::from(subnet_base(idx));
            let clash = routed
                .iter()
                .any(|(net, mask)| (base & mask) == *net || (net & 0xffff_ff00) == base);
            if clash {
                continue;
            }
            let bridge = format!("rkh{idx:04x}");
            // Creating the device is the claim: it fails when another
            // process holds this number.
            let mac = format!("02:72:6b:00:{:02x}:{:02x}", idx >> 8, idx & 0xff);
            match run(&[
                "ip", "link", "add", &bridge, "address", &mac, "type", "bridge",
            ]) {
                Ok(_) => {}
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            }
            let host_ip = Ipv4Addr::from(base + 254);
            let net = PodNetwork {
                idx,
                bridge: bridge.clone(),
                host_ip,
                table: format!("rkh_{pid}_{idx:04x}"),
                pods: Mutex::new(HashMap::new()),
                next: Mutex::new(1),
                destroyed: AtomicBool::new(false),
            };
            // From here on, Drop removes what was made.
            let alias = format!("{ALIAS_PREFIX}{pid}");
            run(&["ip", "link", "set", &bridge, "alias", &alias])?;
            run(&[
                "ip",
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                &bridge,
            ])?;
            run(&["ip", "link", "set", &bridge, "up"])?;
            net.apply(&Ruleset::default())
                .context("installing the empty policy table")?;
            route_between_bridges(&bridge);
            if std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
                .is_ok_and(|v| v.trim() == "1")
            {
                tracing::info!(
                    "pod network: br_netfilter passes bridged traffic through iptables; \
                     a FORWARD policy of DROP on this host would cut pod-to-pod traffic"
                );
            }
            tracing::info!(%bridge, %host_ip, table = %net.table, "pod network: bridge up");
            return Ok(net);
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no free 10.64.0.0/10 subnet")))
            .context("creating the pod bridge")
    }

    /// The host's address on the bridge, which pods see as the host.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The nftables table this network programs (family `bridge`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The network of pod `key` (namespace/name): created on first use, the
    /// same namespace and IP for the bridge's lifetime afterwards.
    pub fn pod(&self, key: &str) -> Result<PodNet> {
        if self.destroyed.load(Ordering::SeqCst) {
            bail!("the pod network is gone");
        }
        let mut pods = crate::kubelet::lock(&self.pods);
        if let Some(p) = pods.get(key) {
            return Ok(p.clone());
        }
        let n = {
            let mut next = crate::kubelet::lock(&self.next);
            if *next > MAX_PODS {
                bail!("out of pod addresses on bridge {}", self.bridge);
            }
            let n = *next;
            *next += 1;
            n
        };
        let ip = Ipv4Addr::from(u32::from(subnet_base(self.idx)) + n);
        let pod = PodNet {
            ip,
            netns: format!("rkh-{}-{:04x}-{n}", std::process::id(), self.idx),
            veth: format!("rkh{:04x}p{n:02x}", self.idx),
        };
        if let Err(e) = self.plumb(&pod) {
            self.unplumb(&pod);
            return Err(e).with_context(|| format!("setting up the network of pod {key}"));
        }
        tracing::info!(pod = key, %ip, netns = %pod.netns, "pod network: namespace ready");
        pods.insert(key.to_string(), pod.clone());
        Ok(pod)
    }

    /// Tears down pod `key`'s namespace and veth (its processes are gone); a
    /// later `pod(key)` makes a new one with a new IP.
    pub fn forget(&self, key: &str) {
        let removed = crate::kubelet::lock(&self.pods).remove(key);
        if let Some(pod) = removed {
            self.unplumb(&pod);
        }
    }

    fn plumb(&self, pod: &PodNet) -> Result<()> {
        let ns = pod.netns.as_str();
        let alias = format!("{ALIAS_PREFIX}{}", std::process::id());
        run(&["ip", "netns", "add", ns])?;
        run(&[
            "ip", "link", "add", &pod.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        run(&["ip", "link", "set", &pod.veth, "alias", &alias])?;
        run(&["ip", "link", "set", &pod.veth, "master", &self.bridge, "up"])?;
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", pod.ip),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        run(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &self.host_ip.to_string(),
        ])?;
        Ok(())
    }

    fn unplumb(&self, pod: &PodNet) {
        // The veth goes with the namespace only once nothing holds the
        // namespace any more: delete it explicitly.
        let _ = run(&["ip", "link", "delete", &pod.veth]);
        let _ = run(&["ip", "netns", "delete", &pod.netns]);
    }

    /// Replaces the policy table with `rules`, atomically.
    pub fn apply(&self, rules: &Ruleset) -> Result<()> {
        if self.destroyed.load(Ordering::SeqCst) {
            bail!("the pod network is gone");
        }
        let script = rules.nft_script(&self.table, self.host_ip);
        nft_stdin(&["-f", "-"], &script)
    }

    /// Removes the table, every pod namespace and veth, and the bridge
    /// (once; later calls do nothing).
    pub fn destroy(&self) {
        if self.destroyed.swap(true, Ordering::SeqCst) {
            return;
        }
        let pods: Vec<PodNet> = crate::kubelet::lock(&self.pods)
            .drain()
            .map(|(_, p)| p)
            .collect();
        let _ = run(&["nft", "delete", "table", "bridge", &self.table]);
        for p in &pods {
            self.unplumb(p);
        }
        match run(&["ip", "link", "delete", &self.bridge]) {
            Ok(_) => tracing::info!(bridge = %self.bridge, "pod network: removed"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "pod network: removing the bridge"),
        }
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.destroy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netpol::PodInfo;
    use std::collections::BTreeMap;

    #[test]
    fn forward_chains_that_drop_are_found() {
        let list = "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n\
                    \tchain FORWARD {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n\
                    table inet fw {\n\tchain fwd {\n\t\ttype filter hook forward priority 0; policy accept;\n\t}\n}\n\
                    table bridge rkh_1_0001 {\n\tchain forward {\n\t\ttype filter hook forward priority 0; policy drop;\n\t}\n}\n\
                    table inet firewalld {\n\tchain filter_FORWARD {\n\t\ttype filter hook forward priority filter + 10; policy drop;\n\t}\n}\n";
        assert_eq!(
            nft_forward_drop_chains(list),
            [
                "nft table ip filter chain FORWARD",
                "nft table inet firewalld chain filter_FORWARD"
            ]
        );
    }

    /// The kernel takes the policy table with every kind of element, ipBlock
    /// ranges that overlap across rules among them (`nft --check` sends the
    /// transaction and aborts it: nothing is installed).
    #[test]
    fn policy_scripts_are_accepted_by_nft() {
        if let Some(why) = unavailable_reason() {
            crate::k8s::skip_or_panic("policy_scripts_are_accepted_by_nft", &why);
            return;
        }
        let pod = |name: &str, last: u8, app: &str| PodInfo {
            namespace: "a".into(),
            name: name.into(),
            ip: Ipv4Addr::new(10, 64, 0, last),
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            ports: vec![("raft".into(), crate::netpol::Proto::Tcp, 7101)],
        };
        let pods = [
            pod("server", 1, "server"),
            pod("client", 2, "client"),
            pod("other", 3, "other"),
        ];
        let policy = |v: serde_json::Value| -> k8s_openapi::api::networking::v1::NetworkPolicy {
            serde_json::from_value(v).expect("valid policy")
        };
        let policies = [
            policy(
                serde_json::json!({"metadata": {"name": "one", "namespace": "a"},
                "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                     "ports": [{"port": "raft"}, {"port": 80, "endPort": 90}]},
                    {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.64.0.0/24"]}}],
                     "ports": [{"port": 7201}, {"port": 7301, "protocol": "UDP"}]},
                    {"from": [{"ipBlock": {"cidr": "10.65.0.0/16"}}],
                     "ports": [{"port": 7201, "endPort": 7210}, {"port": 7301, "protocol": "SCTP"}]},
                    {"from": [{"ipBlock": {"cidr": "10.66.1.5/32"}}]}]}}),
            ),
            policy(
                serde_json::json!({"metadata": {"name": "two", "namespace": "a"},
                "spec": {"podSelector": {}, "ingress": [
                    {"ports": [{"port": 7101}]},
                    {"from": [{"podSelector": {"matchLabels": {"app": "other"}}},
                              {"ipBlock": {"cidr": "10.66.0.0/16"}}]}]}}),
            ),
        ];
        let rules = crate::netpol::Ruleset::compute(&policies, &pods, &BTreeMap::new());
        assert!(
            !rules.any.is_empty()
                && !rules.ports.is_empty()
                && !rules.blocks_any.is_empty()
                && !rules.blocks_ports.is_empty(),
            "every set has elements: {rules:?}"
        );
        let table = format!("rkh_{}_check", std::process::id());
        let script = rules.nft_script(&table, Ipv4Addr::new(10, 64, 0, 254));
        nft_stdin(&["--check", "-f", "-"], &script).expect("nft accepts the script");
        let empty =
            crate::netpol::Ruleset::default().nft_script(&table, Ipv4Addr::new(10, 64, 0, 254));
        nft_stdin(&["--check", "-f", "-"], &empty).expect("nft accepts the empty script");
    }
}
