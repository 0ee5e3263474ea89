//! A real Kubernetes control plane for end-to-end tests: etcd, kube-apiserver
//! (TLS, token authentication, Node+RBAC authorization, service-account
//! tokens) and kube-controller-manager, started as local processes on
//! 127.0.0.1 from the binaries `scripts/k8s-test-bins.sh` builds. No scheduler
//! and no kubelet run: see [`crate::kubelet::KubeletBridge`].
//!
//! With `KUBECONFIG` set and `ROOMKEEPER_E2E_USE_KUBECONFIG=1`, the harness uses
//! that existing cluster instead and starts nothing.
//!
//! Every process runs in its own process group and is killed when the harness
//! is dropped; its log is `<dir>/<component>.log` ([`KubeHarness::log_tail`]).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::ports::{reserve, Reserved};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// Kubernetes version the pinned binaries are built from (tests/k8s-bins/go.mod).
pub const K8S_VERSION: &str = "v1.37.2";
/// etcd version the pinned binary is built from (tests/k8s-bins/etcd/go.mod).
pub const ETCD_VERSION: &str = "v3.6.16";
/// The service CIDR the API server allocates ClusterIPs from.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";

const COMPONENTS: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// The binaries are not built (see `scripts/k8s-test-bins.sh`).
#[derive(Debug)]
pub struct MissingBinaries {
    pub dir: PathBuf,
    pub missing: Vec<String>,
}

impl fmt::Display for MissingBinaries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no {} in {} (run scripts/k8s-test-bins.sh, or set ROOMKEEPER_K8S_BIN_DIR)",
            self.missing.join(", "),
            self.dir.display()
        )
    }
}

impl std::error::Error for MissingBinaries {}

/// Where the binaries are: `ROOMKEEPER_K8S_BIN_DIR`, else the build script's
/// default cache directory.
pub fn bin_dir() -> PathBuf {
    crate::env_or_cached(
        "ROOMKEEPER_K8S_BIN_DIR",
        format!("k8s-bins/{K8S_VERSION}-{ETCD_VERSION}"),
    )
}

/// True when running under CI, where a missing prerequisite is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "0" && v != "false")
        .unwrap_or(false)
}

/// A test that cannot run here says so loudly and is counted as skipped by
/// whoever reads the log; under CI (`CI` set) it fails instead: there every
/// test must run.
pub fn skip_or_panic(test: &str, why: &str) {
    if in_ci() {
        panic!("CI is set and {test} cannot run: {why}");
    }
    eprintln!(
        "\n==================================================================\n\
         SKIPPED {test}: {why}\n\
         ==================================================================\n"
    );
}

fn use_external_kubeconfig() -> Option<PathBuf> {
    let flag = std::env::var("ROOMKEEPER_E2E_USE_KUBECONFIG").ok()?;
    if flag != "1" {
        return None;
    }
    std::env::var_os("KUBECONFIG")
        .filter(|k| !k.is_empty())
        .map(PathBuf::from)
}

static HARNESS_SEQ: AtomicU64 = AtomicU64::new(0);

/// One control-plane process.
struct Proc {
    component: &'static str,
    child: Child,
}

