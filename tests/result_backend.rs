//! The tracker's reads of a real result backend (Redis and Celery's database backend in
//! Postgres) with records a hostile task could leave: over the size cap, larger than the first
//! read, nested far too deep, a pickle bomb, a key of the wrong type, dates Postgres allows but
//! chrono does not. Each keeps its final state and the batch's other records are read.
//! Needs Redis (`KB_REDIS_URL`, default redis://127.0.0.1:6379) and Postgres (`KB_PG_BASE`,
//! default postgres://postgres@127.0.0.1:5432); `make test` starts both.

use kube_beat::tracker::{
    backend::{Backend, BackendUrl, FIRST_READ_BYTES},
    decode::RECORD_MAX_BYTES,
};
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn meta(status: &str, result: &str, traceback: &str) -> String {
    format!(
        r#"{{"status": "{status}", "result": {result}, "traceback": {traceback}, "children": [], "date_done": "2026-11-26T22:21:12.437328+00:00", "task_id": "x"}}"#
    )
}

#[tokio::test]
async fn redis_records_are_capped_before_decoding() {
    let url = var("KB_REDIS_URL", "redis://127.0.0.1:6379");
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connecting to Redis");
    let run = unique();
    let id = |name: &str| format!("kbtest-{run}-{name}");
    let big_tb = format!(
        "\"Traceback ...\\n{}\\nValueError: end\\n\"",
        "x".repeat(40_000)
    );
    let records = [
        ("small", meta("SUCCESS", r#"{"synced": 42}"#, "null")),
        // Larger than the first read, within the cap: read in a second round trip.
        (
            "larger",
            meta(
                "FAILURE",
                r#"{"exc_type": "ValueError", "exc_message": ["end"], "exc_module": "builtins"}"#,
                &big_tb,
            ),
        ),
        // Over the cap: never read whole, its state kept.
        (
            "huge",
            meta(
                "SUCCESS",
                &format!("\"{}\"", "y".repeat(RECORD_MAX_BYTES * 3)),
                "null",
            ),
        ),
        (
            "deep",
            meta(
                "SUCCESS",
                &format!("{}{}", "[".repeat(200_000), "]".repeat(200_000)),
                "null",
            ),
        ),
    ];
    for (name, value) in &records {
        let _: () = redis::cmd("SET")
            .arg(format!("celery-task-meta-{}", id(name)))
            .arg(value)
            .query_async(&mut conn)
            .await
            .expect("SET");
    }
    // A key of another type must not fail the batch.
    let _: () = redis::cmd("RPUSH")
        .arg(format!("celery-task-meta-{}", id("list")))
        .arg("x")
        .query_async(&mut conn)
        .await
        .expect("RPUSH");
    assert!(records[1].1.len() > FIRST_READ_BYTES && records[1].1.len() < RECORD_MAX_BYTES);

    let backend = Backend::connect(&BackendUrl::parse(Some(&url)).expect("url"))
        .await
        .expect("backend");
    let ids: Vec<String> = ["small", "larger", "huge", "deep", "list", "missing"]
        .iter()
        .map(|n| id(n))
        .collect();
    let found = backend.fetch(&ids).await;

    let mut keys: Vec<String> = ["small", "larger", "huge", "deep", "list"]
        .iter()
        .map(|n| format!("celery-task-meta-{}", id(n)))
        .collect();
    keys.sort();
    let _: i64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .expect("DEL");

    let found = found.expect("fetch");
    assert_eq!(found[&id("small")].status, "SUCCESS");
    assert_eq!(found[&id("small")].result, Some(json!({"synced": 42})));
    let larger = &found[&id("larger")];
    assert_eq!(larger.status, "FAILURE");
    assert_eq!(larger.error.as_deref(), Some("ValueError: end"));
    assert!(
        larger
            .traceback
            .as_deref()
            .unwrap()
            .ends_with("ValueError: end\n")
    );
    let huge = &found[&id("huge")];
    assert_eq!(huge.status, "SUCCESS");
    let note = huge.result.as_ref().unwrap();
    assert_eq!(note["bytes"], records[2].1.len());
    assert!(note["note"].as_str().unwrap().contains("too large"));
    let deep = &found[&id("deep")];
    assert_eq!(deep.status, "SUCCESS");
    assert_eq!(deep.result.as_ref().unwrap()["encoding"], "hex");
    assert!(!found.contains_key(&id("list")));
    assert!(!found.contains_key(&id("missing")));
}

#[tokio::test]
async fn database_records_are_capped_before_decoding() {
    let base = var("KB_PG_BASE", "postgres://postgres@127.0.0.1:5432");
    let name = format!("kbt_results_{}", &unique()[..12]);
    let mut admin = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("connecting to Postgres");
    // The name is generated above from a uuid: nothing user-supplied reaches this SQL.
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("creating the test database");
    let url = format!("{base}/{name}");
    let outcome = database_checks(&url).await;
    let _ = sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
    outcome.expect("database backend checks");
}

/// task_id, status, result, date_done (as text), traceback.
type Row<'a> = (&'a str, &'a str, Vec<u8>, &'a str, Option<&'a str>);

async fn database_checks(url: &str) -> Result<(), String> {
    let pool = sqlx::PgPool::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    // Celery's own table (celery.backends.database.models.Task).
    sqlx::query(
        "CREATE TABLE celery_taskmeta (
             id serial PRIMARY KEY, task_id varchar(155) UNIQUE, status varchar(50),
             result bytea, date_done timestamp, traceback text)",
    )
    .execute(&pool)
    .await
    .map_err(|e| e.to_string())?;
    // Deep pickle: EMPTY_LIST then 100,000 TUPLE1 (aborted the process before the fix).
    let mut deep = vec![0x80, 0x04, b']'];
    deep.extend(std::iter::repeat_n(0x85u8, 100_000));
    deep.push(b'.');
    let big_tb = format!("Traceback ...\n{}\nValueError: end\n", "é".repeat(30_000));
    let rows: Vec<Row> = vec![
        (
            "small",
            "SUCCESS",
            br#"{"deleted": 7}"#.to_vec(),
            "2026-11-26 22:21:12",
            None,
        ),
        (
            "larger",
            "SUCCESS",
            serde_json::to_vec(&json!({"s": "z".repeat(100_000)})).unwrap_or_default(),
            "2026-11-26 22:21:12",
            None,
        ),
        (
            "huge",
            "FAILURE",
            vec![b'"'; RECORD_MAX_BYTES * 2],
            "2026-11-26 22:21:12",
            Some(big_tb.as_str()),
        ),
        ("deep", "SUCCESS", deep, "2026-11-26 22:21:12", None),
        // Postgres holds dates chrono cannot (sqlx would panic decoding them).
        ("infinite", "SUCCESS", b"1".to_vec(), "infinity", None),
        (
            "far",
            "SUCCESS",
            b"2".to_vec(),
            "294000-01-01 00:00:00",
            None,
        ),
    ];
    for (id, status, result, done, tb) in &rows {
        sqlx::query(
            "INSERT INTO celery_taskmeta (task_id, status, result, date_done, traceback)
             VALUES ($1, $2, $3, $4::timestamp, $5)",
        )
        .bind(id)
        .bind(status)
        .bind(result)
        .bind(done)
        .bind(tb)
        .execute(&pool)
        .await
        .map_err(|e| format!("{id}: {e}"))?;
    }
    let backend = Backend::connect(
        &BackendUrl::parse(Some(&format!("db+{url}"))).map_err(|e| e.to_string())?,
    )
    .await
    .map_err(|e| e.to_string())?;
    let ids: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
    let found = backend.fetch(&ids).await.map_err(|e| e.to_string())?;
    pool.close().await;

    let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
    check(
        found["small"].result == Some(json!({"deleted": 7})),
        "small result",
    )?;
    check(found["small"].date_done.is_some(), "small date_done")?;
    let larger = found["larger"].result.clone().unwrap_or_default();
    check(
        larger["truncated"] == true,
        "larger is read whole, stored as a preview",
    )?;
    let huge = &found["huge"];
    check(huge.status == "FAILURE", "huge keeps its state")?;
    check(
        huge.error.as_deref()
            == Some(&*format!(
                "result too large ({} bytes), not decoded",
                RECORD_MAX_BYTES * 2
            )),
        "huge error",
    )?;
    check(
        huge.traceback.as_deref().is_some_and(|t| {
            t.starts_with("...(traceback truncated)") && t.ends_with("ValueError: end\n")
        }),
        "huge traceback keeps its end",
    )?;
    check(
        found["deep"]
            .result
            .as_ref()
            .is_some_and(|r| r["encoding"] == "hex"),
        "deep pickle kept as hex",
    )?;
    check(
        found["infinite"].status == "SUCCESS" && found["infinite"].date_done.is_none(),
        "infinity date_done ignored",
    )?;
    check(found["far"].date_done.is_none(), "far date_done ignored")?;
    Ok(())
}
