//! The release artifacts, built by the same `make` targets the release workflow runs
//! (`.github/workflows/release.yml` cannot run here: no GitHub, no registry, no OIDC):
//! `make dist` (static binaries for linux/amd64 and linux/arm64, reproducible archives,
//! checksums), `make chart` (the packaged chart at the crate's version), and the workflows
//! themselves checked against the Makefile, the scripts and the chart they drive.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a command");
    common::ok(&out)
}

fn crate_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// ELF facts a static release binary must have: its machine, and no program interpreter
/// (`PT_INTERP`: a dynamically linked binary names its loader there, and would not start in a
/// FROM-scratch image or on a host with another libc).
fn elf_machine_and_interp(bytes: &[u8]) -> (u16, bool) {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(bytes[4], 2, "not a 64-bit ELF");
    assert_eq!(bytes[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    let machine = u16_at(18);
    let phoff = u64_at(32) as usize;
    let phentsize = u16_at(54) as usize;
    let phnum = u16_at(56) as usize;
    const PT_INTERP: u32 = 3;
    let interp = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP);
    (machine, interp)
}

fn unpack(archive: &Path, into: &Path) -> PathBuf {
    run(Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into));
    let name = archive
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.gz"))
        .expect("archive name");
    into.join(name)
}

fn checksums(dist: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dist.join("checksums.txt"))
        .expect("dist/checksums.txt")
        .lines()
        .map(|l| {
            let (sum, file) = l.split_once("  ").expect("sha256sum format");
            (file.to_string(), sum.to_string())
        })
        .collect()
}

