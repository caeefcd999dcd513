//! No credential in any output (SPEC §5, issue #22 finding 6): the real binary is run with a
//! password in every URL it takes, for `--help` and for each way a URL can be wrong, and its
//! whole output is searched for the password. Needs no Postgres, broker or apiserver: the
//! database is a loopback port that is closed, or that accepts and hangs up at once.

use std::{
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const PASSWORD: &str = "s3cr3t-PW-xyz";

/// Postgres on a closed port: connecting is refused (sqlx retries until its 10 s timeout).
fn closed_db() -> String {
    format!("postgresql://kb:{PASSWORD}@127.0.0.1:1/kube_beat")
}

fn broker() -> String {
    format!("redis://:{PASSWORD}@127.0.0.1:1/0")
}

fn backend() -> String {
    format!("db+postgresql+psycopg2://kb:{PASSWORD}@127.0.0.1:1/kube_beat")
}

/// A "database" that accepts connections and closes them at once: connecting fails fast with an
/// I/O error (a refused port would keep sqlx retrying for 10 s).
/// A password in the query (`passwd`, misspelt: sqlx does not know it) is masked as well.
fn hang_up_db() -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let port = listener.local_addr().expect("local address").port();
    let handle = std::thread::spawn(move || {
        // Ends when the test process does.
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    (
        format!(
            "postgresql://kb:{PASSWORD}@127.0.0.1:{port}/kube_beat?application_name=kb&passwd={PASSWORD}"
        ),
        handle,
    )
}

struct Run {
    /// `None`: still running at the deadline (then killed).
    exit: Option<std::process::ExitStatus>,
    /// stdout and stderr together.
    output: String,
}

/// Run kube-beat with only `env` (nothing inherited: no stray DATABASE_URL, no kubeconfig), for
/// at most `limit`. Output goes to a file, so a chatty process never blocks on a full pipe.
fn kube_beat(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("out.log");
    let file = std::fs::File::create(&log).expect("creating the output file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-beat"))
        .args(args)
        .env_clear()
        .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
        .env("HTTP_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("output handle"))
        .stderr(file)
        .spawn()
        .expect("starting kube-beat");
    let deadline = Instant::now() + limit;
    let exit = loop {
        if let Some(status) = child.try_wait().expect("waiting for kube-beat") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        exit,
        output: read(&log),
    }
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).expect("reading the output")).into_owned()
}

fn assert_no_password(what: &str, run: &Run) {
    assert!(
        !run.output.contains(PASSWORD),
        "{what}: the password is in the output:\n{}",
        run.output
    );
    // Percent-encoded forms would leak it as well.
    assert!(
        !run.output.contains("s3cr3t%2DPW"),
        "{what}: the encoded password is in the output:\n{}",
        run.output
    );
}

/// The operator's run with a failing URL: it must stop (a wrong URL does not heal) with a
/// message naming what is wrong, and print no password even with every log enabled.
fn run_fails(what: &str, env: &[(&str, &str)], expect: &[&str]) {
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "trace"));
    let run = kube_beat(&["run"], &env, Duration::from_secs(8));
    assert_no_password(what, &run);
    assert!(
        run.exit.is_some_and(|s| !s.success()),
        "{what}: expected a prompt failure, got {:?}:\n{}",
        run.exit,
        run.output
    );
    for e in expect {
        assert!(
            run.output.contains(e),
            "{what}: expected {e:?} in the output:\n{}",
            run.output
        );
    }
}

#[test]
fn help_shows_no_credential() {
    let (db, br, rb) = (closed_db(), broker(), backend());
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("BROKER_URL", br.as_str()),
        ("RESULT_BACKEND", rb.as_str()),
    ];
    let helps: &[(&[&str], &[&str])] = &[
        (&["--help"], &[]),
        (
            &["run", "--help"],
            &["DATABASE_URL", "BROKER_URL", "RESULT_BACKEND"],
        ),
        (&["run", "-h"], &["DATABASE_URL", "BROKER_URL"]),
        (&["help", "run"], &["DATABASE_URL", "BROKER_URL"]),
        (&["migrate", "--help"], &["DATABASE_URL"]),
        (&["migrate", "up", "--help"], &["DATABASE_URL"]),
        (&["migrate", "down", "--help"], &["DATABASE_URL"]),
        (&["migrate", "status", "--help"], &["DATABASE_URL"]),
        (&["help", "migrate", "status"], &["DATABASE_URL"]),
    ];
    for (args, names) in helps {
        let run = kube_beat(args, &env, Duration::from_secs(10));
        let what = format!("kube-beat {}", args.join(" "));
        assert!(
            run.exit.is_some_and(|s| s.success()),
            "{what}: {:?}\n{}",
            run.exit,
            run.output
        );
        assert_no_password(&what, &run);
        // The help still says where each value comes from.
        for name in *names {
            assert!(
                run.output.contains(&format!("[env: {name}")),
                "{what}: {name} not named:\n{}",
                run.output
            );
        }
    }
}