impl Proc {
    fn kill(&mut self) {
        // The process leads its own group (process_group(0)): kill the group.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The control-plane processes; killed (in reverse start order) on drop.
struct ProcSet {
    dir: PathBuf,
    procs: Vec<Proc>,
    /// The processes' ports, held until they are killed (see [`crate::ports`]).
    ports: Vec<Reserved>,
}

impl ProcSet {
    /// A loopback port picked by the kernel, reserved for the life of the set.
    fn port(&mut self) -> Result<u16> {
        let r = reserve()?;
        let port = r.port();
        self.ports.push(r);
        Ok(port)
    }

    fn kill_all(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.kill();
        }
    }
}

impl Drop for ProcSet {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A Kubernetes API server for one test (or an existing cluster).
pub struct KubeHarness {
    name: String,
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    client: Client,
    procs: ProcSet,
    external: bool,
}

impl KubeHarness {
    /// Starts etcd, kube-apiserver and kube-controller-manager, or connects to
    /// the cluster in `KUBECONFIG` when `ROOMKEEPER_E2E_USE_KUBECONFIG=1`.
    /// Fails with [`MissingBinaries`] when the binaries are not built.
    pub async fn start(name: &str) -> Result<KubeHarness> {
        let dir = std::env::temp_dir().join(format!(
            "roomkeeper-k8s-{}-{}-{}",
            sanitize(name),
            std::process::id(),
            HARNESS_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Some(path) = use_external_kubeconfig() {
            return Self::connect_external(name, dir, path).await;
        }
        let bins = bin_dir();
        let missing: Vec<String> = COMPONENTS
            .iter()
            .filter(|c| !bins.join(c).is_file())
            .map(|c| c.to_string())
            .collect();
        if !missing.is_empty() {
            let _ = fs::remove_dir_all(&dir);
            return Err(MissingBinaries { dir: bins, missing }.into());
        }
        let mut procs = ProcSet {
            dir: dir.clone(),
            procs: Vec::new(),
            ports: Vec::new(),
        };
        let kubeconfig = dir.join("admin.kubeconfig");
        // On error `procs` is dropped, which kills whatever was started.
        let (server, client) = boot(&mut procs, &bins, name, &kubeconfig)
            .await
            .with_context(|| format!("files kept in {}", dir.display()))?;
        Ok(KubeHarness {
            name: name.to_string(),
            dir,
            kubeconfig,
            server,
            client,
            procs,
            external: false,
        })
    }

    /// [`KubeHarness::start`], or `None` after a loud SKIPPED message when the
    /// binaries are not built and `CI` is not set. Panics on any other error,
    /// and under CI when the binaries are missing.
    pub async fn start_or_skip(name: &str) -> Option<KubeHarness> {
        match Self::start(name).await {
            Ok(h) => Some(h),
            Err(e) => {
                if let Some(m) = e.downcast_ref::<MissingBinaries>() {
                    if in_ci() {
                        panic!("CI is set and the Kubernetes test binaries are missing: {m}");
                    }
                    eprintln!(
                        "\n==================================================================\n\
                         SKIPPED {name}: no kube-apiserver binaries; run scripts/k8s-test-bins.sh\n\
                         ({m})\n\
                         ==================================================================\n"
                    );
                    return None;
                }
                panic!("starting the Kubernetes harness for {name}: {e:#}");
            }
        }
    }

    async fn connect_external(name: &str, dir: PathBuf, path: PathBuf) -> Result<KubeHarness> {
        let client = client_from_kubeconfig(&path).await?;
        client
            .apiserver_version()
            .await
            .with_context(|| format!("reaching the cluster of {}", path.display()))?;
        let kc = Kubeconfig::read_from(&path)?;
        let server = current_cluster_server(&kc).unwrap_or_default();
        tracing::info!(%server, kubeconfig = %path.display(), "using an existing cluster");
        Ok(KubeHarness {
            name: name.to_string(),
            dir,
            kubeconfig: path,
            server,
            client,
            procs: ProcSet {
                dir: PathBuf::new(),
                procs: Vec::new(),
                ports: Vec::new(),
            },
            external: true,
        })
    }

    /// The harness's own directory (logs, certificates, kubeconfigs, and the
    /// kubelet bridge's pod files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when connected to an existing cluster (nothing was started).
    pub fn is_external(&self) -> bool {
        self.external
    }

    /// The admin kubeconfig (cluster-admin via the system:masters group).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, e.g. `https://127.0.0.1:34567`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// A client with admin credentials.
    pub fn admin_client(&self) -> Client {
        self.client.clone()
    }

    /// Requests a token for ServiceAccount `namespace/sa_name` through the
    /// TokenRequest API (as admin) and writes a kubeconfig that uses it, with
    /// `namespace` as the default namespace. What it may do is what RBAC binds
    /// to that ServiceAccount.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        sa_name: &str,
    ) -> Result<PathBuf> {
        let path = self.dir.join(format!(
            "sa-{}-{}.kubeconfig",
            sanitize(namespace),
            sanitize(sa_name)
        ));
        write_service_account_kubeconfig(&self.client, &self.kubeconfig, namespace, sa_name, &path)
            .await?;
        Ok(path)
    }

    /// The last `lines` lines of a component's log (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`, or any `<dir>/<component>.log`).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        tail_file(&self.dir.join(format!("{component}.log")), lines)
    }

