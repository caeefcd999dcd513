//! The webhook's serving certificate: from `--webhook-cert-dir` (cert-manager, or files of the
//! user's own), re-read when the files change, or the self-signed fallback.
//!
//! The fallback must give every replica a certificate the one `caBundle` trusts. The simplest
//! design that holds with any number of replicas starting at once: the CA (certificate and key)
//! lives in one Secret, created by whichever replica gets there first (a create that conflicts
//! means another replica won: read its Secret instead), and each replica signs a serving
//! certificate of its own from it, in memory, never written anywhere. The operator keeps the
//! ValidatingWebhookConfiguration's `caBundle` (and the MutatingWebhookConfiguration's of the same
//! name, when there is one) equal to that CA. No replica coordinates with
//! another beyond the create, and a replica restarting signs a fresh certificate from the same
//! CA. Each refresh re-reads the Secret, so deleting it rotates the CA: the next replica to
//! refresh creates a new one and every replica follows within a refresh.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    },
    api::core::v1::Secret,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use super::WebhookError;

/// The CA's certificate and key in the Secret.
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
/// How long the generated CA is valid. Rotating it: delete the Secret (see the module comment).
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// How long a replica's serving certificate is valid, and when it signs a new one.
const LEAF_VALIDITY: time::Duration = time::Duration::days(365);
const LEAF_RENEW_AFTER: Duration = Duration::from_secs(90 * 24 * 3600);
/// Largest certificate or key file read from `--webhook-cert-dir`.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Where the serving certificate comes from.
pub enum Source {
    Dir(DirSource),
    // Boxed: two Api handles; one Source lives per process.
    SelfSigned(Box<SelfSigned>),
}

pub struct DirSource {
    dir: PathBuf,
    loaded: Option<(Vec<u8>, Vec<u8>)>,
}

pub struct SelfSigned {
    secrets: Api<Secret>,
    secret: String,
    names: Vec<String>,
    validating: Api<ValidatingWebhookConfiguration>,
    mutating: Api<MutatingWebhookConfiguration>,
    /// The name of both configurations (the mutating one may not exist).
    configuration: Option<String>,
    /// The CA the current serving certificate was signed by, and when.
    signed: Option<(String, Instant)>,
    /// The last caBundle problem logged (each is logged once, not at every refresh).
    last_problem: Option<String>,
}

/// What the self-signed fallback needs.
pub struct SelfSignedOptions {
    pub secret: String,
    pub namespace: String,
    /// DNS names and IP addresses for the serving certificate.
    pub names: Vec<String>,
    pub configuration: Option<String>,
}

impl Source {
    /// The directory when it holds a certificate, else the self-signed fallback.
    pub fn new(dir: Option<&Path>, client: &Client, fallback: SelfSignedOptions) -> Source {
        if let Some(dir) = dir.filter(|d| d.join("tls.crt").exists()) {
            tracing::info!(dir = %dir.display(), "webhook certificate from a directory");
            return Source::Dir(DirSource {
                dir: dir.to_path_buf(),
                loaded: None,
            });
        }
        tracing::info!(secret = %fallback.secret, namespace = %fallback.namespace, names = ?fallback.names,
            "webhook certificate: self-signed, from the CA in the Secret");
        Source::SelfSigned(Box::new(SelfSigned {
            secrets: Api::namespaced(client.clone(), &fallback.namespace),
            secret: fallback.secret,
            names: fallback.names,
            validating: Api::all(client.clone()),
            mutating: Api::all(client.clone()),
            configuration: fallback.configuration,
            signed: None,
            last_problem: None,
        }))
    }

    /// A new server configuration when the certificate changed since the last call (the first
    /// call always gives one), `None` when it did not.
    pub async fn refresh(&mut self) -> Result<Option<Arc<ServerConfig>>, WebhookError> {
        match self {
            Source::Dir(d) => d.refresh().await,
            Source::SelfSigned(s) => s.refresh().await,
        }
    }
}

impl DirSource {
    async fn refresh(&mut self) -> Result<Option<Arc<ServerConfig>>, WebhookError> {
        let cert = read_bounded(&self.dir.join("tls.crt")).await?;
        let key = read_bounded(&self.dir.join("tls.key")).await?;
        if self.loaded.as_ref() == Some(&(cert.clone(), key.clone())) {
            return Ok(None);
        }
        let config = server_config(&cert, &key)?;
        tracing::info!(dir = %self.dir.display(), "webhook certificate loaded");
        self.loaded = Some((cert, key));
        Ok(Some(config))
    }
}

