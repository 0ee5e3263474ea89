//! Helpers for operator end-to-end tests: apply the repository's YAML files the
//! way `kubectl apply --server-side` would, and run `roomkeeper operator run`
//! as a real process under a ServiceAccount's kubeconfig.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{pinned_kind, Scope};
use kube::Client;
use serde_json::{json, Value};

use crate::k8s::{eventually, KubeHarness};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The version of `module` that the go.mod at `go_mod` (relative to the
/// repository root) requires: what the `scripts/*-bin.sh` scripts build.
pub fn go_mod_version(go_mod: &str, module: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join(go_mod)).expect(go_mod);
    text.lines()
        .map(str::split_whitespace)
        .find_map(|mut w| match (w.next(), w.next(), w.next()) {
            (Some(m), Some(v), _) | (Some("require"), Some(m), Some(v))
                if m == module && v.starts_with('v') =>
            {
                Some(v.to_string())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{go_mod} requires no version of {module}"))
}

/// The Helm version `scripts/helm-bin.sh` builds (tests/helm-bin/go.mod).
pub fn pinned_helm_version() -> String {
    go_mod_version("tests/helm-bin/go.mod", "helm.sh/helm/v3")
}

/// `ROOMKEEPER_HELM_BIN`, else where `scripts/helm-bin.sh` caches the pinned
/// version (which may not exist yet: callers check).
pub fn helm_path() -> PathBuf {
    crate::env_or_cached(
        "ROOMKEEPER_HELM_BIN",
        Path::new("helm").join(pinned_helm_version()).join("helm"),
    )
}

/// Server-side applies every document of a YAML file (or string), resolving
/// each kind through discovery. Namespaced objects without a namespace go to
/// `default_ns`.
pub async fn apply_yaml(
    client: &Client,
    text: &str,
    default_ns: &str,
) -> Result<Vec<DynamicObject>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject =
            serde_yaml::from_value(value).context("not a Kubernetes object")?;
        let types = obj
            .types
            .clone()
            .context("object without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (ar, caps) = pinned_kind(client, &gvk)
            .await
            .with_context(|| format!("discovering {gvk:?}"))?;
        let name = obj.metadata.name.clone().context("object without a name")?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = obj
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| default_ns.to_string());
                Api::namespaced_with(client.clone(), &ns, &ar)
            }
            Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        let applied = api
            .patch(
                &name,
                &PatchParams::apply("roomkeeper-e2e").force(),
                &Patch::Apply(&obj),
            )
            .await
            .with_context(|| format!("applying {} {name}", gvk.kind))?;
        out.push(applied);
    }
    Ok(out)
}

/// Applies a file of the repository (`crds/…`, `deploy/rbac.yaml`, `examples/…`).
pub async fn apply_file(
    client: &Client,
    rel: &str,
    default_ns: &str,
) -> Result<Vec<DynamicObject>> {
    let path = repo_root().join(rel);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    apply_yaml(client, &text, default_ns).await
}

/// Every roomkeeper CRD, by plural (`crds/<plural>.roomkeeper.dev.yaml`).
pub const CRD_PLURALS: [&str; 7] = [
    "liveroomclusters",
    "failoverplaybooks",
    "chaosdrills",
    "chaosdrillschedules",
    "failoverapprovals",
    "switchovers",
    "failovers",
];

