//! The management API against the real apiserver's TokenReview and SubjectAccessReview, with
//! static-token users: an admin, a reader of one namespace (sees only it, cannot trigger) and an
//! editor of that namespace (can trigger there, not elsewhere); no token → 401; bad paging → 400.
//! Also the migration plan's monitoring commands (status, jobs, executions) against a live
//! operator.

mod common;

use std::{process::Command, time::Duration};

use common::{Worker, eventually, fixture, ok};
use serde_json::{Value, json};

const ADMIN: &str = "kbt-api-admin-token";
const READER: &str = "kbt-api-reader-token";
const EDITOR: &str = "kbt-api-editor-token";

/// (HTTP status, JSON body).
fn call(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl");
    let text = ok(&out);
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (
        code.trim().parse().expect("status code"),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
#[ignore = "needs the local control plane and services (make test)"]
async fn api_with_kubernetes_authentication_and_authorization() {
    let env = common::env();
    let f = fixture("kbt-api", format!("{}/0", env.redis_url)).await;
    let backend = format!("{}/1", env.redis_url);
    let _worker = Worker::start(&f.broker, Some(&backend), &f.queue, &f.db.url);
    // The reader may read ScheduledJobs in the test namespace; the editor may also patch them.

    f.grant_api_users();
    f.task_function("echo", "kb.echo").await;
    f.job(
        "hourly",
        "echo",
        json!({"schedule": {"interval": {"hours": 1}}}),
    )
    .await;
    f.job(
        "often",
        "echo",
        json!({"schedule": {"interval": {"seconds": 2}}}),
    )
    .await;
    let op = f.operator(&["--result-backend", &backend, "--result-poll-ms", "300"]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    let identity = eventually("a leader", Duration::from_secs(30), || async {
        op.log_text()
            .lines()
            .find(|l| l.contains("acquired leader"))
            .and_then(|l| l.split("identity=").nth(1))
            .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
    })
    .await;
    eventually("runs", Duration::from_secs(60), || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM job_executions WHERE state = 'SUCCESS'")
                .fetch_one(&f.pool)
                .await
                .ok()?;
        (n >= 2).then_some(())
    })
    .await;
    // A job in another namespace (a row as the reconciler writes it), for namespace scoping.
    let other = format!("{}-other", f.ns);
    sqlx::query(
        "INSERT INTO scheduled_jobs (uid, namespace, name, generation, task_function, task_name,
             job_type_id, schedule_config, schedule_summary, anchor_time, args, kwargs, queue, enabled)
         SELECT 'other-uid', $1, 'elsewhere', 1, task_function, task_name, job_type_id,
                schedule_config, schedule_summary, anchor_time, args, kwargs, queue, false
         FROM scheduled_jobs WHERE name = 'hourly'",
    )
    .bind(&other)
    .execute(&f.pool)
    .await
    .expect("a row in another namespace");

    // No token, a bad token.
    let (code, body) = call(&addr, "GET", "/api/v1/jobs", None);
    assert_eq!(code, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("bearer token"))
    );
    assert_eq!(call(&addr, "GET", "/api/v1/jobs", Some("nope")).0, 401);

    // The migration plan's commands, as the admin.
    let (code, status) = call(&addr, "GET", "/api/v1/scheduler/status", Some(ADMIN));
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["leaderInstance"], identity.as_str());
    let (code, jobs) = call(&addr, "GET", "/api/v1/jobs", Some(ADMIN));
    assert_eq!(code, 200);
    let names: Vec<String> = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| {
            format!(
                "{}/{}",
                j["namespace"].as_str().unwrap_or(""),
                j["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(
        names.contains(&format!("{}/often", f.ns)) && names.contains(&format!("{other}/elsewhere")),
        "{names:?}"
    );
    let often = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["name"] == "often")
        .expect("often")
        .clone();
    assert!(
        often["lastRunTime"].is_string() && often["nextRunTime"].is_string(),
        "{often}"
    );
    let job_id = often["id"].as_i64().expect("id");
    let (code, execs) = call(
        &addr,
        "GET",
        &format!("/api/v1/executions?job_id={job_id}&per_page=5"),
        Some(ADMIN),
    );
    assert_eq!(code, 200);
    let first = &execs["executions"][0];
    assert_eq!(first["job_id"], job_id);
    assert!(
        first["status"].is_string() && first.get("started_at").is_some(),
        "{first}"
    );
    assert_eq!(execs["per_page"], 5);
    assert_eq!(
        call(&addr, "GET", "/api/v1/job-types", Some(ADMIN)).1["job_types"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    let (_, tfs) = call(&addr, "GET", "/api/v1/task-functions", Some(ADMIN));
    assert!(
        tfs["task_functions"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["task"] == "kb.echo" && t["jobCount"] == 3)),
        "{tfs}"
    );
    let (code, detail) = call(
        &addr,
        "GET",
        &format!("/api/v1/jobs/{}/often", f.ns),
        Some(ADMIN),
    );
    assert_eq!(code, 200);
    assert!(
        detail["executions"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    assert_eq!(
        call(
            &addr,
            "GET",
            &format!("/api/v1/jobs/{}/nope", f.ns),
            Some(ADMIN)
        )
        .0,
        404
    );

    // Bad paging.
    for q in [
        "per_page=0",
        "per_page=501",
        "page=abc",
        "page=0",
        "job_id=x",
        "status=BOGUS",
    ] {
        let (code, body) = call(
            &addr,
            "GET",
            &format!("/api/v1/executions?{q}"),
            Some(ADMIN),
        );
        assert_eq!(code, 400, "{q}: {body}");
        assert!(body["error"].is_string());
    }

    // The reader sees its namespace only and cannot trigger.
    let (code, jobs) = call(&addr, "GET", "/api/v1/jobs", Some(READER));
    assert_eq!(code, 200, "{jobs}");
    assert!(
        jobs["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .all(|j| j["namespace"] == f.ns.as_str())
    );
    assert_eq!(jobs["total"], 2);
    let (code, execs) = call(&addr, "GET", "/api/v1/executions", Some(READER));
    assert_eq!(code, 200);
    assert!(
        execs["executions"]
            .as_array()
            .expect("executions")
            .iter()
            .all(|e| e["namespace"] == f.ns.as_str())
    );
    assert_eq!(
        call(
            &addr,
            "GET",
            &format!("/api/v1/jobs?namespace={other}"),
            Some(READER)
        )
        .0,
        403
    );
    assert_eq!(
        call(
            &addr,
            "GET",
            &format!("/api/v1/jobs/{other}/elsewhere"),
            Some(READER)
        )
        .0,
        403
    );
    assert_eq!(
        call(
            &addr,
            "POST",
            &format!("/api/v1/jobs/{}/hourly/trigger", f.ns),
            Some(READER)
        )
        .0,
        403
    );

    // The editor triggers in its namespace (a recorded manual run), not elsewhere.
    let (code, body) = call(
        &addr,
        "POST",
        &format!("/api/v1/jobs/{}/hourly/trigger", f.ns),
        Some(EDITOR),
    );
    assert_eq!(code, 202, "{body}");
    eventually("the triggered run", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
             WHERE j.name = 'hourly' AND e.trigger = 'manual' AND e.state = 'SUCCESS'",
        )
        .fetch_one(&f.pool)
        .await
        .ok()?;
        (n == 1).then_some(())
    })
    .await;
    assert_eq!(
        call(
            &addr,
            "POST",
            &format!("/api/v1/jobs/{other}/elsewhere/trigger"),
            Some(EDITOR)
        )
        .0,
        403
    );
    drop(op);
    f.finish().await;
}