#[test]
#[ignore = "builds the release binaries for two architectures (make test)"]
fn make_dist_and_make_chart_build_the_release_artifacts() {
    let repo = repo();
    let dist = repo.join("dist");
    let _ = std::fs::remove_dir_all(&dist);
    let version = crate_version();
    run(Command::new("make").arg("dist").current_dir(&repo));

    // Both architectures, each a static binary of the right machine, named by the version.
    let work = tempfile::tempdir().expect("tempdir");
    const EM_X86_64: u16 = 62;
    const EM_AARCH64: u16 = 183;
    for (arch, machine) in [("amd64", EM_X86_64), ("arm64", EM_AARCH64)] {
        let archive = dist.join(format!("kube-beat-{version}-linux-{arch}.tar.gz"));
        assert!(archive.is_file(), "{} missing", archive.display());
        let dir = unpack(&archive, work.path());
        let bin = dir.join("kube-beat");
        let bytes = std::fs::read(&bin).expect("the binary");
        let (m, interp) = elf_machine_and_interp(&bytes);
        assert_eq!(m, machine, "{arch}: ELF machine");
        assert!(!interp, "{arch}: dynamically linked (has PT_INTERP)");
        assert!(
            dir.join("README.md").is_file(),
            "{arch}: README in the archive"
        );
        assert!(
            !bytes
                .windows(b"KUBE_BEAT_CRASH_AT".len())
                .any(|w| w == b"KUBE_BEAT_CRASH_AT"),
            "{arch}: release binary has the test crash points"
        );
        // Run it: natively, or the arm64 one under qemu's user-mode emulator.
        let mut cmd = if arch == "amd64" {
            Command::new(&bin)
        } else {
            let mut c = Command::new("qemu-aarch64-static");
            c.arg(&bin);
            c
        };
        let out = run(cmd.arg("version"));
        assert!(
            out.contains(version),
            "{arch}: `kube-beat version` said {out:?}"
        );
    }

    // Checksums cover every archive and verify.
    let sums = checksums(&dist);
    let files: BTreeSet<_> = sums.iter().map(|(f, _)| f.clone()).collect();
    for arch in ["amd64", "arm64"] {
        assert!(files.contains(&format!("kube-beat-{version}-linux-{arch}.tar.gz")));
    }
    run(Command::new("sha256sum")
        .args(["-c", "--strict", "checksums.txt"])
        .current_dir(&dist));

    // The worker-side guard's wheel, at the crate's version, in the checksums; pip installs it
    // (offline, on its own) beside a real Celery (the tests' worker's virtualenv), and it
    // imports from there at that version.
    let wheel = format!("kube_beat_celery-{version}-py3-none-any.whl");
    assert!(
        files.contains(&wheel),
        "{wheel} in checksums.txt: {files:?}"
    );
    let celery = common::env().celery_venv;
    let site = work.path().join("site");
    run(Command::new(celery.join("bin/pip"))
        .args([
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-index",
            "--no-deps",
            "--target",
        ])
        .arg(&site)
        .arg(dist.join(&wheel)));
    let imported = run(Command::new(celery.join("bin/python"))
        .args([
            "-c",
            "import kube_beat_celery, kube_beat_celery.guard, kube_beat_celery.stores; \
             print(kube_beat_celery.__file__); print(kube_beat_celery.__version__)",
        ])
        .env("PYTHONPATH", &site));
    let mut lines = imported.lines();
    assert!(
        lines
            .next()
            .is_some_and(|f| f.starts_with(&*site.to_string_lossy())),
        "imported from the installed wheel: {imported}"
    );
    let imported = lines.next().unwrap_or_default().to_string();
    assert!(
        imported.trim() == version,
        "the wheel's package says version {imported:?}"
    );
    assert!(
        !repo.join("python/build").exists(),
        "make dist leaves no build/ in python/"
    );

    // Reproducible: a second build of the same commit gives byte-identical archives.
    run(Command::new("make")
        .arg("dist")
        .env("DIST_ARCHES", "amd64")
        .current_dir(&repo));
    let again = checksums(&dist);
    let amd64 = format!("kube-beat-{version}-linux-amd64.tar.gz");
    let sum = |s: &[(String, String)], name: &str| {
        s.iter()
            .find(|(f, _)| *f == name)
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| panic!("{name} in checksums"))
    };
    assert_eq!(
        sum(&sums, &amd64),
        sum(&again, &amd64),
        "the amd64 archive is not reproducible"
    );
    assert_eq!(
        sum(&sums, &wheel),
        sum(&again, &wheel),
        "the guard's wheel is not reproducible"
    );

    // `make chart`: the packaged chart, at the chart's version, for the crate's version.
    run(Command::new("make").arg("chart").current_dir(&repo));
    let chart_yaml: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo.join("charts/kube-beat/Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    let chart_version = chart_yaml["version"].as_str().expect("version");
    let package = dist.join(format!("kube-beat-{chart_version}.tgz"));
    assert!(package.is_file(), "{} missing", package.display());
    assert!(
        checksums(&dist)
            .iter()
            .any(|(f, _)| *f == format!("kube-beat-{chart_version}.tgz")),
        "the chart is in checksums.txt"
    );
    let helm = run(&mut Command::new(repo.join("hack/helm.sh")))
        .trim()
        .to_string();
    let shown = run(Command::new(&helm).args(["show", "chart"]).arg(&package));
    assert!(
        shown.contains(&format!("appVersion: {version}")),
        "packaged chart's appVersion:\n{shown}"
    );
    // The default image is the one the release workflow pushes, tagged with the version; a
    // digest pins it instead.
    let rendered = run(Command::new(&helm)
        .args(["template", "kb"])
        .arg(&package)
        .args(["--namespace", "kube-beat"]));
    assert!(
        rendered.contains(&format!("image: \"ghcr.io/kube-beat/kube-beat:{version}\"")),
        "default image in:\n{rendered}"
    );
    let digest = format!("sha256:{}", "ab".repeat(32));
    let pinned = run(Command::new(&helm)
        .args(["template", "kb"])
        .arg(&package)
        .args(["--namespace", "kube-beat", "--set"])
        .arg(format!("image.digest={digest}")));
    assert!(
        pinned.contains(&format!("image: \"ghcr.io/kube-beat/kube-beat@{digest}\"")),
        "pinned image in:\n{pinned}"
    );
    let _ = std::fs::remove_dir_all(&dist);
}

