//! TLS to Postgres trusts the system roots and extra ones given with `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` (a private CA mounted into the pod with the chart's extraVolumes), not only a
//! built-in root list. Against the real local Postgres, which serves TLS with Debian's self-signed
//! "snakeoil" certificate: not in the system bundle, so it stands for a private CA.

mod common;

use std::{path::Path, process::Command};

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
/// The system bundle, the one file the image carries.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// `kube-beat migrate status` over `sslmode=verify-ca` with exactly these TLS root variables.
fn migrate_status(url: &str, cert_file: Option<&Path>, cert_dir: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-beat"));
    cmd.args(["migrate", "status"])
        .env("DATABASE_URL", url)
        // The machine's own settings must not decide the outcome.
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    if let Some(f) = cert_file {
        cmd.env("SSL_CERT_FILE", f);
    }
    if let Some(d) = cert_dir {
        cmd.env("SSL_CERT_DIR", d);
    }
    let out = cmd.output().expect("kube-beat migrate status");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
#[ignore = "needs the local Postgres with ssl = on (make test)"]
async fn postgres_tls_trusts_an_extra_ca_from_ssl_cert_file_or_dir() {
    let db = common::TestDb::create().await;
    let pool = db.pool().await;
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&pool)
        .await
        .expect("show ssl");
    assert_eq!(
        ssl, "on",
        "the local Postgres serves TLS (Debian's default)"
    );
    pool.close().await;
    let bundle = std::fs::read_to_string(SYSTEM_BUNDLE).expect("the system bundle");
    let snakeoil = std::fs::read_to_string(SNAKEOIL).expect("the snakeoil certificate");
    let body = snakeoil.lines().nth(1).expect("a PEM line");
    assert!(
        !bundle.contains(body),
        "the snakeoil certificate is not a system root: it stands for a private CA"
    );
    // verify-ca: the chain must lead to a trusted root (the host name is not checked).
    let url = format!("{}?sslmode=verify-ca", db.url);

    let tmp = tempfile::tempdir().expect("tempdir");
    let ca_file = tmp.path().join("private-ca.pem");
    std::fs::copy(SNAKEOIL, &ca_file).expect("copy");
    let ca_dir = tmp.path().join("ca");
    std::fs::create_dir(&ca_dir).expect("mkdir");
    std::fs::copy(SNAKEOIL, ca_dir.join("private-ca.pem")).expect("copy");

    // The image's situation: only the system bundle. Refused, with a certificate error.
    let (ok, text) = migrate_status(&url, Some(Path::new(SYSTEM_BUNDLE)), None);
    assert!(!ok, "connected without trusting the private CA: {text}");
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "{text}"
    );
    // The extra CA as SSL_CERT_FILE.
    let (ok, text) = migrate_status(&url, Some(&ca_file), None);
    assert!(ok, "{text}");
    assert!(
        text.contains("pending") || text.contains("applied"),
        "{text}"
    );
    // The README's recipe: the system bundle plus a directory with the extra CA (both trusted).
    let (ok, text) = migrate_status(&url, Some(Path::new(SYSTEM_BUNDLE)), Some(&ca_dir));
    assert!(ok, "{text}");
    // Nothing but the system's default locations (this machine's /etc/ssl/certs holds the
    // snakeoil certificate itself, so it is trusted there): native roots, not a built-in list.
    let (ok, text) = migrate_status(&url, None, None);
    assert!(ok, "the system's own certificate directory is read: {text}");
    db.drop_db().await;
}

/// A Redis server speaking only TLS, with the snakeoil certificate (killed when dropped).
struct TlsRedis {
    child: std::process::Child,
    port: u16,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let key = "/etc/ssl/private/ssl-cert-snakeoil.key";
        assert!(
            std::fs::File::open(key).is_ok(),
            "{key} is not readable by this user: run as root (make test does)"
        );
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", SNAKEOIL, "--tls-key-file", key])
            .args(["--tls-auth-clients", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "redis-server with TLS did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        TlsRedis { child, port }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker side: `rediss://` through the publisher the operator uses. The roots are read at
/// each connection, from the process environment, so this test sets it (the only test in this
/// binary that touches it; the Postgres test gives its child processes an explicit environment).
#[tokio::test]
#[ignore = "needs redis-server (make test)"]
async fn redis_tls_trusts_an_extra_ca_from_ssl_cert_file() {
    use kube_beat::celery::Publisher;
    let redis = TlsRedis::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca_file = tmp.path().join("private-ca.pem");
    std::fs::copy(SNAKEOIL, &ca_file).expect("copy");
    // The certificate is for `localhost`: verify-full, as rediss:// always is.
    let url = format!("rediss://localhost:{}/0", redis.port);
    let connect = |cert_file: &Path| {
        // SAFETY: std's environment lock serializes this with every read std makes (rustls-native-
        // certs reads it through std::env), and no other test in this binary changes it.
        unsafe {
            std::env::remove_var("SSL_CERT_DIR");
            std::env::set_var("SSL_CERT_FILE", cert_file);
        }
        Publisher::connect(
            &url,
            std::time::Duration::from_secs(60),
            "kubebeat.sent.tls",
        )
    };
    let refused = connect(Path::new(SYSTEM_BUNDLE)).await;
    let err = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "refused with a certificate error without the private CA: {err:?}"
    );
    connect(&ca_file)
        .await
        .expect("connected over TLS with the private CA trusted");
}
