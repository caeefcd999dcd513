//! The safety nets for a change that never reached Postgres (a missed event, a restored
//! database):
//! - every [`DRIFT_CHECK_EVERY`], the leader re-reconciles the jobs whose row is missing or
//!   stored for another generation. This replaced a one-hour requeue of every job, which kept an
//!   entry per job in the controller's queue for good (~60 MB at 100,000 jobs);
//! - when a replica starts leading, and as often as the drift check, the orphan check stops the
//!   rows whose object is gone: deleted while no replica led, before kube-beat's finalizer was
//!   on it (the finalizer is written apart from the reconcile: see [`super::paced`]), or after
//!   someone removed the finalizer by hand.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::StreamExt;
use sqlx::PgPool;
use tracing::warn;

use super::{
    Context, Error,
    cached_job::{CachedJob, Uid},
    job_cache::JobCache,
};
use crate::api::ScheduledJob;

/// Orphans stopped per check at most (each is confirmed with the apiserver first); the rest
/// wait for the next check.
const ORPHANS_MAX: usize = 1000;
/// How often a replica looks at whether it has started leading (the orphan check's trigger).
const ORPHAN_POLL: Duration = Duration::from_secs(2);
/// Wait after an orphan check that failed (Postgres unreachable, say).
const ORPHAN_RETRY: Duration = Duration::from_secs(30);

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

/// The orphan check, until `shutdown`: once each time this replica starts leading (with its
/// caches listed), then every [`DRIFT_CHECK_EVERY`] while it leads.
pub async fn orphan_checks(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let checks = async {
        let mut checked: Option<(i64, tokio::time::Instant)> = None;
        loop {
            tokio::time::sleep(ORPHAN_POLL).await;
            let Some(epoch) = ctx.role.borrow().epoch() else {
                continue;
            };
            let listed = ctx.jobs_listed.load(std::sync::atomic::Ordering::Acquire);
            let due = checked.is_none_or(|(e, at)| e != epoch || at.elapsed() >= DRIFT_CHECK_EVERY);
            if !listed || !due {
                continue;
            }
            match check_orphans(&ctx, namespace.as_deref()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "jobs whose object is gone: scheduling stopped"),
                Err(e) => {
                    warn!(error = %e, "orphan check failed (retrying in 30 s)");
                    tokio::time::sleep(ORPHAN_RETRY).await;
                    continue;
                }
            }
            checked = Some((epoch, tokio::time::Instant::now()));
        }
    };
    tokio::select! {
        () = checks => {}
        () = shutdown => {}
    }
}

/// Stop the live rows whose object the cache does not hold and the apiserver confirms is gone
/// (no object of that name, or one with another uid): how many.
async fn check_orphans(ctx: &Context, namespace: Option<&str>) -> Result<usize, Error> {
    let stored = crate::store::jobs::live_uids(&ctx.pool, namespace).await?;
    let candidates = orphaned(stored, |uid| ctx.jobs.get(uid).is_some(), ORPHANS_MAX);
    if candidates.is_empty() {
        return Ok(0);
    }
    let mut stopped = 0;
    for (uid, ns, name) in crate::store::jobs::live_names(&ctx.pool, &candidates).await? {
        // The cache may lag the replica that stored the row (a leader that just died): only
        // the apiserver's answer, not the cache's, makes a job gone.
        let api: kube::Api<ScheduledJob> = kube::Api::namespaced(ctx.client.clone(), &ns);
        let live = match api.get_metadata_opt(&name).await {
            Ok(live) => live,
            // This one is left for the next check; the others go on.
            Err(e) => {
                warn!(job = %format!("{ns}/{name}"), error = %e, "orphan check: reading the object failed");
                continue;
            }
        };
        if live.is_some_and(|o| o.metadata.uid.as_deref() == Some(uid.as_str())) {
            continue;
        }
        if ctx.writing_epoch()?.is_none() {
            break;
        }
        crate::store::mark_job_deleted(&ctx.pool, &uid).await?;
        tracing::debug!(job = %format!("{ns}/{name}"), %uid, "object gone: scheduling stopped");
        stopped += 1;
    }
    Ok(stopped)
}

/// The stored uids the cache does not hold, at most `max` of them.
fn orphaned(stored: Vec<String>, cached: impl Fn(&Uid) -> bool, max: usize) -> Vec<String> {
    stored
        .into_iter()
        .filter(|uid| !cached(&Uid::parse(uid)))
        .take(max)
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

    #[test]
    fn orphans_are_the_stored_uids_not_cached_at_most_max() {
        let stored: Vec<String> = ["a", "b", "c", "d"].map(String::from).into();
        let cached = |u: &Uid| *u == Uid::parse("b");
        assert_eq!(orphaned(stored.clone(), cached, 10), ["a", "c", "d"]);
        assert_eq!(orphaned(stored, cached, 2), ["a", "c"]);
        assert!(orphaned(vec![], cached, 10).is_empty());
    }
}
