//! The two things the elector talks to, as small traits, and their production implementations:
//! the Lease object through the kube `Api<Lease>`, and the fencing epoch in Postgres.

use std::{future::Future, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt, watcher},
};
use sqlx::PgPool;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// 409: someone wrote the Lease since we read it (replace carries our resourceVersion), or
    /// created it first. Not an outage: the other writer won this round.
    #[error("conflict: the Lease was written by someone else")]
    Conflict,
    #[error("{0}")]
    Kube(#[source] kube::Error),
}

impl From<kube::Error> for LeaseError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if s.code == 409 => LeaseError::Conflict,
            e => LeaseError::Kube(e),
        }
    }
}

/// One named Lease object. `replace` must fail with [`LeaseError::Conflict`] when the
/// resourceVersion it carries is not the stored one, and `create` when the Lease exists.
pub trait LeaseApi: Send + Sync + 'static {
    fn get(&self) -> impl Future<Output = Result<Option<Lease>, LeaseError>> + Send;
    fn create(&self, lease: &Lease) -> impl Future<Output = Result<Lease, LeaseError>> + Send;
    fn replace(&self, lease: &Lease) -> impl Future<Output = Result<Lease, LeaseError>> + Send;
    /// Runs until dropped, waking `changed` whenever the Lease is written with a holder other
    /// than `identity` (released, renewed by another holder, taken). Best effort: the retry
    /// period still bounds takeover.
    fn watch_others(
        &self,
        identity: String,
        changed: Arc<Notify>,
    ) -> impl Future<Output = ()> + Send + 'static;
}

/// Bumps the fencing epoch on each acquisition.
pub trait EpochFence: Send + Sync + 'static {
    fn bump(&self, holder: &str) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;
}

/// The Lease through the apiserver.
#[derive(Clone)]
pub struct KubeLeases {
    api: Api<Lease>,
    name: String,
}

impl KubeLeases {
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        KubeLeases {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
        }
    }
}

impl LeaseApi for KubeLeases {
    async fn get(&self) -> Result<Option<Lease>, LeaseError> {
        Ok(self.api.get_opt(&self.name).await?)
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        Ok(self.api.create(&PostParams::default(), lease).await?)
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        Ok(self
            .api
            .replace(&self.name, &PostParams::default(), lease)
            .await?)
    }

    fn watch_others(
        &self,
        identity: String,
        changed: Arc<Notify>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let api = self.api.clone();
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        async move {
            let mut events = std::pin::pin!(watcher(api, cfg).default_backoff().applied_objects());
            while let Some(event) = events.next().await {
                if let Ok(lease) = event {
                    let holder = lease
                        .spec
                        .and_then(|s| s.holder_identity)
                        .unwrap_or_default();
                    if holder != identity {
                        changed.notify_one();
                    }
                }
            }
        }
    }
}

/// The epoch in Postgres (`store::leader`).
#[derive(Clone)]
pub struct PgFence {
    pool: PgPool,
}

impl PgFence {
    pub fn new(pool: PgPool) -> Self {
        PgFence { pool }
    }
}

impl EpochFence for PgFence {
    async fn bump(&self, holder: &str) -> Result<i64, sqlx::Error> {
        crate::store::leader::bump_epoch(&self.pool, holder).await
    }
}
