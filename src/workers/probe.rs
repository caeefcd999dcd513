//! The probe loop: on the leader only, every period, a census and what follows from it.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Census, FIELD_MANAGER, Readiness, WORKERS_READY, readiness};
use crate::{
    api::{Condition, TaskFunction},
    celery::Publisher,
    leader::Role,
    metrics::{METRICS, WorkerSeries},
    reconcile::{Guarded, conditions::k8s_time},
    store::task_functions::{ProbedTaskFunction, probed_task_functions},
};

/// TaskFunctions probed at most (a bounded label set and write load; beyond it, a warning).
pub const MAX_TASK_FUNCTIONS: i64 = 1_000;
/// Queues whose consumers are counted at most.
pub const MAX_QUEUES: usize = 500;
/// The longest wait for replies (`celery inspect` waits 1 s by default; workers under load
/// answer later).
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// What the probe is built from.
#[derive(Clone)]
pub struct ProbeConfig {
    pub pool: sqlx::PgPool,
    pub client: Client,
    pub period: Duration,
    pub role: watch::Receiver<Role>,
    pub census: watch::Sender<Option<Arc<Census>>>,
}

/// What was last applied to a TaskFunction's status (so an unchanged census writes nothing).
#[derive(Debug, Clone, PartialEq)]
struct Written {
    generation: i64,
    workers: u32,
    status: &'static str,
    reason: &'static str,
    message: String,
    last_transition_time: Time,
}

/// Probe every `cfg.period` while leader, until `stop`.
pub async fn run(cfg: ProbeConfig, publisher: Publisher, mut stop: watch::Receiver<bool>) {
    // Half the period (at least Celery's default 1 s), so probes do not run back to back.
    let wait = (cfg.period / 2).max(Duration::from_secs(1)).min(MAX_WAIT);
    let api: Api<Guarded<TaskFunction>> = Api::all(cfg.client.clone());
    let mut written: HashMap<String, Written> = HashMap::new();
    let mut role = cfg.role.clone();
    loop {
        // Every period from the start of one probe to the next (the reply wait is inside it).
        let next = tokio::time::Instant::now() + cfg.period;
        let leading = role.borrow().epoch().is_some();
        if leading {
            probe_once(&cfg, &publisher, &api, wait, &mut written).await;
        } else if !written.is_empty() || cfg.census.borrow().is_some() {
            // Not leading: what we knew is another replica's to say now.
            written.clear();
            cfg.census.send_replace(None);
            METRICS.sampled.set_workers(WorkerSeries::default());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            // Becoming leader probes at once.
            _ = became_leader(&mut role, leading) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Resolves when a follower becomes leader; never while leading (the role changes at every
/// renewal, which is no reason to probe).
async fn became_leader(role: &mut watch::Receiver<Role>, leading: bool) {
    if !leading {
        while role.changed().await.is_ok() {
            if role.borrow().epoch().is_some() {
                return;
            }
        }
    }
    std::future::pending::<()>().await
}

async fn probe_once(
    cfg: &ProbeConfig,
    publisher: &Publisher,
    api: &Api<Guarded<TaskFunction>>,
    wait: Duration,
    written: &mut HashMap<String, Written>,
) {
    let tfs = match probed_task_functions(&cfg.pool, MAX_TASK_FUNCTIONS).await {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "worker probe: listing the TaskFunctions failed");
            return;
        }
    };
    if tfs.len() as i64 >= MAX_TASK_FUNCTIONS {
        warn!(
            "worker probe: more than {MAX_TASK_FUNCTIONS} TaskFunctions, the rest are not probed"
        );
    }
    // The TaskFunctions' queues, then the jobs' (a job may ask for one of `allowedQueues`).
    let job_queues = crate::store::queues::job_queues(&cfg.pool, MAX_QUEUES as i64)
        .await
        .unwrap_or_else(|e| {
            debug!(error = %e, "worker probe: listing the jobs' queues failed");
            Vec::new()
        });
    let tf_queues: BTreeSet<&str> = tfs.iter().map(|t| t.queue.as_str()).collect();
    let mut queues: Vec<String> = tf_queues.iter().map(|q| q.to_string()).collect();
    for q in job_queues {
        if !tf_queues.contains(q.as_str()) {
            queues.push(q);
        }
    }
    queues.truncate(MAX_QUEUES);
    let workers = match publisher.inspect(wait).await {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "worker probe: inspecting the workers failed");
            return;
        }
    };
    let consumers = match publisher.queue_consumers_many(&queues).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "worker probe: counting queue consumers failed");
            return;
        }
    };
    let census = Arc::new(Census {
        taken_at: Utc::now(),
        workers,
        consumers,
        broker: publisher.kind(),
    });
    debug!(
        workers = census.workers.len(),
        queues = census.consumers.len(),
        "worker probe"
    );
    cfg.census.send_replace(Some(census.clone()));
    METRICS.sampled.set_workers(series(&census, &tfs));
    written.retain(|name, _| tfs.iter().any(|t| &t.name == name));
    for tf in &tfs {
        // Fenced like every leader write: a replica that lost the lease writes no more.
        if cfg.role.borrow().epoch().is_none() {
            return;
        }
        let verdict = readiness(&census, &tf.task, &tf.queue);
        if let Err(e) = write(api, tf, &verdict, written).await {
            debug!(task_function = %tf.name, error = %e, "worker probe: status write failed");
        }
    }
}

