//! The status writer against a fake source and a fake sink, on a paused tokio clock.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

use super::*;

/// Jobs as Postgres would hold them; counts the job ids each read asked for.
#[derive(Clone, Default)]
struct FakeSource {
    rows: Arc<Mutex<HashMap<i64, JobStatusRow>>>,
    asked: Arc<Mutex<Vec<i64>>>,
}

impl FakeSource {
    fn with_jobs(ids: impl IntoIterator<Item = i64>) -> FakeSource {
        let source = FakeSource::default();
        for id in ids {
            source.set_runs(id, 0);
        }
        source
    }

    /// The job has run `total` times (its status changed).
    fn set_runs(&self, id: i64, total: i64) {
        let row = JobStatusRow {
            id,
            uid: format!("uid-{id}"),
            namespace: "ns".into(),
            name: format!("job-{id}"),
            enabled: true,
            next_run_at: DateTime::<Utc>::from_timestamp(1_800_000_000 + id, 0),
            total_runs: total,
            succeeded: total,
            ..Default::default()
        };
        lock(&self.rows).insert(id, row);
    }

    fn asked(&self) -> Vec<i64> {
        lock(&self.asked).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StatusSource for FakeSource {
    async fn live_job_ids(&self) -> Result<Vec<i64>, StoreError> {
        let mut ids: Vec<i64> = lock(&self.rows).keys().copied().collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn load(&self, ids: &[i64]) -> Result<(Vec<JobStatusRow>, Vec<ActiveRow>), StoreError> {
        lock(&self.asked).extend_from_slice(ids);
        // Like `id = ANY($1)`: one row per job, however often it is asked for.
        let rows = lock(&self.rows);
        let mut out: Vec<JobStatusRow> = rows
            .values()
            .filter(|r| ids.contains(&r.id))
            .cloned()
            .collect();
        out.sort_by_key(|r| r.id);
        Ok((out, Vec::new()))
    }
}

/// Records every write: when, which job, what.
#[derive(Clone, Default)]
struct FakeSink {
    writes: Arc<Mutex<Vec<(Instant, String, Value)>>>,
}

impl FakeSink {
    fn writes(&self) -> Vec<(Instant, String, Value)> {
        lock(&self.writes).clone()
    }

    fn times_of(&self, name: &str) -> Vec<Instant> {
        self.writes()
            .into_iter()
            .filter(|(_, n, _)| n == name)
            .map(|(t, _, _)| t)
            .collect()
    }
}

impl StatusSink for FakeSink {
    fn apply(
        &self,
        _namespace: &str,
        name: &str,
        fields: Value,
    ) -> impl Future<Output = Result<(), SinkError>> + Send + 'static {
        lock(&self.writes).push((Instant::now(), name.to_string(), fields));
        async { Ok(()) }
    }
}

/// What the objects show: a digest per uid.
#[derive(Default)]
struct FakeShown(Mutex<HashMap<String, u64>>);

impl ShownStatus for FakeShown {
    fn shows(&self, uid: &str, digest: u64) -> bool {
        lock(&self.0).get(uid) == Some(&digest)
    }
}

struct Running {
    tx: mpsc::Sender<i64>,
    task: JoinHandle<()>,
}

impl Running {
    async fn touch(&self, id: i64) {
        self.tx.send(id).await.expect("writer running");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start(
    source: &FakeSource,
    sink: &FakeSink,
    shown: Arc<FakeShown>,
    qps: u32,
    every: f64,
) -> Running {
    let cfg = WriterConfig {
        qps,
        per_job_interval: Duration::from_secs_f64(every),
    };
    let mut writer = Writer::new(
        source.clone(),
        sink.clone(),
        shown,
        cfg,
        Arc::new(FeedStats::default()),
    );
    let (tx, mut rx) = mpsc::channel(10_000);
    let task = tokio::spawn(async move { writer.lead(&mut rx, &|| true).await });
    Running { tx, task }
}

async fn pass(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn many_changes_to_one_job_make_one_read_and_one_write() {
    let (source, sink) = (FakeSource::with_jobs([1, 2]), FakeSink::default());
    let w = start(&source, &sink, Arc::default(), 100, 1.0);
    // A burst of notices, the job changing all along: before the writer gets to run.
    for total in 1..=50 {
        source.set_runs(1, total);
        w.touch(1).await;
    }
    w.touch(2).await;
    pass(0.5).await;
    assert_eq!(source.asked(), [1, 2], "one read per job for the burst");
    assert_eq!(sink.times_of("job-1").len(), 1);
    // The newest state won.
    let (_, _, fields) = &sink.writes()[0];
    assert_eq!(fields["totalRuns"], 50);
}

#[tokio::test(start_paused = true)]
async fn writes_are_paced_to_qps() {
    let ids: Vec<i64> = (1..=30).collect();
    let (source, sink) = (FakeSource::with_jobs(ids.clone()), FakeSink::default());
    let w = start(&source, &sink, Arc::default(), 10, 1.0);
    let t0 = Instant::now();
    for id in &ids {
        w.touch(*id).await;
    }
    pass(0.95).await;
    let early = sink.writes().len();
    assert!(
        (9..=10).contains(&early),
        "10 per second: {early} in the first 0.95 s"
    );
    pass(3.0).await;
    let times: Vec<Instant> = sink.writes().iter().map(|(t, _, _)| *t).collect();
    assert_eq!(times.len(), 30, "all written in the end");
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(100),
            "writes {:?} apart",
            pair[1] - pair[0]
        );
    }
    assert!(times[29] - t0 >= Duration::from_millis(2900));
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_status_is_not_written_again() {
    let (source, sink) = (FakeSource::with_jobs([1, 2]), FakeSink::default());
    let shown = Arc::new(FakeShown::default());
    // Job 2's object already shows what the writer would write (e.g. after a failover).
    let fields = status_fields(&lock(&source.rows)[&2].clone(), &[]);
    lock(&shown.0).insert("uid-2".into(), written_digest(&fields));
    let w = start(&source, &sink, shown, 100, 0.1);
    w.touch(1).await;
    w.touch(2).await;
    pass(1.0).await;
    assert_eq!(sink.times_of("job-1").len(), 1);
    assert!(
        sink.times_of("job-2").is_empty(),
        "the object shows it already"
    );
    // Touched again long after, nothing changed: read, not written.
    w.touch(1).await;
    pass(1.0).await;
    assert_eq!(source.asked(), [1, 2, 1]);
    assert_eq!(sink.times_of("job-1").len(), 1);
    // A real change is written.
    source.set_runs(1, 1);
    w.touch(1).await;
    pass(1.0).await;
    assert_eq!(sink.times_of("job-1").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn one_job_is_written_at_most_once_per_interval() {
    let (source, sink) = (FakeSource::with_jobs([1, 2]), FakeSink::default());
    let w = start(&source, &sink, Arc::default(), 1000, 2.0);
    let t0 = Instant::now();
    w.touch(1).await;
    pass(0.1).await;
    // It changes at once, and keeps changing: one more write, once its interval is over.
    for total in 1..=5 {
        source.set_runs(1, total);
        w.touch(1).await;
        pass(0.2).await;
    }
    // Another job does not wait for job 1.
    w.touch(2).await;
    pass(0.01).await;
    assert_eq!(
        sink.times_of("job-2").len(),
        1,
        "not held up by job 1's interval"
    );
    assert_eq!(sink.times_of("job-1").len(), 1, "job 1 still cooling");
    pass(2.0).await;
    let times = sink.times_of("job-1");
    assert_eq!(times.len(), 2, "{times:?}");
    assert!(times[1] - times[0] >= Duration::from_secs(2));
    assert!(
        times[1] - t0 < Duration::from_millis(2100),
        "written as soon as allowed"
    );
    assert_eq!(sink.writes().last().expect("write").2["totalRuns"], 5);
}

#[test]
fn the_applied_fields_are_the_run_fields_without_nulls() {
    let row = JobStatusRow {
        id: 1,
        enabled: false,
        next_run_at: DateTime::<Utc>::from_timestamp(1_800_000_000, 0),
        task_id: Some("t-1".into()),
        state: Some("SUCCESS".into()),
        total_runs: 4,
        ..Default::default()
    };
    let active = ActiveRow {
        job_id: 1,
        task_id: "t-2".into(),
        scheduled_for: DateTime::<Utc>::from_timestamp(1_800_000_000, 0).expect("time"),
        state: "STARTED".into(),
    };
    let fields = status_fields(&row, &[&active]);
    fn no_nulls(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Object(m) => m.values().all(no_nulls),
            Value::Array(a) => a.iter().all(no_nulls),
            _ => true,
        }
    }
    assert!(no_nulls(&fields), "{fields}");
    let keys: Vec<&String> = fields.as_object().expect("object").keys().collect();
    for k in &keys {
        assert!(
            crate::api::status_digest::RUN_STATUS_FIELDS.contains(&k.as_str()),
            "{k}"
        );
    }
    // Disabled: no next run shown (leaving it out removes it).
    assert!(fields.get("nextScheduleTime").is_none());
    assert_eq!(fields["lastExecution"]["taskId"], "t-1");
    assert!(fields["lastExecution"].get("message").is_none());
    assert_eq!(fields["active"][0]["taskId"], "t-2");
    assert_eq!(fields["totalRuns"], 4);
}

#[test]
fn the_latest_backfill_is_shown_and_reads_back_with_the_same_digest() {
    let at = |s: i64| DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).expect("time");
    let row = JobStatusRow {
        id: 1,
        enabled: true,
        backfill: Some(crate::store::backfills::BackfillView {
            id: "bf-1".into(),
            from: at(0),
            to: at(1140),
            max_parallel: 3,
            state: "Running".into(),
            message: None,
            total: 20,
            dispatched: 7,
            already_ran: 2,
            succeeded: 4,
            failed: 1,
            unfinished: 2,
            requested_by: Some("alice".into()),
            created_at: at(-5),
            finished_at: None,
        }),
        ..Default::default()
    };
    let fields = status_fields(&row, &[]);
    let b = &fields["backfill"];
    assert_eq!(b["id"], "bf-1");
    assert_eq!(b["from"], "2027-01-15T08:00:00Z");
    assert_eq!(
        (
            b["total"].clone(),
            b["alreadyRan"].clone(),
            b["unfinished"].clone()
        ),
        (json!(20), json!(2), json!(2))
    );
    assert!(b.get("message").is_none(), "no null message: {b}");
    // What the apiserver shows, read back through the typed status (as the job cache does).
    let typed: crate::api::ScheduledJobStatus =
        serde_json::from_value(fields.clone()).expect("typed");
    let shown = serde_json::to_value(&typed).expect("json");
    assert_eq!(
        crate::api::status_digest::written_digest(&shown),
        crate::api::status_digest::written_digest(&fields)
    );
    let mut done = row.clone();
    if let Some(b) = done.backfill.as_mut() {
        b.state = "Complete".into();
    }
    assert_ne!(
        crate::api::status_digest::written_digest(&status_fields(&done, &[])),
        crate::api::status_digest::written_digest(&fields),
        "a change of the backfill is a change of the status"
    );
}

#[test]
fn the_latest_manual_run_is_shown_with_its_request_id() {
    let row = JobStatusRow {
        id: 1,
        manual_request_id: Some("req-1".into()),
        manual_requested_by: Some("alice".into()),
        manual_task_id: Some("t-9".into()),
        manual_state: Some("SUCCESS".into()),
        manual_finished_at: DateTime::<Utc>::from_timestamp(1_800_000_000, 0),
        manual_message: Some("{\"ok\": true}".into()),
        ..Default::default()
    };
    let fields = status_fields(&row, &[]);
    assert_eq!(
        fields["lastManualRun"],
        serde_json::json!({"requestId": "req-1", "requestedBy": "alice", "taskId": "t-9",
                           "state": "SUCCESS", "finishedAt": "2027-01-15T08:00:00Z",
                           "message": "{\"ok\": true}"})
    );
    assert!(crate::api::status_digest::RUN_STATUS_FIELDS.contains(&"lastManualRun"));
    let none = status_fields(&JobStatusRow::default(), &[]);
    assert!(none.get("lastManualRun").is_none());
}
