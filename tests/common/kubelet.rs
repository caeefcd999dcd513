//! A test kubelet: it plays the node agent (scheduler and kubelet in one) for the Pods of ONE
//! namespace, so the install tests can run Helm's hook Job and `helm test` pod for real.
//!
//! Why: this machine has no container runtime, so no real kubelet can run here. Everything else
//! in those tests is real: the kube-apiserver, kube-controller-manager (the Job controller makes
//! the hook's Pods, counts their failures and fails the Job), Helm (its hooks, its wait for the
//! Job, `helm test`), the chart's manifests and the kube-beat binary doing the work. Only the step
//! "a node runs this Pod's container and reports how it went" is imitated, as follows:
//!
//! - **Which Pods**: every Pod of the namespace that a Job owns, and bare Pods (Helm's test pods).
//!   Pods of ReplicaSets (the chart's Deployment) stay `Pending`, as if no node fitted them: the
//!   tests start the operator themselves, on loopback. A Pod already `Running` or finished when
//!   the kubelet starts is left alone. Pods are never bound to a node (`spec.nodeName` stays
//!   empty; there is no Node object), so the apiserver deletes them at once, without a grace
//!   period, and the kubelet kills the process when it sees the deletion (the Job controller
//!   deletes a Job's Pods when its `activeDeadlineSeconds` passes).
//! - **The image**: the kube-beat image (the configured repository, any tag or digest) is the
//!   locally built binary, `env!("CARGO_BIN_EXE_kube-beat")`, with the image's entrypoint
//!   (`/kube-beat`, default args `run`). Any other image: the Pod is `Failed` with a message
//!   saying so. Only the first container runs; init containers and sidecars are not supported.
//! - **The command line**: `command` (its `/kube-beat` or `kube-beat` is the binary) and `args`,
//!   with `$(VAR)` references expanded from the container's env, as the kubelet does.
//! - **The environment**: only what the Pod spec says (`value`; `secretKeyRef` and
//!   `configMapKeyRef` read from the apiserver; `fieldRef` for `metadata.name`,
//!   `metadata.namespace`, `spec.serviceAccountName`, `status.podIP`), plus `HOSTNAME` and the
//!   `KUBERNETES_SERVICE_HOST`/`_PORT` pair (here the apiserver's loopback address). Nothing
//!   from the test's own environment leaks in (in particular not its admin `KUBECONFIG`). A
//!   missing Secret or key leaves the Pod `Pending` with `CreateContainerConfigError` and the
//!   real kubelet's message, retried every second, as the kubelet does.
//! - **The ServiceAccount**: unless `automountServiceAccountToken: false`, a token for the Pod's
//!   ServiceAccount is requested with the TokenRequest API (bound to the Pod, as the kubelet's
//!   projected volume is) and written, with `namespace`, to a directory that stands for
//!   `/var/run/secrets/kubernetes.io/serviceaccount`: that path in args and env values is
//!   rewritten to it, and `KUBECONFIG` points at a kubeconfig using that token file (kube-rs tries
//!   a kubeconfig before the in-cluster files, which do not exist on this machine). So the
//!   process talks to the apiserver as the Pod's ServiceAccount, with its RBAC, never as admin.
//! - **URLs**: a test may register rewrites ([`Kubelet::rewrite`]) (e.g. a Service's DNS name, which does not resolve
//!   here, to the loopback address of an operator the test started); applied to args and env.
//! - **Status**: written through the `pods/status` subresource as a kubelet would: `Running` with
//!   a running container status, then `Succeeded` (exit 0, reason `Completed`) or `Failed`
//!   (reason `Error`), with the exit code, and, when the container failed and its
//!   `terminationMessagePolicy` is `FallbackToLogsOnError`, the last 80 lines (at most 2048 bytes)
//!   of its output as the termination message. With the default policy (`File`) the message stays
//!   empty, as on a real node (nothing writes the termination-message file).
//! - **Volumes**: projected `serviceAccountToken` volumes (the chart's test Pod sends such a token
//!   to kube-beat's API): each token requested the same way, with the volume's audience and
//!   expiry, written to a directory that stands for the mount path (rewritten as above). Any
//!   other volume fails the Pod with a message.
//! - **Not imitated**: restarts (every Pod is treated as `restartPolicy: Never`, which is what the
//!   chart's Pods say), probes, resources, security contexts, other volumes, `envFrom`, `pods/log`
//!   (`kubectl logs` does not work; [`Kubelet::output`] has each Pod's output instead).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{ConfigMap, Container, EnvVar, Pod, Secret, ServiceAccount},
};
use kube::{
    Api, Client, Config,
    api::{Patch, PatchParams, PostParams},
    runtime::watcher,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};