#[test]
fn usage_errors_show_no_credential() {
    let (db, br, rb) = (closed_db(), broker(), backend());
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("BROKER_URL", br.as_str()),
        ("RESULT_BACKEND", rb.as_str()),
    ];
    for args in [
        &["run", "--status-qps", "many"][..],
        &["run", "--no-such-flag"],
        &["migrate"],
        &["migrate", "down", "--steps", "-1"],
    ] {
        let run = kube_beat(args, &env, Duration::from_secs(10));
        let what = format!("kube-beat {}", args.join(" "));
        assert!(
            run.exit.is_some_and(|s| !s.success()) && run.output.contains("error:"),
            "{what}: {:?}\n{}",
            run.exit,
            run.output
        );
        assert_no_password(&what, &run);
    }
}

#[test]
fn unsupported_broker_scheme_is_reported_redacted() {
    let db = closed_db();
    let br = format!("ftp://u:{PASSWORD}@127.0.0.1/");
    run_fails(
        "ftp:// broker",
        &[("DATABASE_URL", &db), ("BROKER_URL", &br)],
        &["unsupported broker URL", "ftp://u:***@127.0.0.1/"],
    );
}

#[test]
fn broker_without_scheme_is_not_echoed() {
    let db = closed_db();
    // The user and password alone, as from a mis-assembled Secret.
    let br = format!("guest:{PASSWORD}@127.0.0.1:5672");
    run_fails(
        "broker without a scheme",
        &[("DATABASE_URL", &db), ("BROKER_URL", &br)],
        &["unsupported broker URL", "<unparseable URL"],
    );
}

#[test]
fn malformed_broker_url_is_not_echoed() {
    let db = closed_db();
    let br = format!("redis://:{PASSWORD}@[::1/0");
    run_fails(
        "malformed redis broker",
        &[("DATABASE_URL", &db), ("BROKER_URL", &br)],
        &["broker", "invalid IPv6 address"],
    );
    let br = format!("amqp://guest:{PASSWORD}@127.0.0.1:notaport//");
    run_fails(
        "malformed amqp broker",
        &[("DATABASE_URL", &db), ("BROKER_URL", &br)],
        &["broker", "invalid port number"],
    );
}

#[test]
fn unsupported_result_backend_is_reported_redacted() {
    let (db, br) = (closed_db(), broker());
    let rb = format!("rpc://u:{PASSWORD}@127.0.0.1/");
    run_fails(
        "rpc:// result backend",
        &[
            ("DATABASE_URL", &db),
            ("BROKER_URL", &br),
            ("RESULT_BACKEND", &rb),
        ],
        &["unsupported result backend", "rpc://u:***@127.0.0.1/"],
    );
    let rb = format!("db+mysql://kb:{PASSWORD}@127.0.0.1/kb");
    run_fails(
        "db+mysql:// result backend",
        &[
            ("DATABASE_URL", &db),
            ("BROKER_URL", &br),
            ("RESULT_BACKEND", &rb),
        ],
        &[
            "unsupported result backend",
            "db+mysql://kb:***@127.0.0.1/kb",
        ],
    );
}

#[test]
fn malformed_database_url_is_not_echoed() {
    let br = broker();
    // An unencoded `/` in the password ends the host early: "invalid port number".
    let db = format!("postgresql://kb:{PASSWORD}/x@127.0.0.1/kube_beat");
    run_fails(
        "malformed database URL",
        &[("DATABASE_URL", &db), ("BROKER_URL", &br)],
        &["--database-url", "invalid port number"],
    );
    let run = kube_beat(
        &["migrate", "status"],
        &[("DATABASE_URL", &db)],
        Duration::from_secs(20),
    );
    assert_no_password("migrate status, malformed URL", &run);
    assert!(
        run.exit.is_some_and(|s| !s.success()) && run.output.contains("invalid port number"),
        "{:?}\n{}",
        run.exit,
        run.output
    );
}

#[test]
fn unreachable_database_is_logged_redacted() {
    let (db, _listener) = hang_up_db();
    let br = broker();
    // The operator keeps retrying an unreachable database (it may be starting too): stop it
    // after its first complaints.
    let run = kube_beat(
        &["run"],
        &[
            ("DATABASE_URL", &db),
            ("BROKER_URL", &br),
            ("RESULT_BACKEND", &backend()),
            ("RUST_LOG", "trace"),
        ],
        Duration::from_secs(4),
    );
    assert_no_password("run, database hanging up", &run);
    let redacted = db.replace(PASSWORD, "***");
    assert!(
        run.output.contains("Postgres not ready") && run.output.contains(&redacted),
        "expected a warning naming {redacted}:\n{}",
        run.output
    );

    let run = kube_beat(
        &["migrate", "up"],
        &[("DATABASE_URL", &db)],
        Duration::from_secs(20),
    );
    assert_no_password("migrate up, database hanging up", &run);
    assert!(
        run.exit.is_some_and(|s| !s.success()) && run.output.contains(&redacted),
        "{:?}\n{}",
        run.exit,
        run.output
    );

    // A closed port: sqlx retries until its 10 s timeout, then the error.
    let db = closed_db();
    let run = kube_beat(
        &["migrate", "status"],
        &[("DATABASE_URL", &db)],
        Duration::from_secs(30),
    );
    assert_no_password("migrate status, closed port", &run);
    assert!(
        run.exit.is_some_and(|s| !s.success()) && run.output.contains(&db.replace(PASSWORD, "***")),
        "{:?}\n{}",
        run.exit,
        run.output
    );
}
