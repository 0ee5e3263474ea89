//! The operator process: leader election with a Lease, the HTTP endpoints
//! (`/metrics`, `/healthz`, `/readyz`), the controllers, graceful shutdown.
//!
//! Only the Lease holder reconciles. A replica that loses the Lease stops its
//! controllers and exits, so that two replicas can never act at once; its
//! Deployment restarts it as a standby. On SIGTERM the holder releases the
//! Lease so a standby takes over at once instead of after the lease expires.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::Reporter;
use kube::Client;
use tokio::sync::watch;

use crate::controller::{self, Context};
use crate::metrics::OperatorMetrics;

/// How the operator process runs.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Namespace of the Lease (the operator's own namespace).
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's identity in the Lease (pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
    pub http_addr: SocketAddr,
    /// This replica's pod IP, when it runs as a pod: the NetworkPolicy of a
    /// region in another Kubernetes cluster admits the admin port from it
    /// (a label selector there cannot name this cluster's pods).
    pub pod_ip: Option<std::net::IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("connecting to the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("lost the leader Lease {0}; exiting so that only one replica reconciles")]
    LostLease(String),
}

struct Health {
    /// Unix ms of the last successful Lease round trip.
    last_api_ok_ms: AtomicU64,
    leader: AtomicBool,
    metrics: OperatorMetrics,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One Lease round: acquire, renew, or observe someone else's. Returns whether
/// this replica holds the Lease afterwards.
async fn lease_round(
    api: &Api<Lease>,
    cfg: &OperatorConfig,
    held: bool,
) -> Result<bool, kube::Error> {
    let duration = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(15);
    let Some(mut lease) = api.get_opt(&cfg.lease_name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.lease_name.clone()),
                namespace: Some(cfg.lease_namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(now_micro()),
                renew_time: Some(now_micro()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
        age.as_secs() >= i64::from(spec.lease_duration_seconds.unwrap_or(duration))
    });
    let mine = holder == cfg.identity;
    if !mine && !holder.is_empty() && !expired {
        return Ok(false);
    }
    if mine && !held {
        // We restarted while the Lease still names us: take it up again.
        tracing::info!("the Lease still names this replica; resuming");
    }
    let mut new_spec = spec.clone();
    new_spec.holder_identity = Some(cfg.identity.clone());
    new_spec.lease_duration_seconds = Some(duration);
    new_spec.renew_time = Some(now_micro());
    if !mine {
        new_spec.acquire_time = Some(now_micro());
        new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        tracing::info!(previous = %holder, "taking over the leader Lease");
    }
    lease.spec = Some(new_spec);
    // The resourceVersion in `lease` makes this a compare-and-swap: if another
    // replica renewed or took it in between, the replace fails with 409.
    match api
        .replace(&cfg.lease_name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// A Lease round that gives up after `limit`: the client has no read
/// timeout, and a renewal that hangs must count as failed.
async fn bounded(
    limit: Duration,
    round: impl std::future::Future<Output = Result<bool, kube::Error>>,
) -> Result<bool, kube::Error> {
    match tokio::time::timeout(limit, round).await {
        Ok(r) => r,
        Err(_) => Err(kube::Error::Service(
            format!("Lease request took longer than {limit:?}").into(),
        )),
    }
}

async fn release(api: &Api<Lease>, cfg: &OperatorConfig) {
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.lease_name).await {
        if let Some(spec) = lease.spec.as_mut() {
            if spec.holder_identity.as_deref() == Some(cfg.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                match api
                    .replace(&cfg.lease_name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => tracing::info!("released the leader Lease"),
                    Err(e) => tracing::warn!(error = %e, "could not release the Lease"),
                }
            }
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RuntimeError> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(h): State<Arc<Health>>| async move { h.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Arc<Health>>| async move {
                let age = now_ms().saturating_sub(h.last_api_ok_ms.load(Ordering::Relaxed));
                let role = if h.leader.load(Ordering::Relaxed) {
                    "leader"
                } else {
                    "standby"
                };
                if age < 30_000 {
                    (StatusCode::OK, format!("ready ({role})")).into_response()
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("no API server contact for {age} ms"),
                    )
                        .into_response()
                }
            }),
        )
        .with_state(health);
    tracing::info!(%addr, "operator endpoints listening");
    let mut shutdown = shutdown;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
        .map_err(|source| RuntimeError::Listen { addr, source })
}

/// How long the controllers get to finish in-flight reconciles on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// Runs the operator until `stop` resolves (SIGTERM) or the Lease is lost.
pub async fn run(
    cfg: OperatorConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let client = Client::try_default().await.map_err(RuntimeError::Client)?;
    let metrics = OperatorMetrics::new()?;
    let health = Arc::new(Health {
        last_api_ok_ms: AtomicU64::new(0),
        leader: AtomicBool::new(false),
        metrics: metrics.clone(),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Bind before anything else: an operator without /readyz and /metrics
    // must fail at start, not run blind.
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|source| RuntimeError::Listen {
            addr: cfg.http_addr,
            source,
        })?;
    let server = tokio::spawn(serve(
        listener,
        cfg.http_addr,
        health.clone(),
        shutdown_rx.clone(),
    ));
    let stop_tx = shutdown_tx.clone();
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });

    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.lease_namespace);
    let mut shutdown = shutdown_rx.clone();
    // Standby until the Lease is ours.
    loop {
        match bounded(cfg.renew_every, lease_round(&leases, &cfg, false)).await {
            Ok(true) => break,
            Ok(false) => {
                health.last_api_ok_ms.store(now_ms(), Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "Lease round failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.renew_every) => {}
            _ = shutdown.wait_for(|s| *s) => {
                let _ = server.await;
                return Ok(());
            }
        }
    }
    health.last_api_ok_ms.store(now_ms(), Ordering::Relaxed);
    health.leader.store(true, Ordering::Relaxed);
    metrics.leader.set(1);
    tracing::info!(identity = %cfg.identity, "holding the leader Lease; reconciling");

    // One client to every cluster's nodes, shared by the controllers: TLS
    // to each pod that serves it, under its cluster's CA (crate::api_tls).
    let nodes = crate::api_tls::NodeRoutes::default();
    let ctx = Arc::new(Context {
        client: client.clone(),
        http: nodes.http.clone(),
        nodes: nodes.clone(),
        metrics: metrics.clone(),
        reporter: Reporter {
            controller: "roomkeeper-operator".into(),
            instance: Some(cfg.identity.clone()),
        },
        playbooks: crate::tier::PlaybookStates::default(),
        backoff: crate::backoff::Backoff::default(),
        kubeconfigs: crate::regions::KubeconfigClients::default(),
        operator_ip: cfg.pod_ip,
    });
    let (ctl_stop_tx, ctl_stop_rx) = watch::channel(false);
    let ctl_stop = |rx: watch::Receiver<bool>| async move {
        let mut rx = rx;
        let _ = rx.wait_for(|s| *s).await;
    };
    let lrc_ctl = tokio::spawn(controller::run(ctx, ctl_stop(ctl_stop_rx.clone())));
    let fpb_ctl = tokio::spawn(controller::run_playbooks(
        client.clone(),
        ctl_stop(ctl_stop_rx.clone()),
    ));
    let drill_ctl = tokio::spawn(crate::drill::run(
        client.clone(),
        nodes.clone(),
        ctl_stop(ctl_stop_rx.clone()),
    ));
    let sched_ctl = tokio::spawn(crate::schedule::run(
        client.clone(),
        nodes.clone(),
        ctl_stop(ctl_stop_rx.clone()),
    ));

    // Renew; a failed renewal past the lease duration means someone else may
    // hold it now: stop at once.
    let mut last_renewed = std::time::Instant::now();
    let outcome = loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.renew_every) => {}
            _ = shutdown.wait_for(|s| *s) => break Ok(()),
        }
        let sent = std::time::Instant::now();
        match bounded(cfg.renew_every, lease_round(&leases, &cfg, true)).await {
            Ok(true) => {
                // Counted from when the renewal was sent, not answered.
                last_renewed = sent;
                health.last_api_ok_ms.store(now_ms(), Ordering::Relaxed);
            }
            Ok(false) => break Err(RuntimeError::LostLease(cfg.lease_name.clone())),
            Err(e) => {
                tracing::warn!(error = %e, "Lease renewal failed");
                if last_renewed.elapsed() + cfg.renew_every >= cfg.lease_duration {
                    break Err(RuntimeError::LostLease(cfg.lease_name.clone()));
                }
            }
        }
    };
    let _ = ctl_stop_tx.send(true);
    if outcome.is_err() {
        // Someone else may hold the Lease now: stop acting at once rather than
        // letting in-flight reconciles finish.
        lrc_ctl.abort();
        fpb_ctl.abort();
        drill_ctl.abort();
        sched_ctl.abort();
    }
    // In-flight reconciles finish, within a bound: a controller told to stop
    // right after it started (SIGTERM just after taking the Lease) can wait
    // for ever for a store its cut watch never fills (kube-runtime holds its
    // runner until the store is ready). Then it is aborted, with a warning.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    for (name, task) in [
        ("LiveRoomCluster", lrc_ctl),
        ("FailoverPlaybook", fpb_ctl),
        ("ChaosDrill", drill_ctl),
        ("ChaosDrillSchedule", sched_ctl),
    ] {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            tracing::warn!(controller = name, grace = ?SHUTDOWN_GRACE, "controller did not stop in time; aborted");
            abort.abort();
        }
    }
    health.leader.store(false, Ordering::Relaxed);
    metrics.leader.set(0);
    if outcome.is_ok() {
        release(&leases, &cfg).await;
    }
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    outcome
}
