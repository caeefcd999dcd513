//! The health monitor (leader only): every few seconds it judges every job
//! ([`crate::health::judge`]) from Postgres and the worker probe, stores what changed (the
//! verdict, a pause), emits `Unhealthy` / `Recovered` / `Paused` Events, asks the status writer
//! to show it, and keeps the opt-in per-job series.
//!
//! The pass is planned by a pure function ([`plan_pass`]); this file's I/O is, per page of jobs,
//! one read, one batched write and the notifications.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Feed, JobEvent, JobRef, Reason};
use crate::{
    health::{self, HealthInput, WorkerSignal, verdict::PAUSED},
    leader::Role,
    metrics::{JobSeries, METRICS},
    store::{
        StoreError,
        health::{HealthRow, VerdictWrite},
    },
};

/// What the worker probe says about a task on a queue (production: the probe's latest census;
/// without a probe, always [`WorkerSignal::Unknown`]).
pub type WorkerSignals = Arc<dyn Fn(&str, &str) -> WorkerSignal + Send + Sync>;

/// Jobs read and judged at a time.
const PAGE: i64 = 1_000;

/// A pass is followed by a pause of at least this many times its duration. A pass reads every
/// job: at 100,000 jobs each running every minute, 100 pages at 8–14 ms of Postgres each
/// (measured under that load), which every `--health-check-seconds` (5) was a sixth of a core.
/// So judging keeps to a tenth of the time however many jobs there are; with that many, the
/// verdicts come further apart (~10 s for each second a pass takes).
const PASS_SPACING: u32 = 9;

/// ... but no longer than this (unless `--health-check-seconds` asks for more): a verdict at
/// most a minute and a pass late.
const PAUSE_MAX: Duration = Duration::from_secs(60);

/// The pause after a pass that took `took`: `every`, or longer for a long pass.
pub fn pause_after(every: Duration, took: Duration) -> Duration {
    every.max(took.saturating_mul(PASS_SPACING).min(PAUSE_MAX))
}

/// How often the per-job series cap is warned about.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(600);

pub struct HealthMonitor {
    pub pool: PgPool,
    pub role: watch::Receiver<Role>,
    pub feed: Feed,
    pub every: Duration,
    /// Most jobs exported as per-job series.
    pub metrics_limit: usize,
    pub workers: WorkerSignals,
}

/// What one pass decided.
#[derive(Debug, Default)]
pub struct PassPlan {
    pub writes: Vec<VerdictWrite>,
    pub events: Vec<JobEvent>,
    pub series: Vec<JobSeries>,
    /// Jobs with `health.metrics: true` left out by the cap.
    pub series_dropped: usize,
}

/// Judge every row: the verdicts that changed (to store), their Events, and the per-job series.
pub fn plan_pass(
    rows: &[HealthRow],
    now: DateTime<Utc>,
    workers: &dyn Fn(&str, &str) -> WorkerSignal,
    metrics_limit: usize,
) -> PassPlan {
    let mut out = PassPlan::default();
    // One question to the probe per (task, queue) in a pass: thousands of jobs usually share a
    // handful of tasks, and each question clones the census.
    let mut asked: HashMap<(&str, &str), WorkerSignal> = HashMap::new();
    for row in rows {
        let policy = &row.health.0;
        let signal = asked
            .entry((row.task_name.as_str(), row.queue.as_str()))
            .or_insert_with(|| workers(&row.task_name, &row.queue))
            .clone();
        let mut input = HealthInput {
            policy,
            enabled: row.enabled,
            due: row.due,
            paused: row
                .paused_at
                .map(|t| (t, row.pause_reason.as_deref().unwrap_or_default())),
            consecutive_failures: row.consecutive_failures,
            last_success_at: row.last_success_at,
            baseline: row.health_baseline_at,
            oldest_started: row.oldest_started,
            workers: signal,
            now,
        };
        let mut verdict = health::judge(&input);
        // A breach under `onBreach: Pause` pauses the job in this same write: the condition goes
        // straight to Paused, naming the breach.
        let pause = (verdict.breach && policy.pause_on_breach && row.paused_at.is_none())
            .then(|| format!("{}: {}", verdict.reason, verdict.message));
        if let Some(why) = &pause {
            input.paused = Some((now, why.as_str()));
            verdict = health::judge(&input);
        }
        let status = verdict.status.as_str();
        if policy.metrics {
            if out.series.len() < metrics_limit {
                out.series.push(JobSeries {
                    namespace: row.namespace.clone(),
                    name: row.name.clone(),
                    healthy: i64::from(status == "True"),
                    consecutive_failures: row.consecutive_failures,
                    last_success: row.last_success_at.map(|t| t.timestamp()),
                });
            } else {
                out.series_dropped = out.series_dropped.saturating_add(1);
            }
        }
        let same = row.health_status.as_deref() == Some(status)
            && row.health_reason.as_deref() == Some(verdict.reason)
            && row.health_message.as_deref() == Some(verdict.message.as_str());
        if same {
            continue;
        }
        let job = JobRef {
            namespace: row.namespace.clone(),
            name: row.name.clone(),
            uid: row.uid.clone(),
        };
        let was = row.health_status.as_deref();
        let event = if pause.is_some() {
            Some((Reason::Paused, verdict.message.clone()))
        } else if status == "False"
            && (was != Some("False") || row.health_reason.as_deref() != Some(verdict.reason))
            && verdict.reason != PAUSED
        {
            Some((
                Reason::Unhealthy,
                format!("{}: {}", verdict.reason, verdict.message),
            ))
        } else if status == "True" && was == Some("False") {
            Some((Reason::Recovered, verdict.message.clone()))
        } else {
            None
        };
        if let Some((reason, message)) = event {
            out.events.push(JobEvent {
                job,
                reason,
                message,
            });
        }
        out.writes.push(VerdictWrite {
            id: row.id,
            status,
            reason: verdict.reason,
            message: verdict.message,
            flipped: was != Some(status),
            pause,
            baseline: row.health_baseline_at,
        });
    }
    out
}

