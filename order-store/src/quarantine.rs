//! A node that must not join Raft: it serves only an admin listener that says
//! why, so the operator (and a human with curl) can see it and act.
//!
//! The one reason today is a wiped volume: the node's id has been a Raft member
//! (the operator's identity map says so) but its data directory is empty. A
//! member that forgot its log and its vote must never speak Raft under its old
//! id (it could vote twice in one term); the operator retires the id and gives
//! the pod a new one (docs/decisions.md D11, runbooks/wiped-volume.md).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use serde_json::json;
use tokio::net::TcpListener;

use crate::api::bearer_matches;
use crate::NodeId;

pub use roomkeeper_api::admin::{parse_joined_ids, BadJoinedId, QuarantineReply, WIPED_VOLUME};

struct Quarantine {
    reply: QuarantineReply,
    admin_token: Option<String>,
    metrics: String,
}

fn metrics_text(node_id: NodeId) -> Result<String, prometheus::Error> {
    let registry = prometheus::Registry::new();
    let gauge = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "roomkeeper_node_quarantined",
            "1 while the node refuses to join Raft, by reason",
        ),
        &["node_id", "reason"],
    )?;
    registry.register(Box::new(gauge.clone()))?;
    gauge
        .with_label_values(&[node_id.to_string().as_str(), WIPED_VOLUME])
        .set(1);
    let mut out = String::new();
    prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out)?;
    Ok(out)
}

/// Serves the quarantine admin API on `listener` until the task is dropped.
/// `/healthz` is 200 (restarting the process would not help), `/readyz` 503,
/// every `/admin/...` call 409 with a [`QuarantineReply`] (401 without the
/// admin token), `/metrics` has `roomkeeper_node_quarantined`.
pub async fn serve_wiped(
    listener: TcpListener,
    node_id: NodeId,
    message: String,
    admin_token: Option<String>,
    tls: Option<(crate::http_tls::HttpTls, std::time::Duration)>,
) -> std::io::Result<()> {
    let metrics_body = metrics_text(node_id).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot render quarantine metrics");
        String::new()
    });
    let state = Arc::new(Quarantine {
        reply: QuarantineReply {
            code: WIPED_VOLUME.to_string(),
            message,
            node_id,
        },
        admin_token,
        metrics: metrics_body,
    });
    let app = Router::new()
        .route("/healthz", get(|| async { "quarantined" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(refuse)
        .with_state(state);
    // The same edge limits as a running node's admin listener; their metrics
    // go to a registry of their own (the quarantine `/metrics` is fixed text).
    let edges = crate::http_server::EdgeMetrics::new(&prometheus::Registry::new())
        .map_err(std::io::Error::other)?;
    let tls = tls.map(|(t, every)| {
        t.spawn_reloader(every, edges.tls_reloads_total.clone());
        (t, crate::http_tls::Edge::Admin)
    });
    crate::http_server::serve(
        listener,
        "admin",
        app,
        crate::http_server::HttpLimits::default(),
        crate::admin::MAX_BODY_BYTES,
        edges,
        tls,
    )
    .await;
    Ok(())
}

async fn readyz(State(q): State<Arc<Quarantine>>) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"ready": false, "reason": q.reply.message})),
    )
        .into_response()
}

async fn metrics(State(q): State<Arc<Quarantine>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        q.metrics.clone(),
    )
        .into_response()
}

async fn refuse(State(q): State<Arc<Quarantine>>, req: Request<axum::body::Body>) -> Response {
    if let Some(token) = &q.admin_token {
        if !bearer_matches(req.headers(), token) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"code": "unauthorized", "message": "missing or wrong admin bearer token"})),
            )
                .into_response();
        }
    }
    if !req.uri().path().starts_with("/admin/") {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"code": "not_found", "message": "no such route"})),
        )
            .into_response();
    }
    (StatusCode::CONFLICT, Json(q.reply.clone())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_quarantine_codes_are_read_as_quarantine() {
        let body = json!({"code": WIPED_VOLUME, "message": "m", "node_id": 4});
        assert_eq!(
            QuarantineReply::from_body(&body).map(|r| r.node_id),
            Some(4)
        );
        let other = json!({"code": "init_refused", "message": "m", "node_id": 4});
        assert_eq!(QuarantineReply::from_body(&other), None);
        assert_eq!(
            QuarantineReply::from_body(&json!({"code": WIPED_VOLUME})),
            None
        );
    }

    #[test]
    fn joined_ids_lists_are_read_strictly() {
        let ids = parse_joined_ids("# ids that joined\n1\n2 3 # bootstrap\n\n9\n").unwrap();
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 9]);
        assert_eq!(
            parse_joined_ids("1\nfour\n").unwrap_err(),
            BadJoinedId {
                line: 2,
                word: "four".into()
            }
        );
    }

    #[test]
    fn metrics_name_the_node_and_the_reason() {
        let text = metrics_text(7).unwrap();
        assert!(
            text.contains("roomkeeper_node_quarantined{node_id=\"7\",reason=\"wiped_volume\"} 1"),
            "{text}"
        );
    }
}
