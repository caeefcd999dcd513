//! Migrations against real Postgres: up, down, up again; two processes migrating at once.

mod common;

use std::process::Command;

use common::TestDb;

async fn tables(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("list tables")
}

const TABLES: [&str; 9] = [
    "backfills",
    "guard_claims",
    "job_executions",
    "schedule_calendars",
    "scheduled_jobs",
    "scheduler_job_types",
    "scheduler_leader",
    "scheduler_replicas",
    "task_functions",
];
/// The tables of the first migration alone.
const FIRST: [&str; 5] = [
    "job_executions",
    "scheduled_jobs",
    "scheduler_job_types",
    "scheduler_leader",
    "task_functions",
];

#[tokio::test]
#[ignore = "needs real Postgres: make test"]
async fn up_down_up() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    kube_beat::store::migrate::up(&pool).await.expect("up");
    assert_eq!(tables(&pool).await, TABLES);
    let types: Vec<String> = sqlx::query_scalar("SELECT name FROM scheduler_job_types ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("seeded");
    assert_eq!(types, ["interval", "cron", "date"]);
    let status = kube_beat::store::migrate::status(&pool)
        .await
        .expect("status");
    assert!(status.iter().all(|(_, _, applied)| *applied), "{status:?}");

    let spec_columns = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_name = 'scheduled_jobs' AND column_name LIKE 'spec%' ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .expect("columns")
    };
    assert_eq!(spec_columns().await, ["spec", "spec_generation"]);
    let has_message_options = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns
             WHERE table_name = 'scheduled_jobs' AND column_name = 'message_options')",
        )
        .fetch_one(&pool)
        .await
        .expect("columns")
    };
    assert!(has_message_options().await);
    let health_columns = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM information_schema.columns
             WHERE table_name = 'scheduled_jobs'
               AND column_name IN ('health', 'consecutive_failures', 'paused_at', 'resume_token')",
        )
        .fetch_one(&pool)
        .await
        .expect("columns")
    };
    assert_eq!(health_columns().await, 4);
    // One closure per later step: whether its columns exist.
    let column_count = |table: &'static str, columns: &'static [&'static str]| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM information_schema.columns
                 WHERE table_name = $1 AND column_name = ANY($2)",
            )
            .bind(table)
            .bind(columns)
            .fetch_one(&pool)
            .await
            .expect("columns")
        }
    };
    const END: &[&str] = &[
        "end_time",
        "max_runs",
        "scheduled_runs",
        "last_scheduled_run_at",
    ];
    let scale_indexes = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_indexes
             WHERE indexname IN ('scheduled_jobs_live_queue', 'job_executions_finished')",
        )
        .fetch_one(&pool)
        .await
        .expect("indexes")
    };
    let fillfactor = || async {
        sqlx::query_scalar::<_, Option<Vec<String>>>(
            "SELECT reloptions FROM pg_class WHERE relname = 'scheduled_jobs'",
        )
        .fetch_one(&pool)
        .await
        .expect("reloptions")
        .unwrap_or_default()
    };
    assert_eq!(scale_indexes().await, 2);
    assert!(
        fillfactor().await.contains(&"fillfactor=80".to_string()),
        "{:?}",
        fillfactor().await
    );
    assert!(tables(&pool).await.contains(&"guard_claims".to_string()));
    let reverted = kube_beat::store::migrate::down(&pool, 1)
        .await
        .expect("down the guard step");
    assert_eq!(reverted, [15]);
    assert!(!tables(&pool).await.contains(&"guard_claims".to_string()));
    const REVOKE: &[&str] = &["revoked_by", "revoke_requested_at", "worker"];
    assert_eq!(column_count("job_executions", REVOKE).await, 3);
    let reverted = kube_beat::store::migrate::down(&pool, 1)
        .await
        .expect("down the revoke step");
    assert_eq!(reverted, [14]);
    assert_eq!(column_count("job_executions", REVOKE).await, 0);
    assert_eq!(column_count("scheduled_jobs", &["row_digest"]).await, 1);
    let reverted = kube_beat::store::migrate::down(&pool, 1)
        .await
        .expect("down the row digest step");
    assert_eq!(reverted, [13]);
    assert_eq!(column_count("scheduled_jobs", &["row_digest"]).await, 0);
    assert_eq!(scale_indexes().await, 2, "only the newest step reverted");
    let reverted = kube_beat::store::migrate::down(&pool, 1)
        .await
        .expect("down the scale step");
    assert_eq!(reverted, [12]);
    assert_eq!(scale_indexes().await, 0);
    assert_eq!(fillfactor().await, Vec::<String>::new());
    assert_eq!(column_count("job_executions", &["backfill_id"]).await, 1);
    let reverted = kube_beat::store::migrate::down(&pool, 1)
        .await
        .expect("down the backfill step");
    assert_eq!(reverted, [11]);
    assert_eq!(column_count("job_executions", &["backfill_id"]).await, 0);
    assert!(!tables(&pool).await.contains(&"backfills".to_string()));
    const ARGUMENTS: &[&str] = &["args", "kwargs", "requested_by"];
    assert_eq!(column_count("job_executions", ARGUMENTS).await, 3);
    assert_eq!(column_count("task_functions", &["parameters"]).await, 1);
    let reverted = kube_beat::store::migrate::down(&pool, 1)
        .await
        .expect("down the run arguments step");
    assert_eq!(reverted, [10]);
    assert_eq!(column_count("job_executions", ARGUMENTS).await, 0);
    assert_eq!(
        column_count("task_functions", &["parameters"]).await,
        0,
        "the run arguments step undone"
    );
    assert_eq!(column_count("scheduled_jobs", &["calendars"]).await, 1);
    let reverted = kube_beat::store::migrate::down(&pool, 1)
        .await
        .expect("down the calendars step");
    assert_eq!(reverted, [9]);
    assert_eq!(column_count("scheduled_jobs", &["calendars"]).await, 0);
    assert!(
        !tables(&pool)
            .await
            .contains(&"schedule_calendars".to_string()),
        "the calendars table dropped"
    );
    assert_eq!(column_count("scheduled_jobs", END).await, 4);
    let reverted = kube_beat::store::migrate::down(&pool, 1)
        .await
        .expect("down the schedules-end step");
    assert_eq!(reverted, [8]);
    assert_eq!(
        column_count("scheduled_jobs", END).await,
        0,
        "the schedules-end step undone"
    );
    assert_eq!(health_columns().await, 4);
    let reverted = kube_beat::store::migrate::down(&pool, 1)
        .await
        .expect("down the health step");
    assert_eq!(reverted, [7]);
    assert_eq!(health_columns().await, 0, "the health step undone");
    assert!(has_message_options().await);
    let reverted = kube_beat::store::migrate::down(&pool, 1)
        .await
        .expect("down one step");
    assert_eq!(reverted, [6]);
    assert!(!has_message_options().await, "the last step undone");
    assert_eq!(spec_columns().await, ["spec", "spec_generation"]);
    let reverted = kube_beat::store::migrate::down(&pool, 1)
        .await
        .expect("down one step");
    assert_eq!(reverted, [5]);
    assert!(spec_columns().await.is_empty(), "the step before undone");
    let reverted = kube_beat::store::migrate::down(&pool, 3)
        .await
        .expect("down three steps");
    assert_eq!(reverted, [2, 3, 4]);
    assert_eq!(
        tables(&pool).await,
        FIRST,
        "the first migration's tables remain"
    );
    let reverted = kube_beat::store::migrate::down(&pool, 5)
        .await
        .expect("down the rest");
    assert_eq!(reverted, [1]);
    assert!(
        tables(&pool).await.is_empty(),
        "down removes everything the migration made"
    );
    let status = kube_beat::store::migrate::status(&pool)
        .await
        .expect("status");
    assert!(status.iter().all(|(_, _, applied)| !*applied), "{status:?}");

    kube_beat::store::migrate::up(&pool)
        .await
        .expect("up again");
    assert_eq!(tables(&pool).await, TABLES);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
