//! The command line (SPEC §7). Every flag can also be given as an environment variable.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

pub use crate::options::{DispatchMode, LogFormat, RunArgs};
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
    /// Turn another scheduler's jobs into TaskFunction and ScheduledJob YAML (standard output or
    /// `-o`); every entry not converted and every semantic difference that applies is reported
    /// on standard error (and as JSON with `--report`).
    Import(Box<ImportArgs>),
    /// Ask for one run of a ScheduledJob now (sets the `kubebeat.io/trigger` annotation, and
    /// `kubebeat.io/trigger-args` / `-kwargs` for overrides). With `--wait`, prints the run's
    /// final state and result; exit 0 on SUCCESS, 1 otherwise (and on timeout).
    Trigger {
        /// The ScheduledJob's name.
        name: String,
        /// Its namespace (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Positional arguments for this run (a JSON array): replace the job's.
        #[arg(long, value_name = "JSON")]
        args: Option<String>,
        /// Keyword arguments for this run (a JSON object): merged over the job's.
        #[arg(long, value_name = "JSON")]
        kwargs: Option<String>,
        /// Follow the run to its final state.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, value_name = "S", default_value_t = 300, requires = "wait")]
        timeout: u64,
    },
    /// Resume a ScheduledJob its health policy paused (sets the `kubebeat.io/resume`
    /// annotation; the spec is not touched).
    Resume {
        /// The ScheduledJob's name.
        name: String,
        /// Its namespace (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Check a running kube-beat the way `helm test` does: `/readyz` and `/api/v1/jobs` (with a
    /// ServiceAccount token) must answer 200. One line per check; exit 1 if any failed.
    Check {
        /// Base URL of the kube-beat Service, e.g. `http://kube-beat.kube-beat.svc:8080`.
        #[arg(long)]
        url: String,
        /// File holding the bearer token sent to the API (never printed).
        #[arg(long, default_value = crate::check::DEFAULT_TOKEN_FILE)]
        token_file: PathBuf,
        /// Call the API without a token (for `api.auth=none`).
        #[arg(long, conflicts_with = "token_file")]
        no_token: bool,
        /// Seconds all checks together may take.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
        timeout_seconds: u64,
    },
    /// Check ScheduledJob and TaskFunction manifests offline, as the admission webhook would
    /// (exit 1 listing every error as `FILE[#DOC_INDEX] KIND NAMESPACE/NAME: message`).
    Validate {
        /// A YAML (multi-document) or JSON file, or a directory searched for .yaml, .yml and
        /// .json files. Repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Namespace of documents that name none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Read TaskFunctions missing from the files from the kubeconfig's cluster.
        #[arg(long)]
        cluster: bool,
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

/// `kube-beat import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// What to read: the plan's JSON/YAML file (`--from plan`), a module name or Python file
    /// (`celery-beat`), a Postgres URL (`django-celery-beat`, `apscheduler`) or a Redis URL
    /// (`redbeat`).
    pub source: String,
    /// The scheduler the definitions come from.
    #[arg(long, value_enum, default_value = "plan")]
    pub from: crate::import::SourceKind,
    /// Namespace written into every ScheduledJob (default: none, `kubectl apply -n` decides).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Prepended to every TaskFunction name (TaskFunctions are cluster-scoped).
    #[arg(long, default_value = "")]
    pub task_function_prefix: String,
    /// `--from plan`: JSON or YAML map of task function name → `{task, queue}` (merged over the
    /// file's).
    #[arg(long)]
    pub task_functions: Option<PathBuf>,
    /// Write the valid entries even if others are invalid (they are still reported).
    #[arg(long)]
    pub skip_invalid: bool,
    /// Write the YAML here instead of standard output.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Also write the report (converted counts, entries not converted with their reason, the
    /// semantic differences and the entries they apply to) as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// `--from celery-beat`: the Python interpreter with the app's Celery installed.
    #[arg(long, env = "KUBE_BEAT_PYTHON", default_value = "python3")]
    pub python: String,
    /// `--from redbeat`: RedBeat's key prefix (its `redbeat_key_prefix`).
    #[arg(long, default_value = "redbeat:")]
    pub redbeat_key_prefix: String,
    /// `--from apscheduler`: the job store's table name.
    #[arg(long, default_value = "apscheduler_jobs")]
    pub apscheduler_table: String,
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
// One match arm per command, each a few lines: splitting it would only move the arms.
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
        Command::Check {
            url,
            token_file,
            no_token,
            timeout_seconds,
        } => {
            let opts = crate::check::CheckOptions {
                url,
                token_file: (!no_token).then_some(token_file),
                timeout: std::time::Duration::from_secs(timeout_seconds),
            };
            Ok(crate::check::run(&opts).await?)
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
        Command::Trigger {
            name,
            namespace,
            args,
            kwargs,
            wait,
            timeout,
        } => {
            let options = crate::trigger::TriggerOptions {
                args,
                kwargs,
                wait: wait.then(|| std::time::Duration::from_secs(timeout.min(86_400))),
            };
            match crate::trigger::trigger(&name, namespace.as_deref(), &options).await? {
                crate::trigger::Outcome::Requested(value) => {
                    println!(
                        "scheduledjob {name} triggered ({} = {value})",
                        api::TRIGGER_ANNOTATION
                    );
                    Ok(())
                }
                crate::trigger::Outcome::Finished(run) => {
                    let state = run.state.as_deref().unwrap_or("UNKNOWN");
                    println!("state: {state}");
                    println!("task id: {}", run.task_id.as_deref().unwrap_or("-"));
                    println!("result: {}", run.message.as_deref().unwrap_or("-"));
                    if state == "SUCCESS" {
                        Ok(())
                    } else {
                        anyhow::bail!(
                            "run {} of scheduledjob {name} ended {state}",
                            run.request_id
                        )
                    }
                }
            }
        }
        Command::Resume { name, namespace } => {
            let value =
                crate::trigger::annotate(&name, namespace.as_deref(), api::RESUME_ANNOTATION)
                    .await?;
            println!(
                "scheduledjob {name}: resume requested ({} = {value})",
                api::RESUME_ANNOTATION
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
        Command::Validate {
            files,
            namespace,
            cluster,
        } => validate(&files, &namespace, cluster).await,
        Command::Import(args) => import(&args).await,
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

/// `kube-beat validate`: every error on standard output, notes on standard error; an error
/// (exit 1) when any object is invalid.
async fn validate(files: &[PathBuf], namespace: &str, cluster: bool) -> Result<()> {
    use crate::webhook::offline;
    let lookup = if cluster {
        offline::Lookup::Cluster(
            kube::Client::try_default()
                .await
                .context("connecting to the cluster (--cluster)")?,
        )
    } else {
        offline::Lookup::None
    };
    let report = offline::validate(files, namespace, &lookup).await;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    for error in &report.errors {
        println!("{error}");
    }
    if !report.errors.is_empty() {
        anyhow::bail!(
            "{} error(s); {} object(s) checked",
            report.errors.len(),
            report.checked
        );
    }
    eprintln!("{} object(s) valid", report.checked);
    Ok(())
}

/// `kube-beat import`: nothing is written unless every entry converts (or `--skip-invalid`).
async fn import(args: &ImportArgs) -> Result<()> {
    use crate::import::{self, SourceKind};
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let opts = import::Options {
        namespace: args.namespace.clone(),
        task_function_prefix: args.task_function_prefix.clone(),
    };
    let now = chrono::Utc::now();
    let result = if args.from == SourceKind::Plan {
        let input = read(std::path::Path::new(&args.source))?;
        let map = args.task_functions.as_deref().map(read).transpose()?;
        import::convert(&input, map.as_deref(), &opts, now)
    } else {
        anyhow::ensure!(
            args.task_functions.is_none(),
            "--task-functions applies to --from plan only"
        );
        let read_opts = import::ReadOptions {
            python: args.python.clone(),
            redbeat_key_prefix: args.redbeat_key_prefix.clone(),
            apscheduler_table: args.apscheduler_table.clone(),
        };
        match import::read(args.from, &args.source, &read_opts).await {
            Ok(entries) => import::render(args.from, entries, &opts, now),
            Err(e) => import::Imported {
                errors: vec![e],
                ..import::Imported::default()
            },
        }
    };
    eprint!("{}", result.report_text());
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&result.report(args.from))?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    let source_broken = result
        .errors
        .iter()
        .any(import::ImportError::is_source_error);
    if source_broken || (!result.errors.is_empty() && !args.skip_invalid) {
        anyhow::bail!(
            "{} entr{} not converted: nothing written (fix them, or pass --skip-invalid)",
            result.errors.len(),
            if result.errors.len() == 1 { "y" } else { "ies" }
        );
    }
    let yaml = result.yaml().context("rendering YAML")?;
    match &args.output {
        Some(p) => std::fs::write(p, yaml).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{yaml}"),
    }
    let jobs = result
        .objects
        .iter()
        .filter(|o| o["kind"] == "ScheduledJob")
        .count();
    eprintln!(
        "converted {jobs} job(s); {} not converted",
        result.errors.len()
    );
    Ok(())
}
