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
/// The CRD file of BackendTLSPolicy (standard channel, v1 since v1.4).
pub const BACKENDTLSPOLICY_FILE: &str = "gateway.networking.k8s.io_backendtlspolicies.yaml";

/// Where the CRDs are: `ROOMKEEPER_GATEWAY_API_DIR`, else the script's cache.
pub fn crd_dir() -> PathBuf {
    crate::env_or_cached(
        "ROOMKEEPER_GATEWAY_API_DIR",
        format!("gateway-api/{GATEWAY_API_VERSION}"),
    )
}

/// The Gateway API CRDs the operator's router needs, as YAML.
pub struct GatewayCrds {
    /// HTTPRoute (the weights).
    pub httproute: String,
    /// BackendTLSPolicy (the nodes' order API is TLS).
    pub backend_tls: String,
}

/// The Gateway API CRDs, or `None` (skipped loudly; a panic under CI).
pub fn httproute_crd_or_skip(test: &str) -> Option<GatewayCrds> {
    let read = |file: &str| {
        let path = crd_dir().join(file);
        std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "{test}: the Gateway API CRDs are missing ({}: {e}); run `bash scripts/gateway-api-crds.sh`",
                path.display()
            )
        })
    };
    match read(HTTPROUTE_FILE).and_then(|h| Ok((h, read(BACKENDTLSPOLICY_FILE)?))) {
        Ok((httproute, backend_tls)) => Some(GatewayCrds {
            httproute,
            backend_tls,
        }),
        Err(msg) => {
            if in_ci() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED {msg}");
            None
        }
    }
}

/// Installs both CRDs and waits until they are served.
pub async fn install_httproute_crd(client: &Client, crds: &GatewayCrds) -> Result<()> {
    install_crd(
        client,
        &crds.httproute,
        "httproutes.gateway.networking.k8s.io",
    )
    .await?;
    install_crd(
        client,
        &crds.backend_tls,
        "backendtlspolicies.gateway.networking.k8s.io",
    )
    .await
}

/// Installs one CRD (`yaml`, named `name`) and waits until it is served.
pub async fn install_crd(client: &Client, yaml: &str, name: &str) -> Result<()> {
    apply_yaml(client, yaml, "default")
        .await
        .with_context(|| format!("applying the CRD {name}"))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    eventually(
        Duration::from_secs(30),
        &format!("CRD {name} established"),
        || {
            let crds = crds.clone();
            async move {
                crds.get(name)
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
