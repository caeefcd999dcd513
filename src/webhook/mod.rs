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
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "webhook certificate not ready")
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, http::Request};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    fn app() -> Router {
        // An apiserver nobody listens on: the reviews below never need one.
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let client = Client::try_from(config).expect("client");
        router(Arc::new(admission::Reviewer {
            client,
            selector: LabelSelector::parse("").expect("selector"),
            namespace: None,
        }))
    }

    async fn post(body: Vec<u8>) -> (u16, Value) {
        let request = Request::post("/validate")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request");
        let response = app().oneshot(request).await.expect("response");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn review(object: Value) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "kubebeat.io", "version": "v1alpha1", "kind": object["kind"]},
                "resource": {"group": "kubebeat.io", "version": "v1alpha1", "resource": "x"},
                "name": "n", "operation": "CREATE", "userInfo": {"username": "u"},
                "object": object, "oldObject": null, "dryRun": false,
            }
        })
        .to_string()
        .into_bytes()
    }

    #[tokio::test]
    async fn garbage_is_a_bad_request_never_a_panic() {
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        for body in [
            b"".to_vec(),
            b"not json".to_vec(),
            b"{\"request\": 1}".to_vec(),
            b"{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": \"AdmissionReview\"}".to_vec(),
            vec![0xff, 0xfe, 0x00],
        ] {
            let (status, _) = post(body).await;
            assert_eq!(status, 400);
        }
        assert_eq!(post(big).await.0, 413, "bounded body");
    }

    #[tokio::test]
    async fn a_bad_task_function_is_refused_with_its_message_and_counted() {
        let tf = json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
            "metadata": {"name": "t"}, "spec": {"task": "t", "queue": "amq.x"},
        });
        let (status, body) = post(review(tf)).await;
        assert_eq!(status, 200);
        let response = &body["response"];
        assert_eq!(response["uid"], "u-1");
        assert_eq!(response["allowed"], false);
        let message = response["status"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("queue: \"amq.x\" is reserved"),
            "{message}"
        );

        let ok = json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
            "metadata": {"name": "t"}, "spec": {"task": "t"},
        });
        assert_eq!(post(review(ok)).await.1["response"]["allowed"], true);
        let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        assert_eq!(post(review(other)).await.1["response"]["allowed"], true);

        let metrics = crate::metrics::METRICS.render();
        assert!(
            metrics.contains(
                "kube_beat_admission_reviews_total{kind=\"TaskFunction\",result=\"refused\"}"
            ),
            "{metrics}"
        );
    }
}