async fn read_bounded(path: &Path) -> Result<Vec<u8>, WebhookError> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| WebhookError::Read(path.display().to_string(), e))?;
    let mut out = Vec::new();
    file.take(MAX_PEM_BYTES)
        .read_to_end(&mut out)
        .await
        .map_err(|e| WebhookError::Read(path.display().to_string(), e))?;
    Ok(out)
}

impl SelfSigned {
    async fn refresh(&mut self) -> Result<Option<Arc<ServerConfig>>, WebhookError> {
        let (ca_cert, ca_key) = self.ca().await?;
        let fresh = match &self.signed {
            Some((ca, at)) => *ca != ca_cert || at.elapsed() > LEAF_RENEW_AFTER,
            None => true,
        };
        let config = if fresh {
            let (cert, key) = sign_leaf(&ca_cert, &ca_key, &self.names)?;
            let config = server_config(cert.as_bytes(), key.as_bytes())?;
            tracing::info!("webhook serving certificate signed by the shared CA");
            self.signed = Some((ca_cert.clone(), Instant::now()));
            Some(config)
        } else {
            None
        };
        if let Some(name) = self.configuration.clone() {
            let problem = match inject_ca_bundle(&self.validating, &name, &ca_cert).await {
                Ok(Injected::Patched) => {
                    tracing::info!(configuration = %name, "webhook CA set in the caBundle");
                    None
                }
                Ok(Injected::Already) => None,
                Ok(Injected::Missing) => Some(format!(
                    "ValidatingWebhookConfiguration {name} not found: no caBundle to set yet"
                )),
                Err(e) => Some(format!("setting the caBundle of {name}: {e}")),
            };
            // The mutating configuration (the finalizer at create) of the same name is
            // optional: the chart leaves it out with `webhook.finalizerAtCreate: false`.
            let injected = inject_ca_bundle(&self.mutating, &name, &ca_cert).await;
            if matches!(injected, Ok(Injected::Patched)) {
                tracing::info!(configuration = %name, "webhook CA set in the mutating caBundle");
            }
            let mutating = mutating_problem(&name, injected);
            let problem = problem.or(mutating);
            if problem != self.last_problem {
                if let Some(p) = &problem {
                    tracing::warn!("{p}");
                }
                self.last_problem = problem;
            }
        }
        Ok(config)
    }

    /// The shared CA, created if absent (a conflict means another replica created it first).
    async fn ca(&self) -> Result<(String, String), WebhookError> {
        if let Some(s) = self.secrets.get_opt(&self.secret).await? {
            return ca_from(&s, &self.secret);
        }
        let (cert, key) = new_ca()?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.secret.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_string(),
                        "kube-beat".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            type_: Some("Opaque".to_string()),
            data: Some(
                [
                    (
                        CA_CERT_KEY.to_string(),
                        ByteString(cert.clone().into_bytes()),
                    ),
                    (CA_KEY_KEY.to_string(), ByteString(key.clone().into_bytes())),
                ]
                .into(),
            ),
            ..Default::default()
        };
        match self.secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %self.secret, "webhook CA created");
                Ok((cert, key))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let s = self.secrets.get(&self.secret).await?;
                ca_from(&s, &self.secret)
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn ca_from(s: &Secret, name: &str) -> Result<(String, String), WebhookError> {
    let field = |key: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| {
                WebhookError::Certificate(format!(
                    "Secret {name} has no {key} (delete it to have a new CA generated)"
                ))
            })
    };
    Ok((field(CA_CERT_KEY)?, field(CA_KEY_KEY)?))
}

