//! The validating admission webhook every replica serves on its own port (`--webhook-addr`):
//! `kubectl apply` of a ScheduledJob or TaskFunction the reconcile would mark `Ready=False` is
//! refused with the condition's message. The verdict is the reconcile's own ([`verdict`]);
//! the reconcile's condition stays the backstop for whatever the webhook does not see (it was
//! down and the `failurePolicy` is `Ignore`, or a TaskFunction changed under existing jobs).
//!
//! [`offline`] runs the same verdict on files: `kube-beat validate`.

pub mod admission;
pub mod offline;
pub mod tls;
pub mod verdict;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{Router, extract::DefaultBodyLimit, routing::post};
use kube::Client;
use tokio::sync::watch;

use crate::reconcile::LabelSelector;

/// Largest AdmissionReview accepted: an object and its old version, each at most the
/// apiserver's ~1.5 MiB request limit, with room for the review around them.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// How long one review may take, body included (the apiserver waits at most 30 s).
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// Reviews answered at once; more wait for a slot (each may look a TaskFunction up).
const CONCURRENT_REVIEWS: usize = 64;
/// How long open connections get to finish once the process stops.
const GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid --webhook-addr {0}: {1}")]
    Addr(String, std::net::AddrParseError),
    #[error("serving the webhook: {0}")]
    Serve(std::io::Error),
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("webhook certificate: {0}")]
    Certificate(String),
    #[error("webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// `kube-beat run`'s webhook options.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    pub addr: String,
    pub cert_dir: Option<PathBuf>,
    /// The Service's name: the self-signed certificate is for `NAME.NAMESPACE.svc` (and
    /// `.cluster.local`).
    pub service: String,
    pub extra_sans: Vec<String>,
    pub secret: String,
    /// The pod's namespace: the Secret's and the Service's.
    pub namespace: String,
    pub configuration: Option<String>,
    pub refresh: Duration,
    pub selector: LabelSelector,
    pub watch_namespace: Option<String>,
}

impl WebhookOptions {
    /// The serving certificate's names in the self-signed fallback.
    pub fn names(&self) -> Vec<String> {
        let base = format!("{}.{}.svc", self.service, self.namespace);
        let mut names = vec![base.clone(), format!("{base}.cluster.local")];
        for extra in &self.extra_sans {
            let extra = extra.trim();
            if !extra.is_empty() && !names.iter().any(|n| n == extra) {
                names.push(extra.to_string());
            }
        }
        names
    }
}

/// The webhook's routes: `POST /validate`, bounded in body size, time and concurrency.
pub fn router(reviewer: Arc<admission::Reviewer>) -> Router {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_REVIEWS));
    Router::new()
        .route("/validate", post(admission::validate))
        .with_state(reviewer)
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let permits = permits.clone();
                async move { bounded(permits, req, next).await }
            },
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// One review at most [`REVIEW_TIMEOUT`] (reading the body included), never a panic out of it.
async fn bounded(
    permits: Arc<tokio::sync::Semaphore>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::{http::StatusCode, response::IntoResponse};
    use futures::FutureExt;
    let work = async {
        let _permit = permits.acquire().await;
        std::panic::AssertUnwindSafe(next.run(req))
            .catch_unwind()
            .await
    };
    match tokio::time::timeout(REVIEW_TIMEOUT, work).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => {
            tracing::error!("an admission review panicked");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "review timed out").into_response(),
    }
}

/// Serve the webhook until `stop` flips: the certificate first (retried until it can be had:
/// with `failurePolicy: Ignore` nothing waits on it meanwhile), then HTTPS, refreshing the
/// certificate (and the caBundle) every `refresh`.
pub async fn run(
    opts: WebhookOptions,
    client: Client,
    mut stop: watch::Receiver<bool>,
) -> Result<(), WebhookError> {
    let addr: SocketAddr = opts
        .addr
        .parse()
        .map_err(|e| WebhookError::Addr(opts.addr.clone(), e))?;
    let mut source = tls::Source::new(
        opts.cert_dir.as_deref(),
        &client,
        tls::SelfSignedOptions {
            secret: opts.secret.clone(),
            namespace: opts.namespace.clone(),
            names: opts.names(),
            configuration: opts.configuration.clone(),
        },
    );
    let mut delay = Duration::from_secs(1);
    let first = loop {
        match source.refresh().await {
            Ok(Some(config)) => break config,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "webhook certificate not ready"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    };
    let config = axum_server::tls_rustls::RustlsConfig::from_config(first);
    let handle = axum_server::Handle::new();
    let app = router(Arc::new(admission::Reviewer {
        client,
        selector: opts.selector.clone(),
        namespace: opts.watch_namespace.clone(),
    }));
    let server = axum_server::bind_rustls(addr, config.clone())
        .handle(handle.clone())
        .serve(app.into_make_service());
    let refresher = {
        let (handle, mut stop) = (handle.clone(), stop.clone());
        async move {
            if let Some(bound) = handle.listening().await {
                tracing::info!(addr = %bound, "webhook listening");
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(opts.refresh) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                match source.refresh().await {
                    Ok(Some(new)) => config.reload_from_config(new),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "refreshing the webhook certificate"),
                }
            }
            handle.graceful_shutdown(Some(GRACE));
        }
    };
    tokio::pin!(server);
    tokio::select! {
        // Only on an error (the address taken): the server runs until the refresher stops it.
        served = &mut server => return served.map_err(WebhookError::Serve),
        () = refresher => {}
    }
    server.await.map_err(WebhookError::Serve)
}