/// Where a container finds its ServiceAccount token on a real node.
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// `FallbackToLogsOnError` keeps at most this much of the output.
pub const MESSAGE_LINES: usize = 80;
const MESSAGE_BYTES: usize = 2048;

/// What the kubelet did, for the test's assertions and its failure messages.
#[derive(Default)]
struct State {
    /// Pod name → everything the container wrote (stdout and stderr, interleaved).
    outputs: BTreeMap<String, String>,
    /// One line per action and per error of the kubelet itself.
    notes: Vec<String>,
}

#[derive(Clone)]
struct Settings {
    namespace: String,
    image_repository: String,
    /// (from, to), applied in order; the test may add more while the kubelet runs.
    rewrites: Arc<Mutex<Vec<(String, String)>>>,
}

/// The running test kubelet; stopped (and every process it started killed) when dropped.
pub struct Kubelet {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    state: Arc<Mutex<State>>,
    rewrites: Arc<Mutex<Vec<(String, String)>>>,
}

impl Kubelet {
    /// Replace `from` with `to` in every arg and env value of the Pods started from now on
    /// (e.g. a Service's URL → a loopback address).
    pub fn rewrite(&self, from: &str, to: &str) {
        self.rewrites
            .lock()
            .expect("lock")
            .push((from.to_string(), to.to_string()));
    }

    /// The output of the Pod named `pod`, once its container has exited.
    pub fn output(&self, pod: &str) -> Option<String> {
        self.state.lock().expect("lock").outputs.get(pod).cloned()
    }

    /// The names of the Pods whose containers ran to the end.
    pub fn pods_run(&self) -> Vec<String> {
        self.state
            .lock()
            .expect("lock")
            .outputs
            .keys()
            .cloned()
            .collect()
    }

    /// What the kubelet did and what went wrong, one line each (for failure messages).
    pub fn notes(&self) -> String {
        self.state.lock().expect("lock").notes.join("\n")
    }
}

