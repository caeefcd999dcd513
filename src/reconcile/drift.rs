//! The safety net for a change that never reached Postgres (a missed event, a restored
//! database): every [`DRIFT_CHECK_EVERY`], the leader re-reconciles the jobs whose row is
//! missing or stored for another generation. This replaced a one-hour requeue of every job,
//! which kept an entry per job in the controller's queue for good (~60 MB at 100,000 jobs).

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::StreamExt;
use sqlx::PgPool;
use tracing::warn;

use super::{
    cached_job::{CachedJob, Uid},
    job_cache::JobCache,
};

/// How often the leader compares Postgres with the cache (see [`drifted`]).
const DRIFT_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// The jobs to re-reconcile, found every [`DRIFT_CHECK_EVERY`] while this replica leads.
pub fn drift_checks(
    pool: PgPool,
    jobs: JobCache,
    role: tokio::sync::watch::Receiver<crate::leader::Role>,
) -> impl futures::Stream<Item = Uid> + Send + 'static {
    let mut every = tokio::time::interval(DRIFT_CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (pool, jobs, role, every, true);
    futures::stream::unfold(
        state,
        |(pool, jobs, role, mut every, mut first)| async move {
            loop {
                every.tick().await;
                // The first tick is immediate: a new leader re-reconciles everything anyway.
                if std::mem::take(&mut first) || role.borrow().epoch().is_none() {
                    continue;
                }
                match crate::store::stored_generations(&pool).await {
                    Ok(stored) => {
                        let drifted = drifted(&jobs.snapshot(|j| !j.deleting()), &stored);
                        if !drifted.is_empty() {
                            tracing::info!(
                                jobs = drifted.len(),
                                "jobs differ from Postgres; reconciling them"
                            );
                        }
                        let state = (pool, jobs, role, every, first);
                        return Some((futures::stream::iter(drifted), state));
                    }
                    Err(e) => warn!(error = %e, "drift check: reading jobs failed"),
                }
            }
        },
    )
    .flatten()
}

/// The cached jobs (not being deleted) whose row is missing or for another generation. A job
/// without a uid has no row by definition: it is drifted (its reconcile reports the missing
/// uid), never matched against another job's row.
fn drifted(cached: &[Arc<CachedJob>], stored: &HashMap<String, i64>) -> Vec<Uid> {
    cached
        .iter()
        .filter(|j| !j.deleting())
        .filter(|j| {
            let row = j.uid().and_then(|uid| stored.get(&uid).copied());
            row != Some(j.generation().unwrap_or(0))
        })
        .map(|j| j.key())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, uid: Option<&str>, generation: i64, deleting: bool) -> Arc<CachedJob> {
        let mut meta = serde_json::json!({"name": name, "namespace": "ns",
                                          "generation": generation});
        if let Some(uid) = uid {
            meta["uid"] = uid.into();
        }
        if deleting {
            meta["deletionTimestamp"] = "2026-11-28T00:00:00Z".into();
        }
        Arc::new(CachedJob::from_value(serde_json::json!({"metadata": meta})))
    }

    #[test]
    fn drifted_jobs_are_those_missing_or_stored_for_another_generation() {
        let cached = [
            job("same", Some("u1"), 2, false),
            job("newer", Some("u2"), 3, false),
            job("missing", Some("u3"), 1, false),
            job("going", Some("u4"), 5, true),
        ];
        let stored: HashMap<String, i64> = [("u1".into(), 2), ("u2".into(), 2)].into();
        assert_eq!(
            drifted(&cached, &stored),
            [Uid::parse("u2"), Uid::parse("u3")]
        );
    }

    #[test]
    fn a_job_without_a_uid_is_never_matched_to_a_row() {
        let cached = [job("no-uid", None, 1, false)];
        // A row stored under the empty uid (what `unwrap_or_default` used to look up).
        let stored: HashMap<String, i64> = [(String::new(), 1)].into();
        assert_eq!(drifted(&cached, &stored), [cached[0].key()]);
    }
}
