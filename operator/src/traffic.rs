//! Where new buyers go: per-region traffic weights behind a plain interface
//! ([`TrafficRouter`]), so another router (a DNS GSLB such as k8gb, a mesh)
//! can be added without touching the engine or the actuator. The one
//! implementation here publishes the weights as the `backendRefs` of a
//! Gateway API `HTTPRoute` the operator owns per cluster: one backend per
//! region, the region's client Service, `weight` = the region's weight. The
//! route is the record of the weights, so they survive operator restarts.
//! A region in another Kubernetes cluster (D57) is a `ServiceImport` backend
//! of the same name (Gateway API GEP-1748, Multi-Cluster Services API): the
//! region's client Service exported from its cluster by the MCS
//! implementation the clusters share.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::{json, Value};

use crate::resources::{labels, Names, API_PORT};

/// The Gateway API group and the CRD the router needs.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub const HTTPROUTE_CRD: &str = "httproutes.gateway.networking.k8s.io";
/// The CRD of the policy telling a gateway its backends speak TLS.
pub const BACKENDTLSPOLICY_CRD: &str = "backendtlspolicies.gateway.networking.k8s.io";
/// The weight a region has until something sets it.
pub const FULL_WEIGHT: u32 = 100;

/// Why a weight could not be read or set.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("the CustomResourceDefinition {HTTPROUTE_CRD} (Gateway API, v1) is not installed in this cluster: install the Gateway API standard CRDs so the operator can move traffic")]
    CrdMissing,
    #[error("the CustomResourceDefinition {BACKENDTLSPOLICY_CRD} (Gateway API v1.4 or later, standard channel) is not installed in this cluster: the nodes' order API is TLS, and without the policy a gateway would send buyers to it in plain HTTP; install the Gateway API standard CRDs")]
    BackendTlsCrdMissing,
    #[error("region {0:?} is not in the cluster's spec")]
    UnknownRegion(String),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// A way to steer new buyers between regions. `weight` is relative: 0 sends
/// a region no new buyers.
pub trait TrafficRouter {
    /// The router's kind, in messages (`HTTPRoute`).
    fn kind(&self) -> &'static str;
    /// Makes sure the route exists and lists every region; a region without
    /// a weight yet gets `initial(region)`. Returns the weights in force.
    fn ensure(
        &self,
        initial: &(dyn Fn(&str) -> u32 + Sync),
    ) -> impl Future<Output = Result<BTreeMap<String, u32>, RouteError>> + Send;
    /// Sets one region's weight; returns what was done, in words.
    fn set_weight(
        &self,
        region: &str,
        weight: u32,
    ) -> impl Future<Output = Result<String, RouteError>> + Send;
}

/// The BackendTLSPolicy's spec: every region's client Service (its `api`
/// port) is TLS, verified against the CA in the ConfigMap `ca_configmap`
/// (`ca.crt`) by the cluster's API name, which every region's API
/// certificate carries (crate::api_tls).
pub fn tls_policy_spec(
    regions: &[String],
    services: &BTreeMap<String, String>,
    ca_configmap: &str,
) -> Value {
    let targets: Vec<Value> = regions
        .iter()
        .filter_map(|r| services.get(r))
        .map(|svc| json!({"group": "", "kind": "Service", "name": svc, "sectionName": "api"}))
        .collect();
    json!({
        "targetRefs": targets,
        "validation": {
            "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": ca_configmap}],
            "hostname": roomkeeper_api::raft_identity::api_server_name(crate::resources::NODE_CLUSTER_ID),
        },
    })
}

/// The weights of `backendRefs`, keyed by region through the Service names.
pub fn weights_of(route: &Value, services: &BTreeMap<String, String>) -> BTreeMap<String, u32> {
    let mut weights = BTreeMap::new();
    let refs = route["spec"]["rules"][0]["backendRefs"].as_array();
    for r in refs.into_iter().flatten() {
        let Some(name) = r["name"].as_str() else {
            continue;
        };
        if let Some((region, _)) = services.iter().find(|(_, s)| s.as_str() == name) {
            // Gateway API: an absent weight is 1; only the ratio matters.
            let w = r["weight"].as_u64().unwrap_or(1);
            weights.insert(region.clone(), u32::try_from(w).unwrap_or(u32::MAX));
        }
    }
    weights
}

/// The Multi-Cluster Services API group (`ServiceImport`).
pub const MCS_GROUP: &str = "multicluster.x-k8s.io";

/// The route's spec for these weights (regions in spec order); regions in
/// `remote` run in another Kubernetes cluster and are reached through their
/// Service's `ServiceImport`.
pub fn route_spec(
    regions: &[String],
    services: &BTreeMap<String, String>,
    weights: &BTreeMap<String, u32>,
    remote: &BTreeSet<String>,
) -> Value {
    let refs: Vec<Value> = regions
        .iter()
        .filter_map(|r| {
            let svc = services.get(r)?;
            let weight = weights.get(r).copied().unwrap_or(FULL_WEIGHT);
            Some(if remote.contains(r) {
                json!({
                    "group": MCS_GROUP,
                    "kind": "ServiceImport",
                    "name": svc,
                    "port": API_PORT,
                    "weight": weight,
                })
            } else {
                json!({
                    "kind": "Service",
                    "name": svc,
                    "port": API_PORT,
                    "weight": weight,
                })
            })
        })
        .collect();
    json!({ "rules": [ { "backendRefs": refs } ] })
}

