//! The upstream Gateway API CRDs (HTTPRoute) for the operator's traffic
//! router, from the cache `scripts/gateway-api-crds.sh` fills from the Go
//! module `sigs.k8s.io/gateway-api`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::Client;

use crate::k8s::{eventually, in_ci};
use crate::operator::apply_yaml;

/// The version `scripts/gateway-api-crds.sh` fetches by default.
pub const GATEWAY_API_VERSION: &str = "v1.6.3";
/// The CRD file of HTTPRoute (standard channel) in the module.
pub const HTTPROUTE_FILE: &str = "gateway.networking.k8s.io_httproutes.yaml";

/// Where the CRDs are: `ROOMKEEPER_GATEWAY_API_DIR`, else the script's cache.
pub fn crd_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ROOMKEEPER_GATEWAY_API_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/roomkeeper/gateway-api")
        .join(GATEWAY_API_VERSION)
}

/// The HTTPRoute CRD's YAML, or `None` (skipped loudly; a panic under CI).
pub fn httproute_crd_or_skip(test: &str) -> Option<String> {
    let path = crd_dir().join(HTTPROUTE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) => {
            let msg = format!(
                "{test}: the Gateway API CRDs are missing ({}: {e}); run `bash scripts/gateway-api-crds.sh`",
                path.display()
            );
            if in_ci() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED {msg}");
            None
        }
    }
}

/// Installs the HTTPRoute CRD and waits until it is served.
pub async fn install_httproute_crd(client: &Client, yaml: &str) -> Result<()> {
    apply_yaml(client, yaml, "default")
        .await
        .context("applying the HTTPRoute CRD")?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    eventually(
        Duration::from_secs(30),
        "CRD httproutes.gateway.networking.k8s.io established",
        || {
            let crds = crds.clone();
            async move {
                crds.get("httproutes.gateway.networking.k8s.io")
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
    // Discovery of the new group can lag behind Established.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}
