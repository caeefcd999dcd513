//! The command line (SPEC §7). Every flag can also be given as an environment variable.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{api, schedule, store};

#[derive(Parser, Debug)]
#[command(
    name = "kube-beat",
    version,
    about = "A Kubernetes operator that replaces Celery beat"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinition YAML.
    Crd {
        /// As the Helm chart's template (behind `crds.enabled`, `crds.keep`).
        #[arg(long)]
        helm: bool,
    },
    /// Apply or revert the Postgres migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
        /// Postgres connection URL.
        #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
        database_url: Option<String>,
    },
    /// Print the next activation instants of a schedule (one RFC 3339 UTC instant per line).
    Next {
        /// A cron expression (`*/5 * * * *`, `@daily`, `@every 90s`) or an interval (`1h30m`).
        schedule: String,
        /// IANA time zone the cron expression is read in.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Start from this instant (RFC 3339) instead of now.
        #[arg(long)]
        from: Option<String>,
        /// How many instants to print.
        #[arg(short = 'n', default_value_t = 5)]
        count: usize,
    },
    /// Turn a job list in the migration plan's shape into ScheduledJob and TaskFunction YAML.
    Import {
        /// JSON or YAML file: a list of jobs, or `{jobs: [...], task_functions: {...}}`.
        file: PathBuf,
        /// JSON or YAML map of task function name → `{task, queue}` (merged over the file's).
        #[arg(long)]
        task_functions: Option<PathBuf>,
        /// Write the valid entries even if others are invalid (they are still reported).
        #[arg(long)]
        skip_invalid: bool,
        /// Write here instead of standard output.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Ask for one run of a ScheduledJob now (sets the `kubebeat.io/trigger` annotation).
    Trigger {
        /// The ScheduledJob's name.
        name: String,
        /// Its namespace (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Print the version.
    Version,
    /// Resolve a host name the way the operator's connections do, and print its addresses (a
    /// check that name resolution works inside the minimal image).
    #[command(hide = true)]
    Resolve {
        host: String,
        #[arg(default_value_t = 5432)]
        port: u16,
    },
}

#[derive(Subcommand, Debug, Clone, Copy)]
pub enum MigrateAction {
    /// Apply all pending migrations.
    Up,
    /// Revert the most recent migrations.
    Down {
        /// How many to revert.
        #[arg(long, default_value_t = 1)]
        steps: usize,
    },
    /// List migrations and whether each is applied.
    Status,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    // `hide_env_values` on every URL: they carry passwords, and `--help` would print them.
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Celery broker URL: redis://, rediss://, amqp:// or amqps://.
    #[arg(long, env = "BROKER_URL", hide_env_values = true)]
    pub broker_url: Option<String>,
    /// Celery result backend: redis://..., db+postgresql://... or `none`.
    #[arg(
        long,
        env = "RESULT_BACKEND",
        default_value = "none",
        hide_env_values = true
    )]
    pub result_backend: String,
    /// Namespace to watch (default: all).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Label selector limiting which TaskFunctions this installation manages (e.g.
    /// `kubebeat.io/installation=team-a`); default all.
    #[arg(long, env = "TASK_FUNCTION_SELECTOR")]
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
    /// How often executions beyond each job's `historyLimit` are pruned, in seconds.
    #[arg(long, env = "HISTORY_PRUNE_SECONDS", default_value_t = 60)]
    pub history_prune_seconds: u64,
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

