//! NetworkPolicy evaluation for the kubelet bridge: from the policies, pods
//! and namespaces in the API to a [`Ruleset`] (which source may reach which
//! pod on which ports), and from a ruleset to an nftables table. Pure: no I/O.
//!
//! The enforced subset (networking.k8s.io/v1, ingress only):
//! - A policy applies to the pods of its namespace matched by `podSelector`
//!   (`matchLabels` and `matchExpressions` with `In`, `NotIn`, `Exists`,
//!   `DoesNotExist`; an empty selector matches every pod).
//! - It is an ingress policy when `policyTypes` lists `Ingress`, or when
//!   `policyTypes` is absent (as the API server defaults it). Egress rules are
//!   not enforced.
//! - A pod selected by no ingress policy accepts everything. A pod selected by
//!   at least one accepts only what the union of their `ingress` rules admits.
//! - A rule admits a source when `from` is absent or empty (every source
//!   address, a pod of this cluster or not), or when one of its peers
//!   matches: `podSelector` alone (pods of the policy's namespace),
//!   `namespaceSelector` alone (every pod of the matching namespaces, matched
//!   on the Namespace's labels), both (matching pods of matching namespaces),
//!   or `ipBlock` (`cidr` minus `except`: any source address in that range).
//!   Selector peers match only pods this bridge knows from its own API
//!   server; a pod of another cluster (another bridge, routed through the
//!   host) is admitted only by its address, through an `ipBlock` or a rule
//!   without `from`. IPv6 blocks admit nothing (pods are IPv4 only).
//! - A rule admits the ports listed in `ports` (protocol TCP by default, UDP,
//!   SCTP; a port number, a named container port of the destination pod, or a
//!   range with `endPort`; no `port` means every port of that protocol), or
//!   every port and protocol when `ports` is absent or empty.
//! - The host (the bridge IP: operator, probes, test code) is never filtered,
//!   in either direction.
//!
//! Where it is enforced: the bridge family's forward hook sees packets
//! between two pods of the bridge; its output hook sees packets the host
//! sends out through the bridge, which are either the host's own (from the
//! bridge IP, accepted) or routed by the host from another bridge's pod (from
//! that pod's IP, judged exactly as a pod of this bridge would be). Packets a
//! pod sends to another bridge leave through the host (the bridge's input
//! hook, which this table leaves alone) and are judged by the other
//! bridge's table, on its output hook.
//!
//! Filtering is stateless (no conntrack): every packet of a flow the rules do
//! not admit is dropped, so an established connection stops carrying data as
//! soon as a policy denies it. Real CNIs usually let established connections
//! live on. Without connection tracking the direction of a TCP/UDP/SCTP packet
//! is inferred from its ports: a port at or above [`EPHEMERAL_MIN`] (the
//! kernel's default ephemeral range, which every pod network namespace starts
//! with) is a client's port, so a packet from a port below it to a port at or
//! above it answers the flow opened to its source port; a packet the other way
//! round opens a flow to its destination port; a packet with both ports on the
//! same side passes when either reading is admitted. Ports admitted by a
//! policy must therefore lie below 32768. Other protocols (ICMP) count as
//! flows from their source to their destination.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The first port of the ephemeral range of every pod's network namespace.
pub const EPHEMERAL_MIN: u16 = 32768;

/// Labels of one object.
pub type Labels = BTreeMap<String, String>;

/// A transport protocol a policy port names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// A pod as policy evaluation sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: Labels,
    /// Named container ports: (name, protocol, number).
    pub ports: Vec<(String, Proto, u16)>,
}

impl PodInfo {
    /// The pod as policy evaluation sees it, given the IP the bridge gave it.
    pub fn from_pod(pod: &k8s_openapi::api::core::v1::Pod, ip: Ipv4Addr) -> PodInfo {
        let ports = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let name = p.name.clone()?;
                let proto = Proto::parse(p.protocol.as_deref())?;
                Some((name, proto, u16::try_from(p.container_port).ok()?))
            })
            .collect();
        PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            ip,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ports,
        }
    }
}

/// Whether `selector` matches `labels`. An unknown operator matches nothing,
/// as the API server would have rejected it.
pub fn selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_labels
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// Whether a policy restricts ingress.
fn is_ingress_policy(p: &NetworkPolicy) -> bool {
    match p.spec.as_ref().and_then(|s| s.policy_types.as_ref()) {
        Some(types) => types.iter().any(|t| t == "Ingress"),
        None => true,
    }
}

/// The addresses of an IPv4 CIDR as an inclusive range (host bits of the
/// network address ignored); `None` for IPv6 or anything unparsable.
fn ipv4_range(cidr: &str) -> Option<(u32, u32)> {
    let (net, len) = match cidr.split_once('/') {
        Some((n, l)) => (n, l.parse::<u32>().ok()?),
        None => (cidr, 32),
    };
    let net: Ipv4Addr = net.parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let lo = u32::from(net) & mask;
    Some((lo, lo | !mask))
}

fn cidr_contains(cidr: &str, ip: Ipv4Addr) -> bool {
    ipv4_range(cidr).is_some_and(|(lo, hi)| (lo..=hi).contains(&u32::from(ip)))
}

/// `ranges` without the addresses `cut` (all inclusive ranges).
fn subtract(ranges: Vec<(u32, u32)>, (clo, chi): (u32, u32)) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for (lo, hi) in ranges {
        if chi < lo || clo > hi {
            out.push((lo, hi));
            continue;
        }
        if clo > lo {
            out.push((lo, clo - 1));
        }
        if chi < hi {
            out.push((chi + 1, hi));
        }
    }
    out
}