/// Applies every roomkeeper CRD and waits until each is Established (and a
/// second more: discovery of a new group lags behind Established).
pub async fn install_crds(client: &Client) -> Result<()> {
    for plural in CRD_PLURALS {
        apply_file(
            client,
            &format!("crds/{plural}.roomkeeper.dev.yaml"),
            "default",
        )
        .await?;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for plural in CRD_PLURALS {
        let name = format!("{plural}.roomkeeper.dev");
        eventually(
            Duration::from_secs(30),
            &format!("CRD {name} established"),
            || {
                let crds = crds.clone();
                let name = name.clone();
                async move {
                    crds.get(&name)
                        .await
                        .ok()
                        .and_then(|c| c.status)
                        .is_some_and(|s| {
                            s.conditions
                                .unwrap_or_default()
                                .iter()
                                .any(|c| c.type_ == "Established" && c.status == "True")
                        })
                }
            },
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// Creates the namespace unless it exists.
pub async fn ensure_namespace(client: &Client, ns: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What every operator end-to-end test starts from: the CRDs Established,
/// the operator's RBAC (`deploy/rbac.yaml`, plus `extra_rbac` files), the
/// test's namespace, and a kubeconfig of the operator's ServiceAccount.
pub struct OperatorEnv {
    pub admin: Client,
    pub sa_kubeconfig: PathBuf,
    dir: PathBuf,
    bin: PathBuf,
}

impl OperatorEnv {
    pub async fn prepare(
        h: &KubeHarness,
        bin: &Path,
        ns: &str,
        extra_rbac: &[&str],
    ) -> Result<OperatorEnv> {
        let admin = h.admin_client();
        install_crds(&admin).await?;
        apply_file(&admin, "deploy/rbac.yaml", "default").await?;
        for file in extra_rbac {
            apply_file(&admin, file, "default").await?;
        }
        ensure_namespace(&admin, ns).await?;
        let sa_kubeconfig = h
            .service_account_kubeconfig("roomkeeper-system", "roomkeeper-operator")
            .await?;
        Ok(OperatorEnv {
            admin,
            sa_kubeconfig,
            dir: h.dir().to_path_buf(),
            bin: bin.to_path_buf(),
        })
    }

    /// Starts one operator replica (lease of 6 s) under the ServiceAccount
    /// and keeps it in `ops` (killed when dropped).
    pub fn start_operator(&self, identity: &str, ops: &mut Vec<OperatorProcess>) -> Result<()> {
        ops.push(OperatorProcess::start(
            &self.bin,
            &self.sa_kubeconfig,
            &self.dir,
            identity,
            6,
        )?);
        Ok(())
    }
}

/// The `LiveRoomCluster` resource, for dynamic APIs.
pub fn lrc_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("roomkeeper.dev", "v1alpha1", "LiveRoomCluster"),
        "liveroomclusters",
    )
}

/// A cluster's status (`Null` while it has none or cannot be read).
pub async fn lrc_status(api: &Api<DynamicObject>, name: &str) -> Value {
    api.get(name)
        .await
        .ok()
        .and_then(|o| o.data.get("status").cloned())
        .unwrap_or(Value::Null)
}

/// Waits (30 s at most) until the status of cluster `name` lists a live
/// window of `room`. The operator decides on what it last observed: a
/// command meant to meet the window is made once the operator has seen it,
/// not in the same second as the room's PUT.
pub async fn wait_live_window(api: &Api<DynamicObject>, name: &str, room: &str) -> Result<()> {
    eventually(
        Duration::from_secs(30),
        "the live window in the cluster's status",
        || async {
            lrc_status(api, name).await["liveWindows"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w["room"] == json!(room)))
        },
    )
    .await
}

/// `examples/three-region-cluster.yaml` with the bridge's image.
pub fn example_cluster() -> Result<Value> {
    let mut example: Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo_root().join("examples/three-region-cluster.yaml"),
    )?)?;
    example["spec"]["image"] = json!("roomkeeper:e2e");
    Ok(example)
}

/// Applies `examples/three-region-cluster.yaml` (5 voters, 2+2+1) in `ns`
/// with the bridge's image, and waits until it reports 5/5 voters and
/// Running; returns its API and status.
pub async fn form_example_cluster(
    admin: &Client,
    ns: &str,
    within: Duration,
) -> Result<(Api<DynamicObject>, Value)> {
    let example = example_cluster()?;
    let name = example["metadata"]["name"]
        .as_str()
        .context("the example has a name")?
        .to_string();
    apply_yaml(admin, &serde_yaml::to_string(&example)?, ns).await?;
    let lrcs: Api<DynamicObject> = Api::namespaced_with(admin.clone(), ns, &lrc_resource());
    eventually(within, "5/5 voters, Running", || async {
        let s = lrc_status(&lrcs, &name).await;
        s["readyVoters"] == json!("5/5") && s["phase"] == json!("Running")
    })
    .await?;
    let status = lrc_status(&lrcs, &name).await;
    Ok((lrcs, status))
}

