//! The command line (SPEC §7). Every flag can also be given as an environment variable.
//!
//! This file holds the commands and their dispatch; `args` the larger commands' arguments,
//! `next` the schedule preview of `kube-beat next`, `commands` the file-reading commands
//! (`plan`, `validate`, `import`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod args;
mod commands;
mod next;

pub use self::args::{ImportArgs, MigrateAction, PlanArgs, PlanFormat};
pub use self::next::{NextRuns, load_calendars, next_instants, next_runs};
pub use crate::options::{DispatchMode, LogFormat, RunArgs};
use crate::{api, store};

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
        /// A YAML file of ScheduleCalendar objects: instants they exclude are skipped (and
        /// listed with their reason on standard error). Repeatable; applied in order.
        #[arg(long = "calendar", value_name = "FILE")]
        calendars: Vec<PathBuf>,
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
    /// Run every slot of a ScheduledJob's schedule in a past range once (sets the
    /// `kubebeat.io/backfill` annotation; slots that already ran are not run again).
    Backfill(Box<crate::backfill::cli::BackfillArgs>),
    /// Resume a ScheduledJob its health policy paused (sets the `kubebeat.io/resume`
    /// annotation; the spec is not touched).
    Resume {
        /// The ScheduledJob's name.
        name: String,
        /// Its namespace (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Suspend a ScheduledJob: sets `spec.suspend` by server-side apply (field manager
    /// `kube-beat-cli`); its next slot is not dispatched. A job that a GitOps tool or another
    /// field manager also manages is left alone unless `--confirm` (they may set it back).
    Suspend(SuspendArgs),
    /// Unsuspend a ScheduledJob (`spec.suspend: false`, as `suspend` sets it): it runs from its
    /// next slot on; the suspended period is not replayed.
    Unsuspend(SuspendArgs),
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
    /// What manifests will do to the schedule, for pull-request CI: per ScheduledJob its
    /// validity (as `validate`), next runs in its time zone, DST transitions and calendar
    /// exclusions in the window and, with `--against-cluster`, what changes against the
    /// cluster; for the whole set the busiest seconds. Exit 1 if any job is invalid.
    Plan(Box<PlanArgs>),
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
        Command::Backfill(args) => crate::backfill::cli::run(&args).await,
        Command::Suspend(args) => set_suspend(&args, true).await,
        Command::Unsuspend(args) => set_suspend(&args, false).await,
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
            calendars,
        } => {
            let mut loaded = Vec::new();
            for file in &calendars {
                loaded.extend(load_calendars(file)?);
            }
            let runs = next_runs(&schedule, &tz, from.as_deref(), count, &loaded)?;
            for line in &runs.runs {
                println!("{line}");
            }
            if !calendars.is_empty() {
                eprint!("{}", runs.skipped_report());
            }
            if runs.runs.is_empty() {
                anyhow::bail!("no run found: the calendars exclude every slot looked at");
            }
            Ok(())
        }
        Command::Validate {
            files,
            namespace,
            cluster,
        } => commands::validate(&files, &namespace, cluster).await,
        Command::Import(args) => commands::import(&args).await,
        Command::Plan(args) => commands::plan(&args).await,
    }
}

/// `kube-beat suspend|unsuspend NAME`.
#[derive(Debug, clap::Args)]
pub struct SuspendArgs {
    /// The ScheduledJob's name.
    name: String,
    /// Its namespace (default: the kubeconfig's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Set it even when a GitOps tool or another field manager also manages the job (the
    /// apply is forced; their next sync may set it back).
    #[arg(long)]
    confirm: bool,
}

async fn set_suspend(args: &SuspendArgs, to: bool) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let api = crate::suspend::untyped(client, args.namespace.as_deref());
    let done = crate::suspend::set(
        &api,
        &args.name,
        to,
        crate::suspend::CLI_FIELD_MANAGER,
        args.confirm,
    )
    .await
    .map_err(|e| match e {
        crate::suspend::SuspendError::ManagedElsewhere { .. } => {
            anyhow::anyhow!("{e} (--confirm)")
        }
        e => anyhow::Error::new(e),
    })?;
    let verb = if to { "suspended" } else { "unsuspended" };
    if done.changed {
        println!("scheduledjob {} {verb}", args.name);
        if !done.overrode.is_empty() {
            println!(
                "also managed by {}: it may set spec.suspend back",
                done.overrode.join(", ")
            );
        }
    } else {
        println!("scheduledjob {} already {verb}", args.name);
    }
    Ok(())
}
