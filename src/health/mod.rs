//! Job health (issue #26), the pure part: the policy a job's spec resolves to ([`policy`]) and
//! the verdict on a job from what is stored about its runs and workers ([`verdict`]). No clock
//! reads, no I/O: the leader's health monitor (`status/health_monitor.rs`) feeds them.

pub mod policy;
pub mod verdict;

pub use policy::{HealthPolicyError, ResolvedHealth};
pub use verdict::{Condition, HealthInput, Verdict, WorkerSignal, judge};