/// One `roomkeeper operator run` process.
pub struct OperatorProcess {
    pub identity: String,
    pub http_port: u16,
    pub log: PathBuf,
    child: Option<Child>,
    /// Keeps `http_port` ours while the process runs (see [`crate::ports`]).
    _http: crate::ports::Reserved,
}

impl OperatorProcess {
    /// Starts a replica with `kubeconfig` (a ServiceAccount's), logging to
    /// `<dir>/operator-<identity>.log`.
    pub fn start(
        bin: &Path,
        kubeconfig: &Path,
        dir: &Path,
        identity: &str,
        lease_secs: u64,
    ) -> Result<OperatorProcess> {
        let http = crate::ports::reserve()?;
        let http_port = http.port();
        let log = dir.join(format!("operator-{identity}.log"));
        let out = File::options().create(true).append(true).open(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .args([
                "operator",
                "run",
                "--lease-namespace",
                "roomkeeper-system",
                "--identity",
                identity,
                "--lease-duration-secs",
                &lease_secs.to_string(),
                "--http-addr",
                &format!("127.0.0.1:{http_port}"),
            ])
            .env("KUBECONFIG", kubeconfig)
            .env(
                "ROOMKEEPER_LOG",
                "info,roomkeeper_operator=debug,kube=warn,hyper=warn,tower=warn",
            )
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(OperatorProcess {
            identity: identity.to_string(),
            http_port,
            log,
            child: Some(child),
            _http: http,
        })
    }

    /// SIGKILL: a crash, mid-whatever it was doing.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (graceful shutdown).
    pub fn terminate(&mut self, within: Duration) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        let pid = c.id();
        crate::signal_pid(pid, crate::Signal::SIGTERM)
            .with_context(|| format!("could not signal operator {pid}"))?;
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if c.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        bail!("operator did not stop within {within:?} of SIGTERM")
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// GET one of its HTTP endpoints: status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        get(&format!("127.0.0.1:{}", self.http_port), path)
    }

    /// A metric's value from `/metrics`: the sum over all its label sets;
    /// `None` when the endpoint does not answer or has no such sample.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").ok()?;
        let values: Vec<f64> = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::k8s::tail_file(&self.log, lines)
    }
}

/// `GET` on a loopback address with a 3 s deadline: status and body as text.
pub fn get(addr: &str, path: &str) -> Result<(u16, String)> {
    let req = crate::http_client::build("GET", addr, path, None, None)?;
    let res = crate::http_client::block_on(crate::http_client::request(
        addr,
        req,
        Duration::from_secs(3),
    ))?;
    Ok((res.status, res.text()))
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// TLS to the client and admin APIs of a LiveRoomCluster's pods, as the
/// operator speaks it: trusts the cluster's CA (`<cluster>-raft-ca`),
/// presents an operator certificate issued from it, and expects the cluster's
/// API name from every pod (pods are dialled by IP).
pub async fn node_tls(client: &Client, ns: &str, cluster: &str) -> Result<crate::http_client::Tls> {
    use k8s_openapi::api::core::v1::Secret;
    use roomkeeper_api::raft_identity::{api_server_name, ClusterCa};
    let name = format!("{cluster}-raft-ca");
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&name)
        .await
        .with_context(|| format!("reading Secret {ns}/{name}"))?;
    let field = |key: &str| -> Result<String> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .with_context(|| format!("Secret {name} has no {key}"))
    };
    // The operator's pods run with cluster id `local` (D45).
    let ca = ClusterCa {
        cluster: "local".to_string(),
        cert_pem: field("ca.crt")?,
        key_pem: field("ca.key")?,
    };
    let op = ca.operator_cert().context("an operator certificate")?;
    Ok(crate::http_client::Tls::from_pem(
        ca.cert_pem.as_bytes(),
        Some((op.cert_pem.as_bytes(), op.key_pem.as_bytes())),
    )?
    .expecting(&api_server_name("local")))
}

