//! `kubectl roomkeeper report`: a support bundle. What goes in: the
//! cluster's spec and status, its playbook, approvals, switchovers,
//! failovers, drills, the Events of the namespace about them, the decision
//! history (status and the engine memory), the pods (env values removed) and
//! their recent logs when the API server can fetch them. What never goes in:
//! Secrets (the bundle never reads a Secret), buyer contact data (no order is
//! read; the nodes never log contacts) and anything that looks like a
//! credential — every file passes through [`redact`].

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, LogParams};
use kube::ResourceExt;
use roomkeeper_operator::approval::FailoverApproval;
use roomkeeper_operator::crd::FailoverPlaybook;
use roomkeeper_operator::drill::ChaosDrill;
use roomkeeper_operator::switchover::{Failover, Switchover};
use serde_json::Value;

use super::{Kube, PluginError};

const REDACTED: &str = "<redacted>";
/// Keys whose values are credentials wherever they appear.
const SECRET_KEYS: [&str; 7] = [
    "token",
    "password",
    "secret",
    "authorization",
    "bearer",
    "apikey",
    "api_key",
];
/// Log lines fetched per container.
const LOG_LINES: i64 = 500;

/// A word that looks like a credential: a JWT, or a long run of
/// base64/hex characters mixing letters and digits.
fn looks_like_token(w: &str) -> bool {
    if w.starts_with("eyJ") && w.len() > 20 {
        return true;
    }
    let long = w.len() >= 32;
    let charset = w
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-' | '.'));
    let mixed = w.chars().any(|c| c.is_ascii_digit()) && w.chars().any(|c| c.is_ascii_alphabetic());
    // UIDs (8-4-4-4-12 hex) are identifiers, not credentials.
    let uid = w.len() == 36 && w.matches('-').count() == 4;
    long && charset && mixed && !uid && !w.contains('/')
}

/// An e-mail address (buyer contact data) in a word.
fn looks_like_email(w: &str) -> bool {
    match w.split_once('@') {
        Some((user, host)) => !user.is_empty() && host.contains('.') && !host.starts_with('.'),
        None => false,
    }
}

/// Removes credentials and contact-looking data from a text, word by word
/// (words split at whitespace, quotes, `=`, `,` and `:` followed by a space);
/// the value after a credential key (`token: x`, `"password": "x"`,
/// `Authorization: Bearer x`) goes too.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let mut after_key = false;
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut String, after_key: &mut bool| {
            if word.is_empty() {
                return;
            }
            let bare = word.trim_end_matches(':');
            let lower = bare.to_ascii_lowercase();
            let is_key = SECRET_KEYS.iter().any(|k| lower.ends_with(k));
            if bare.is_empty() {
                // A lone `:` between a quoted key and its value.
                out.push_str(word);
            } else if *after_key && !is_key {
                out.push_str(REDACTED);
                *after_key = false;
            } else if looks_like_token(bare) || looks_like_email(bare) {
                out.push_str(REDACTED);
                if word.ends_with(':') {
                    out.push(':');
                }
            } else {
                out.push_str(word);
                if is_key {
                    *after_key = true;
                }
            }
            word.clear();
        };
        for c in line.chars() {
            if c.is_whitespace() || matches!(c, '"' | '\'' | '=' | ',' | '{' | '}' | '[' | ']') {
                flush(&mut word, &mut out, &mut after_key);
                out.push(c);
            } else {
                word.push(c);
            }
        }
        flush(&mut word, &mut out, &mut after_key);
    }
    out
}

/// Drops bulky or sensitive metadata, and every env value of pod specs.
fn scrub(mut v: Value) -> Value {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    for key in ["containers", "initContainers"] {
        if let Some(cs) = v
            .get_mut("spec")
            .and_then(|s| s.get_mut(key))
            .and_then(Value::as_array_mut)
        {
            for c in cs {
                if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
                    for e in env {
                        if let Some(o) = e.as_object_mut() {
                            if o.contains_key("value") {
                                o.insert("value".into(), Value::String(REDACTED.into()));
                            }
                        }
                    }
                }
            }
        }
    }
    v
}

struct Bundle {
    dir: PathBuf,
    files: Vec<String>,
}