impl Kubelet {
    /// Start a kubelet for the Pods of `namespace`, running `image_repository` (any tag or
    /// digest) as the local kube-beat binary. Returns once the first list of Pods has been seen,
    /// so a Pod created after this returns is certainly handled.
    pub fn start(namespace: &str, image_repository: &str) -> Kubelet {
        let state = Arc::new(Mutex::new(State::default()));
        let rewrites = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel();
        let (ready, is_ready) = std::sync::mpsc::channel();
        let settings = Settings {
            namespace: namespace.to_string(),
            image_repository: image_repository.to_string(),
            rewrites: rewrites.clone(),
        };
        let st = state.clone();
        // A thread with its own runtime: the tests block their own thread on `helm` for minutes,
        // which must not starve the kubelet.
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the test kubelet");
            rt.block_on(async move {
                tokio::select! {
                    _ = run(settings, st, ready) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every Pod's task, and with it (kill_on_drop) its process.
        });
        is_ready
            .recv_timeout(Duration::from_secs(30))
            .expect("the test kubelet's first list of Pods");
        Kubelet {
            stop: Some(stop),
            thread: Some(thread),
            state,
            rewrites,
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn note(state: &Mutex<State>, line: String) {
    state.lock().expect("lock").notes.push(line);
}

async fn run(settings: Settings, state: Arc<Mutex<State>>, ready: std::sync::mpsc::Sender<()>) {
    let config = Config::infer().await.expect("the test's kubeconfig");
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).expect("a kube client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &settings.namespace);
    // Pod uid → how to tell its task that the Pod is gone.
    let mut running: HashMap<String, Arc<Notify>> = HashMap::new();
    let mut stream = watcher(pods, watcher::Config::default()).boxed();
    let mut ready = Some(ready);
    while let Some(event) = stream.next().await {
        let (pod, deleted) = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => (p, false),
            Ok(watcher::Event::Delete(p)) => (p, true),
            Ok(watcher::Event::InitDone) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                continue;
            }
            Ok(watcher::Event::Init) => continue,
            Err(e) => {
                note(&state, format!("watch error: {e}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        if deleted || pod.metadata.deletion_timestamp.is_some() {
            if let Some(gone) = running.remove(&uid) {
                note(&state, format!("{name}: deleted, killing its process"));
                gone.notify_one();
            }
            continue;
        }
        if running.contains_key(&uid) || !ours(&pod) {
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if !matches!(phase, None | Some("Pending")) {
            continue; // started by an earlier kubelet, or finished
        }
        let gone = Arc::new(Notify::new());
        running.insert(uid, gone.clone());
        note(&state, format!("{name}: starting"));
        let (client, settings, state, server) = (
            client.clone(),
            settings.clone(),
            state.clone(),
            server.clone(),
        );
        tokio::spawn(async move {
            let pod_run = PodRun {
                client,
                settings,
                state: state.clone(),
                server,
                pod,
            };
            tokio::select! {
                result = pod_run.run() => if let Err(e) = result {
                    note(&state, format!("{name}: {e}"));
                },
                _ = gone.notified() => {}
            }
        });
    }
}

/// Pods a Job owns and bare Pods; not those of ReplicaSets (see the module comment).
fn ours(pod: &Pod) -> bool {
    let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
    owners.iter().all(|o| o.controller != Some(true)) || owners.iter().any(|o| o.kind == "Job")
}

struct PodRun {
    client: Client,
    settings: Settings,
    state: Arc<Mutex<State>>,
    server: String,
    pod: Pod,
}

/// Why a container could not start.
enum NotStarted {
    /// The kubelet's `CreateContainerConfigError`: retried until it works.
    Config(String),
    /// Not something this kubelet can run: the Pod fails.
    Unsupported(String),
}

/// What to start.
struct Prepared {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The Pod's own directory (its working directory, the ServiceAccount files, its output).
    dir: tempfile::TempDir,
}

impl PodRun {
    fn name(&self) -> String {
        self.pod.metadata.name.clone().unwrap_or_default()
    }

    fn container(&self) -> Result<&Container, String> {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .ok_or_else(|| "the Pod has no container".to_string())
    }

    async fn run(self) -> Result<(), String> {
        let name = self.name();
        let container = self.container()?.clone();
        let mut last_config_error = String::new();
        let prepared = loop {
            match self.prepare(&container).await {
                Ok(p) => break p,
                Err(NotStarted::Config(message)) => {
                    if message != last_config_error {
                        note(
                            &self.state,
                            format!("{name}: CreateContainerConfigError: {message}"),
                        );
                        last_config_error = message.clone();
                    }
                    self.patch_status(json!({
                        "phase": "Pending",
                        "containerStatuses": [self.container_status(&container, false, json!({
                            "waiting": {"reason": "CreateContainerConfigError", "message": message}
                        }))],
                    }))
                    .await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(NotStarted::Unsupported(message)) => {
                    note(&self.state, format!("{name}: {message}"));
                    return self
                        .patch_status(json!({
                            "phase": "Failed", "reason": "UnsupportedByTestKubelet",
                            "message": message,
                        }))
                        .await;
                }
            }
        };
        let started = now();
        self.patch_status(json!({
            "phase": "Running",
            "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": started,
            "conditions": conditions(true, None),
            "containerStatuses": [self.container_status(&container, true, json!({
                "running": {"startedAt": started}
            }))],
        }))
        .await?;

        let log_path = prepared.dir.path().join("output.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("output file: {e}"))?;
        let mut child = tokio::process::Command::new(&prepared.program)
            .args(&prepared.args)
            .env_clear()
            .envs(prepared.env.iter().map(|(k, v)| (k, v)))
            .current_dir(prepared.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| format!("output file: {e}"))?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", prepared.program.display()))?;
        let status = child.wait().await.map_err(|e| format!("waiting: {e}"))?;
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        let code = status.code().unwrap_or(137); // killed by a signal: as a runtime reports it
        let mut terminated = json!({
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": started, "finishedAt": now(),
        });
        if code != 0
            && container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
        {
            terminated["message"] = json!(tail(&output));
        }
        note(&self.state, format!("{name}: exited {code}"));
        self.state
            .lock()
            .expect("lock")
            .outputs
            .insert(name.clone(), output);
        self.patch_status(json!({
            "phase": if code == 0 { "Succeeded" } else { "Failed" },
            "conditions": conditions(false, Some("PodCompleted")),
            "containerStatuses": [self.container_status(&container, false, json!({
                "terminated": terminated
            }))],
        }))
        .await
    }

    fn container_status(&self, c: &Container, running: bool, state: Value) -> Value {
        json!({
            "name": c.name, "image": c.image.clone().unwrap_or_default(),
            "imageID": "", "ready": running, "started": running, "restartCount": 0,
            "state": state,
        })
    }

    async fn patch_status(&self, status: Value) -> Result<(), String> {
        Api::<Pod>::namespaced(self.client.clone(), &self.settings.namespace)
            .patch_status(
                &self.name(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("writing the Pod's status: {e}"))
    }

    async fn prepare(&self, c: &Container) -> Result<Prepared, NotStarted> {
        let image = c.image.clone().unwrap_or_default();
        if image_repository(&image) != self.settings.image_repository {
            return Err(NotStarted::Unsupported(format!(
                "image {image:?} is not run by the test kubelet (only {}, as the local kube-beat binary)",
                self.settings.image_repository
            )));
        }
        if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
            return Err(NotStarted::Unsupported(
                "envFrom is not supported by the test kubelet".into(),
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| NotStarted::Unsupported(e.to_string()))?;
        let mut env: Vec<(String, String)> = Vec::new();
        let (host, port) = self.apiserver_host_port();
        env.push(("HOSTNAME".into(), self.name()));
        env.push(("KUBERNETES_SERVICE_HOST".into(), host));
        env.push(("KUBERNETES_SERVICE_PORT".into(), port));
        for var in c.env.as_deref().unwrap_or_default() {
            if let Some(value) = self.env_value(var, &env).await? {
                env.push((var.name.clone(), value));
            }
        }
        // (path in the container, where it is here), longest first when rewriting.
        let mut mounts: Vec<(String, PathBuf)> = self.projected_tokens(c, dir.path()).await?;
        if let Some(sa_dir) = self.service_account_files(dir.path()).await? {
            env.push((
                "KUBECONFIG".into(),
                sa_dir.join("kubeconfig").display().to_string(),
            ));
            mounts.push((SA_DIR.to_string(), sa_dir));
        }
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let vars: HashMap<String, String> = env.iter().cloned().collect();
        let mut argv: Vec<String> = c
            .command
            .clone()
            .unwrap_or_default()
            .iter()
            .chain(c.args.as_deref().unwrap_or_default())
            .map(|a| expand(a, &vars))
            .collect();
        let program = PathBuf::from(env!("CARGO_BIN_EXE_kube-beat"));
        match argv.first().map(String::as_str) {
            None => argv = vec!["run".into()], // the image's CMD
            Some("/kube-beat" | "kube-beat") => {
                argv.remove(0);
            }
            Some(other) if c.command.is_some() => {
                return Err(NotStarted::Unsupported(format!(
                    "command {other:?} is not in the kube-beat image (only /kube-beat)"
                )));
            }
            Some(_) => {} // args only: after the image's ENTRYPOINT
        }
        let rewrites = self.settings.rewrites.lock().expect("lock").clone();
        let rewrite = |s: &str| {
            let mut s = s.to_string();
            for (from, to) in &rewrites {
                s = s.replace(from, to);
            }
            for (path, here) in &mounts {
                s = s.replace(path.as_str(), &here.display().to_string());
            }
            s
        };
        Ok(Prepared {
            program,
            args: argv.iter().map(|a| rewrite(a)).collect(),
            env: env.into_iter().map(|(k, v)| (k, rewrite(&v))).collect(),
            dir,
        })
    }

    fn apiserver_host_port(&self) -> (String, String) {
        let url = url::Url::parse(&self.server).ok();
        (
            url.as_ref()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_default(),
            url.as_ref()
                .and_then(|u| u.port_or_known_default())
                .map(|p| p.to_string())
                .unwrap_or_default(),
        )
    }

    /// One env var's value, as the kubelet resolves it (`None`: an optional reference missing).
    async fn env_value(
        &self,
        var: &EnvVar,
        so_far: &[(String, String)],
    ) -> Result<Option<String>, NotStarted> {
        let ns = &self.settings.namespace;
        if let Some(value) = &var.value {
            let vars: HashMap<String, String> = so_far.iter().cloned().collect();
            return Ok(Some(expand(value, &vars)));
        }
        let Some(from) = &var.value_from else {
            return Ok(Some(String::new()));
        };
        if let Some(r) = &from.secret_key_ref {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
            let optional = r.optional == Some(true);
            let Some(secret) = secrets.get_opt(&r.name).await.map_err(config_err)? else {
                return if optional {
                    Ok(None)
                } else {
                    Err(NotStarted::Config(format!("secret {:?} not found", r.name)))
                };
            };
            return match secret.data.as_ref().and_then(|d| d.get(&r.key)) {
                Some(bytes) => Ok(Some(String::from_utf8_lossy(&bytes.0).into_owned())),
                None if optional => Ok(None),
                None => Err(NotStarted::Config(format!(
                    "couldn't find key {} in Secret {ns}/{}",
                    r.key, r.name
                ))),
            };
        }
        if let Some(r) = &from.config_map_key_ref {
            let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
            let optional = r.optional == Some(true);
            let Some(map) = maps.get_opt(&r.name).await.map_err(config_err)? else {
                return if optional {
                    Ok(None)
                } else {
                    Err(NotStarted::Config(format!(
                        "configmap {:?} not found",
                        r.name
                    )))
                };
            };
            return match map.data.as_ref().and_then(|d| d.get(&r.key)) {
                Some(v) => Ok(Some(v.clone())),
                None if optional => Ok(None),
                None => Err(NotStarted::Config(format!(
                    "couldn't find key {} in ConfigMap {ns}/{}",
                    r.key, r.name
                ))),
            };
        }
        if let Some(r) = &from.field_ref {
            let spec = self.pod.spec.as_ref();
            return match r.field_path.as_str() {
                "metadata.name" => Ok(Some(self.name())),
                "metadata.namespace" => Ok(Some(ns.clone())),
                "spec.serviceAccountName" => Ok(Some(
                    spec.and_then(|s| s.service_account_name.clone())
                        .unwrap_or_else(|| "default".into()),
                )),
                "status.podIP" => Ok(Some("127.0.0.1".into())),
                other => Err(NotStarted::Unsupported(format!(
                    "fieldRef {other} is not supported by the test kubelet"
                ))),
            };
        }
        Err(NotStarted::Unsupported(format!(
            "env {}: only value, secretKeyRef, configMapKeyRef and fieldRef are supported by the test kubelet",
            var.name
        )))
    }

    /// The Pod's ServiceAccount token, namespace and a kubeconfig using them, in `dir`/sa; `None`
    /// when the Pod opts out of the token.
    async fn service_account_files(&self, dir: &Path) -> Result<Option<PathBuf>, NotStarted> {
        let spec = self.pod.spec.as_ref();
        if spec.and_then(|s| s.automount_service_account_token) == Some(false) {
            return Ok(None);
        }
        let ns = &self.settings.namespace;
        let sa = self.service_account();
        // No audience: the apiserver's own, as for the kubelet's default token volume.
        let token = self.token(None, 3600).await?;
        let sa_dir = dir.join("serviceaccount");
        let write = |file: &str, text: &str| {
            std::fs::write(sa_dir.join(file), text)
                .map_err(|e| NotStarted::Unsupported(e.to_string()))
        };
        std::fs::create_dir_all(&sa_dir).map_err(|e| NotStarted::Unsupported(e.to_string()))?;
        write("token", &token)?;
        write("namespace", ns)?;
        // The loopback apiserver's certificate is self-signed; the tests' own kubeconfig skips
        // verification the same way.
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {
                "server": self.server, "insecure-skip-tls-verify": true}}],
            "users": [{"name": sa, "user": {"tokenFile": sa_dir.join("token")}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": sa, "namespace": ns}}],
            "current-context": "local",
        });
        write("kubeconfig", &kubeconfig.to_string())?;
        Ok(Some(sa_dir))
    }
}

impl PodRun {
    fn service_account(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into())
    }

    /// A token for the Pod's ServiceAccount, bound to the Pod, as the kubelet requests it.
    async fn token(&self, audience: Option<&str>, expiration: i64) -> Result<String, NotStarted> {
        let sa = self.service_account();
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: audience.map(|a| vec![a.to_string()]),
                expiration_seconds: Some(expiration),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: self.pod.metadata.name.clone(),
                    uid: self.pod.metadata.uid.clone(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(self.client.clone(), &self.settings.namespace)
            .create_token_request(&sa, &PostParams::default(), &request)
            .await
            .map_err(|e| NotStarted::Config(format!("token for serviceaccount {sa:?}: {e}")))?
            .status
            .and_then(|s| s.token)
            .ok_or_else(|| NotStarted::Config("the TokenRequest returned no token".into()))
    }

    /// The container's volume mounts, each of a projected volume made only of
    /// `serviceAccountToken` sources (what the chart's test Pod uses): the tokens written to a
    /// directory of their own, which stands for the mount path. Any other volume: unsupported.
    async fn projected_tokens(
        &self,
        c: &Container,
        dir: &Path,
    ) -> Result<Vec<(String, PathBuf)>, NotStarted> {
        let volumes = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let mut mounts = Vec::new();
        for mount in c.volume_mounts.as_deref().unwrap_or_default() {
            let unsupported = || {
                NotStarted::Unsupported(format!(
                    "volume {:?}: only projected serviceAccountToken volumes are supported by the test kubelet",
                    mount.name
                ))
            };
            let volume = volumes
                .iter()
                .find(|v| v.name == mount.name)
                .ok_or_else(unsupported)?;
            let sources = volume
                .projected
                .as_ref()
                .and_then(|p| p.sources.clone())
                .ok_or_else(unsupported)?;
            let here = dir.join("volumes").join(&mount.name);
            std::fs::create_dir_all(&here).map_err(|e| NotStarted::Unsupported(e.to_string()))?;
            for source in &sources {
                let t = source
                    .service_account_token
                    .as_ref()
                    .ok_or_else(unsupported)?;
                let token = self
                    .token(t.audience.as_deref(), t.expiration_seconds.unwrap_or(3600))
                    .await?;
                std::fs::write(here.join(&t.path), token)
                    .map_err(|e| NotStarted::Unsupported(e.to_string()))?;
            }
            mounts.push((mount.mount_path.clone(), here));
        }
        Ok(mounts)
    }
}

fn config_err(e: kube::Error) -> NotStarted {
    NotStarted::Config(e.to_string())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn conditions(ready: bool, reason: Option<&str>) -> Value {
    let status = if ready { "True" } else { "False" };
    let at = now();
    json!([
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": at},
        {"type": "Initialized", "status": "True", "lastTransitionTime": at},
        {"type": "ContainersReady", "status": status, "reason": reason, "lastTransitionTime": at},
        {"type": "Ready", "status": status, "reason": reason, "lastTransitionTime": at},
    ])
}

/// `ghcr.io/x/kube-beat:1.0@sha256:…` → `ghcr.io/x/kube-beat` (a registry port's colon kept).
pub fn image_repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

/// The kubelet's `$(VAR)` expansion: defined variables replaced, `$$` an escaped `$`, anything
/// else left as written.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
            && let Some(value) = vars.get(&body[..end])
        {
            out.push_str(value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The end of the output as `FallbackToLogsOnError` keeps it.
pub fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let mut text = lines[lines.len().saturating_sub(MESSAGE_LINES)..].join("\n");
    if text.len() > MESSAGE_BYTES {
        let mut cut = text.len() - MESSAGE_BYTES;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = text[cut..].to_string();
    }
    text
}