/// The source addresses an ipBlock admits: `cidr` minus every `except`, as
/// sorted, disjoint, inclusive ranges. Empty when `cidr` is not IPv4; an
/// `except` that is not IPv4 removes nothing (as in [`peer_matches`]).
fn block_ranges(block: &IPBlock) -> Vec<(u32, u32)> {
    let Some(whole) = ipv4_range(&block.cidr) else {
        return Vec::new();
    };
    block
        .except
        .iter()
        .flatten()
        .filter_map(|e| ipv4_range(e))
        .fold(vec![whole], subtract)
}

/// Sorted, disjoint inclusive ranges covering the same values as `ranges`,
/// adjacent ones joined.
fn merge_ranges<T>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)>
where
    T: Copy + Ord + Into<u64>,
{
    ranges.sort();
    let mut merged: Vec<(T, T)> = Vec::new();
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if lo.into() <= last.1.into() + 1 => {
                last.1 = last.1.max(hi);
            }
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

/// A source address range and a port range, both inclusive.
type Rect = ((u32, u32), (u16, u16));

/// Cuts `rects` (source address range, port range) into rectangles that do
/// not overlap (nftables refuses overlapping elements of a concatenated
/// interval set) and leave out the addresses of `skip`: the source axis is
/// split at every boundary, each piece gets the merged port ranges of the
/// rectangles covering it, and neighbouring pieces with the same ports are
/// joined again.
fn disjoint_rects(rects: &[Rect], skip: &[(u32, u32)]) -> Vec<Rect> {
    let mut cuts: BTreeSet<u64> = BTreeSet::new();
    for ((lo, hi), _) in rects {
        cuts.insert(u64::from(*lo));
        cuts.insert(u64::from(*hi) + 1);
    }
    let cuts: Vec<u64> = cuts.into_iter().collect();
    // Source ranges, each with the merged port ranges admitted from it.
    type Piece = ((u32, u32), Vec<(u16, u16)>);
    let mut pieces: Vec<Piece> = Vec::new();
    for w in cuts.windows(2) {
        // Every address of [w[0], w[1]) is covered by the same rectangles.
        let (lo, hi) = (w[0], w[1] - 1);
        let (Ok(lo), Ok(hi)) = (u32::try_from(lo), u32::try_from(hi)) else {
            continue;
        };
        let ports = merge_ranges(
            rects
                .iter()
                .filter(|((a, b), _)| *a <= lo && hi <= *b)
                .map(|(_, p)| *p)
                .collect(),
        );
        if ports.is_empty() {
            continue;
        }
        let left = skip.iter().copied().fold(vec![(lo, hi)], subtract);
        for range in left {
            match pieces.last_mut() {
                Some((last, p)) if u64::from(last.1) + 1 == u64::from(range.0) && *p == ports => {
                    last.1 = range.1;
                }
                _ => pieces.push((range, ports.clone())),
            }
        }
    }
    pieces
        .into_iter()
        .flat_map(|(range, ports)| ports.into_iter().map(move |p| (range, p)))
        .collect()
}

fn peer_matches(
    peer: &NetworkPolicyPeer,
    policy_ns: &str,
    src: &PodInfo,
    namespaces: &BTreeMap<String, Labels>,
) -> bool {
    if let Some(block) = &peer.ip_block {
        return cidr_contains(&block.cidr, src.ip)
            && !block
                .except
                .iter()
                .flatten()
                .any(|e| cidr_contains(e, src.ip));
    }
    let ns_ok = match &peer.namespace_selector {
        Some(sel) => {
            let empty = Labels::new();
            let labels = namespaces.get(&src.namespace).unwrap_or(&empty);
            selector_matches(sel, labels)
        }
        None => src.namespace == policy_ns,
    };
    let pod_ok = match &peer.pod_selector {
        Some(sel) => selector_matches(sel, &src.labels),
        None => peer.namespace_selector.is_some(),
    };
    ns_ok && pod_ok
}

/// What one rule admits on a destination pod: every port, or these ranges.
enum Admit {
    All,
    Ranges(Vec<(Proto, u16, u16)>),
}

fn admitted_ports(ports: Option<&[NetworkPolicyPort]>, dst: &PodInfo) -> Admit {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return Admit::All;
    };
    let mut out = Vec::new();
    for p in ports {
        let Some(proto) = Proto::parse(p.protocol.as_deref()) else {
            continue;
        };
        match &p.port {
            None => out.push((proto, 0, u16::MAX)),
            Some(IntOrString::Int(n)) => {
                let Ok(lo) = u16::try_from(*n) else { continue };
                let hi = p
                    .end_port
                    .and_then(|e| u16::try_from(e).ok())
                    .filter(|e| *e >= lo)
                    .unwrap_or(lo);
                out.push((proto, lo, hi));
            }
            Some(IntOrString::String(name)) => {
                for (n, pr, num) in &dst.ports {
                    if n == name && *pr == proto {
                        out.push((proto, *num, *num));
                    }
                }
            }
        }
    }
    Admit::Ranges(out)
}