impl HealthMonitor {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut was_leading = false;
        let mut last_cap_warning: Option<std::time::Instant> = None;
        loop {
            let leading = self.role.borrow().epoch().is_some();
            let started = std::time::Instant::now();
            if leading {
                let pass = self.pass().await;
                METRICS.health_pass.observe(started.elapsed().as_secs_f64());
                match pass {
                    Err(e) => warn!(error = %e, "judging job health failed"),
                    // Once per 10 minutes: the cap holds every pass.
                    Ok((exported, left_out))
                        if left_out > 0
                            && last_cap_warning.is_none_or(|t| t.elapsed() > CAP_WARNING_EVERY) =>
                    {
                        last_cap_warning = Some(std::time::Instant::now());
                        warn!(
                            exported,
                            left_out,
                            "more jobs ask for per-job metrics (health.metrics) than --job-metrics-limit allows"
                        );
                    }
                    Ok(_) => {}
                }
            } else if was_leading {
                // A follower exports no per-job series: the new leader does.
                METRICS.set_job_series(Vec::new());
            }
            was_leading = leading;
            tokio::select! {
                _ = tokio::time::sleep(pause_after(self.every, started.elapsed())) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One pass, a page of jobs at a time (each page judged, its changes stored and
    /// announced before the next is read); returns how many jobs' series were exported and how
    /// many the cap left out.
    async fn pass(&self) -> Result<(usize, usize), StoreError> {
        // Microseconds, as Postgres keeps them: a pause's time in the message then reads back
        // the same, and the next pass finds nothing changed.
        let now = Utc::now().trunc_subsecs(6);
        let mut series = Vec::new();
        let mut dropped = 0usize;
        let mut after = 0i64;
        loop {
            let rows = crate::store::health::health_rows(&self.pool, after, PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            let limit = self.metrics_limit.saturating_sub(series.len());
            let plan = plan_pass(&rows, now, self.workers.as_ref(), limit);
            drop(rows);
            series.extend(plan.series);
            dropped = dropped.saturating_add(plan.series_dropped);
            // Only the leader writes verdicts and pauses; a deposed one stops here.
            if self.role.borrow().epoch().is_none() {
                break;
            }
            if !plan.writes.is_empty() {
                self.record(plan.writes, plan.events, now).await?;
            }
        }
        let counts = (series.len(), dropped);
        METRICS.set_job_series(series);
        Ok(counts)
    }

    /// Store a page's changed verdicts, then announce them (status, Events).
    async fn record(
        &self,
        writes: Vec<VerdictWrite>,
        events: Vec<JobEvent>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let paused = crate::store::health::record_verdicts(&self.pool, &writes, now).await?;
        for id in &paused {
            if let Some(w) = writes.iter().find(|w| w.id == *id) {
                info!(job_id = id, reason = ?w.pause, "paused by its health policy");
            }
        }
        debug!(changed = writes.len(), "job health changed");
        self.feed.touch_all(writes.iter().map(|w| w.id));
        for ev in events {
            self.feed.event(ev);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "health_monitor_tests.rs"]
mod tests;