#[ignore = "needs real Postgres: make test"]
async fn two_processes_migrate_at_once() {
    let db = TestDb::create().await;
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_kube-beat"))
            .args(["migrate", "up"])
            .env("DATABASE_URL", &db.url)
            .spawn()
            .expect("spawn kube-beat migrate")
    };
    let (mut a, mut b) = (spawn(), spawn());
    assert!(a.wait().expect("wait").success(), "first migrate failed");
    assert!(b.wait().expect("wait").success(), "second migrate failed");
    let pool = db.pool().await;
    assert_eq!(tables(&pool).await, TABLES);
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .expect("count");
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations/")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".up.sql"))
        })
        .count();
    assert_eq!(
        applied,
        i64::try_from(files).expect("count"),
        "each migration applied once"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .args(["migrate", "status"])
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("applied") && text.contains("scheduler"),
        "{text}"
    );
    pool.close().await;
    db.drop_db().await;
}

#[test]
fn next_prints_instants_and_rejects_bad_input() {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .args([
            "next",
            "30 2 * * *",
            "--tz",
            "America/New_York",
            "--from",
            "2026-03-07T12:00:00Z",
            "-n",
            "2",
        ])
        .output()
        .expect("run next");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2026-03-08T07:00:00Z\n2026-03-09T06:30:00Z\n"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .args(["next", "61 * * * *"])
        .output()
        .expect("run next");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("end of range (61) above maximum (59): 61"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .args(["next", "1h30m", "--from", "2026-01-01T00:00:00Z", "-n", "2"])
        .output()
        .expect("run next");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2026-01-01T01:30:00Z\n2026-01-01T03:00:00Z\n"
    );
}