fn workflow(name: &str) -> Value {
    let path = repo().join(".github/workflows").join(name);
    serde_yaml::from_str(&std::fs::read_to_string(&path).expect("workflow file"))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run_steps(wf: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for job in wf["jobs"].as_object().expect("jobs").values() {
        for step in job["steps"].as_array().expect("steps") {
            if let Some(r) = step["run"].as_str() {
                out.push(r.to_string());
            }
        }
    }
    out
}

/// The workflows cannot run here, so what they depend on is checked: every `make X` is a
/// Makefile target, every `hack/*.sh` exists, the release pins the digest on a line the chart
/// really has, and the kind matrix is the README's supported range.
#[test]
fn the_workflows_use_targets_scripts_and_values_that_exist() {
    let repo = repo();
    let makefile = std::fs::read_to_string(repo.join("Makefile")).expect("Makefile");
    let targets: BTreeSet<&str> = makefile
        .lines()
        .filter_map(|l| l.split_once(':').map(|(t, _)| t))
        .filter(|t| !t.is_empty() && !t.starts_with(['#', '\t', '.']) && !t.contains(' '))
        .collect();
    let names = ["ci.yml", "release.yml", "e2e-kind.yml"];
    let mut makes = BTreeSet::new();
    for name in names {
        let wf = workflow(name);
        assert!(wf["on"].is_object(), "{name}: no triggers");
        for script in run_steps(&wf) {
            for word in script.split_whitespace() {
                let word = word.trim_matches(|c| c == '"' || c == '(' || c == ')' || c == '$');
                if let Some(path) = word.strip_prefix("hack/") {
                    let path = path.split(['"', ')']).next().expect("path");
                    assert!(
                        repo.join("hack").join(path).is_file(),
                        "{name}: hack/{path} does not exist"
                    );
                }
            }
            let words: Vec<&str> = script.split_whitespace().collect();
            for pair in words.windows(2) {
                if pair[0] == "make" {
                    assert!(
                        targets.contains(pair[1]),
                        "{name}: `make {}` is not a Makefile target",
                        pair[1]
                    );
                    makes.insert(pair[1].to_string());
                }
            }
        }
    }
    for t in ["test", "dist", "image", "chart"] {
        assert!(makes.contains(t), "no workflow runs `make {t}`");
    }

    // The release job's keyless signing needs the OIDC token; the image and the chart are signed.
    let release = workflow("release.yml");
    let publish = &release["jobs"]["publish"];
    assert_eq!(publish["permissions"]["id-token"], "write");
    let steps = run_steps(&release).join("\n");
    assert!(steps.contains("cosign sign --yes \"$ref\""));
    assert!(steps.contains("cosign sign --yes \"${CHARTS#oci://}/kube-beat@$chart_digest\""));
    assert!(steps.contains("cosign attest --yes --type spdxjson"));
    // It pins the pushed digest into values.yaml by rewriting the `  digest: ""` line: the
    // chart must have exactly one.
    let values =
        std::fs::read_to_string(repo.join("charts/kube-beat/values.yaml")).expect("values.yaml");
    assert_eq!(
        values.lines().filter(|l| *l == "  digest: \"\"").count(),
        1,
        "values.yaml must have exactly one `  digest: \"\"` line (image.digest) for the release to pin"
    );
    assert!(steps.contains("s|^  digest: \\\"\\\"|"));

    // The kind matrix covers the README's supported range, one job per minor version.
    let kind = workflow("e2e-kind.yml");
    let minors: BTreeSet<u32> = kind["jobs"]["kind"]["strategy"]["matrix"]["node"]
        .as_array()
        .expect("node matrix")
        .iter()
        .map(|n| {
            let v = n.as_str().expect("node image");
            let v = v.split(":v").nth(1).expect("kindest/node:vX.Y.Z");
            v.split('.').nth(1).expect("minor").parse().expect("number")
        })
        .collect();
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("README");
    let range = readme
        .lines()
        .find_map(|l| {
            l.split("Kubernetes 1.")
                .nth(1)
                .filter(|_| l.contains("supported"))
        })
        .expect("README states the supported range as `Kubernetes 1.X–1.Y ... supported`");
    let lo: u32 = range
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|s| s.parse().ok())
        .expect("lower bound");
    let hi: u32 = range
        .split("–1.")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .expect("upper bound");
    assert_eq!(minors, (lo..=hi).collect(), "kind matrix vs README range");
}

