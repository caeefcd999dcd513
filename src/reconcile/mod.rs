//! Reconcile ScheduledJobs and TaskFunctions into Postgres, in stages: read related objects →
//! validate (pure) → build the row (pure) → upsert (idempotent, keyed by uid) → status.
//!
//! An object that does not even deserialize (stored against an older schema) is reported on the
//! object itself and never breaks the watch for the others: TaskFunctions are watched through
//! [`Guarded`], ScheduledJobs as [`cached_job::CachedJob`]s, which record a spec that does not
//! deserialize instead of failing.
//!
//! Where things are: [`controllers`] wires the watches, the job queue and the TaskFunction
//! controller; [`context`] is what reconciles share; [`error`] what they fail with;
//! [`finalizer`] the finalizer stage; [`paced`] the apiserver writes a job reconcile hands
//! over (its finalizer and status); [`drift`] the hourly check against Postgres; [`watch`]
//! the watch plumbing; [`selector`] `--task-function-selector`.

mod backfill;
pub mod cached_job;
pub mod calendars;
pub mod conditions;
pub mod context;
pub mod controllers;
pub mod drift;
pub mod error;
pub mod finalizer;
pub mod guarded;
pub mod job_cache;
mod job_watch;
pub mod paced;
pub mod queue;
pub mod scheduled_job;
pub mod selector;
pub mod sweep;
pub mod task_function;
pub mod upserts;
pub mod validate;
pub mod watch;

pub use context::{Context, SeenTaskFunction};
pub use controllers::{Controllers, RunOptions, controllers};
pub use error::{Error, backoff, quick_retry};
pub use guarded::Guarded;
pub use selector::{LabelSelector, SelectorError};

// For the two reconcilers (`scheduled_job`, `task_function`), which reach them through `super`.
use finalizer::{Finalizing, finalizer_stage};
use guarded::{schema_mismatch, split};

/// Reconciles in flight per controller (the job queue and the TaskFunction controller).
const RECONCILE_CONCURRENCY: u16 = 64;