/// The Gateway API `HTTPRoute` of one cluster, `<cluster>-buyers`. The
/// operator owns its `rules` (server-side apply); attach it to a Gateway by
/// adding `parentRefs` under another field manager.
pub struct HttpRouteRouter {
    client: Client,
    ns: String,
    cluster: String,
    regions: Vec<String>,
    /// Regions in another Kubernetes cluster: `ServiceImport` backends.
    remote: BTreeSet<String>,
    owner: Option<OwnerReference>,
}

impl HttpRouteRouter {
    pub fn new(
        client: Client,
        ns: &str,
        cluster: &str,
        regions: Vec<String>,
        remote: BTreeSet<String>,
        owner: Option<OwnerReference>,
    ) -> Self {
        HttpRouteRouter {
            client,
            ns: ns.to_string(),
            cluster: cluster.to_string(),
            regions,
            remote,
            owner,
        }
    }

    pub fn resource() -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(GATEWAY_GROUP, "v1", "HTTPRoute"),
            "httproutes",
        )
    }

    /// The route's name.
    pub fn name(&self) -> String {
        format!("{}-buyers", self.cluster)
    }

    fn services(&self) -> BTreeMap<String, String> {
        let names = Names {
            cluster: &self.cluster,
        };
        self.regions
            .iter()
            .map(|r| (r.clone(), names.client_service(r)))
            .collect()
    }

    fn api(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, &Self::resource())
    }

    pub fn tls_policy_resource() -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(GATEWAY_GROUP, "v1", "BackendTLSPolicy"),
            "backendtlspolicies",
        )
    }

    /// The BackendTLSPolicy's name.
    pub fn tls_policy_name(&self) -> String {
        format!("{}-buyers-tls", self.cluster)
    }

    /// Whether the API server serves `httproutes` and `backendtlspolicies`
    /// in the Gateway API group (discovery needs no RBAC beyond being
    /// authenticated).
    async fn crd_installed(&self) -> Result<(), RouteError> {
        match self
            .client
            .list_api_group_resources(&format!("{GATEWAY_GROUP}/v1"))
            .await
        {
            Ok(list) if !list.resources.iter().any(|r| r.name == "httproutes") => {
                Err(RouteError::CrdMissing)
            }
            Ok(list)
                if !list
                    .resources
                    .iter()
                    .any(|r| r.name == "backendtlspolicies") =>
            {
                Err(RouteError::BackendTlsCrdMissing)
            }
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Err(RouteError::CrdMissing),
            Err(source) => Err(RouteError::Kube {
                what: format!("discovering {GATEWAY_GROUP}/v1"),
                source,
            }),
        }
    }

    async fn current(&self) -> Result<Option<Value>, RouteError> {
        self.crd_installed().await?;
        let name = self.name();
        let obj = self
            .api()
            .get_opt(&name)
            .await
            .map_err(|source| RouteError::Kube {
                what: format!("reading HTTPRoute {name}"),
                source,
            })?;
        obj.map(|o| serde_json::to_value(o).map_err(kube::Error::SerdeError))
            .transpose()
            .map_err(|source| RouteError::Kube {
                what: format!("reading HTTPRoute {name}"),
                source,
            })
    }

    async fn apply(&self, weights: &BTreeMap<String, u32>) -> Result<(), RouteError> {
        let services = self.services();
        self.apply_object(
            &Self::resource(),
            self.name(),
            route_spec(&self.regions, &services, weights, &self.remote),
        )
        .await?;
        // The backends speak TLS (D46): the gateway verifies them under the
        // cluster's CA by the name every region's certificate carries.
        let ca = Names {
            cluster: &self.cluster,
        }
        .api_ca();
        self.apply_object(
            &Self::tls_policy_resource(),
            self.tls_policy_name(),
            tls_policy_spec(&self.regions, &services, &ca),
        )
        .await
    }

    /// Server-side applies one Gateway API object of the cluster (`resource`,
    /// `name`, `spec`), labelled like its other objects and owned as the
    /// route is.
    async fn apply_object(
        &self,
        resource: &ApiResource,
        name: String,
        spec: Value,
    ) -> Result<(), RouteError> {
        let mut meta = json!({
            "name": name,
            "namespace": self.ns,
            "labels": labels(&self.cluster, None),
        });
        if let Some(o) = &self.owner {
            meta["ownerReferences"] = json!([o]);
        }
        let obj = json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": meta,
            "spec": spec,
        });
        Api::<DynamicObject>::namespaced_with(self.client.clone(), &self.ns, resource)
            .patch(
                &name,
                &PatchParams::apply(crate::controller::MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .map_err(|source| RouteError::Kube {
                what: format!("applying {} {name}", resource.kind),
                source,
            })?;
        Ok(())
    }
}