/// Which source may reach which pod: the result of evaluating the policies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// The IPs of the pods the rules were computed over.
    pub pods: BTreeSet<Ipv4Addr>,
    /// Pods selected by at least one ingress policy.
    pub isolated: BTreeSet<Ipv4Addr>,
    /// (source, isolated destination) admitted on every port and protocol.
    pub any: BTreeSet<(Ipv4Addr, Ipv4Addr)>,
    /// (source, isolated destination, protocol, first port, last port)
    /// admitted, ranges merged, never for a pair in `any`.
    pub ports: BTreeSet<(Ipv4Addr, Ipv4Addr, Proto, u16, u16)>,
    /// Source address ranges admitted whatever pod (if any) holds the
    /// address: `ipBlock` peers, and rules without `from` (every address).
    /// (first source, last source, isolated destination) admitted on every
    /// port and protocol; the ranges of one destination merged.
    pub blocks_any: BTreeSet<(Ipv4Addr, Ipv4Addr, Ipv4Addr)>,
    /// (first source, last source, isolated destination, protocol, first
    /// port, last port) admitted: no two overlap (nftables requires it), and
    /// none covers an address `blocks_any` admits to that destination.
    pub blocks_ports: BTreeSet<(Ipv4Addr, Ipv4Addr, Ipv4Addr, Proto, u16, u16)>,
}

impl Ruleset {
    /// Evaluates `policies` over `pods` (those with an IP on the bridge);
    /// `namespaces` maps a namespace to its labels.
    pub fn compute(
        policies: &[NetworkPolicy],
        pods: &[PodInfo],
        namespaces: &BTreeMap<String, Labels>,
    ) -> Ruleset {
        let mut rs = Ruleset {
            pods: pods.iter().map(|p| p.ip).collect(),
            ..Ruleset::default()
        };
        let mut ranges: BTreeMap<(Ipv4Addr, Ipv4Addr, Proto), Vec<(u16, u16)>> = BTreeMap::new();
        // Per destination: source ranges admitted on every port, and (source
        // range, port range) rectangles per protocol.
        let mut block_any: BTreeMap<Ipv4Addr, Vec<(u32, u32)>> = BTreeMap::new();
        let mut block_rects: BTreeMap<(Ipv4Addr, Proto), Vec<Rect>> = BTreeMap::new();
        for policy in policies.iter().filter(|p| is_ingress_policy(p)) {
            let Some(spec) = &policy.spec else { continue };
            let policy_ns = policy.metadata.namespace.as_deref().unwrap_or_default();
            let empty = LabelSelector::default();
            let selector = spec.pod_selector.as_ref().unwrap_or(&empty);
            for dst in pods
                .iter()
                .filter(|d| d.namespace == policy_ns && selector_matches(selector, &d.labels))
            {
                rs.isolated.insert(dst.ip);
                for rule in spec.ingress.iter().flatten() {
                    let admit = admitted_ports(rule.ports.as_deref(), dst);
                    let from = rule.from.as_deref().unwrap_or_default();
                    for src in pods.iter().filter(|s| s.ip != dst.ip) {
                        let admitted = from.is_empty()
                            || from
                                .iter()
                                .any(|peer| peer_matches(peer, policy_ns, src, namespaces));
                        if !admitted {
                            continue;
                        }
                        match &admit {
                            Admit::All => {
                                rs.any.insert((src.ip, dst.ip));
                            }
                            Admit::Ranges(r) => {
                                for (proto, lo, hi) in r {
                                    ranges
                                        .entry((src.ip, dst.ip, *proto))
                                        .or_default()
                                        .push((*lo, *hi));
                                }
                            }
                        }
                    }
                    // The same rule for addresses, known pods or not.
                    let sources: Vec<(u32, u32)> = if from.is_empty() {
                        vec![(0, u32::MAX)]
                    } else {
                        from.iter()
                            .filter_map(|peer| peer.ip_block.as_ref())
                            .flat_map(block_ranges)
                            .collect()
                    };
                    match &admit {
                        Admit::All => block_any.entry(dst.ip).or_default().extend(sources),
                        Admit::Ranges(r) => {
                            for (proto, lo, hi) in r {
                                block_rects
                                    .entry((dst.ip, *proto))
                                    .or_default()
                                    .extend(sources.iter().map(|s| (*s, (*lo, *hi))));
                            }
                        }
                    }
                }
            }
        }
        for ((src, dst, proto), r) in ranges {
            if rs.any.contains(&(src, dst)) {
                continue;
            }
            for (lo, hi) in merge_ranges(r) {
                rs.ports.insert((src, dst, proto, lo, hi));
            }
        }
        let block_any: BTreeMap<Ipv4Addr, Vec<(u32, u32)>> = block_any
            .into_iter()
            .map(|(dst, r)| (dst, merge_ranges(r)))
            .collect();
        for (dst, r) in &block_any {
            for (lo, hi) in r {
                rs.blocks_any
                    .insert((Ipv4Addr::from(*lo), Ipv4Addr::from(*hi), *dst));
            }
        }
        for ((dst, proto), rects) in block_rects {
            let skip = block_any.get(&dst).map(Vec::as_slice).unwrap_or_default();
            for ((lo, hi), (plo, phi)) in disjoint_rects(&rects, skip) {
                rs.blocks_ports.insert((
                    Ipv4Addr::from(lo),
                    Ipv4Addr::from(hi),
                    dst,
                    proto,
                    plo,
                    phi,
                ));
            }
        }
        rs
    }

    /// Whether `src` (a pod of this bridge or any other address) may reach
    /// `dst` on every port and protocol, ICMP among them.
    pub fn admits_any_protocol(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        !self.isolated.contains(&dst)
            || self.any.contains(&(src, dst))
            || self
                .blocks_any
                .iter()
                .any(|(lo, hi, d)| *d == dst && (*lo..=*hi).contains(&src))
    }

