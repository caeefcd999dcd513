//! The options of `kube-beat run`: read by the command line (`cli`) and used by the operator
//! (`operator`), kept apart so neither imports the other for them.

use clap::{Args, ValueEnum};

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    // `hide_env_values` on every URL: they carry passwords, and `--help` would print them.
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Celery broker URL: redis://, rediss://, sentinel://host:port[;sentinel://...], amqp:// or
    /// amqps://.
    #[arg(long, env = "BROKER_URL", hide_env_values = true)]
    pub broker_url: Option<String>,
    /// Celery's `broker_transport_options` for Redis, as JSON: `master_name` (required with a
    /// sentinel:// URL), `global_keyprefix`, `sentinel_kwargs` (`username`, `password`).
    #[arg(long, env = "BROKER_TRANSPORT_OPTIONS", hide_env_values = true)]
    pub broker_transport_options: Option<String>,
    /// Celery result backend: redis://..., sentinel://..., db+postgresql://...,
    /// django-db+postgresql://... or `none`.
    #[arg(
        long,
        env = "RESULT_BACKEND",
        default_value = "none",
        hide_env_values = true
    )]
    pub result_backend: String,
    /// Celery's `result_backend_transport_options` for a Redis backend, as JSON (as
    /// --broker-transport-options).
    #[arg(long, env = "RESULT_BACKEND_TRANSPORT_OPTIONS", hide_env_values = true)]
    pub result_backend_transport_options: Option<String>,
    /// Namespace to watch (default: all).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Label selector limiting which TaskFunctions this installation manages (e.g.
    /// `kubebeat.io/installation=team-a`); default all.
    #[arg(long, env = "TASK_FUNCTION_SELECTOR", value_parser = crate::reconcile::selector::checked)]
    pub task_function_selector: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "kube-beat-leader")]
    pub lease_name: String,
    /// Namespace of the Lease (default: POD_NAMESPACE, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Lease duration: how long a silent leader keeps the lease before others may take it.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// A leader that could not renew for this long stops acting (must be < lease duration).
    #[arg(long, env = "RENEW_DEADLINE_SECONDS", default_value_t = 10)]
    pub renew_deadline_seconds: u64,
    /// How often the lease is renewed or tried.
    #[arg(long, env = "RETRY_PERIOD_SECONDS", default_value_t = 2)]
    pub retry_period_seconds: u64,
    /// How long a claimed execution may keep failing to publish before it is DISPATCH_FAILED.
    #[arg(long, env = "PUBLISH_GIVE_UP_SECONDS", default_value_t = 300)]
    pub publish_give_up_seconds: i64,
    /// Runs per publish in a burst (the next chunk is encoded while one is published). Hidden:
    /// tuned by the benchmark; tests set it small to exercise many chunks.
    #[arg(long, hide = true, default_value_t = crate::dispatch::PUBLISH_CHUNK)]
    pub publish_chunk: usize,
    /// Status writes per second at most (all jobs together); 0 turns status writing off.
    #[arg(long, env = "STATUS_QPS", default_value_t = 20)]
    pub status_qps: u32,
    /// At most one status write per job per this many seconds (changes in between coalesce).
    #[arg(long, env = "STATUS_INTERVAL_SECONDS", default_value_t = 1.0)]
    pub status_interval_seconds: f64,
    /// Status notices buffered between the dispatcher/tracker and the writer; when full,
    /// notices are dropped (counted) and the writer re-reads every job.
    #[arg(long, env = "STATUS_QUEUE_CAPACITY", default_value_t = 10_000)]
    pub status_queue_capacity: usize,
    /// Kubernetes Events per second at most (all jobs together); 0 turns Events off.
    #[arg(long, env = "EVENT_QPS", default_value_t = 5)]
    pub event_qps: u32,
    /// At most one Event per job and reason per this many seconds (the rest fold in).
    #[arg(long, env = "EVENT_INTERVAL_SECONDS", default_value_t = 60)]
    pub event_interval_seconds: u64,
    /// How often unfinished executions are looked up in the result backend, in milliseconds.
    #[arg(long, env = "RESULT_POLL_MS", default_value_t = 1000)]
    pub result_poll_ms: u64,
    /// With a Redis result backend, subscribe to the records Celery announces as it stores them
    /// (`PUBLISH celery-task-meta-<id>`) and record each outcome at once; the polls go on for
    /// what a subscription misses. Off: outcomes are recorded at the next poll only.
    #[arg(long, env = "RESULT_SUBSCRIBE", default_value_t = true, action = clap::ArgAction::Set)]
    pub result_subscribe: bool,
    /// How often the leader judges every job's health (the `Healthy` condition, pauses); a long
    /// pass is followed by a pause of 9 times its duration (at most a minute).
    #[arg(long, env = "HEALTH_CHECK_SECONDS", default_value_t = 5)]
    pub health_check_seconds: u64,

    /// Most jobs with `health.metrics: true` exported as per-job series; beyond it the rest are
    /// left out with a warning (every series costs the Prometheus server memory).
    #[arg(long, env = "JOB_METRICS_LIMIT", default_value_t = 1000)]
    pub job_metrics_limit: usize,

    /// How often executions beyond each job's `historyLimit` are pruned, in seconds.
    #[arg(long, env = "HISTORY_PRUNE_SECONDS", default_value_t = 60)]
    pub history_prune_seconds: u64,
    /// How often the leader asks the Celery workers (remote control: `registered`,
    /// `active_queues`) which tasks and queues they serve, for TaskFunctions' `WorkersReady`
    /// condition and `status.workers`, in seconds. 0 turns the probe off.
    #[arg(long, env = "WORKER_PROBE_SECONDS", default_value_t = 30)]
    pub worker_probe_seconds: u64,
    /// `live` publishes to Celery; `shadow` records SHADOW executions and publishes nothing.
    #[arg(long, env = "DISPATCH_MODE", value_enum, default_value_t = DispatchMode::Live)]
    pub dispatch_mode: DispatchMode,
    /// Address of the HTTP server (health, metrics, API).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: String,
    /// API authentication: `kubernetes` (bearer token → TokenReview, access → SubjectAccessReview
    /// on scheduledjobs) or `none` (anyone may read and trigger: local use only).
    #[arg(long, env = "API_AUTH", value_enum, default_value_t = crate::http::auth::AuthMode::Kubernetes)]
    pub api_auth: crate::http::auth::AuthMode,
    /// Audiences API tokens must be valid for (comma-separated), sent in each TokenReview; e.g.
    /// `kube-beat`, with clients using projected ServiceAccount tokens for that audience. Default
    /// none: the apiserver's own audiences (any token the apiserver itself accepts).
    #[arg(long, env = "API_AUDIENCES", value_delimiter = ',')]
    pub api_audiences: Vec<String>,
    /// Apply pending migrations at start (under an advisory lock). Turn off for installs that
    /// migrate in a separate step (`kube-beat migrate up`).
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
    /// Maximum Postgres connections for reconciles, status, result tracking and the API (the
    /// dispatcher keeps 3 more of its own).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
    /// How long the executions of deleted ScheduledJobs are kept, in hours.
    #[arg(long, env = "DELETED_JOB_RETENTION_HOURS", default_value_t = 168)]
    pub deleted_job_retention_hours: u32,
    // The admission webhook (`crate::webhook`).
    /// Address of the validating admission webhook (HTTPS), e.g. `0.0.0.0:9443`; empty: no
    /// webhook.
    #[arg(long, env = "WEBHOOK_ADDR", default_value = "")]
    pub webhook_addr: String,
    /// Directory holding the webhook's `tls.crt` and `tls.key` (re-read when they change, e.g.
    /// cert-manager's Secret mounted). Absent or without `tls.crt`: a certificate signed by
    /// the CA in `--webhook-secret` (the self-signed fallback).
    #[arg(long, env = "WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<std::path::PathBuf>,
    /// The webhook's Service name (in the pod's namespace): the self-signed certificate is for
    /// `NAME.NAMESPACE.svc` and `NAME.NAMESPACE.svc.cluster.local`.
    #[arg(long, env = "WEBHOOK_SERVICE", default_value = "kube-beat")]
    pub webhook_service: String,
    /// More names for the self-signed certificate (DNS names or IP addresses), comma-separated.
    #[arg(long, env = "WEBHOOK_EXTRA_SAN", value_delimiter = ',')]
    pub webhook_extra_san: Vec<String>,
    /// Secret (in the pod's namespace) holding the self-signed fallback's CA: created by the
    /// first replica, every replica signs its certificate with it.
    #[arg(long, env = "WEBHOOK_SECRET", default_value = "kube-beat-webhook-ca")]
    pub webhook_secret: String,
    /// ValidatingWebhookConfiguration whose every webhook's caBundle the operator keeps set to
    /// the self-signed fallback's CA, and the MutatingWebhookConfiguration of the same name
    /// when there is one; empty: none (cert-manager injects it, or you do).
    #[arg(long, env = "WEBHOOK_CONFIGURATION", default_value = "")]
    pub webhook_configuration: String,
    /// What a ScheduledJob naming a TaskFunction that does not exist (yet) gets: `warn` (allowed
    /// with a warning; Helm, Argo CD and `kubectl apply -f dir/` create jobs before their
    /// TaskFunctions) or `deny` (refused).
    #[arg(long, env = "WEBHOOK_MISSING_TASK_FUNCTION", value_enum, default_value_t = crate::webhook::admission::MissingTaskFunction::Warn)]
    pub webhook_missing_task_function: crate::webhook::admission::MissingTaskFunction,
    /// Seconds between re-reads of the certificate and checks of the caBundle. Hidden: tests
    /// set it short.
    #[arg(long, hide = true, default_value_t = 30)]
    pub webhook_refresh_seconds: u64,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchMode {
    Live,
    Shadow,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}