impl TrafficRouter for HttpRouteRouter {
    fn kind(&self) -> &'static str {
        "HTTPRoute"
    }

    async fn ensure(
        &self,
        initial: &(dyn Fn(&str) -> u32 + Sync),
    ) -> Result<BTreeMap<String, u32>, RouteError> {
        let services = self.services();
        let existing = self
            .current()
            .await?
            .map(|r| weights_of(&r, &services))
            .unwrap_or_default();
        let weights: BTreeMap<String, u32> = self
            .regions
            .iter()
            .map(|r| {
                let w = existing.get(r).copied().unwrap_or_else(|| initial(r));
                (r.clone(), w)
            })
            .collect();
        if weights != existing {
            self.apply(&weights).await?;
        }
        Ok(weights)
    }

    async fn set_weight(&self, region: &str, weight: u32) -> Result<String, RouteError> {
        if !self.regions.iter().any(|r| r == region) {
            return Err(RouteError::UnknownRegion(region.to_string()));
        }
        let services = self.services();
        let mut weights = self
            .current()
            .await?
            .map(|r| weights_of(&r, &services))
            .unwrap_or_default();
        for r in &self.regions {
            weights.entry(r.clone()).or_insert(FULL_WEIGHT);
        }
        let before = weights.insert(region.to_string(), weight);
        self.apply(&weights).await?;
        Ok(format!(
            "HTTPRoute {}: weight of {region} {} → {weight}",
            self.name(),
            before.map_or_else(|| "unset".to_string(), |w| w.to_string())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> BTreeMap<String, String> {
        ["us", "eu", "ap"]
            .iter()
            .map(|r| (r.to_string(), format!("shop-{r}")))
            .collect()
    }

    #[test]
    fn the_tls_policy_names_every_regions_api_port_and_the_clusters_ca_and_name() {
        let regions = vec!["us".to_string(), "eu".to_string()];
        let spec = tls_policy_spec(&regions, &services(), "shop-api-ca");
        let targets = spec["targetRefs"].as_array().expect("targets");
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0]["name"], "shop-us");
        assert_eq!(targets[0]["kind"], "Service");
        assert_eq!(targets[0]["group"], "");
        assert_eq!(targets[0]["sectionName"], "api");
        assert_eq!(spec["validation"]["hostname"], "local.api.roomkeeper");
        assert_eq!(
            spec["validation"]["caCertificateRefs"],
            json!([{"group": "", "kind": "ConfigMap", "name": "shop-api-ca"}])
        );
    }

    #[test]
    fn a_region_in_another_cluster_is_a_service_import_backend_and_keeps_its_weight() {
        let regions: Vec<String> = ["us", "eu", "ap"].iter().map(|s| s.to_string()).collect();
        let weights = BTreeMap::from([("ap".to_string(), 0)]);
        let remote = BTreeSet::from(["ap".to_string()]);
        let spec = route_spec(&regions, &services(), &weights, &remote);
        let refs = spec["rules"][0]["backendRefs"].as_array().expect("refs");
        assert_eq!(refs[0]["kind"], "Service");
        assert_eq!(refs[2]["kind"], "ServiceImport");
        assert_eq!(refs[2]["group"], MCS_GROUP);
        assert_eq!(refs[2]["name"], "shop-ap");
        let back = weights_of(&json!({ "spec": spec }), &services());
        assert_eq!(back["ap"], 0);
        assert_eq!(back["us"], FULL_WEIGHT);
    }

    #[test]
    fn weights_round_trip_through_the_route_spec_in_spec_order() {
        let regions: Vec<String> = ["us", "eu", "ap"].iter().map(|s| s.to_string()).collect();
        let weights = BTreeMap::from([("us".to_string(), 0), ("eu".to_string(), 100)]);
        let spec = route_spec(&regions, &services(), &weights, &BTreeSet::new());
        let refs = spec["rules"][0]["backendRefs"].as_array().expect("refs");
        let names: Vec<&str> = refs.iter().filter_map(|r| r["name"].as_str()).collect();
        assert_eq!(names, ["shop-us", "shop-eu", "shop-ap"]);
        assert_eq!(
            refs[2]["weight"],
            json!(FULL_WEIGHT),
            "unset is full weight"
        );
        assert_eq!(refs[0]["port"], json!(API_PORT));
        let back = weights_of(&json!({ "spec": spec }), &services());
        assert_eq!(
            back,
            BTreeMap::from([
                ("us".to_string(), 0),
                ("eu".to_string(), 100),
                ("ap".to_string(), 100)
            ])
        );
    }

    #[test]
    fn foreign_backends_are_ignored_and_an_absent_weight_is_one() {
        let route = json!({"spec": {"rules": [{"backendRefs": [
            {"name": "shop-us"},
            {"name": "someone-else", "weight": 7}
        ]}]}});
        assert_eq!(
            weights_of(&route, &services()),
            BTreeMap::from([("us".to_string(), 1)])
        );
        assert!(weights_of(&json!({}), &services()).is_empty());
    }
}
