//! The admission webhook every replica serves on its own port (`--webhook-addr`). Validating:
//! `kubectl apply` of a ScheduledJob or TaskFunction the reconcile would mark `Ready=False` is
//! refused with the condition's message. Mutating (`/mutate`): a new ScheduledJob gets
//! kube-beat's finalizer in its create, saving the operator's own PATCH. The verdict is the reconcile's own ([`verdict`]);
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

/// Largest AdmissionReview accepted. The port is reachable by any pod, so this bounds what a
/// hostile POST can make the operator hold: a legitimate UPDATE review carries the object and
/// its old version, each a spec whose arguments are bounded to 64 KiB
/// (`validate::MAX_ARGUMENTS_BYTES`) plus metadata and status of a few KiB: well under 512 KiB.
/// Parsed, JSON takes up to ~10-20 times its text (a `Value` per tiny token), so one review holds
/// at most ~10 MiB.
pub const MAX_BODY_BYTES: usize = 512 * 1024;
/// How long one review may take, body included (the apiserver waits at most 30 s).
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// Reviews answered at once; more wait for a slot, unread (each may look a TaskFunction up).
/// 4 x 512 KiB bodies, parsed: a few tens of MiB at worst, whatever the callers send; and at
/// most 4 TaskFunction GETs in flight on the apiserver. The apiserver's own calls are rare
/// (one per apply of a ScheduledJob or TaskFunction) and each takes milliseconds.
const CONCURRENT_REVIEWS: usize = 4;
/// How long a connection may take to send a request's headers: one that never does (opened
/// and left idle, or trickling) is closed rather than held forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
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
    /// `--webhook-missing-task-function`.
    pub missing_task_function: admission::MissingTaskFunction,
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