/// API versions Kubernetes removed between 1.16 and 1.33 (the deprecation guide): none may be
/// rendered for the supported range, nor used by the code. policy/v1beta1 stays only as the
/// PodDisruptionBudget fallback for clusters older than 1.21.
const REMOVED: [&str; 20] = [
    "extensions/v1beta1",
    "apps/v1beta1",
    "apps/v1beta2",
    "policy/v1beta1",
    "batch/v1beta1",
    "rbac.authorization.k8s.io/v1beta1",
    "admissionregistration.k8s.io/v1beta1",
    "apiextensions.k8s.io/v1beta1",
    "networking.k8s.io/v1beta1",
    "coordination.k8s.io/v1beta1",
    "autoscaling/v2beta1",
    "autoscaling/v2beta2",
    "flowcontrol.apiserver.k8s.io/v1beta1",
    "flowcontrol.apiserver.k8s.io/v1beta2",
    "storage.k8s.io/v1beta1",
    "scheduling.k8s.io/v1beta1",
    "certificates.k8s.io/v1beta1",
    "discovery.k8s.io/v1beta1",
    "events.k8s.io/v1beta1",
    "node.k8s.io/v1beta1",
];

#[test]
#[ignore = "needs Helm (make test)"]
fn no_removed_api_versions_for_the_supported_kubernetes_range() {
    let repo = repo();
    let helm = run(&mut Command::new(repo.join("hack/helm.sh")))
        .trim()
        .to_string();
    let every_option = "podDisruptionBudget.enabled=true,serviceMonitor.enabled=true,\
        networkPolicy.enabled=true,grafanaDashboard.enabled=true,prometheusRule.enabled=true,\
        resultBackend.enabled=true";
    for kube in ["1.27.0", "1.30.0", "1.33.0"] {
        let rendered = run(Command::new(&helm)
            .args(["template", "kb"])
            .arg(repo.join("charts/kube-beat"))
            .args(["--namespace", "kube-beat", "--kube-version", kube])
            .args(["--api-versions", "monitoring.coreos.com/v1"])
            .args(["--set", every_option]));
        for line in rendered.lines().filter(|l| l.starts_with("apiVersion:")) {
            let version = line["apiVersion:".len()..].trim();
            assert!(
                !REMOVED.contains(&version),
                "Kubernetes {kube}: the chart renders {version}, removed from Kubernetes"
            );
        }
        assert!(rendered.contains("apiVersion: policy/v1\n"), "{kube}: PDB");
    }
    // The fallback renders only for clusters older than 1.21.
    let old = run(Command::new(&helm)
        .args(["template", "kb"])
        .arg(repo.join("charts/kube-beat"))
        .args(["--namespace", "kube-beat", "--kube-version", "1.20.2"])
        .args(["--set", "podDisruptionBudget.enabled=true"]));
    assert!(old.contains("apiVersion: policy/v1beta1\n"));

    // The code talks to no removed version either (k8s-openapi's `latest` types, and the
    // AdmissionReview the webhook serves is admission.k8s.io/v1).
    let mut stack = vec![repo.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                for version in REMOVED {
                    assert!(
                        !text.contains(&format!("\"{version}\"")),
                        "{} uses {version}",
                        path.display()
                    );
                }
            }
        }
    }
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo.join("charts/kube-beat/Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    assert_eq!(chart["kubeVersion"], ">=1.20.0-0");
}

/// The worker-side guard is released with kube-beat, at the same version (python/pyproject.toml
/// and the package's `__version__` move with Cargo.toml).
#[test]
fn the_guard_package_has_the_crates_version() {
    let repo = repo();
    let line = format!("version = \"{}\"", crate_version());
    let pyproject = std::fs::read_to_string(repo.join("python/pyproject.toml")).expect("pyproject");
    assert!(
        pyproject.lines().any(|l| l.trim() == line),
        "python/pyproject.toml lacks `{line}`"
    );
    let init = std::fs::read_to_string(repo.join("python/kube_beat_celery/__init__.py"))
        .expect("__init__.py");
    let line = format!("__version__ = \"{}\"", crate_version());
    assert!(
        init.lines().any(|l| l.trim() == line),
        "kube_beat_celery/__init__.py lacks `{line}`"
    );
}
