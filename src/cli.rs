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

/// `kube-beat plan`.
#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// A YAML (multi-document) or JSON file, or a directory searched for .yaml, .yml and .json
    /// files (recursively, in name order). Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Namespace of documents that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Compare with the kubeconfig's cluster: each job's current version (new job, changed
    /// spec fields, runs added and removed in the window), and TaskFunctions and
    /// ScheduleCalendars missing from the files read from there.
    #[arg(long)]
    pub against_cluster: bool,
    /// How far ahead to look: numbers with units w, d, h, m, s (`7d`, `36h`, `1d12h`); at most
    /// 400d.
    #[arg(long, default_value = "7d", value_parser = crate::plan::window_arg)]
    pub window: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: PlanFormat,
    /// Plan as of this instant (RFC 3339) instead of the clock, for reproducible output (golden
    /// tests). Also the interval anchor of jobs not in the cluster.
    #[arg(long, value_parser = crate::plan::now_arg)]
    pub now: Option<String>,
    /// Warn when more than this many runs are due in one second of the window (all jobs
    /// together).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub busy_threshold: u64,
    /// Runs (and exclusions, runs added and removed) listed per job.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_shown: u64,
    /// List only the invalid jobs (with the counts, the busiest seconds and the warnings): for
    /// large sets, where every job's runs would flood a CI log.
    #[arg(long)]
    pub summary: bool,
    /// Busiest seconds listed.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub top: u64,
}

/// `kube-beat plan -o`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanFormat {
    Text,
    Json,
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
        Command::Backfill(args) => crate::backfill::cli::run(&args).await,
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
        } => validate(&files, &namespace, cluster).await,
        Command::Import(args) => import(&args).await,
        Command::Plan(args) => plan(&args).await,
    }
}

/// `kube-beat plan`: the plan on standard output (all of it, invalid jobs included); exit 1
/// when a job is invalid or a file could not be read.
async fn plan(args: &PlanArgs) -> Result<()> {
    use crate::plan;
    let opts = plan::load::Options {
        files: args.files.clone(),
        namespace: args.namespace.clone(),
        against_cluster: args.against_cluster,
        now: args.now.clone(),
        window: args.window.clone(),
        limits: plan::Limits {
            shown: usize::try_from(args.max_shown).unwrap_or(10),
            top: usize::try_from(args.top).unwrap_or(5),
            busy_threshold: args.busy_threshold,
        },
    };
    let input = plan::load::load(&opts).await?;
    let mut plan = plan::build(&input);
    if args.summary {
        plan.jobs.retain(|j| !j.valid);
    }
    match args.output {
        PlanFormat::Text => print!("{}", plan::render::text(&plan)),
        PlanFormat::Json => print!("{}", plan::render::json(&plan)?),
    }
    if plan.invalid > 0 || !plan.errors.is_empty() {
        anyhow::bail!(
            "{} invalid job(s), {} error(s)",
            plan.invalid,
            plan.errors.len()
        );
    }
    Ok(())
}

/// `kube-beat next`: the next `count` activations, as RFC 3339 UTC lines.
pub fn next_instants(
    expr: &str,
    tz: &str,
    from: Option<&str>,
    count: usize,
) -> Result<Vec<String>, schedule::ScheduleError> {
    Ok(next_runs(expr, tz, from, count, &[])?.runs)
}

/// Largest calendar file `kube-beat next --calendar` reads.
const MAX_CALENDAR_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The ScheduleCalendar objects of a YAML file (one or more documents; documents of other kinds
/// are ignored), each validated as the operator does.
pub fn load_calendars(path: &std::path::Path) -> Result<Vec<crate::calendar::Calendar>> {
    use serde::Deserialize;
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > MAX_CALENDAR_FILE_BYTES {
        anyhow::bail!(
            "{}: larger than {MAX_CALENDAR_FILE_BYTES} bytes",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("{}: document {}", path.display(), index + 1))?;
        if value.is_null() || value.get("kind").and_then(|k| k.as_str()) != Some("ScheduleCalendar")
        {
            continue;
        }
        let cal: api::ScheduleCalendar = serde_yaml::from_value(value)
            .with_context(|| format!("{}: document {}", path.display(), index + 1))?;
        let name = cal.metadata.name.clone().unwrap_or_default();
        let valid = crate::calendar::Calendar::from_spec(&name, &cal.spec)
            .with_context(|| format!("{}: ScheduleCalendar {name:?}", path.display()))?;
        out.push(valid);
    }
    if out.is_empty() {
        anyhow::bail!("{}: no ScheduleCalendar in it", path.display());
    }
    Ok(out)
}

/// Slots a calendar may skip while `kube-beat next` looks for the next runs: a calendar that
/// excludes every slot (all seven weekdays) must end the search, not loop.
const MAX_SKIPPED_SLOTS: usize = 100_000;
/// Skipped slots listed one by one on standard error (the rest are counted).
const SKIPPED_LISTED: usize = 20;

/// The next runs of a schedule, with the slots its calendars skipped on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextRuns {
    /// RFC 3339 UTC instants.
    pub runs: Vec<String>,
    /// The first [`SKIPPED_LISTED`] skipped slots and why (`Calendar: <name>: <reason>`).
    pub skipped: Vec<(String, String)>,
    /// How many slots were skipped in all.
    pub skipped_total: usize,
    /// The search stopped after [`MAX_SKIPPED_SLOTS`] skipped slots.
    pub gave_up: bool,
}

impl NextRuns {
    /// What standard error says: how many slots were skipped, and why.
    pub fn skipped_report(&self) -> String {
        let mut out = format!("{} slot(s) skipped by calendars\n", self.skipped_total);
        for (t, why) in &self.skipped {
            out.push_str(&format!("  {t}  {why}\n"));
        }
        if self.skipped_total > self.skipped.len() {
            out.push_str(&format!(
                "  ... and {} more\n",
                self.skipped_total - self.skipped.len()
            ));
        }
        if self.gave_up {
            out.push_str(&format!(
                "stopped looking after {MAX_SKIPPED_SLOTS} skipped slots: do the calendars exclude every slot?\n"
            ));
        }
        out
    }
}

/// [`next_instants`], skipping the slots `calendars` exclude (the dispatcher's own verdict,
/// `calendar::excluded_by`).
pub fn next_runs(
    expr: &str,
    tz: &str,
    from: Option<&str>,
    count: usize,
    calendars: &[crate::calendar::Calendar],
) -> Result<NextRuns, schedule::ScheduleError> {
    let from = match from {
        Some(f) => schedule::parse_instant("--from", f)?,
        None => chrono::Utc::now(),
    };
    let s = schedule::JobSchedule::from_expression(expr, tz, from)?;
    let mut out = NextRuns {
        runs: Vec::with_capacity(count.min(10_000)),
        skipped: Vec::new(),
        skipped_total: 0,
        gave_up: false,
    };
    let mut cur = from;
    while out.runs.len() < count {
        let Some(t) = s.next_after(cur) else {
            if out.runs.is_empty() && out.skipped_total == 0 {
                return Err(schedule::ScheduleError(format!(
                    "{expr:?} has no activation in the next 5 years"
                )));
            }
            break;
        };
        cur = t;
        if let Some(why) = crate::calendar::excluded_by(calendars, t) {
            out.skipped_total = out.skipped_total.saturating_add(1);
            if out.skipped.len() < SKIPPED_LISTED {
                out.skipped.push((schedule::rfc3339(t), why));
            }
            if out.skipped_total >= MAX_SKIPPED_SLOTS {
                out.gave_up = true;
                break;
            }
            continue;
        }
        out.runs.push(schedule::rfc3339(t));
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
