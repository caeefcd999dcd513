//! The arguments of the commands that take many: `import` and `plan` (and `migrate`'s actions).

use std::path::PathBuf;

use clap::Subcommand;

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
