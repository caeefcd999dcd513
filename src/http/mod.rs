//! The HTTP server every replica runs: `/healthz` (the process serves), `/readyz` (migrations
//! applied and both informer caches listed), `/metrics` (Prometheus text). The management API
//! attaches here.

use std::{
    net::SocketAddr,
    sync::Arc,
    sync::atomic::{AtomicBool, Ordering},
};

pub mod api;
pub mod auth;
mod etag;
pub mod limits;
mod trigger_body;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid --http-addr {0}: {1}")]
    Addr(String, std::net::AddrParseError),
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

/// What the probes report.
#[derive(Clone, Default)]
pub struct Health {
    /// Set once migrations ran and the caches hold their first list.
    pub ready: Arc<AtomicBool>,
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .with_state(health)
}

/// The dashboard: a static page; its data comes from the API, under the API's authentication.
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("dashboard.html"))
}

async fn metrics() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::METRICS.render(),
    )
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: caches not synced",
        )
    }
}

/// Bind `addr` and serve until `stop` flips. Returns the bound address through `bound` (port 0
/// picks a free port, which tests use).
pub async fn serve(
    addr: &str,
    app: Router,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), HttpError> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| HttpError::Addr(addr.to_string(), e))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| HttpError::Bind(addr, e))?;
    let local = listener.local_addr().map_err(HttpError::Serve)?;
    tracing::info!(addr = %local, "HTTP server listening");
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }
    // With the peer address in each request's extensions: the API counts authentication
    // failures per source.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await
    .map_err(HttpError::Serve)
}