    /// Whether a flow from `src` (a pod of this bridge or any other address)
    /// to `dst` port `port` is admitted.
    pub fn admits_flow(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: Proto, port: u16) -> bool {
        self.admits_any_protocol(src, dst)
            || self
                .ports
                .range((src, dst, proto, 0, 0)..=(src, dst, proto, u16::MAX, u16::MAX))
                .any(|(_, _, _, lo, hi)| (*lo..=*hi).contains(&port))
            || self.blocks_ports.iter().any(|(lo, hi, d, p, plo, phi)| {
                *d == dst
                    && *p == proto
                    && (*lo..=*hi).contains(&src)
                    && (*plo..=*phi).contains(&port)
            })
    }

    /// Whether a packet between two addresses passes, exactly as the nftables
    /// table of [`Ruleset::nft_script`] decides (see the module docs) for a
    /// packet between two pods of the bridge, or from an address routed in
    /// from elsewhere (another bridge's pod) to a pod of the bridge.
    pub fn admits_packet(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: Proto,
        sport: u16,
        dport: u16,
    ) -> bool {
        let request = self.admits_flow(src, dst, proto, dport);
        let reply = self.admits_flow(dst, src, proto, sport);
        match (sport >= EPHEMERAL_MIN, dport >= EPHEMERAL_MIN) {
            (false, true) => reply,
            (true, false) => request,
            _ => request || reply,
        }
    }