impl Bundle {
    fn write(&mut self, name: &str, text: &str) -> Result<(), PluginError> {
        let path = self.dir.join(name);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        }
        std::fs::write(&path, redact(text))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        self.files.push(name.to_string());
        Ok(())
    }

    fn yaml<T: serde::Serialize>(&mut self, name: &str, items: &[T]) -> Result<(), PluginError> {
        let values: Vec<Value> = items
            .iter()
            .filter_map(|i| serde_json::to_value(i).ok())
            .map(scrub)
            .collect();
        let text = serde_yaml::to_string(&values).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        self.write(name, &text)
    }

    /// Writes what could not be collected, instead of failing the bundle.
    fn missing(&mut self, name: &str, why: &str) -> Result<(), PluginError> {
        self.write(&format!("{name}.unavailable"), &format!("{why}\n"))
    }
}

pub async fn run(
    kube: &Kube,
    cluster: Option<String>,
    output: Option<PathBuf>,
) -> Result<(), PluginError> {
    let lrc = kube.cluster(cluster).await?;
    let name = lrc.name_any();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let out = output.unwrap_or_else(|| PathBuf::from(format!("roomkeeper-report-{name}-{stamp}")));
    let tarball = out.to_string_lossy().ends_with(".tar.gz");
    let dir = if tarball {
        let base = out
            .to_string_lossy()
            .trim_end_matches(".tar.gz")
            .to_string();
        PathBuf::from(format!("{base}.d"))
    } else {
        out.clone()
    };
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let mut b = Bundle {
        dir: dir.clone(),
        files: Vec::new(),
    };
    b.yaml("cluster.yaml", std::slice::from_ref(&lrc))?;
    let decisions = lrc
        .status
        .as_ref()
        .map(|s| s.decisions.clone())
        .unwrap_or_default();
    b.yaml("decisions.yaml", &decisions)?;
    let lp = ListParams::default();
    match &lrc.spec.playbook_ref {
        Some(r) => match kube.api::<FailoverPlaybook>().get(&r.name).await {
            Ok(p) => b.yaml("playbook.yaml", &[p])?,
            Err(e) => b.missing("playbook.yaml", &e.to_string())?,
        },
        None => b.write(
            "playbook.yaml",
            "# spec.playbookRef is unset: the built-in default playbook runs\n",
        )?,
    }
    macro_rules! objects {
        ($ty:ty, $file:expr, $cluster:expr) => {
            match kube.api::<$ty>().list(&lp).await {
                Ok(l) => {
                    let items: Vec<$ty> = l
                        .items
                        .into_iter()
                        .filter(|o| $cluster(o) == name)
                        .collect();
                    b.yaml($file, &items)?
                }
                Err(e) => b.missing($file, &e.to_string())?,
            }
        };
    }
    objects!(
        FailoverApproval,
        "approvals.yaml",
        |o: &FailoverApproval| o.spec.cluster.clone()
    );
    objects!(Switchover, "switchovers.yaml", |o: &Switchover| o
        .spec
        .cluster
        .clone());
    objects!(Failover, "failovers.yaml", |o: &Failover| o
        .spec
        .cluster
        .clone());
    objects!(ChaosDrill, "drills.yaml", |o: &ChaosDrill| o
        .spec
        .0
        .target
        .cluster
        .clone());
    // The engine memory: every decision with its evidence and outcome.
    let cm_name = format!("{name}-playbook-memory");
    match kube.api::<ConfigMap>().get_opt(&cm_name).await {
        Ok(Some(cm)) => {
            let text = cm
                .data
                .and_then(|d| d.get("memory.json").cloned())
                .unwrap_or_default();
            b.write("engine-memory.json", &text)?
        }
        Ok(None) => b.missing("engine-memory.json", "no engine memory yet")?,
        Err(e) => b.missing("engine-memory.json", &e.to_string())?,
    }
    // Events about the cluster's objects (names start with the cluster's).
    match kube.api::<Event>().list(&lp).await {
        Ok(l) => {
            let mut lines: Vec<String> = l
                .items
                .iter()
                .filter(|e| {
                    e.regarding
                        .as_ref()
                        .and_then(|r| r.name.as_deref())
                        .is_some_and(|n| n.starts_with(&name))
                })
                .map(|e| {
                    let r = e.regarding.clone().unwrap_or_default();
                    format!(
                        "{} {} {}/{} {}: {}",
                        e.event_time
                            .as_ref()
                            .map(|t| t.0.to_string())
                            .or_else(|| e
                                .deprecated_last_timestamp
                                .as_ref()
                                .map(|t| t.0.to_string()))
                            .unwrap_or_default(),
                        e.type_.as_deref().unwrap_or(""),
                        r.kind.unwrap_or_default(),
                        r.name.unwrap_or_default(),
                        e.reason.as_deref().unwrap_or(""),
                        e.note.as_deref().unwrap_or("")
                    )
                })
                .collect();
            lines.sort();
            b.write("events.txt", &(lines.join("\n") + "\n"))?
        }
        Err(e) => b.missing("events.txt", &e.to_string())?,
    }
    // Pods and their recent logs, when the API server can reach the kubelet.
    let pods = kube.api::<Pod>();
    let selector = ListParams::default().labels(&format!(
        "{}={name}",
        roomkeeper_operator::resources::CLUSTER_LABEL
    ));
    match pods.list(&selector).await {
        Ok(l) => {
            b.yaml("pods.yaml", &l.items)?;
            for p in &l.items {
                let pod = p.name_any();
                let lp = LogParams {
                    tail_lines: Some(LOG_LINES),
                    ..Default::default()
                };
                match pods.logs(&pod, &lp).await {
                    Ok(text) => b.write(&format!("logs/{pod}.log"), &text)?,
                    Err(e) => b.missing(&format!("logs/{pod}.log"), &e.to_string())?,
                }
            }
        }
        Err(e) => b.missing("pods.yaml", &e.to_string())?,
    }
    b.write(
        "README.txt",
        &format!(
            "roomkeeper support bundle of {}/{name}\n\nNode status is the operator's reading of each node's /admin/status, in cluster.yaml (status.members, status.regions, orders at risk).\nNot included: Secret data (never read), buyer contact data (no order is read), credentials (redacted as {REDACTED}).\nFiles: {}\n",
            kube.namespace,
            b.files.join(", ")
        ),
    )?;
    if tarball {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = dir
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let status = std::process::Command::new("tar")
            .arg("czf")
            .arg(&out)
            .arg("-C")
            .arg(parent)
            .arg(&base)
            .status()
            .map_err(|e| anyhow::anyhow!("running tar: {e}"))?;
        if !status.success() {
            return Err(anyhow::anyhow!("tar czf {} failed ({status})", out.display()).into());
        }
        std::fs::remove_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        println!("Support bundle: {}", out.display());
    } else {
        println!("Support bundle: {}/", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_contacts_are_redacted_and_identifiers_kept() {
        let text = "token: abc\nAuthorization: Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6\n\"password\": \"hunter2\"\nuid: 0b1c2d3e-1111-2222-3333-444455556666\nbuyer ann@example.com ordered\nkey=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdo end\npod shop-a-0 term 3\n";
        let r = redact(text);
        assert!(!r.contains("abc"), "{r}");
        assert!(!r.contains("eyJhbGci"), "{r}");
        assert!(!r.contains("hunter2"), "{r}");
        assert!(!r.contains("ann@example.com"), "{r}");
        assert!(!r.contains("Zm9vYmFy"), "{r}");
        assert!(r.contains("0b1c2d3e-1111-2222-3333-444455556666"), "{r}");
        assert!(r.contains("pod shop-a-0 term 3"), "{r}");
        assert!(r.contains("token: <redacted>"), "{r}");
    }

    #[test]
    fn env_values_and_managed_fields_are_dropped() {
        let pod = serde_json::json!({
            "metadata": {"name": "p", "managedFields": [{"manager": "x"}]},
            "spec": {"containers": [{"name": "c", "env": [{"name": "A", "value": "s3cret"}, {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}
        });
        let s = scrub(pod).to_string();
        assert!(!s.contains("s3cret") && !s.contains("managedFields"), "{s}");
        assert!(s.contains("secretKeyRef"), "{s}");
    }
}