/// The metrics' series: live workers per TaskFunction queue, and per TaskFunction whether its
/// task is registered by a live worker consuming its queue.
fn series(census: &Census, tfs: &[ProbedTaskFunction]) -> WorkerSeries {
    let queues: BTreeSet<&str> = tfs.iter().map(|t| t.queue.as_str()).collect();
    WorkerSeries {
        queues: queues
            .into_iter()
            .map(|q| {
                let n = census
                    .workers
                    .iter()
                    .filter(|w| w.queues.iter().any(|wq| wq == q))
                    .count();
                (q.to_string(), n as u64)
            })
            .collect(),
        registered: tfs
            .iter()
            .map(|t| {
                let r = matches!(
                    readiness(census, &t.task, &t.queue),
                    Readiness::Ready { .. }
                );
                (t.name.clone(), r)
            })
            .collect(),
    }
}

async fn write(
    api: &Api<Guarded<TaskFunction>>,
    tf: &ProbedTaskFunction,
    verdict: &Readiness,
    written: &mut HashMap<String, Written>,
) -> Result<(), kube::Error> {
    let previous = match written.get(&tf.name) {
        Some(w) => Some(w.clone()),
        // New to this leader: what the object says (a GET once per term and TaskFunction).
        None => api
            .get_status(&tf.name)
            .await
            .ok()
            .and_then(|o| o.0.ok())
            .and_then(|o| o.status)
            .and_then(|s| {
                let c = s
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == WORKERS_READY)?;
                Some(Written {
                    generation: c.observed_generation.unwrap_or(0),
                    workers: s.workers.and_then(|w| u32::try_from(w).ok()).unwrap_or(0),
                    status: status_str(&c.status),
                    reason: "",
                    message: c.message,
                    last_transition_time: c.last_transition_time,
                })
            }),
    };
    let status = verdict.status();
    let last_transition_time = match &previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => k8s_time(Utc::now()),
    };
    let next = Written {
        generation: tf.generation,
        workers: verdict.workers(),
        status,
        reason: verdict.reason(),
        message: verdict.message(),
        last_transition_time,
    };
    if previous.as_ref() == Some(&next) {
        return Ok(());
    }
    let condition = Condition {
        type_: WORKERS_READY.to_string(),
        status: status.to_string(),
        reason: next.reason.to_string(),
        message: next.message.clone(),
        observed_generation: Some(tf.generation),
        last_transition_time: next.last_transition_time.clone(),
    };
    let apply = json!({
        "apiVersion": TaskFunction::api_version(&()),
        "kind": TaskFunction::kind(&()),
        "metadata": {"name": tf.name},
        "status": {"workers": next.workers, "conditions": [condition]},
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&tf.name, &params, &Patch::Apply(&apply))
        .await?;
    if previous.as_ref().map(|p| (p.status, p.reason)) != Some((next.status, next.reason)) {
        info!(
            task_function = %tf.name,
            status,
            reason = next.reason,
            detail = %next.message,
            "WorkersReady changed"
        );
    }
    written.insert(tf.name.clone(), next);
    Ok(())
}

fn status_str(s: &str) -> &'static str {
    match s {
        "True" => "True",
        "False" => "False",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::celery::WorkerReport;

    fn tf(name: &str, task: &str, queue: &str) -> ProbedTaskFunction {
        ProbedTaskFunction {
            name: name.into(),
            generation: 1,
            task: task.into(),
            queue: queue.into(),
        }
    }

    #[test]
    fn series_count_workers_per_task_function_queue() {
        let census = Census {
            taken_at: Utc::now(),
            workers: vec![
                WorkerReport {
                    hostname: "a@h".into(),
                    registered: vec!["t".into()],
                    queues: vec!["q".into(), "jobs-only".into()],
                },
                WorkerReport {
                    hostname: "b@h".into(),
                    registered: vec!["x".into()],
                    queues: vec!["q".into()],
                },
            ],
            consumers: HashMap::new(),
            broker: "amqp",
        };
        let s = series(
            &census,
            &[tf("a", "t", "q"), tf("b", "x", "empty"), tf("c", "y", "q")],
        );
        // One series per TaskFunction queue (not the queues only jobs or workers name).
        assert_eq!(
            s.queues,
            vec![("empty".to_string(), 0), ("q".to_string(), 2)]
        );
        assert_eq!(
            s.registered,
            vec![
                ("a".to_string(), true),
                ("b".to_string(), false), // registered, but nobody consumes its queue
                ("c".to_string(), false),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_is_woken_by_becoming_leader_not_by_renewals() {
        let (tx, mut rx) = watch::channel(Role::Follower);
        let leader = || Role::Leader {
            epoch: 1,
            valid_until: tokio::time::Instant::now() + Duration::from_secs(60),
        };
        // Leading: renewals (new valid_until) do not wake it.
        tx.send_replace(leader());
        rx.borrow_and_update();
        let mut woken = Box::pin(became_leader(&mut rx, true));
        tx.send_replace(leader());
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut woken)
                .await
                .is_err()
        );
        drop(woken);
        // A follower is woken when it becomes leader.
        tx.send_replace(Role::Follower);
        rx.borrow_and_update();
        let waiting = tokio::spawn(async move { became_leader(&mut rx, false).await });
        tx.send_replace(Role::Follower);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        tx.send_replace(leader());
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken")
            .expect("joined");
    }
}