/// A new CA: its certificate and key, PEM.
pub fn new_ca() -> Result<(String, String), WebhookError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-beat webhook CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    // An hour back: clocks of the apiserver's nodes may lag ours.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `names` (DNS names or IP addresses), signed by the CA.
pub fn sign_leaf(
    ca_cert: &str,
    ca_key: &str,
    names: &[String],
) -> Result<(String, String), WebhookError> {
    let issuer = Issuer::from_ca_cert_pem(ca_cert, KeyPair::from_pem(ca_key)?)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("kube-beat"),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + LEAF_VALIDITY;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// rustls's server configuration for a PEM certificate chain and key (ring, as kube uses).
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, WebhookError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        WebhookError::Certificate(format!("reading the {what}: {e}"))
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", &e))?;
    if chain.is_empty() {
        return Err(WebhookError::Certificate(
            "no certificate in the PEM".to_string(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("private key", &e))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS versions", &e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| bad("certificate and key", &e))?;
    // HTTP/1.1 only (the apiserver speaks it to webhooks that offer nothing else): its header
    // read timeout closes a connection that never sends a request; HTTP/2 (and the protocol
    // sniffing of a server offering both) has no such bound.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

enum Injected {
    Patched,
    Already,
    Missing,
}

/// What to warn about after keeping the mutating configuration's caBundle set. It is optional
/// (the chart leaves it out with `webhook.finalizerAtCreate: false`), and so is the permission
/// to read it: the chart grants `get` on it only with the configuration. A 403 is therefore the
/// same as not found, not a problem to warn about at every start.
fn mutating_problem(name: &str, injected: Result<Injected, kube::Error>) -> Option<String> {
    match injected {
        Ok(_) => None,
        Err(kube::Error::Api(s)) if s.code == 403 => {
            tracing::debug!(
                configuration = %name,
                "no permission to read the MutatingWebhookConfiguration: taken as not installed"
            );
            None
        }
        Err(e) => Some(format!(
            "setting the caBundle of MutatingWebhookConfiguration {name}: {e}"
        )),
    }
}

/// A webhook configuration kind (validating or mutating) whose caBundles the fallback keeps set.
trait WebhookConfiguration:
    kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug
{
    /// Each webhook's caBundle, in order.
    fn bundles(&self) -> Vec<Option<&ByteString>>;
}

impl WebhookConfiguration for ValidatingWebhookConfiguration {
    fn bundles(&self) -> Vec<Option<&ByteString>> {
        let hooks = self.webhooks.iter().flatten();
        hooks.map(|w| w.client_config.ca_bundle.as_ref()).collect()
    }
}

impl WebhookConfiguration for MutatingWebhookConfiguration {
    fn bundles(&self) -> Vec<Option<&ByteString>> {
        let hooks = self.webhooks.iter().flatten();
        hooks.map(|w| w.client_config.ca_bundle.as_ref()).collect()
    }
}

/// Set `ca_pem` as the caBundle of every webhook of the configuration. A JSON patch guarded by
/// the resourceVersion it was computed from: only the bundles change, and a configuration
/// changed meanwhile fails the patch (retried at the next refresh) instead of being overwritten.
async fn inject_ca_bundle<K: WebhookConfiguration>(
    api: &Api<K>,
    name: &str,
    ca_pem: &str,
) -> Result<Injected, kube::Error> {
    let Some(configuration) = api.get_opt(name).await? else {
        return Ok(Injected::Missing);
    };
    let want = ByteString(ca_pem.as_bytes().to_vec());
    let encoded = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes())
    };
    let mut ops = vec![serde_json::json!({
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": configuration.meta().resource_version,
    })];
    for (i, bundle) in configuration.bundles().into_iter().enumerate() {
        if bundle != Some(&want) {
            ops.push(serde_json::json!({
                "op": "add",
                "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": encoded,
            }));
        }
    }
    if ops.len() == 1 {
        return Ok(Injected::Already);
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(kube::Error::SerdeError)?;
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    Ok(Injected::Patched)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("denied", "Forbidden").with_code(code),
        ))
    }

    #[test]
    fn an_unreadable_mutating_configuration_is_not_a_problem() {
        for fine in [Injected::Patched, Injected::Already, Injected::Missing] {
            assert_eq!(mutating_problem("kb", Ok(fine)), None);
        }
        // Not granted: the chart with `webhook.finalizerAtCreate: false`.
        assert_eq!(mutating_problem("kb", Err(api_error(403))), None);
        // Anything else is still worth a warning, and names the configuration.
        for code in [409, 422, 500] {
            let problem = mutating_problem("kb", Err(api_error(code))).expect("a problem");
            assert!(
                problem.contains("MutatingWebhookConfiguration kb"),
                "{problem}"
            );
        }
    }

    #[test]
    fn leaves_signed_by_one_ca_serve_and_garbage_is_refused() {
        let (ca, ca_key) = new_ca().expect("ca");
        let names = vec!["kb.ns.svc".to_string(), "127.0.0.1".to_string()];
        let (a, a_key) = sign_leaf(&ca, &ca_key, &names).expect("leaf a");
        let (b, _) = sign_leaf(&ca, &ca_key, &names).expect("leaf b");
        assert_ne!(a, b, "each replica its own certificate");
        server_config(a.as_bytes(), a_key.as_bytes()).expect("serves");
        assert!(server_config(b"garbage", a_key.as_bytes()).is_err());
        assert!(server_config(a.as_bytes(), b"garbage").is_err());
        assert!(sign_leaf("garbage", &ca_key, &names).is_err());
        assert!(sign_leaf(&ca, "garbage", &names).is_err());
    }
}