/// One call to the client API of a LiveRoomCluster's leader pod, as a buyer's
/// client makes it: TLS under the cluster's CA ([`node_tls`]) and the client
/// token from the Secret `<cluster>-tokens`. A non-2xx answer is an error.
pub async fn leader_client_call(
    admin: &Client,
    bridge: &crate::kubelet::KubeletBridge,
    ns: &str,
    cluster: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> Result<crate::http_client::Response> {
    use k8s_openapi::api::core::v1::Secret;
    let token = Api::<Secret>::namespaced(admin.clone(), ns)
        .get(&format!("{cluster}-tokens"))
        .await?
        .data
        .and_then(|d| d.get("client-token").cloned())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .context("client token")?;
    let lrcs: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("roomkeeper.dev", "v1alpha1", "LiveRoomCluster"),
            "liveroomclusters",
        ),
    );
    let leader = lrcs.get(cluster).await?.data["status"]["leader"]
        .as_str()
        .context("the cluster's status names no leader")?
        .to_string();
    let addr = format!("{}:7201", bridge.pod_ip(ns, &leader).context("leader ip")?);
    let tls = node_tls(admin, ns, cluster).await?;
    let text = body.to_string();
    let req = crate::http_client::build(method, &addr, path, Some(text.as_bytes()), Some(&token))?;
    let r = crate::http_client::request_tls(&addr, &tls, req, Duration::from_secs(5)).await?;
    if r.status >= 300 {
        bail!("{method} {path}: {} {}", r.status, r.text());
    }
    Ok(r)
}

/// A ServiceAccount `name` in `ns`, bound there to the `roomkeeper-approver`
/// ClusterRole (deploy/approver-rbac.yaml): an on-call person.
pub async fn approver_account(admin: &Client, ns: &str, name: &str) -> Result<()> {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::RoleBinding;
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}}))?,
        )
        .await
        .with_context(|| format!("creating ServiceAccount {ns}/{name}"))?;
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-approves")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "roomkeeper-approver"},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
            }))?,
        )
        .await
        .with_context(|| format!("binding {ns}/{name} to roomkeeper-approver"))?;
    Ok(())
}

/// Voters by region, from the status the operator writes (the leader's view).
pub async fn voters_by_region(
    lrcs: &Api<DynamicObject>,
    name: &str,
) -> std::collections::BTreeMap<String, Vec<i64>> {
    let mut out: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for m in lrc_status(lrcs, name).await["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "voter")
    {
        if let (Some(r), Some(id)) = (m["region"].as_str(), m["nodeId"].as_i64()) {
            out.entry(r.to_string()).or_default().push(id);
        }
    }
    out
}

/// A FailoverPlaybook `default` whose only tier evacuates: a region lost for
/// 5 s is drained and its voters are replaced in the other regions; it
/// stands down with an event. A failed attempt (an operator restart) is
/// retried after 2 s.
pub fn evacuate_playbook() -> Value {
    json!({
        "apiVersion": "roomkeeper.dev/v1alpha1",
        "kind": "FailoverPlaybook",
        "metadata": {"name": "default"},
        "spec": {
            "guards": {"cooldownMs": 1000, "failureBudget": {"retryAfterMs": 2000}},
            "tiers": [{
                "name": "evacuate",
                "level": 3,
                "trigger": {"condition": {"type": "regionLost"}, "forMs": 5000, "clearForMs": 60000},
                "actions": ["setTrafficWeightZero", "replaceVotersElsewhere", "recordEvent"],
                "standDownActions": ["recordEvent"]
            }]
        }
    })
}

/// The backends of cluster `name`'s HTTPRoute (`<name>-buyers`): backend
/// name to weight.
pub async fn route_weights(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<std::collections::BTreeMap<String, u64>> {
    let routes: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
            "httproutes",
        ),
    );
    let route = routes.get(&format!("{name}-buyers")).await?;
    Ok(route.data["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["name"].as_str()?.to_string(), r["weight"].as_u64()?)))
        .collect())
}

/// Cluster `name`'s voter-move record (`<name>-voter-moves`, evacuate.rs).
pub async fn voter_moves(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<roomkeeper_operator::evacuate::VoterMoves> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let cm_name = roomkeeper_operator::evacuate::configmap_name(name);
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&cm_name)
        .await?;
    Ok(roomkeeper_operator::evacuate::VoterMoves::parse(
        &cm_name,
        cm.as_ref(),
    )?)
}
