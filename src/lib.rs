//! kube-beat: a Kubernetes operator that replaces Celery beat.
//!
//! The modules follow the data flow: `api` (the custom resources) → `schedule` (pure time math)
//! → `reconcile` → `store` (Postgres) → `leader` → `dispatch` → `celery` → `tracker` (results) → `status` (status, Events), `workers` (the leader's Celery worker
//! probe); `cli` wires
//! the command line.
#![forbid(unsafe_code)]

pub mod api;
pub mod arguments;
pub mod backfill;
pub mod calendar;
pub mod celery;
pub mod check;
pub mod cli;
pub mod dispatch;
pub mod failpoint;
pub mod health;
pub mod http;
pub mod import;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod options;
pub mod plan;
pub mod reconcile;
pub mod redact;
pub mod redis_target;
pub mod schedule;
pub mod status;
pub mod store;
pub mod supervise;
pub mod suspend;
pub mod tracker;
pub mod trigger;
pub mod webhook;
pub mod workers;
