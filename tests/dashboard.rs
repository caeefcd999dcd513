//! The dashboard in headless Chromium (Debian's chromium + chromedriver, driven over WebDriver):
//! the page loads, asks for a token, shows the real jobs of a running operator with the leader,
//! a job page shows the history and a timeline, the trigger button causes a run, a reader gets no
//! trigger button, and a bad token is refused.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{Worker, eventually, fixture};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const ADMIN: &str = "kbt-api-admin-token";
const READER: &str = "kbt-api-reader-token";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn browser() -> (Driver, Client) {
    let port = free_port();
    let driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (make test installs Debian's chromium-driver)"),
    );
    let caps = json!({"goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,860"],
    }});
    let caps = caps.as_object().cloned().expect("caps");
    let client = eventually("chromedriver", Duration::from_secs(30), || {
        let caps = caps.clone();
        async move {
            // Plain HTTP to the local chromedriver: no TLS stack needed.
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
                .ok()
        }
    })
    .await;
    (driver, client)
}

async fn sign_in(c: &Client, token: &str) {
    let field = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#login:not([hidden]) #token"))
        .await
        .expect("the token form");
    field.send_keys(token).await.expect("type the token");
    c.find(Locator::Css("#login button"))
        .await
        .expect("sign-in button")
        .click()
        .await
        .expect("sign in");
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
    let row = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(&format!("tr.job[data-name='{}/often']", f.ns)))
        .await
        .expect("the jobs table shows the real jobs");
    let text = row.text().await.expect("row text");
    assert!(
        text.contains("kb.echo") && text.contains("every 2s"),
        "{text}"
    );
    let leader = c
        .find(Locator::Id("leader"))
        .await
        .expect("leader")
        .text()
        .await
        .expect("text");
    assert!(
        op.log_text().contains(&format!("identity={leader}")),
        "leader {leader}"
    );

    // A job page: history, timeline and the trigger button.
    c.goto(&format!("{base}#/job/{}/hourly", f.ns))
        .await
        .expect("job page");
    let button = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Id("trigger"))
        .await
        .expect("a trigger button for the admin");
    button.click().await.expect("click");
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath(
            "//span[@id='triggered' and contains(., 'triggered')]",
        ))
        .await
        .expect("the page confirms the trigger");
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
    c.goto(&format!("{base}#/job/{}/flaky", f.ns))
        .await
        .expect("job page");
    c.refresh().await.expect("reload");
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#timeline span.state.FAILURE"))
        .await
        .expect("the timeline colours failures");
    let history = c
        .find_all(Locator::Css("tr.execution"))
        .await
        .expect("history");
    assert!(history.len() >= 2, "history rows: {}", history.len());
    let shot = c.screenshot().await.expect("screenshot");
    std::fs::create_dir_all(env.repo.join("target")).expect("target");
    std::fs::write(env.repo.join("target/dashboard-job.png"), &shot).expect("save screenshot");
    c.goto(&base).await.expect("jobs page");
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("tr.job"))
        .await
        .expect("jobs");
    let shot = c.screenshot().await.expect("screenshot");
    std::fs::write(env.repo.join("target/dashboard.png"), &shot).expect("save screenshot");

    // A namespace reader: sees the jobs, gets no trigger button.
    c.execute("sessionStorage.clear(); return null;", vec![])
        .await
        .expect("sign out");
    c.goto(&format!("{base}#/job/{}/hourly", f.ns))
        .await
        .expect("job page");
    c.refresh().await.expect("reload");
    sign_in(&c, READER).await;
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Id("no-trigger"))
        .await
        .expect("the reader may not trigger");
    assert!(c.find(Locator::Id("trigger")).await.is_err());

    // A bad token is refused.
    c.execute("sessionStorage.clear(); return null;", vec![])
        .await
        .expect("sign out");
    c.goto(&base).await.expect("jobs page");
    c.refresh().await.expect("reload");
    sign_in(&c, "not-a-token").await;
    let msg = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath(
            "//div[@id='message' and contains(., 'Not signed in')]",
        ))
        .await
        .expect("refused")
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
