//! The dashboard in headless Chromium (Debian's chromium + chromedriver, driven over WebDriver):
//! the page loads, asks for a token, shows the real jobs of a running operator with the leader,
//! a job page shows the history, a timeline, the success rate and a duration sparkline, the
//! trigger button causes a run, a reader gets no trigger button, and a bad token is refused. A job
//! its health policy paused (issue #26) shows the pause, and its Resume button resumes it. A job
//! is disabled and enabled from its page, and a running run is revoked from it (issue #29).

mod common;

use std::time::Duration;

use common::{
    Worker, api_call,
    browser::{browser, sign_in, wait_for},
    eventually, fixture,
};
use fantoccini::{Client, Locator, elements::Element};
use serde_json::json;

const ADMIN: &str = "kbt-api-admin-token";
const READER: &str = "kbt-api-reader-token";

/// Find `loc` and do `f` with it, again if the element went stale in between (a live page
/// redraws when its data changed, every few seconds while runs arrive), for up to 20 seconds.
async fn with_element<T, F, Fut>(c: &Client, loc: Locator<'_>, what: &str, f: F) -> T
where
    F: Fn(Element) -> Fut,
    Fut: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let error = match c.find(loc).await {
            Ok(e) => match f(e).await {
                Ok(v) => return v,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: {error}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn click(c: &Client, loc: Locator<'_>, what: &str) {
    with_element(c, loc, what, |e| async move { e.click().await }).await
}

async fn text_of(c: &Client, loc: Locator<'_>, what: &str) -> String {
    with_element(c, loc, what, |e| async move { e.text().await }).await
}

/// The text of the confirmation the page asks for, accepted.
async fn accept_confirmation(c: &Client) -> String {
    let asked = eventually("the confirmation", Duration::from_secs(20), || async {
        c.get_alert_text().await.ok()
    })
    .await;
    c.accept_alert().await.expect("confirm");
    asked
}

/// How many executions of the job `name` match `condition` (SQL on the execution `e`, a
/// constant of this file), slotted after `after` if given.
async fn count_runs(
    pool: &sqlx::PgPool,
    name: &str,
    condition: &str,
    after: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<i64> {
    let sql = format!(
        "SELECT count(*) FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE j.name = $1 AND ($2::timestamptz IS NULL OR e.scheduled_for > $2) AND {condition}"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .bind(after)
        .fetch_one(pool)
        .await
        .ok()
}

/// Trigger a run of `job` as the admin, through the API, and wait until it matches `condition`
/// (SQL on the execution `e`, a constant of this file): (execution id, Celery task id).
async fn manual_run(f: &common::Fixture, addr: &str, job: &str, condition: &str) -> (i64, String) {
    let (code, body) = api_call(
        addr,
        "POST",
        &format!("/api/v1/jobs/{}/{job}/trigger", f.ns),
        Some(ADMIN),
    );
    assert_eq!(code, 202, "{body}");
    let sql = format!(
        "SELECT e.id, e.task_id FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE j.name = $1 AND e.trigger = 'manual' AND {condition}"
    );
    eventually(
        &format!("the manual run of {job}: {condition}"),
        Duration::from_secs(60),
        || async {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(job)
                .fetch_optional(&f.pool)
                .await
                .ok()?
        },
    )
    .await
}

/// Forget the token, open `url` afresh and sign in with `token`.
async fn sign_in_again(c: &Client, url: &str, token: &str) {
    c.execute("sessionStorage.clear(); return null;", vec![])
        .await
        .expect("sign out");
    c.goto(url).await.expect("open the page");
    c.refresh().await.expect("reload");
    sign_in(c, token).await;
}

/// The job page's statistics: the success rate, what it was counted over, and the state of each
/// point of the duration sparkline (oldest first).
async fn stats(c: &Client) -> (String, String, Vec<String>) {
    // One script: the live page may redraw between two WebDriver calls.
    let read = c
        .execute(
            "const t = (id) => document.getElementById(id).textContent;
             return [t('success-rate'), t('success-window'),
                     [...document.querySelectorAll('#duration-sparkline circle.run')]
                       .map((d) => d.getAttribute('class').replace(/^run /, ''))];",
            vec![],
        )
        .await
        .expect("the statistics");
    serde_json::from_value(read).expect("rate, window, points")
}

#[tokio::test]
#[ignore = "needs the local control plane, services and Chromium (make test)"]
async fn dashboard_shows_jobs_triggers_runs_and_refuses_strangers() {
    let env = common::env();
    let f = fixture("kbt-dash", format!("{}/0", env.redis_url)).await;
    let backend = format!("{}/1", env.redis_url);
    let _worker = Worker::start(&f.broker, Some(&backend), &f.queue, &f.db.url);

    f.grant_api_users();
    f.task_function("echo", "kb.echo").await;
    f.task_function_with(
        "fail",
        "kb.fail",
        json!({"defaultArgs": ["dashboard demo"]}),
    )
    .await;
    f.job(
        "often",
        "echo",
        json!({"schedule": {"interval": {"seconds": 2}}, "description": "Every two seconds."}),
    )
    .await;
    f.job(
        "flaky",
        "fail",
        json!({"schedule": {"interval": {"seconds": 3}}}),
    )
    .await;
    f.job(
        "hourly",
        "echo",
        json!({"schedule": {"interval": {"hours": 1}}}),
    )
    .await;
    let op = f.operator(&["--result-backend", &backend, "--result-poll-ms", "300"]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    eventually("some runs", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM job_executions WHERE state IN ('SUCCESS', 'FAILURE')",
        )
        .fetch_one(&f.pool)
        .await
        .ok()?;
        (n >= 8).then_some(())
    })
    .await;

    let (_driver, c) = browser().await;
    let base = format!("http://{addr}/");
    c.goto(&base).await.expect("open the dashboard");
    // Without a token: the sign-in form, nothing else.
    sign_in(&c, ADMIN).await;
    let often = format!("tr.job[data-name='{}/often']", f.ns);
    wait_for(
        &c,
        Locator::Css(&often),
        "the jobs table shows the real jobs",
    )
    .await;
    let text = text_of(&c, Locator::Css(&often), "the often row").await;
    assert!(
        text.contains("kb.echo") && text.contains("every 2s"),
        "{text}"
    );
    let leader = text_of(&c, Locator::Id("leader"), "the leader").await;
    assert!(
        op.log_text().contains(&format!("identity={leader}")),
        "leader {leader}"
    );
    // The front page's chart of the last hour, from Postgres: runs by outcome (often succeeds,
    // flaky fails) and the dispatch lag, matching the stored runs.
    wait_for(
        &c,
        Locator::Css("#activity-chart rect.bar.succeeded"),
        "the chart's succeeded runs",
    )
    .await;
    wait_for(
        &c,
        Locator::Css("#activity-chart rect.bar.failed"),
        "the chart's failed runs",
    )
    .await;
    let lag = text_of(&c, Locator::Id("activity-lag"), "the lag").await;
    assert!(lag.ends_with(" ms") || lag.ends_with(" s"), "{lag}");
    let (code, body) = api_call(&addr, "GET", "/api/v1/activity", Some(ADMIN));
    assert_eq!(code, 200, "{body}");
    let (ok, failed): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'SUCCESS'), count(*) FILTER (WHERE state = 'FAILURE')
         FROM job_executions WHERE scheduled_for <= now()",
    )
    .fetch_one(&f.pool)
    .await
    .expect("counts");
    let sum = |k: &str| {
        body["activity"]
            .as_array()
            .expect("minutes")
            .iter()
            .map(|m| m[k].as_i64().expect("a count"))
            .sum::<i64>()
    };
    // Runs end between the two reads: the chart's counts are at most the later ones.
    assert!(sum("succeeded") > 0 && sum("succeeded") <= ok, "{body}");
    assert!(sum("failed") > 0 && sum("failed") <= failed, "{body}");
    assert_eq!(
        api_call(&addr, "GET", "/api/v1/activity?minutes=0", Some(ADMIN)).0,
        400
    );

    // A job page: history, timeline and the trigger button.
    c.goto(&format!("{base}#/job/{}/hourly", f.ns))
        .await
        .expect("job page");
    let button = wait_for(&c, Locator::Id("trigger"), "a trigger button for the admin").await;
    button.click().await.expect("click");
    wait_for(
        &c,
        Locator::XPath("//span[@id='triggered' and contains(., 'triggered')]"),
        "the page confirms the trigger",
    )
    .await;
    eventually("the triggered run", Duration::from_secs(30), || async {
        let n = count_runs(
            &f.pool,
            "hourly",
            "e.trigger = 'manual' AND e.state = 'SUCCESS'",
            None,
        )
        .await?;
        (n == 1).then_some(())
    })
    .await;
    c.goto(&format!("{base}#/job/{}/flaky", f.ns))
        .await
        .expect("job page");
    c.refresh().await.expect("reload");
    wait_for(
        &c,
        Locator::Css("#timeline span.state.FAILURE"),
        "the timeline colours failures",
    )
    .await;
    let history = c
        .find_all(Locator::Css("tr.execution"))
        .await
        .expect("history");
    assert!(history.len() >= 2, "history rows: {}", history.len());
    // Every run of kb.fail failed: a success rate of 0 over its ended runs, and a sparkline
    // point per finished run, each a failure.
    let (rate, window, points) = stats(&c).await;
    assert_eq!(rate, "0%", "{window}");
    assert!(
        window.contains("0 of ") && window.contains("ended runs"),
        "{window}"
    );
    assert!(points.len() >= 2, "sparkline points: {points:?}");
    assert!(points.iter().all(|p| p == "FAILURE"), "{points:?}");
    let shot = c.screenshot().await.expect("screenshot");
    std::fs::create_dir_all(env.repo.join("target")).expect("target");
    std::fs::write(env.repo.join("target/dashboard-job.png"), &shot).expect("save screenshot");
    // Every run of kb.echo succeeded: 100%, over as many ended runs as the database has.
    c.goto(&format!("{base}#/job/{}/often", f.ns))
        .await
        .expect("job page");
    c.refresh().await.expect("reload");
    wait_for(
        &c,
        Locator::Css("#duration-sparkline circle.SUCCESS"),
        "the sparkline of a succeeding job",
    )
    .await;
    let (rate, window, points) = stats(&c).await;
    assert_eq!(rate, "100%", "{window}");
    let ended = count_runs(&f.pool, "often", "e.state = 'SUCCESS'", None)
        .await
        .expect("count");
    let shown: i64 = window
        .split(" of ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("N of M ended runs");
    // The page was read a moment before the count: at most a few runs behind it.
    assert!(
        shown >= 2 && shown <= ended && ended - shown <= 5,
        "{window} (database: {ended})"
    );
    assert!(
        points.len() >= 2 && points.iter().all(|p| p == "SUCCESS"),
        "{points:?}"
    );
    c.goto(&base).await.expect("jobs page");
    wait_for(&c, Locator::Css("tr.job"), "jobs").await;
    let shot = c.screenshot().await.expect("screenshot");
    std::fs::write(env.repo.join("target/dashboard.png"), &shot).expect("save screenshot");

    // A namespace reader: sees the jobs, gets no trigger button.
    sign_in_again(&c, &format!("{base}#/job/{}/hourly", f.ns), READER).await;
    wait_for(&c, Locator::Id("no-trigger"), "the reader may not trigger").await;
    assert!(c.find(Locator::Id("trigger")).await.is_err());

    // A bad token is refused.
    sign_in_again(&c, &base, "not-a-token").await;
    let msg = wait_for(
        &c,
        Locator::XPath("//div[@id='message' and contains(., 'Not signed in')]"),
        "refused",
    )
    .await
    .text()
    .await
    .expect("text");
    assert!(msg.contains("not accepted"), "{msg}");
    assert!(
        c.find(Locator::Css("tr.job")).await.is_err(),
        "no jobs shown"
    );
    let _ = c.close().await;
    drop(op);
    f.finish().await;
}

/// The ScheduledJob `name` in `ns` as the apiserver has it.
fn scheduled_job(ns: &str, name: &str) -> serde_json::Value {
    let out = common::kubectl(&["get", "scheduledjob", name, "-n", ns, "-o", "json"]);
    serde_json::from_str(&common::ok(&out)).expect("json")
}

#[tokio::test]
#[ignore = "needs the local control plane, services and Chromium (make test)"]
async fn dashboard_shows_a_paused_job_and_resumes_it() {
    let env = common::env();
    let f = fixture("kbt-dashpause", format!("{}/0", env.redis_url)).await;
    let backend = format!("{}/1", env.redis_url);
    let _worker = Worker::start(&f.broker, Some(&backend), &f.queue, &f.db.url);
    f.grant_api_users();
    f.task_function_with("fail", "kb.fail", json!({"defaultArgs": ["breaker demo"]}))
        .await;
    // The real path to a pause: one failed run breaches the policy.
    f.job(
        "breaker",
        "fail",
        json!({"schedule": {"interval": {"seconds": 6}},
               "health": {"maxConsecutiveFailures": 1, "onBreach": "Pause"}}),
    )
    .await;
    let op = f.operator(&["--result-backend", &backend, "--result-poll-ms", "300"]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    let job_path = format!("/api/v1/jobs/{}/breaker", f.ns);
    let pause = eventually(
        "the health policy pauses the job",
        Duration::from_secs(90),
        || async {
            let pause = scheduled_job(&f.ns, "breaker")["status"]["pause"].clone();
            pause.is_object().then_some(pause)
        },
    )
    .await;
    // Paused slots are recorded, not run.
    eventually(
        "a slot skipped while paused",
        Duration::from_secs(30),
        || async {
            let n = count_runs(&f.pool, "breaker", "e.state = 'SKIPPED'", None).await?;
            (n >= 1).then_some(())
        },
    )
    .await;
    let (code, body) = api_call(&addr, "GET", &job_path, Some(ADMIN));
    assert_eq!(code, 200, "{body}");
    let job = &body["job"];
    assert_eq!(job["paused"], true, "{body}");
    assert_eq!(job["pauseReason"], pause["reason"], "{body} vs {pause}");
    assert_eq!(job["healthy"], "False", "{body}");
    assert_eq!(body["canResume"], true, "{body}");
    let reason = job["pauseReason"]
        .as_str()
        .expect("a pause reason")
        .to_string();

    let (_driver, c) = browser().await;
    let base = format!("http://{addr}/");
    // A reader sees the pause, and may not resume it.
    c.goto(&format!("{base}#/job/{}/breaker", f.ns))
        .await
        .expect("job page");
    sign_in(&c, READER).await;
    wait_for(
        &c,
        Locator::Css("#pause #no-resume"),
        "the reader sees the pause without a Resume button",
    )
    .await;
    assert!(c.find(Locator::Id("resume")).await.is_err());

    // The admin: the jobs table marks the job paused, its page shows why and since when.
    sign_in_again(&c, &base, ADMIN).await;
    let row = wait_for(
        &c,
        Locator::Css(&format!("tr.job[data-name='{}/breaker']", f.ns)),
        "the job's row",
    )
    .await;
    let badge = row
        .find(Locator::Css(".health-cell .paused"))
        .await
        .expect("a paused badge in the jobs table");
    let title = badge
        .attr("title")
        .await
        .expect("title")
        .unwrap_or_default();
    assert!(title.contains(&reason), "{title}");
    let health = row
        .find(Locator::Css(".health-cell .health.False"))
        .await
        .expect("an unhealthy badge")
        .attr("title")
        .await
        .expect("title")
        .unwrap_or_default();
    assert!(!health.is_empty(), "the badge's title carries the message");

    c.goto(&format!("{base}#/job/{}/breaker", f.ns))
        .await
        .expect("job page");
    let button = wait_for(
        &c,
        Locator::Css("#pause #resume"),
        "a Resume button for the admin",
    )
    .await;
    let text = c
        .find(Locator::Id("pause-text"))
        .await
        .expect("pause text")
        .text()
        .await
        .expect("text");
    assert!(text.contains("Paused") && text.contains(&reason), "{text}");
    let since_shown = c
        .find(Locator::Id("paused-since"))
        .await
        .expect("since")
        .text()
        .await
        .expect("text");
    assert!(
        c.find(Locator::Css("#health .health.False")).await.is_ok(),
        "the page says the job is unhealthy"
    );
    let shot = c.screenshot().await.expect("screenshot");
    std::fs::create_dir_all(env.repo.join("target")).expect("target");
    std::fs::write(env.repo.join("target/dashboard-paused.png"), &shot).expect("save screenshot");

    // Resume from the keyboard: focus the button, press Enter.
    let dispatched = |since: chrono::DateTime<chrono::Utc>| {
        let pool = f.pool.clone();
        async move {
            let ran = "e.trigger <> 'manual' AND e.state NOT IN ('SKIPPED', 'PENDING')";
            count_runs(&pool, "breaker", ran, Some(since)).await
        }
    };
    // While paused, slots are SKIPPED: nothing ran after the pause (one interval of grace for
    // a run claimed ahead of its slot before the pause).
    let paused_at = pause["since"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .expect("pause.since, RFC 3339")
        .with_timezone(&chrono::Utc);
    assert_eq!(
        dispatched(paused_at + chrono::Duration::seconds(7)).await,
        Some(0),
        "nothing runs while paused"
    );
    let clicked = chrono::Utc::now();
    c.execute(
        "document.getElementById('resume').focus(); return null;",
        vec![],
    )
    .await
    .expect("focus");
    button
        .send_keys(&fantoccini::key::Key::Enter.to_string())
        .await
        .expect("press Enter on Resume");
    wait_for(
        &c,
        Locator::XPath("//span[@id='resumed' and contains(., 'resume requested')]"),
        "the page confirms the request",
    )
    .await;
    // The pause is cleared: the API says so (or, if the next run already failed again, the
    // pause is a new one).
    eventually("the pause cleared", Duration::from_secs(30), || async {
        let (_, body) = api_call(&addr, "GET", &job_path, Some(ADMIN));
        let job = &body["job"];
        let newer = job["pausedSince"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .is_some_and(|s| s > clicked);
        (job["paused"] == false || newer).then_some(())
    })
    .await;
    let annotations = scheduled_job(&f.ns, "breaker")["metadata"]["annotations"].clone();
    assert!(
        annotations["kubebeat.io/resume"].is_string(),
        "resumed through the annotation: {annotations}"
    );
    // The next slot is dispatched.
    eventually(
        "the next slot dispatched",
        Duration::from_secs(30),
        || async { (dispatched(clicked).await? >= 1).then_some(()) },
    )
    .await;
    // The page re-read the job after the request and drew it again: no pause, or a newer one.
    eventually("the page redrawn", Duration::from_secs(40), || async {
        if let Ok(e) = c.find(Locator::Id("resumed")).await
            && e.text().await.ok()?.contains("resume requested")
        {
            return None;
        }
        match c.find(Locator::Id("paused-since")).await {
            Err(_) => Some(()),
            Ok(e) => (e.text().await.ok()? != since_shown).then_some(()),
        }
    })
    .await;
    let _ = c.close().await;
    drop(op);
    f.finish().await;
}

/// Disable then enable a job from its page (issue #29): `spec.suspend` by server-side apply under
/// `kube-beat-dashboard`; no slot runs while it is disabled, the next slot after enabling runs
/// once; a reader gets no button; a job Argo CD manages asks for confirmation first.
#[tokio::test]
#[ignore = "needs the local control plane, services and Chromium (make test)"]
async fn dashboard_disables_and_enables_a_job() {
    let env = common::env();
    let f = fixture("kbt-dashsusp", format!("{}/0", env.redis_url)).await;
    let backend = format!("{}/1", env.redis_url);
    let _worker = Worker::start(&f.broker, Some(&backend), &f.queue, &f.db.url);
    f.grant_api_users();
    f.task_function("echo", "kb.echo").await;
    f.job(
        "ticker",
        "echo",
        json!({"schedule": {"interval": {"seconds": 3}}}),
    )
    .await;
    let op = f.operator(&["--result-backend", &backend, "--result-poll-ms", "300"]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    let ran = "e.trigger = 'schedule' AND e.state NOT IN ('SKIPPED', 'PENDING', 'MISSED')";
    eventually("a first run", Duration::from_secs(60), || async {
        (count_runs(&f.pool, "ticker", ran, None).await? >= 1).then_some(())
    })
    .await;

    let (_driver, c) = browser().await;
    let base = format!("http://{addr}/");
    let page = format!("{base}#/job/{}/ticker", f.ns);
    // A reader: no button.
    c.goto(&page).await.expect("job page");
    sign_in(&c, READER).await;
    wait_for(&c, Locator::Id("no-suspend"), "the reader's note").await;
    assert!(c.find(Locator::Id("suspend")).await.is_err());
    // Nor one in the jobs table.
    c.goto(&base).await.expect("the jobs page");
    let row = format!("tr.job[data-name='{}/ticker']", f.ns);
    wait_for(&c, Locator::Css(&row), "the ticker's row").await;
    assert!(c.find(Locator::Css("button.toggle-suspend")).await.is_err());
    c.goto(&page).await.expect("job page");

    // The admin disables it.
    sign_in_again(&c, &page, ADMIN).await;
    wait_for(&c, Locator::Id("suspend"), "the Disable button").await;
    // Live: a run recorded after the page was drawn appears without a reload (the marker
    // would not survive one).
    c.execute("window.kbtDrawn = true; return null;", vec![])
        .await
        .expect("mark the page");
    let drawn: i64 = sqlx::query_scalar(
        "SELECT COALESCE(max(e.id), 0) FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE j.name = 'ticker'",
    )
    .fetch_one(&f.pool)
    .await
    .expect("the latest run");
    wait_for(
        &c,
        Locator::XPath(&format!(
            "//tr[@class='execution' and number(@data-id) > {drawn}]"
        )),
        "a new run on the page without a reload",
    )
    .await;
    let same_page = c
        .execute("return window.kbtDrawn === true;", vec![])
        .await
        .expect("read the mark");
    assert_eq!(same_page, json!(true), "the page was reloaded");
    let suspend = Locator::Id("suspend");
    assert_eq!(text_of(&c, suspend, "the Disable button").await, "Disable");
    click(&c, suspend, "click Disable").await;
    // The test's client created the job with `suspend: false` without naming itself: the
    // apiserver's `unknown` field manager owns the field, so the page asks first.
    let asked = accept_confirmation(&c).await;
    assert!(asked.contains("field manager unknown"), "{asked}");
    wait_for(
        &c,
        Locator::XPath("//span[@id='suspend-state' and contains(., 'Disabled')]"),
        "the page shows the job disabled",
    )
    .await;
    let disabled_at = chrono::Utc::now();
    let obj = scheduled_job(&f.ns, "ticker");
    assert_eq!(obj["spec"]["suspend"], true, "{obj}");
    assert!(
        obj["metadata"]["managedFields"]
            .as_array()
            .is_some_and(|m| m.iter().any(|e| e["manager"] == "kube-beat-dashboard"
                && e["fieldsV1"]["f:spec"]["f:suspend"].is_object())),
        "{obj}"
    );
    let shot = c.screenshot().await.expect("screenshot");
    std::fs::create_dir_all(env.repo.join("target")).expect("target");
    std::fs::write(env.repo.join("target/dashboard-disabled.png"), &shot).expect("screenshot");
    // Disabled: no slot after it runs (the dispatcher claims up to 5 s ahead, so slots claimed
    // before the click may still go out).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let grace = disabled_at + chrono::Duration::seconds(6);
    assert_eq!(
        count_runs(&f.pool, "ticker", "true", Some(grace)).await,
        Some(0),
        "a slot ran while disabled"
    );

    // Enabled again: the next slot runs, once; the disabled period is not replayed.
    click(&c, Locator::Id("suspend"), "click Enable").await;
    wait_for(
        &c,
        Locator::XPath("//span[@id='suspend-state' and contains(., 'Enabled')]"),
        "the page shows the job enabled",
    )
    .await;
    let enabled_at = chrono::Utc::now();
    assert_eq!(scheduled_job(&f.ns, "ticker")["spec"]["suspend"], false);
    eventually("the next slot runs", Duration::from_secs(30), || async {
        (count_runs(&f.pool, "ticker", ran, Some(enabled_at)).await? >= 1).then_some(())
    })
    .await;
    let replayed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_executions e JOIN scheduled_jobs j ON j.id = e.job_id
         WHERE j.name = 'ticker' AND e.scheduled_for > $1 AND e.scheduled_for < $2",
    )
    .bind(grace)
    .bind(enabled_at - chrono::Duration::seconds(1))
    .fetch_one(&f.pool)
    .await
    .expect("replayed");
    assert_eq!(replayed, 0, "slots of the disabled period were replayed");
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT e.scheduled_for FROM job_executions e
           JOIN scheduled_jobs j ON j.id = e.job_id WHERE j.name = 'ticker'
           GROUP BY e.scheduled_for HAVING count(*) > 1) d",
    )
    .fetch_one(&f.pool)
    .await
    .expect("doubled");
    assert_eq!(doubled, 0, "a slot ran twice");

    // Managed by Argo CD: the page asks before disabling.
    common::ok(&common::kubectl(&[
        "annotate",
        "scheduledjob",
        "ticker",
        "-n",
        &f.ns,
        "argocd.argoproj.io/tracking-id=app:kubebeat.io/ScheduledJob:team/ticker",
    ]));
    c.refresh().await.expect("reload");
    wait_for(&c, Locator::Id("suspend"), "the Disable button").await;
    click(&c, Locator::Id("suspend"), "click Disable").await;
    let asked = accept_confirmation(&c).await;
    assert!(asked.contains("Argo CD"), "{asked}");
    wait_for(
        &c,
        Locator::XPath("//span[@id='suspend-state' and contains(., 'Disabled')]"),
        "disabled after confirming",
    )
    .await;
    assert_eq!(scheduled_job(&f.ns, "ticker")["spec"]["suspend"], true);

    // From the jobs table: the row's Enable, confirmed (Argo CD still manages it).
    c.goto(&base).await.expect("the jobs page");
    let toggle = format!("{row} button.toggle-suspend");
    let toggle = Locator::Css(&toggle);
    wait_for(&c, toggle, "the row's button").await;
    assert_eq!(text_of(&c, toggle, "the row's button").await, "Enable");
    click(&c, toggle, "click Enable").await;
    let asked = accept_confirmation(&c).await;
    assert!(asked.contains("Argo CD"), "{asked}");
    wait_for(
        &c,
        Locator::XPath(&format!(
            "//tr[@data-name='{}/ticker']//button[@class='toggle-suspend' and . = 'Disable']",
            f.ns
        )),
        "the row shows the job enabled",
    )
    .await;
    assert_eq!(scheduled_job(&f.ns, "ticker")["spec"]["suspend"], false);
    let _ = c.close().await;
    drop(op);
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane, services and Chromium (make test)"]
async fn dashboard_revokes_a_running_run_and_tells_a_failed_runs_story() {
    let env = common::env();
    let f = fixture("kbt-dashrevoke", format!("{}/0", env.redis_url)).await;
    let backend = format!("{}/1", env.redis_url);
    // Prefork: Celery terminates a running task by signalling its pool process (the threads
    // pool cannot stop one).
    let worker = Worker::start_pool(&f.broker, Some(&backend), &f.queue, &f.db.url, 1, "prefork");
    f.grant_api_users();
    f.task_function("sleep", "kb.sleep").await;
    f.task_function("fail", "kb.fail").await;
    f.job(
        "failing",
        "fail",
        json!({"schedule": {"interval": {"hours": 24}}, "args": ["kbt-boom"]}),
    )
    .await;
    f.job(
        "sleeper",
        "sleep",
        json!({"schedule": {"interval": {"hours": 24}}, "args": [120]}),
    )
    .await;
    let op = f.operator(&["--result-backend", &backend, "--result-poll-ms", "300"]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    let (id, task_id) = manual_run(&f, &addr, "sleeper", "e.state = 'STARTED'").await;

    let (_driver, c) = browser().await;
    let page = format!("http://{addr}/#/job/{}/sleeper", f.ns);
    // A reader: the run, no Revoke button.
    c.goto(&page).await.expect("job page");
    sign_in(&c, READER).await;
    wait_for(&c, Locator::Id("no-trigger"), "the reader's note").await;
    assert!(c.find(Locator::Css("button.revoke")).await.is_err());

    // The admin revokes it.
    sign_in_again(&c, &page, ADMIN).await;
    let revoke = format!("tr[data-id='{id}'] button.revoke");
    wait_for(
        &c,
        Locator::Css(&revoke),
        "the Revoke button of the running run",
    )
    .await;
    let asked_at = chrono::Utc::now();
    click(&c, Locator::Css(&revoke), "click Revoke").await;
    let asked = accept_confirmation(&c).await;
    assert!(
        asked.contains(&task_id) && asked.contains("running"),
        "{asked}"
    );
    let cell = wait_for(
        &c,
        Locator::XPath(&format!(
            "//tr[@data-id='{id}']/td[contains(., 'REVOKED')]/span[@class='revoked-by muted']"
        )),
        "the run shown REVOKED with who asked",
    )
    .await;
    assert_eq!(cell.text().await.expect("text"), "by kbt-api-admin");
    let shot = c.screenshot().await.expect("screenshot");
    std::fs::create_dir_all(env.repo.join("target")).expect("target");
    std::fs::write(env.repo.join("target/dashboard-revoked.png"), &shot).expect("screenshot");

    // The worker stopped it: Celery stored REVOKED (terminated) long before the 120 s sleep
    // would have ended, and the request is on the run.
    let (state, error, by, finished): (
        String,
        Option<String>,
        Option<String>,
        chrono::DateTime<chrono::Utc>,
    ) = sqlx::query_as(
        "SELECT state, error, revoked_by, finished_at FROM job_executions WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&f.pool)
    .await
    .expect("the run");
    assert_eq!(state, "REVOKED");
    assert!(
        error.as_deref().is_some_and(|e| e.contains("terminated")),
        "{error:?}"
    );
    assert_eq!(by.as_deref(), Some("kbt-api-admin"));
    assert!(
        finished - asked_at < chrono::Duration::seconds(60),
        "finished {finished}, asked {asked_at}"
    );
    let log = worker.log_text();
    assert!(
        log.contains("Terminating") && log.contains(&task_id),
        "the worker terminated it:\n{log}"
    );
    // Its story names the worker that ran it (from its STARTED record) and who revoked it.
    let (code, body) = api_call(
        &addr,
        "GET",
        &format!("/api/v1/executions/{id}"),
        Some(ADMIN),
    );
    assert_eq!(code, 200, "{body}");
    let run = &body["execution"];
    assert!(
        run["worker"]
            .as_str()
            .is_some_and(|w| w.contains('@') && log.contains(w)),
        "{body}"
    );
    assert_eq!(run["revoked_by"], "kbt-api-admin", "{body}");
    assert_eq!(body["canRevoke"], false, "{body}");

    // A failed run's story: its page, reached from the job's history, shows the traceback.
    let (failed_id, failed_task) = manual_run(
        &f,
        &addr,
        "failing",
        "e.state = 'FAILURE' AND e.traceback IS NOT NULL",
    )
    .await;
    // Its Failed Event is in the apiserver before the page opens (the Events writer publishes it
    // after the tracker records the failure).
    eventually("the Failed Event", Duration::from_secs(30), || async {
        f.events()
            .iter()
            .any(|(o, r, _, _)| o == "failing" && r == "Failed")
            .then_some(())
    })
    .await;
    c.goto(&format!("http://{addr}/#/job/{}/failing", f.ns))
        .await
        .expect("the failing job's page");
    wait_for(
        &c,
        Locator::Css(&format!(
            "tr[data-id='{failed_id}'] a[href='#/run/{failed_id}']"
        )),
        "the run's link in the history",
    )
    .await
    .click()
    .await
    .expect("open the run");
    let traceback = wait_for(&c, Locator::Id("traceback"), "the traceback")
        .await
        .text()
        .await
        .expect("text");
    assert!(
        traceback.contains("Traceback (most recent call last)")
            && traceback.contains("ValueError: kbt-boom")
            && traceback.contains("kb_worker.py"),
        "{traceback}"
    );
    let shown = |id: &'static str| {
        let c = c.clone();
        async move {
            c.find(Locator::Id(id))
                .await
                .unwrap_or_else(|e| panic!("#{id}: {e}"))
                .text()
                .await
                .expect("text")
        }
    };
    assert_eq!(shown("task-id").await, failed_task);
    assert!(shown("run-error-text").await.contains("kbt-boom"));
    assert_eq!(shown("requested-by").await, "kbt-api-admin");
    assert!(shown("run-arguments").await.contains("kbt-boom"));
    assert!(c.find(Locator::Id("copy-task-id")).await.is_ok());
    // The job's Events around the run: its manual trigger and its failure.
    wait_for(&c, Locator::Css("#events tr.event"), "the run's Events").await;
    let events = shown("events").await;
    assert!(
        events.contains("Failed") && events.contains("Warning"),
        "{events}"
    );
    // An ended run offers no Revoke.
    assert!(c.find(Locator::Css("button.revoke")).await.is_err());
    let shot = c.screenshot().await.expect("screenshot");
    std::fs::write(env.repo.join("target/dashboard-run.png"), &shot).expect("screenshot");
    c.execute(
        "document.getElementById('traceback').scrollIntoView()",
        vec![],
    )
    .await
    .expect("scroll to the Events");
    let shot = c.screenshot().await.expect("screenshot");
    std::fs::write(env.repo.join("target/dashboard-run-events.png"), &shot).expect("screenshot");
    // The reader reads the story too; a stranger's token gets nothing.
    let (code, body) = api_call(
        &addr,
        "GET",
        &format!("/api/v1/executions/{failed_id}"),
        Some(READER),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["canRevoke"], false, "{body}");
    assert!(
        body["execution"]["traceback"]
            .as_str()
            .is_some_and(|t| t.contains("kbt-boom"))
    );
    assert_eq!(
        api_call(&addr, "GET", "/api/v1/executions/999999999", Some(ADMIN)).0,
        404
    );
    // Events need the caller's own `list` on Events in the namespace: the reader may read the
    // job but not its Events; the admin may; a missing run is a 404 before anything is asked.
    let events_of = |id: i64| format!("/api/v1/executions/{id}/events");
    let (code, body) = api_call(&addr, "GET", &events_of(failed_id), Some(READER));
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("may not list events in namespace")),
        "{body}"
    );
    let (code, body) = api_call(&addr, "GET", &events_of(failed_id), Some(ADMIN));
    assert_eq!(code, 200, "{body}");
    let failed_event = body["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["reason"] == "Failed"))
        .unwrap_or_else(|| panic!("a Failed Event: {body}"));
    assert_eq!(failed_event["type"], "Warning", "{body}");
    assert!(failed_event["count"].as_i64() >= Some(1), "{body}");
    assert_eq!(
        api_call(&addr, "GET", &events_of(999_999_999), Some(ADMIN)).0,
        404
    );
    assert_eq!(
        api_call(&addr, "GET", "/api/v1/executions/x/events", Some(ADMIN)).0,
        400
    );

    let _ = c.close().await;
    drop(op);
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the local control plane, services and Chromium (make test)"]
async fn dashboard_finds_jobs_among_500() {
    let env = common::env();
    let f = fixture("kbt-dashfind", format!("{}/0", env.redis_url)).await;
    f.grant_api_users();
    f.task_function("echo", "kb.echo").await;
    f.task_function("other", "kb.echo").await;
    // 500 jobs: alpha-000..249 on one TaskFunction, beta-000..249 on another, every tenth
    // disabled; due once a year, so none runs during the test.
    let items: Vec<serde_json::Value> = (0..500)
        .map(|i| {
            let (prefix, tf) = if i < 250 {
                ("alpha", "echo")
            } else {
                ("beta", "other")
            };
            json!({"apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
                   "metadata": {"name": format!("{prefix}-{:03}", i % 250)},
                   "spec": {"taskFunction": format!("{}-{tf}", f.id),
                            "schedule": {"cron": "0 0 1 1 *"}, "suspend": i % 10 == 0}})
        })
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    common::ok(&common::kubectl_stdin(
        &["create", "-n", &f.ns, "-f", "-"],
        &list.to_string(),
    ));
    let op = f.operator(&[]);
    let addr = eventually("the HTTP server", Duration::from_secs(30), || async {
        op.http_addr()
    })
    .await;
    eventually("500 jobs stored", Duration::from_secs(120), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM scheduled_jobs WHERE namespace = $1 AND deleted_at IS NULL",
        )
        .bind(&f.ns)
        .fetch_one(&f.pool)
        .await
        .ok()?;
        (n == 500).then_some(())
    })
    .await;

    // The API's filters, and its refusals of bad ones.
    let (code, body) = api_call(
        &addr,
        "GET",
        &format!(
            "/api/v1/jobs?task_function={}-other&suspended=true&per_page=1",
            f.id
        ),
        Some(READER),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["total"], 25, "{body}");
    // None has run: every job's last run is NONE, none's is SUCCESS; sorted by name descending,
    // beta-249 first; the text filter ignores case.
    let total = |query: String| {
        let addr = addr.clone();
        async move {
            let (code, body) =
                api_call(&addr, "GET", &format!("/api/v1/jobs?{query}"), Some(ADMIN));
            assert_eq!(code, 200, "{query}: {body}");
            body
        }
    };
    assert_eq!(
        total(format!("namespace={}&last_status=NONE&per_page=1", f.ns)).await["total"],
        500
    );
    assert_eq!(
        total(format!("namespace={}&last_status=SUCCESS", f.ns)).await["total"],
        0
    );
    let sorted = total(format!("namespace={}&sort=-name&per_page=2", f.ns)).await;
    assert_eq!(sorted["jobs"][0]["name"], "beta-249", "{sorted}");
    assert_eq!(sorted["jobs"][1]["name"], "beta-248", "{sorted}");
    assert_eq!(
        total(format!("namespace={}&q=ALPHA-00", f.ns)).await["total"],
        10
    );
    for bad in [
        "sort=bogus".to_string(),
        "health=maybe".to_string(),
        "suspended=yes".to_string(),
        "last_status=DONE".to_string(),
        format!("q={}", "x".repeat(254)),
    ] {
        let (code, body) = api_call(&addr, "GET", &format!("/api/v1/jobs?{bad}"), Some(ADMIN));
        assert_eq!(code, 400, "{bad}: {body}");
    }

    let (_driver, c) = browser().await;
    let base = format!("http://{addr}/");
    c.goto(&base).await.expect("dashboard");
    sign_in(&c, READER).await;
    let text = |id: &'static str| {
        let c = c.clone();
        async move {
            c.find(Locator::Id(id))
                .await
                .unwrap_or_else(|e| panic!("#{id}: {e}"))
                .text()
                .await
                .expect("text")
        }
    };
    // Read in one script: the live page may redraw between two WebDriver calls.
    let rows = || {
        let c = c.clone();
        async move {
            let names = c
                .execute(
                    "return [...document.querySelectorAll('tr.job')].map((r) => r.dataset.name);",
                    vec![],
                )
                .await
                .expect("the rows");
            serde_json::from_value::<Vec<String>>(names).expect("names")
        }
    };
    // The page shows the total and one page of 100, in namespace and name order.
    wait_for(
        &c,
        Locator::XPath("//span[@id='jobs-total' and . = '(500)']"),
        "500 jobs counted",
    )
    .await;
    let first = rows().await;
    assert_eq!(first.len(), 100);
    assert_eq!(first[0], format!("{}/alpha-000", f.ns));
    assert_eq!(text("pages").await, "5");
    click(&c, Locator::Id("next-page"), "next page").await;
    wait_for(&c, Locator::XPath("//b[@id='page' and . = '2']"), "page 2").await;
    assert_eq!(rows().await[0], format!("{}/alpha-100", f.ns));

    // Search from the form: the address holds it, the table narrows.
    // (Typing in the filters holds the live redraw.)
    with_element(
        &c,
        Locator::Id("filter-q"),
        "type in the search box",
        |e| async move { e.send_keys("alpha-2").await },
    )
    .await;
    click(&c, Locator::Id("apply-filters"), "filter").await;
    wait_for(
        &c,
        Locator::XPath("//span[@id='jobs-total' and . = '(50)']"),
        "alpha-200..249",
    )
    .await;
    let url = c.current_url().await.expect("url");
    assert!(url.as_str().contains("q=alpha-2"), "{url}");
    assert!(
        !url.as_str().contains("page=2"),
        "a new filter starts at page 1: {url}"
    );
    let narrowed = rows().await;
    assert_eq!(narrowed.len(), 50);
    assert!(
        narrowed.iter().all(|n| n.contains("/alpha-2")),
        "{narrowed:?}"
    );
    // Sorted by name, descending (the second click).
    for _ in 0..2 {
        click(
            &c,
            Locator::Css("button.sort[data-sort='name']"),
            "sort by name",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for(
        &c,
        Locator::XPath(&format!(
            "(//tr[@class='job'])[1][@data-name='{}/alpha-249']",
            f.ns
        )),
        "alpha-249 first",
    )
    .await;

    // A deep link: a fresh tab on the address shows the same view (beta-010..019, enabled).
    let link = format!("{base}#/?q=beta-01&suspended=false");
    c.goto("about:blank").await.expect("leave");
    c.goto(&link).await.expect("the link");
    wait_for(
        &c,
        Locator::XPath("//span[@id='jobs-total' and . = '(9)']"),
        "beta-011..019",
    )
    .await;
    let linked = rows().await;
    assert_eq!(linked.len(), 9, "{linked:?}");
    assert!(
        !linked.contains(&format!("{}/beta-010", f.ns)),
        "{linked:?}"
    );
    let selected = c
        .find(Locator::Id("filter-suspended"))
        .await
        .expect("the Enabled filter")
        .prop("value")
        .await
        .expect("value");
    assert_eq!(selected.as_deref(), Some("false"));

    // A phone's width: the table scrolls inside the page, which stays readable.
    c.set_window_size(390, 844).await.expect("phone width");
    let shot = c.screenshot().await.expect("screenshot");
    std::fs::create_dir_all(env.repo.join("target")).expect("target");
    std::fs::write(env.repo.join("target/dashboard-phone.png"), &shot).expect("screenshot");
    let overflow = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .expect("measure");
    assert_eq!(overflow, json!(true), "the page is wider than the phone");
    let _ = c.close().await;
    drop(op);
    f.finish().await;
}
