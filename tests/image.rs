//! `make image`: the OCI image builds with buildah, and its entrypoint binary runs from the
//! unpacked root filesystem — an empty one apart from what the image brings — and resolves
//! host names there. (There is no container runtime here: the rootfs is entered with chroot.)

mod common;

use std::{path::Path, process::Command};

use serde_json::Value;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a command");
    common::ok(&out)
}

fn blob(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout.join("blobs").join(digest.replace(':', "/"))
}

#[test]
#[ignore = "builds the release image (make test)"]
fn the_image_builds_and_its_binary_runs_from_the_unpacked_rootfs() {
    let repo = common::env().repo;
    run(Command::new(repo.join("hack/image.sh")).current_dir(&repo));
    let archive = repo.join("target/image/kube-beat.oci.tar");
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(&layout).expect("mkdir");
    std::fs::create_dir_all(&rootfs).expect("mkdir");
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));

    let read = |p: std::path::PathBuf| -> Value {
        serde_json::from_slice(&std::fs::read(&p).expect("blob")).expect("json")
    };
    let index = read(layout.join("index.json"));
    let manifest = read(blob(
        &layout,
        index["manifests"][0]["digest"].as_str().expect("digest"),
    ));
    for layer in manifest["layers"].as_array().expect("layers") {
        let digest = layer["digest"].as_str().expect("digest");
        run(Command::new("tar")
            .arg("-xf")
            .arg(blob(&layout, digest))
            .arg("-C")
            .arg(&rootfs));
    }
    let config = read(blob(
        &layout,
        manifest["config"]["digest"].as_str().expect("digest"),
    ));
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/kube-beat"])
    );
    assert_eq!(config["config"]["User"], "65532:65532", "runs as non-root");

    // Nothing but the binary, CA certificates and the name-resolution files.
    let mut files: Vec<String> = walk(&rootfs)
        .into_iter()
        .map(|p| {
            p.strip_prefix(&rootfs)
                .expect("prefix")
                .display()
                .to_string()
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            "etc/group",
            "etc/hosts",
            "etc/nsswitch.conf",
            "etc/passwd",
            "etc/ssl/certs/ca-certificates.crt",
            "kube-beat"
        ]
    );
    let version = run(Command::new("chroot")
        .arg(&rootfs)
        .args(["/kube-beat", "version"]));
    assert_eq!(
        version.trim(),
        format!("kube-beat {}", env!("CARGO_PKG_VERSION"))
    );
    let resolved =
        run(Command::new("chroot")
            .arg(&rootfs)
            .args(["/kube-beat", "resolve", "localhost"]));
    assert!(
        resolved.lines().any(|l| l == "127.0.0.1" || l == "::1"),
        "localhost resolved inside the image: {resolved:?}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