/// Set up logging once, for the whole process.
pub fn init_logging(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // sqlx warns about a connect parameter it does not know with its value: a misspelt
    // `?passwrd=...` in DATABASE_URL would be logged. More specific than a crate-wide RUST_LOG,
    // so it holds under `RUST_LOG=trace` too.
    if let Ok(quiet) = "sqlx_postgres::options::parse=error".parse() {
        filter = filter.add_directive(quiet);
    }
    // Colour only for a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Run one command. Errors surface to `main`, which prints them and exits non-zero.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Crd { helm } => {
            let text = if helm {
                api::crd_helm_template()
            } else {
                api::crd_yaml()
            };
            print!("{}", text.context("rendering the CRDs")?);
            Ok(())
        }
        Command::Version => {
            println!("kube-beat {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Resolve { host, port } => {
            let addrs = tokio::net::lookup_host((host.as_str(), port))
                .await
                .with_context(|| format!("resolving {host}"))?;
            for a in addrs {
                println!("{}", a.ip());
            }
            Ok(())
        }
        Command::Run(args) => {
            init_logging(args.log_format);
            crate::operator::run(*args).await
        }
        Command::Trigger { name, namespace } => {
            let value = crate::operator::trigger(&name, namespace.as_deref()).await?;
            println!(
                "scheduledjob {name} triggered ({} = {value})",
                api::TRIGGER_ANNOTATION
            );
            Ok(())
        }
        Command::Migrate {
            action,
            database_url,
        } => {
            let url = database_url.context("--database-url (or DATABASE_URL) is required")?;
            store::check_url(&url).context("--database-url")?;
            let pool = store::connect(&url, 2)
                .await
                .with_context(|| format!("--database-url {}", crate::redact::url(&url)))?;
            match action {
                MigrateAction::Up => {
                    store::migrate::up(&pool).await?;
                    println!("migrations applied");
                }
                MigrateAction::Down { steps } => {
                    let reverted = store::migrate::down(&pool, steps).await?;
                    println!("reverted {} migration(s): {reverted:?}", reverted.len());
                }
                MigrateAction::Status => {
                    for (version, description, applied) in store::migrate::status(&pool).await? {
                        let state = if applied { "applied" } else { "pending" };
                        println!("{version:>4}  {state:<8} {description}");
                    }
                }
            }
            Ok(())
        }
        Command::Next {
            schedule,
            tz,
            from,
            count,
        } => {
            for line in next_instants(&schedule, &tz, from.as_deref(), count)? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Import {
            file,
            task_functions,
            skip_invalid,
            output,
        } => import(
            &file,
            task_functions.as_deref(),
            skip_invalid,
            output.as_deref(),
        ),
    }
}

/// `kube-beat next`: the next `count` activations, as RFC 3339 UTC lines.
pub fn next_instants(
    expr: &str,
    tz: &str,
    from: Option<&str>,
    count: usize,
) -> Result<Vec<String>, schedule::ScheduleError> {
    let from = match from {
        Some(f) => schedule::parse_instant("--from", f)?,
        None => chrono::Utc::now(),
    };
    let s = schedule::JobSchedule::from_expression(expr, tz, from)?;
    let mut out = Vec::with_capacity(count);
    let mut cur = from;
    while out.len() < count {
        let Some(t) = s.next_after(cur) else {
            if out.is_empty() {
                return Err(schedule::ScheduleError(format!(
                    "{expr:?} has no activation in the next 5 years"
                )));
            }
            break;
        };
        out.push(schedule::rfc3339(t));
        cur = t;
    }
    Ok(out)
}

/// `kube-beat import`: nothing is written unless every entry is valid (or `--skip-invalid`).
fn import(
    file: &std::path::Path,
    task_functions: Option<&std::path::Path>,
    skip_invalid: bool,
    output: Option<&std::path::Path>,
) -> Result<()> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let input = read(file)?;
    let map = task_functions.map(read).transpose()?;
    let result = crate::import::convert(&input, map.as_deref(), chrono::Utc::now());
    for e in &result.errors {
        eprintln!("{}: {e}", file.display());
    }
    let file_broken = result.errors.iter().any(|e| e.index.is_none());
    if file_broken || (!result.errors.is_empty() && !skip_invalid) {
        anyhow::bail!(
            "{} invalid entr{}: nothing written (fix them, or pass --skip-invalid)",
            result.errors.len(),
            if result.errors.len() == 1 { "y" } else { "ies" }
        );
    }
    let yaml = result.yaml().context("rendering YAML")?;
    match output {
        Some(p) => std::fs::write(p, yaml).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{yaml}"),
    }
    if !result.errors.is_empty() {
        eprintln!("skipped {} invalid entries", result.errors.len());
    }
    Ok(())
}