    /// An nftables script replacing table `bridge <table>` atomically (one
    /// `nft -f` transaction) with two base chains that judge packets by the
    /// same rules (chain `judge`):
    /// - `forward`: packets between two pods of the bridge. Traffic from or
    ///   to `host_ip` never reaches this hook (it is local to the bridge),
    ///   and is accepted explicitly besides.
    /// - `output`: packets the host sends out through the bridge. Those from
    ///   `host_ip` (the operator, probes, test code) pass; any other source
    ///   is a packet the host routed in from elsewhere (a pod of another
    ///   bridge), judged as a pod of this bridge would be.
    pub fn nft_script(&self, table: &str, host_ip: Ipv4Addr) -> String {
        let mut s = String::new();
        let elements = |items: Vec<String>| -> String {
            if items.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", items.join(", "))
            }
        };
        let range = |lo: &dyn std::fmt::Display, hi: &dyn std::fmt::Display| {
            let (lo, hi) = (lo.to_string(), hi.to_string());
            if lo == hi {
                lo
            } else {
                format!("{lo}-{hi}")
            }
        };
        let isolated = elements(self.isolated.iter().map(|ip| ip.to_string()).collect());
        let any = elements(self.any.iter().map(|(s, d)| format!("{s} . {d}")).collect());
        let ports = elements(
            self.ports
                .iter()
                .map(|(s, d, p, lo, hi)| format!("{s} . {d} . {} . {}", p.nft(), range(lo, hi)))
                .collect(),
        );
        let blocks_any = elements(
            self.blocks_any
                .iter()
                .map(|(lo, hi, d)| format!("{} . {d}", range(lo, hi)))
                .collect(),
        );
        let blocks_ports = elements(
            self.blocks_ports
                .iter()
                .map(|(lo, hi, d, p, plo, phi)| {
                    format!(
                        "{} . {d} . {} . {}",
                        range(lo, hi),
                        p.nft(),
                        range(plo, phi)
                    )
                })
                .collect(),
        );
        let e = EPHEMERAL_MIN;
        let l4 = "meta l4proto { tcp, udp, sctp }";
        // The empty declaration makes the delete succeed on the first run.
        let _ = write!(
            s,
            "table bridge {table} {{}}\n\
             delete table bridge {table}\n\
             table bridge {table} {{\n\
             \tset isolated {{ type ipv4_addr;{isolated} }}\n\
             \tset any {{ type ipv4_addr . ipv4_addr;{any} }}\n\
             \tset ports {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval;{ports} }}\n\
             \tset blocks_any {{ type ipv4_addr . ipv4_addr; flags interval;{blocks_any} }}\n\
             \tset blocks_ports {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval;{blocks_ports} }}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority 0; policy accept;\n\
             \t\tmeta protocol != ip accept\n\
             \t\tip saddr {host_ip} accept\n\
             \t\tip daddr {host_ip} accept\n\
             \t\tgoto judge\n\
             \t}}\n\
             \tchain output {{\n\
             \t\ttype filter hook output priority 0; policy accept;\n\
             \t\tmeta protocol != ip accept\n\
             \t\tip saddr {host_ip} accept\n\
             \t\tgoto judge\n\
             \t}}\n\
             \tchain judge {{\n\
             \t\tmeta l4proto != {{ tcp, udp, sctp }} goto request_only\n\
             \t\tth sport < {e} th dport >= {e} goto reply_only\n\
             \t\tth sport >= {e} th dport < {e} goto request_only\n\
             \t\tjump request_ok\n\
             \t\tjump reply_ok\n\
             \t\tcounter drop\n\
             \t}}\n\
             \tchain request_only {{\n\
             \t\tjump request_ok\n\
             \t\tcounter drop\n\
             \t}}\n\
             \tchain reply_only {{\n\
             \t\tjump reply_ok\n\
             \t\tcounter drop\n\
             \t}}\n\
             \tchain request_ok {{\n\
             \t\tip daddr != @isolated accept\n\
             \t\tip saddr . ip daddr @any accept\n\
             \t\t{l4} ip saddr . ip daddr . meta l4proto . th dport @ports accept\n\
             \t\tip saddr . ip daddr @blocks_any accept\n\
             \t\t{l4} ip saddr . ip daddr . meta l4proto . th dport @blocks_ports accept\n\
             \t}}\n\
             \tchain reply_ok {{\n\
             \t\tip saddr != @isolated accept\n\
             \t\tip daddr . ip saddr @any accept\n\
             \t\t{l4} ip daddr . ip saddr . meta l4proto . th sport @ports accept\n\
             \t\tip daddr . ip saddr @blocks_any accept\n\
             \t\t{l4} ip daddr . ip saddr . meta l4proto . th sport @blocks_ports accept\n\
             \t}}\n\
             }}\n"
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, last: u8, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            ip: Ipv4Addr::new(10, 64, 0, last),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: vec![("raft".into(), Proto::Tcp, 7101)],
        }
    }

    fn policy(v: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(v).unwrap()
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 64, 0, last)
    }

    fn labels(l: &[(&str, &str)]) -> Labels {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let l = labels(&[("app", "store"), ("tier", "db")]);
        assert!(selector_matches(&sel(json!({})), &l));
        assert!(selector_matches(&sel(json!({})), &Labels::new()));
        assert!(selector_matches(
            &sel(json!({"matchLabels": {"app": "store"}})),
            &l
        ));
        assert!(!selector_matches(
            &sel(json!({"matchLabels": {"app": "web"}})),
            &l
        ));
        assert!(!selector_matches(
            &sel(json!({"matchLabels": {"app": "store", "x": "y"}})),
            &l
        ));
        let expr = |op: &str, values: &[&str]| {
            sel(json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]}))
        };
        assert!(selector_matches(&expr("In", &["db", "cache"]), &l));
        assert!(!selector_matches(&expr("In", &["cache"]), &l));
        assert!(!selector_matches(&expr("In", &["db"]), &Labels::new()));
        assert!(selector_matches(&expr("NotIn", &["cache"]), &l));
        assert!(!selector_matches(&expr("NotIn", &["db"]), &l));
        assert!(selector_matches(&expr("NotIn", &["db"]), &Labels::new()));
        assert!(selector_matches(&expr("Exists", &[]), &l));
        assert!(!selector_matches(&expr("Exists", &[]), &Labels::new()));
        assert!(!selector_matches(&expr("DoesNotExist", &[]), &l));
        assert!(selector_matches(&expr("DoesNotExist", &[]), &Labels::new()));
        assert!(!selector_matches(&expr("Bogus", &[]), &l));
        // matchLabels and matchExpressions are ANDed.
        let both = sel(json!({"matchLabels": {"app": "store"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}));
        assert!(!selector_matches(&both, &l));
    }

    #[test]
    fn unselected_pods_accept_everything() {
        let pods = [
            pod("a", "p1", 1, &[("app", "store")]),
            pod("a", "p2", 2, &[]),
        ];
        let p = policy(json!({"metadata": {"name": "np", "namespace": "a"},
            "spec": {"podSelector": {"matchLabels": {"app": "store"}}, "policyTypes": ["Ingress"]}}));
        let rs = Ruleset::compute(&[p], &pods, &BTreeMap::new());
        // p1 is selected by a policy without rules: it accepts nothing.
        assert!(!rs.admits_flow(ip(2), ip(1), Proto::Tcp, 7101));
        assert!(rs.admits_flow(ip(1), ip(2), Proto::Tcp, 7101));
        assert_eq!(rs.isolated, BTreeSet::from([ip(1)]));
        assert_eq!(rs.pods, BTreeSet::from([ip(1), ip(2)]));
        // No policy at all: everything passes.
        let rs = Ruleset::compute(&[], &pods, &BTreeMap::new());
        assert!(rs.admits_flow(ip(2), ip(1), Proto::Tcp, 1));
        assert!(rs.isolated.is_empty());
    }

    #[test]
    fn egress_only_policies_do_not_isolate_ingress() {
        let pods = [pod("a", "p1", 1, &[]), pod("a", "p2", 2, &[])];
        let p = policy(json!({"metadata": {"name": "np", "namespace": "a"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}));
        let rs = Ruleset::compute(&[p], &pods, &BTreeMap::new());
        assert!(rs.isolated.is_empty());
        // Absent policyTypes means Ingress.
        let p = policy(json!({"metadata": {"name": "np", "namespace": "a"},
            "spec": {"podSelector": {}}}));
        let rs = Ruleset::compute(&[p], &pods, &BTreeMap::new());
        assert_eq!(rs.isolated.len(), 2);
    }

    #[test]
    fn policies_are_unioned_per_destination() {
        let pods = [
            pod("a", "server", 1, &[("app", "store")]),
            pod("a", "peer", 2, &[("role", "peer")]),
            pod("a", "admin", 3, &[("role", "admin")]),
            pod("a", "other", 4, &[]),
            pod("b", "peer-elsewhere", 5, &[("role", "peer")]),
        ];
        let raft = policy(json!({"metadata": {"name": "raft", "namespace": "a"},
            "spec": {"podSelector": {"matchLabels": {"app": "store"}}, "policyTypes": ["Ingress"],
              "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "peer"}}}],
                           "ports": [{"port": 7101}]}]}}));
        let admin = policy(json!({"metadata": {"name": "admin", "namespace": "a"},
            "spec": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
              "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "admin"}}}],
                           "ports": [{"port": 7300, "endPort": 7302}, {"port": 7301, "protocol": "UDP"}]},
                          {"ports": [{"port": 7201}]}]}}));
        let rs = Ruleset::compute(&[raft, admin], &pods, &BTreeMap::new());
        let tcp = |s, d, port| rs.admits_flow(ip(s), ip(d), Proto::Tcp, port);
        assert!(tcp(2, 1, 7101));
        assert!(!tcp(3, 1, 7101));
        assert!(!tcp(4, 1, 7101));
        assert!(
            !tcp(5, 1, 7101),
            "podSelector alone is the policy's namespace"
        );
        assert!(tcp(3, 1, 7300) && tcp(3, 1, 7301) && tcp(3, 1, 7302));
        assert!(!tcp(3, 1, 7303) && !tcp(2, 1, 7301));
        assert!(rs.admits_flow(ip(3), ip(1), Proto::Udp, 7301));
        assert!(!rs.admits_flow(ip(3), ip(1), Proto::Udp, 7300));
        // A rule without `from` admits every pod, in every namespace.
        assert!(tcp(4, 1, 7201) && tcp(5, 1, 7201));
        // Unselected pods accept everything.
        assert!(tcp(1, 4, 9999));
    }

    #[test]
    fn namespace_selectors_use_namespace_labels() {
        let pods = [
            pod("a", "server", 1, &[]),
            pod("ops", "op", 2, &[("app", "op")]),
            pod("dev", "op", 3, &[("app", "op")]),
        ];
        let ns = BTreeMap::from([
            ("ops".to_string(), labels(&[("team", "sre")])),
            ("dev".to_string(), labels(&[("team", "dev")])),
        ]);
        let p = policy(json!({"metadata": {"name": "np", "namespace": "a"},
            "spec": {"podSelector": {}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"team": "sre"}}}]}]}}));
        let rs = Ruleset::compute(&[p], &pods, &ns);
        assert!(rs.admits_flow(ip(2), ip(1), Proto::Tcp, 1));
        assert!(!rs.admits_flow(ip(3), ip(1), Proto::Tcp, 1));
        assert!(rs.any.contains(&(ip(2), ip(1))));
    }

    #[test]
    fn ip_blocks_named_ports_and_merging() {
        let pods = [
            pod("a", "server", 1, &[]),
            pod("a", "c2", 2, &[]),
            pod("a", "c9", 9, &[]),
        ];
        let p = policy(json!({"metadata": {"name": "np", "namespace": "a"},
            "spec": {"podSelector": {}, "ingress": [
                {"from": [{"ipBlock": {"cidr": "10.64.0.0/28", "except": ["10.64.0.8/29"]}}],
                 "ports": [{"port": "raft"}, {"port": 80, "endPort": 90}, {"port": 85, "endPort": 100}, {"port": 101}]}]}}));
        let rs = Ruleset::compute(&[p], &pods, &BTreeMap::new());
        assert!(rs.admits_flow(ip(2), ip(1), Proto::Tcp, 7101));
        assert!(!rs.admits_flow(ip(9), ip(1), Proto::Tcp, 7101));
        assert!(rs.ports.contains(&(ip(2), ip(1), Proto::Tcp, 80, 101)));
        assert!(rs.ports.contains(&(ip(2), ip(1), Proto::Tcp, 7101, 7101)));
        // c2 is isolated too (podSelector {}), and only c2 itself is not a
        // source of its own rules.
        assert!(rs.admits_flow(ip(1), ip(2), Proto::Tcp, 7101));
    }

    #[test]
    fn packets_are_judged_by_the_flow_they_belong_to() {
        let pods = [
            pod("a", "server", 1, &[("app", "store")]),
            pod("a", "client", 2, &[("app", "store")]),
            pod("a", "stranger", 3, &[]),
        ];
        let p = policy(json!({"metadata": {"name": "np", "namespace": "a"},
            "spec": {"podSelector": {"matchLabels": {"app": "store"}}, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "store"}}}], "ports": [{"port": 7101}]}]}}));
        let rs = Ruleset::compute(&[p], &pods, &BTreeMap::new());
        let pkt = |s, d, sp, dp| rs.admits_packet(ip(s), ip(d), Proto::Tcp, sp, dp);
        // client -> server:7101 and the replies, though the client itself
        // admits nothing on its ephemeral port.
        assert!(pkt(2, 1, 40000, 7101));
        assert!(pkt(1, 2, 7101, 40000));
        // The stranger is not admitted, in either direction of its flow,
        // although it is not isolated itself.
        assert!(!pkt(3, 1, 40000, 7101));
        assert!(!pkt(1, 3, 7101, 40000));
        // The server may open flows to the stranger (not isolated).
        assert!(pkt(1, 3, 40000, 8080));
        assert!(pkt(3, 1, 8080, 40000));
        // But not to the client on a port the client does not admit.
        assert!(!pkt(1, 2, 40000, 8080));
    }

    #[test]
    fn the_nft_script_replaces_the_table() {
        let pods = [
            pod("a", "server", 1, &[("app", "store")]),
            pod("a", "client", 2, &[]),
        ];
        let p = policy(json!({"metadata": {"name": "np", "namespace": "a"},
            "spec": {"podSelector": {"matchLabels": {"app": "store"}}, "ingress": [
                {"ports": [{"port": 7101}, {"port": 80, "endPort": 81}]}]}}));
        let rs = Ruleset::compute(&[p], &pods, &BTreeMap::new());
        let script = rs.nft_script("rkh_1_0001", Ipv4Addr::new(10, 64, 0, 254));
        assert!(script.starts_with(
            "table bridge rkh_1_0001 {}\ndelete table bridge rkh_1_0001\ntable bridge rkh_1_0001 {"
        ));
        assert!(script.contains("set isolated { type ipv4_addr; elements = { 10.64.0.1 }; }"));
        assert!(script
            .contains("10.64.0.2 . 10.64.0.1 . tcp . 80-81, 10.64.0.2 . 10.64.0.1 . tcp . 7101"));
        assert!(script.contains("set any { type ipv4_addr . ipv4_addr; }"));
        assert!(script.contains("ip saddr 10.64.0.254 accept"));
        // The rule has no `from`: every address, as a range.
        assert!(script.contains(
            "set blocks_ports { type ipv4_addr . ipv4_addr . inet_proto . inet_service; \
             flags interval; elements = { 0.0.0.0-255.255.255.255 . 10.64.0.1 . tcp . 80-81, \
             0.0.0.0-255.255.255.255 . 10.64.0.1 . tcp . 7101 }; }"
        ));
        assert!(script.contains("set blocks_any { type ipv4_addr . ipv4_addr; flags interval; }"));
        // Pod to pod on the forward hook; routed in from elsewhere on the
        // output hook, where only the host's own packets skip the rules.
        assert!(script.contains(
            "\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n\
             \t\tmeta protocol != ip accept\n\t\tip saddr 10.64.0.254 accept\n\
             \t\tip daddr 10.64.0.254 accept\n\t\tgoto judge\n\t}"
        ));
        assert!(script.contains(
            "\tchain output {\n\t\ttype filter hook output priority 0; policy accept;\n\
             \t\tmeta protocol != ip accept\n\t\tip saddr 10.64.0.254 accept\n\
             \t\tgoto judge\n\t}"
        ));
        assert!(script.contains("ip saddr . ip daddr @blocks_any accept"));
        assert!(
            script.contains("ip daddr . ip saddr . meta l4proto . th sport @blocks_ports accept")
        );
    }

    fn addr(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ip_blocks_admit_addresses_the_bridge_does_not_know() {
        let pods = [
            pod("a", "server", 1, &[("app", "server")]),
            pod("a", "client", 2, &[]),
        ];
        let p = policy(json!({"metadata": {"name": "np", "namespace": "a"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [
                {"from": [{"ipBlock": {"cidr": "10.65.0.0/16",
                                       "except": ["10.65.3.0/24", "10.65.4.7/32", "fd00::/8"]}}],
                 "ports": [{"port": 7101}]},
                {"from": [{"ipBlock": {"cidr": "192.168.1.9/24"}}, {"ipBlock": {"cidr": "fd00::/8"}}]}]}}));
        let rs = Ruleset::compute(&[p], &pods, &BTreeMap::new());
        let server = ip(1);
        let tcp = |src: &str, port| rs.admits_flow(addr(src), server, Proto::Tcp, port);
        // Inside the cidr, not in `except`: admitted on the rule's port only.
        assert!(tcp("10.65.0.0", 7101) && tcp("10.65.1.9", 7101) && tcp("10.65.255.255", 7101));
        assert!(tcp("10.65.4.6", 7101) && tcp("10.65.4.8", 7101));
        assert!(!tcp("10.65.1.9", 7102) && !tcp("10.65.1.9", 7100));
        assert!(!rs.admits_flow(addr("10.65.1.9"), server, Proto::Udp, 7101));
        assert!(!rs.admits_any_protocol(addr("10.65.1.9"), server));
        // In an `except`, or outside the cidr: refused.
        assert!(!tcp("10.65.3.0", 7101) && !tcp("10.65.3.200", 7101));
        assert!(!tcp("10.65.4.7", 7101));
        assert!(!tcp("10.66.0.0", 7101) && !tcp("10.64.255.255", 7101));
        // A rule without ports: every port and protocol; host bits of the
        // cidr are ignored.
        assert!(tcp("192.168.1.0", 1) && tcp("192.168.1.255", 65535));
        assert!(rs.admits_any_protocol(addr("192.168.1.77"), server));
        assert!(!rs.admits_any_protocol(addr("192.168.2.0"), server));
        // The known pod outside every block is refused too.
        assert!(!rs.admits_flow(ip(2), server, Proto::Tcp, 7101));
        // Packets of an admitted flow pass both ways; of a refused one neither.
        let pkt = |s: &str, d, sp, dp| rs.admits_packet(addr(s), d, Proto::Tcp, sp, dp);
        assert!(pkt("10.65.1.9", server, 40000, 7101));
        assert!(rs.admits_packet(server, addr("10.65.1.9"), Proto::Tcp, 7101, 40000));
        assert!(!pkt("10.65.3.5", server, 40000, 7101));
        assert!(!rs.admits_packet(server, addr("10.65.3.5"), Proto::Tcp, 7101, 40000));
        // The unselected client accepts everything, from anywhere.
        assert!(rs.admits_flow(addr("172.16.0.1"), ip(2), Proto::Tcp, 9));
        // As sets: the ranges of cidr minus except; IPv6 is ignored.
        let r = |lo: &str, hi: &str| (addr(lo), addr(hi), server, Proto::Tcp, 7101, 7101);
        assert_eq!(
            rs.blocks_ports,
            BTreeSet::from([
                r("10.65.0.0", "10.65.2.255"),
                r("10.65.4.0", "10.65.4.6"),
                r("10.65.4.8", "10.65.255.255"),
            ])
        );
        assert_eq!(
            rs.blocks_any,
            BTreeSet::from([(addr("192.168.1.0"), addr("192.168.1.255"), server)])
        );
        let script = rs.nft_script("rkh_1_0001", Ipv4Addr::new(10, 64, 0, 254));
        assert!(script.contains("10.65.4.8-10.65.255.255 . 10.64.0.1 . tcp . 7101"));
        assert!(script.contains("192.168.1.0-192.168.1.255 . 10.64.0.1"));
    }

    #[test]
    fn rules_without_from_admit_every_address() {
        let pods = [pod("a", "server", 1, &[])];
        let p = policy(json!({"metadata": {"name": "np", "namespace": "a"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "raft"}]}]}}));
        let rs = Ruleset::compute(&[p], &pods, &BTreeMap::new());
        assert!(rs.admits_flow(addr("203.0.113.5"), ip(1), Proto::Tcp, 7101));
        assert!(!rs.admits_flow(addr("203.0.113.5"), ip(1), Proto::Tcp, 7201));
        let p = policy(json!({"metadata": {"name": "np", "namespace": "a"},
            "spec": {"podSelector": {}, "ingress": [{}]}}));
        let rs = Ruleset::compute(&[p], &pods, &BTreeMap::new());
        assert!(rs.admits_any_protocol(addr("0.0.0.0"), ip(1)));
        assert!(rs.admits_any_protocol(addr("255.255.255.255"), ip(1)));
        // No rule at all: nothing.
        let p = policy(json!({"metadata": {"name": "np", "namespace": "a"},
            "spec": {"podSelector": {}}}));
        let rs = Ruleset::compute(&[p], &pods, &BTreeMap::new());
        assert!(!rs.admits_flow(addr("203.0.113.5"), ip(1), Proto::Tcp, 7101));
        assert!(rs.blocks_any.is_empty() && rs.blocks_ports.is_empty());
    }

    /// Overlapping blocks of several rules and policies, the way nftables
    /// needs them: no two elements of `blocks_ports` overlap, none covers an
    /// address `blocks_any` admits, and together they admit exactly what the
    /// rules do.
    #[test]
    fn overlapping_ip_blocks_become_disjoint_elements() {
        let pods = [pod("a", "server", 1, &[]), pod("a", "other", 2, &[])];
        let one = policy(json!({"metadata": {"name": "one", "namespace": "a"},
            "spec": {"podSelector": {}, "ingress": [
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 80}]},
                {"from": [{"ipBlock": {"cidr": "10.1.0.0/16"}}], "ports": [{"port": 85, "endPort": 90}]},
                {"from": [{"ipBlock": {"cidr": "10.1.2.0/24"}}], "ports": [{"port": 81, "endPort": 84}, {"port": 443}]}]}}));
        let two = policy(json!({"metadata": {"name": "two", "namespace": "a"},
            "spec": {"podSelector": {}, "ingress": [
                {"from": [{"ipBlock": {"cidr": "10.2.0.0/16", "except": ["10.2.1.0/24"]}},
                          {"ipBlock": {"cidr": "10.1.2.128/25"}}]}]}}));
        let rs = Ruleset::compute(&[one, two], &pods, &BTreeMap::new());
        let server = ip(1);
        let mine: Vec<_> = rs.blocks_ports.iter().filter(|e| e.2 == server).collect();
        for (i, a) in mine.iter().enumerate() {
            for b in &mine[i + 1..] {
                let src = a.0 <= b.1 && b.0 <= a.1;
                let port = a.3 == b.3 && a.4 <= b.5 && b.4 <= a.5;
                assert!(!(src && port), "{a:?} overlaps {b:?}");
            }
            for (lo, hi, d) in &rs.blocks_any {
                assert!(
                    *d != server || a.1 < *lo || *hi < a.0,
                    "{a:?} in blocks_any"
                );
            }
        }
        let expect = |src: &str, port: u16| -> bool {
            let s = addr(src);
            let within = |c: &str| cidr_contains(c, s);
            (within("10.2.0.0/16") && !within("10.2.1.0/24"))
                || within("10.1.2.128/25")
                || (within("10.0.0.0/8") && port == 80)
                || (within("10.1.0.0/16") && (85..=90).contains(&port))
                || (within("10.1.2.0/24") && ((81..=84).contains(&port) || port == 443))
        };
        let sources = [
            "9.255.255.255",
            "10.0.0.0",
            "10.0.255.255",
            "10.1.0.0",
            "10.1.1.255",
            "10.1.2.0",
            "10.1.2.127",
            "10.1.2.128",
            "10.1.2.255",
            "10.1.3.0",
            "10.1.255.255",
            "10.2.0.0",
            "10.2.0.255",
            "10.2.1.0",
            "10.2.1.255",
            "10.2.2.0",
            "10.2.255.255",
            "10.3.0.0",
            "10.255.255.255",
            "11.0.0.0",
        ];
        for src in sources {
            for port in [1, 79, 80, 81, 84, 85, 90, 91, 443, 444] {
                assert_eq!(
                    rs.admits_flow(addr(src), server, Proto::Tcp, port),
                    expect(src, port),
                    "{src} -> :{port}"
                );
            }
        }
        assert_eq!(
            rs.blocks_any,
            [
                ("10.1.2.128", "10.1.2.255"),
                ("10.2.0.0", "10.2.0.255"),
                ("10.2.2.0", "10.2.255.255")
            ]
            .iter()
            .flat_map(|(lo, hi)| [(addr(lo), addr(hi), ip(1)), (addr(lo), addr(hi), ip(2))])
            .collect()
        );
        // Joined again where the ports are the same on both sides of a cut.
        assert!(rs.blocks_ports.contains(&(
            addr("10.3.0.0"),
            addr("10.255.255.255"),
            server,
            Proto::Tcp,
            80,
            80
        )));
        assert!(rs.blocks_ports.contains(&(
            addr("10.1.2.0"),
            addr("10.1.2.127"),
            server,
            Proto::Tcp,
            80,
            90
        )));
    }
}