    /// Every component's log tail, for a failing test to print.
    pub fn dump_logs(&self, lines: usize) -> String {
        COMPONENTS
            .iter()
            .map(|c| format!("--- {c} ---\n{}", self.log_tail(c, lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Starts etcd, kube-apiserver and kube-controller-manager into `procs`;
/// returns the API server URL and an admin client.
async fn boot(
    procs: &mut ProcSet,
    bins: &Path,
    name: &str,
    kubeconfig_path: &Path,
) -> Result<(String, Client)> {
    let started = Instant::now();
    let pki = procs.dir.join("pki");
    fs::create_dir_all(&pki)?;
    make_pki(&pki)?;
    let admin_token = random_hex(24)?;
    fs::write(
        pki.join("tokens.csv"),
        format!("{admin_token},admin,admin-uid,\"system:masters\"\n"),
    )?;

    // etcd
    let etcd_client = procs.port()?;
    let etcd_peer = procs.port()?;
    let etcd_url = format!("http://127.0.0.1:{etcd_client}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer}");
    let etcd_data = procs.dir.join("etcd-data");
    procs.spawn(
        bins,
        "etcd",
        &[
            "--name=harness".to_string(),
            format!("--data-dir={}", etcd_data.display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=harness={peer_url}"),
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ],
    )?;
    let etcd_addr = format!("127.0.0.1:{etcd_client}");
    procs
        .wait_for("etcd", Duration::from_secs(30), || {
            let addr = etcd_addr.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    crate::http("GET", &addr, "/health", None, None, Duration::from_secs(1))
                        .map(|r| r.status == 200)
                        .unwrap_or(false)
                })
                .await
                .unwrap_or(false)
            }
        })
        .await?;

    // kube-apiserver
    let api_port = procs.port()?;
    let server = format!("https://127.0.0.1:{api_port}");
    let p = |f: &str| pki.join(f).display().to_string();
    procs.spawn(
        bins,
        "kube-apiserver",
        &[
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", p("apiserver-certs")),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=Node,RBAC".to_string(),
            "--anonymous-auth=false".to_string(),
            "--allow-privileged=true".to_string(),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--api-audiences=https://kubernetes.default.svc.cluster.local".to_string(),
            "--endpoint-reconciler-type=none".to_string(),
            "--v=1".to_string(),
        ],
    )?;
    write_admin_kubeconfig(kubeconfig_path, &server, &admin_token, &pki.join("ca.crt"))?;
    let client = client_from_kubeconfig(kubeconfig_path).await?;
    let probe = client.clone();
    procs
        .wait_for("kube-apiserver /readyz", Duration::from_secs(90), || {
            let client = probe.clone();
            async move {
                let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else {
                    return false;
                };
                matches!(client.request_text(req).await, Ok(body) if body.trim() == "ok")
            }
        })
        .await?;

    // kube-controller-manager
    let kcm_port = procs.port()?;
    let kubeconfig = kubeconfig_path.display().to_string();
    procs.spawn(
        bins,
        "kube-controller-manager",
        &[
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={kcm_port}"),
            format!("--cert-dir={}", p("kcm-certs")),
            "--leader-elect=false".to_string(),
            "--controllers=*".to_string(),
            "--use-service-account-credentials=false".to_string(),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--concurrent-gc-syncs=5".to_string(),
            "--v=1".to_string(),
        ],
    )?;
    // The service-account controller creating `default` in `default`
    // proves the controller manager runs and writes.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    procs
        .wait_for(
            "kube-controller-manager (default ServiceAccount)",
            Duration::from_secs(60),
            || {
                let sas = sas.clone();
                async move { matches!(sas.get_opt("default").await, Ok(Some(_))) }
            },
        )
        .await?;
    tracing::info!(
        harness = %name,
        %server,
        dir = %procs.dir.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "kubernetes control plane ready"
    );
    Ok((server, client))
}

impl ProcSet {
    fn spawn(&mut self, bins: &Path, component: &'static str, args: &[String]) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{component}.log")))
            .with_context(|| format!("opening the {component} log"))?;
        let err = log.try_clone()?;
        let child = Command::new(bins.join(component))
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {}", bins.join(component).display()))?;
        tracing::debug!(component, pid = child.id(), "started");
        self.procs.push(Proc { component, child });
        Ok(())
    }

    /// Polls `cond` every 200 ms; fails early when a process has exited.
    async fn wait_for<F, Fut>(&mut self, what: &str, timeout: Duration, mut cond: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if cond().await {
                return Ok(());
            }
            for p in &mut self.procs {
                if let Ok(Some(status)) = p.child.try_wait() {
                    bail!(
                        "{} exited ({status}) while waiting for {what}; log tail:\n{}",
                        p.component,
                        tail_file(&self.dir.join(format!("{}.log", p.component)), 40)
                    );
                }
            }
            if start.elapsed() > timeout {
                let tails: Vec<String> = self
                    .procs
                    .iter()
                    .map(|p| {
                        format!(
                            "--- {} ---\n{}",
                            p.component,
                            tail_file(&self.dir.join(format!("{}.log", p.component)), 20)
                        )
                    })
                    .collect();
                bail!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    tails.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn write_admin_kubeconfig(path: &Path, server: &str, token: &str, ca: &Path) -> Result<()> {
    let kc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "harness", "cluster": {
            "server": server,
            "certificate-authority": ca.display().to_string(),
        }}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "admin@harness", "context": {"cluster": "harness", "user": "admin"}}],
        "current-context": "admin@harness",
    });
    fs::write(path, serde_yaml::to_string(&kc)?)
        .with_context(|| format!("writing {}", path.display()))
}

impl Drop for KubeHarness {
    fn drop(&mut self) {
        // Controller manager first, etcd last.
        self.procs.kill_all();
        if std::thread::panicking() {
            eprintln!(
                "kubernetes harness {} files kept for inspection in {}",
                self.name,
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A client for a kubeconfig file (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading {}", path.display()))?;
    Client::try_from(config).context("building a kube client")
}

/// Requests a token for ServiceAccount `namespace/sa_name` through the
/// TokenRequest API (with `client`, an admin) and writes to `out` a kubeconfig
/// that uses it against the cluster of `admin_kubeconfig` (its server and CA),
/// with `namespace` as the default namespace.
pub async fn write_service_account_kubeconfig(
    client: &Client,
    admin_kubeconfig: &Path,
    namespace: &str,
    sa_name: &str,
    out: &Path,
) -> Result<()> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let resp: TokenRequest = sas
        .create_subresource("token", sa_name, &PostParams::default(), &req)
        .await
        .with_context(|| format!("TokenRequest for {namespace}/{sa_name}"))?;
    let token = resp
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("TokenRequest for {namespace}/{sa_name} returned no token"))?;

    // Keep the admin kubeconfig's cluster entry (server and CA), swap the user.
    let admin = Kubeconfig::read_from(admin_kubeconfig)?;
    let cluster_name = admin
        .current_context
        .as_ref()
        .and_then(|cur| admin.contexts.iter().find(|c| &c.name == cur))
        .and_then(|c| c.context.as_ref().map(|c| c.cluster.clone()))
        .ok_or_else(|| anyhow!("{} has no current context", admin_kubeconfig.display()))?;
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .ok_or_else(|| anyhow!("cluster {cluster_name} not in the admin kubeconfig"))?;
    let user = format!("system:serviceaccount:{namespace}:{sa_name}");
    // Self-contained, as a kubeconfig kept in a Secret must be: the CA
    // inline, not a path on this machine.
    let mut cluster = serde_json::to_value(cluster)?;
    if let Some(path) = cluster["cluster"]["certificate-authority"]
        .as_str()
        .map(str::to_string)
    {
        let pem = fs::read(&path).with_context(|| format!("reading {path}"))?;
        cluster["cluster"]["certificate-authority-data"] =
            serde_json::to_value(k8s_openapi::ByteString(pem))?;
        if let Some(c) = cluster["cluster"].as_object_mut() {
            c.remove("certificate-authority");
        }
    }
    let kc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster_name, "user": user, "namespace": namespace}}],
        "current-context": "sa",
    });
    fs::write(out, serde_yaml::to_string(&kc)?)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// The server URL of the kubeconfig's current context.
pub fn kubeconfig_server(path: &Path) -> Result<String> {
    let kc = Kubeconfig::read_from(path)?;
    current_cluster_server(&kc).ok_or_else(|| anyhow!("{} names no current server", path.display()))
}

fn current_cluster_server(kc: &Kubeconfig) -> Option<String> {
    let cur = kc.current_context.as_ref()?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| &c.name == cur)?
        .context
        .as_ref()?;
    kc.clusters
        .iter()
        .find(|c| c.name == ctx.cluster)?
        .cluster
        .as_ref()?
        .server
        .clone()
}

/// A CA, a serving certificate for 127.0.0.1/localhost signed by it, and the
/// service-account signing key pair, with the openssl CLI.
fn make_pki(pki: &Path) -> Result<()> {
    fs::write(
        pki.join("server-ext.cnf"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
    )?;
    let steps: [&[&str]; 6] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=roomkeeper-harness-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "apiserver.key",
            "-out",
            "apiserver.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "apiserver.crt",
            "-days",
            "30",
            "-extfile",
            "server-ext.cnf",
        ],
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sa-ec.key",
        ],
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "sa-ec.key",
            "-out",
            "sa.key",
        ],
        &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(pki)
            .stdin(Stdio::null())
            .output()
            .context("running openssl (is it installed?)")?;
        if !out.status.success() {
            bail!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The last `lines` lines of a file ("" when unreadable).
pub fn tail_file(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Installs a tracing subscriber for tests (`RUST_LOG`; by default `info`,
/// without kube-client's per-request errors, which polling while the API
/// server starts produces by the dozen); safe to call more than once.
pub fn init_test_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Polls an async condition every 200 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// `Value` helper for JSON merge patches in tests.
pub fn merge_patch(v: Value) -> kube::api::Patch<Value> {
    kube::api::Patch::Merge(v)
}