/// The webhook's routes: `POST /validate` and `POST /mutate` (the finalizer at create),
/// bounded in body size, time and concurrency.
pub fn router(reviewer: Arc<admission::Reviewer>) -> Router {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_REVIEWS));
    Router::new()
        .route("/validate", post(admission::validate))
        .route("/mutate", post(admission::mutate))
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
    let app = router(Arc::new(admission::Reviewer::new(
        client,
        opts.selector.clone(),
        opts.watch_namespace.clone(),
        opts.missing_task_function,
    )));
    // HTTP/1 only: the header read timeout below is HTTP/1's; a server that also speaks HTTP/2
    // first waits, unbounded, for the bytes that tell which one a connection uses.
    let mut server = axum_server::bind_rustls(addr, config.clone())
        .handle(handle.clone())
        .http1_only();
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let server = server.serve(app.into_make_service());
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

    fn app_with(missing: admission::MissingTaskFunction) -> Router {
        // An apiserver nobody listens on: the reviews below never need one.
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let client = Client::try_from(config).expect("client");
        router(Arc::new(admission::Reviewer::new(
            client,
            LabelSelector::parse("").expect("selector"),
            None,
            missing,
        )))
    }

    fn app() -> Router {
        app_with(admission::MissingTaskFunction::Warn)
    }

    async fn post(body: Vec<u8>) -> (u16, Value) {
        post_to(app(), body).await
    }

    async fn post_to(app: Router, body: Vec<u8>) -> (u16, Value) {
        post_path(app, "/validate", body).await
    }

    async fn post_path(app: Router, path: &str, body: Vec<u8>) -> (u16, Value) {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request");
        let response = app.oneshot(request).await.expect("response");
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
                "name": "n", "namespace": "a", "operation": "CREATE", "userInfo": {"username": "u"},
                "object": object, "oldObject": null, "dryRun": false,
            }
        })
        .to_string()
        .into_bytes()
    }

    /// A ScheduledJob naming TaskFunction `tf`, on `cron`.
    fn job_object(tf: &str, cron: &str) -> Value {
        json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
            "metadata": {"name": "j", "namespace": "a"},
            "spec": {"taskFunction": tf, "schedule": {"cron": cron}},
        })
    }

    /// A Status the apiserver answers a failed request with.
    fn failure(code: u16, reason: &str, message: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
               "reason": reason, "code": code, "message": message})
    }

    /// A kube Client whose apiserver answers each request with `answer(path)`.
    fn fake_apiserver(answer: impl Fn(&str) -> (u16, Value) + Clone + Send + 'static) -> Client {
        let svc = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
            let (code, body) = answer(req.uri().path());
            async move {
                let resp = axum::http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(serde_json::to_vec(&body)?))?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(resp)
            }
        });
        Client::new(svc, "default")
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

    /// A reference that is not an object name is a TaskFunction that does not exist, found
    /// without a lookup (the apiserver here answers nothing: a lookup would be a 503). Under
    /// `warn` the job is allowed with the reconcile's message as a warning; under `deny` it is
    /// refused with it; any other mistake is refused either way.
    #[tokio::test]
    async fn an_unknown_task_function_warns_or_is_refused_without_a_lookup() {
        use admission::MissingTaskFunction::{Deny, Warn};
        let job = job_object;
        for name in ["echo/status", "?watch=1", "../x", "Echo"] {
            let message = format!("TaskFunction {name:?} does not exist");
            let (status, body) = post_to(app_with(Warn), review(job(name, "@daily"))).await;
            assert_eq!(status, 200, "{body}");
            let response = &body["response"];
            assert_eq!(response["allowed"], true, "{body}");
            assert_eq!(response["warnings"], json!([message]), "{body}");

            let (status, body) = post_to(app_with(Deny), review(job(name, "@daily"))).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["response"]["allowed"], false, "{body}");
            assert_eq!(body["response"]["status"]["message"], message, "{body}");

            let (_, body) = post_to(app_with(Warn), review(job(name, "61 * * * *"))).await;
            assert_eq!(body["response"]["allowed"], false, "a bad cron: {body}");
            assert!(body["response"]["warnings"].is_null(), "{body}");
        }
    }

    /// The finalizer patch `/mutate` answers, decoded from the response (`None`: no patch).
    fn finalizer_patch(body: &Value) -> Option<Value> {
        use base64::Engine;
        let response = &body["response"];
        assert_eq!(response["allowed"], true, "never refused: {body}");
        let patch = response["patch"].as_str()?;
        assert_eq!(response["patchType"], "JSONPatch", "{body}");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("base64");
        Some(serde_json::from_slice(&bytes).expect("json patch"))
    }

    fn with_operation(body: Vec<u8>, operation: &str) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&body).expect("review");
        v["request"]["operation"] = json!(operation);
        serde_json::to_vec(&v).expect("review")
    }

    /// A new job gets the finalizer appended to whatever finalizers it has; one that has it, an
    /// update, a TaskFunction, a job in a namespace not watched: no patch. Each patch answered
    /// applies to its object as the apiserver applies it.
    /// Garbage is a 400, never a refusal.
    #[tokio::test]
    async fn mutate_adds_the_finalizer_to_new_jobs_only() {
        let job = |metadata: Value| {
            let mut job = job_object("echo", "@daily");
            job["metadata"] = metadata;
            job
        };
        let mutate = |app: Router, body: Vec<u8>| async move {
            let (status, body) = post_path(app, "/mutate", body).await;
            assert_eq!(status, 200, "{body}");
            finalizer_patch(&body)
        };
        // Each answer, applied to its object (as the apiserver does), leaves the finalizers
        // wanted.
        for (finalizers, wanted) in [
            (None, json!(["kubebeat.io/cleanup"])),
            (Some(Value::Null), json!(["kubebeat.io/cleanup"])),
            (
                Some(json!(["example.com/keep"])),
                json!(["example.com/keep", "kubebeat.io/cleanup"]),
            ),
        ] {
            let mut metadata = json!({"name": "j", "namespace": "a"});
            if let Some(f) = finalizers {
                metadata["finalizers"] = f;
            }
            let mut object = job(metadata);
            let answer = mutate(app(), review(object.clone())).await;
            let patch: json_patch::Patch =
                serde_json::from_value(answer.expect("a patch")).expect("a JSON patch");
            json_patch::patch(&mut object, &patch).expect("applies");
            assert_eq!(object["metadata"]["finalizers"], wanted, "{patch:?}");
        }
        let bare = review(job(json!({"name": "j", "namespace": "a"})));

        let has = review(job(
            json!({"name": "j", "namespace": "a", "finalizers": ["kubebeat.io/cleanup"]}),
        ));
        assert_eq!(mutate(app(), has).await, None);
        assert_eq!(
            mutate(app(), with_operation(bare.clone(), "UPDATE")).await,
            None
        );
        let tf = json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
            "metadata": {"name": "t"}, "spec": {"task": "t"},
        });
        assert_eq!(mutate(app(), review(tf)).await, None);
        // `--namespace b`: a job in `a` is not this installation's.
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let elsewhere = router(Arc::new(admission::Reviewer::new(
            Client::try_from(config).expect("client"),
            LabelSelector::parse("").expect("selector"),
            Some("b".to_string()),
            admission::MissingTaskFunction::Warn,
        )));
        assert_eq!(mutate(elsewhere, bare).await, None);

        for body in [
            b"".to_vec(),
            b"not json".to_vec(),
            b"{\"request\": 1}".to_vec(),
        ] {
            assert_eq!(post_path(app(), "/mutate", body).await.0, 400);
        }
        let metrics = crate::metrics::METRICS.render();
        assert!(
            metrics.contains(
                "kube_beat_admission_reviews_total{kind=\"ScheduledJob\",result=\"finalizer\"}"
            ),
            "{metrics}"
        );
    }

    /// With a `--task-function-selector`, a job whose TaskFunction is another installation's
    /// gets no finalizer from us; one whose TaskFunction is ours, or does not exist yet, does;
    /// a lookup the apiserver cannot answer leaves the job to the operator (no patch, no error).
    #[tokio::test]
    async fn mutate_leaves_other_installations_jobs_alone() {
        let client = fake_apiserver(|path| {
            let tf = |team: &str| {
                json!({"apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
                       "metadata": {"name": "x", "labels": {"team": team}}, "spec": {"task": "kb.echo"}})
            };
            if path.ends_with("/taskfunctions/ours") {
                (200, tf("a"))
            } else if path.ends_with("/taskfunctions/theirs") {
                (200, tf("b"))
            } else if path.ends_with("/taskfunctions/broken") {
                (500, failure(500, "InternalError", "etcd"))
            } else {
                (404, failure(404, "NotFound", "not found"))
            }
        });
        let app = router(Arc::new(admission::Reviewer::new(
            client,
            LabelSelector::parse("team=a").expect("selector"),
            None,
            admission::MissingTaskFunction::Warn,
        )));
        let job = |tf: &str| review(job_object(tf, "@daily"));
        for (tf, marked) in [
            ("ours", true),
            ("missing", true),
            ("theirs", false),
            ("broken", false),
        ] {
            let (status, body) = post_path(app.clone(), "/mutate", job(tf)).await;
            assert_eq!(status, 200, "{tf}: {body}");
            assert_eq!(finalizer_patch(&body).is_some(), marked, "{tf}: {body}");
        }
    }

    /// Repeated reviews naming one TaskFunction cost the apiserver one GET (found or not).
    #[tokio::test]
    async fn task_function_lookups_are_cached() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let gets = Arc::new(AtomicUsize::new(0));
        let counted = gets.clone();
        let client = fake_apiserver(move |path| {
            counted.fetch_add(1, Ordering::SeqCst);
            if path.ends_with("/taskfunctions/echo") {
                (
                    200,
                    json!({"apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
                           "metadata": {"name": "echo"}, "spec": {"task": "kb.echo"}}),
                )
            } else {
                (404, failure(404, "NotFound", "not found"))
            }
        });
        let app = router(Arc::new(admission::Reviewer::new(
            client,
            LabelSelector::parse("").expect("selector"),
            None,
            admission::MissingTaskFunction::Deny,
        )));
        let job = |tf: &str| job_object(tf, "@daily");
        for _ in 0..3 {
            let (_, body) = post_to(app.clone(), review(job("echo"))).await;
            assert_eq!(body["response"]["allowed"], true, "{body}");
        }
        assert_eq!(gets.load(Ordering::SeqCst), 1, "one GET for three reviews");
        for _ in 0..3 {
            let (_, body) = post_to(app.clone(), review(job("gone"))).await;
            assert_eq!(
                body["response"]["status"]["message"], "TaskFunction \"gone\" does not exist",
                "{body}"
            );
        }
        assert_eq!(gets.load(Ordering::SeqCst), 2, "its absence is cached too");
    }
}
