//! The identity store: users and revocations, behind one trait with two implementations
//! (`postgres` for production and Neon, `sqlite` as the zero-setup embedded default). Both pass
//! the same contract test suite (`tests/store_contract.rs`). Only the identity endpoints and
//! background services touch the store; the edge's hot path never does.

pub mod postgres;
pub mod sqlite;

pub mod upkeep;

pub use crate::authn::revocation::Revocation;

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

/// A stored user, without the password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    /// As registered (trimmed); compared case-insensitively.
    pub email: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Set by `portcullis users roles`; own tokens carry them as `roles` (when not empty).
    pub roles: Vec<String>,
}

/// A user with the bcrypt hash, for sign-in only.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

/// Revocations recorded after a cursor, and the cursor to ask from next time.
#[derive(Debug, Clone, Default)]
pub struct RevocationBatch {
    pub revocations: Vec<Revocation>,
    pub cursor: Cursor,
}

/// Where a replica is in the revocation log. Opaque to callers: `Cursor::default()` asks for
/// everything still in force. Implementations re-read a short overlap window behind it, so a
/// row committed late (with an earlier sequence number) is never skipped; applying a
/// revocation twice is harmless.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor(pub i64);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another user already has this email (compared case-insensitively).
    #[error("email already registered")]
    EmailTaken,
    /// The database cannot be reached or timed out; worth a retry later (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else; the cause is logged, never shown to clients (500).
    #[error("store error: {0}")]
    Other(String),
}

#[async_trait]
pub trait UserStore: Send + Sync + std::fmt::Debug {
    /// Creates a user. `email` is already trimmed and validated; uniqueness is
    /// case-insensitive and enforced by the database, not by a prior lookup.
    async fn create_user(&self, email: &str, password_hash: &str) -> Result<User, StoreError>;

    /// The user with this email (case-insensitive), with the hash.
    async fn credentials_by_email(&self, email: &str) -> Result<Option<Credentials>, StoreError>;

    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError>;

    /// Replaces the roles of the user with this email (case-insensitive); `None` when there is
    /// no such user. `roles` is already validated ([`valid_roles`]).
    async fn set_roles(&self, email: &str, roles: &[String]) -> Result<Option<User>, StoreError>;

    /// Records a revocation and tells the other replicas (Postgres: `NOTIFY`).
    async fn revoke(&self, user_id: Uuid, revocation: &Revocation) -> Result<(), StoreError>;

    /// Revocations still in force at `now` recorded after `cursor` (see [`Cursor`]).
    async fn revocations_since(
        &self,
        cursor: Cursor,
        now: i64,
    ) -> Result<RevocationBatch, StoreError>;

    /// Deletes revocations that protect nothing any more (`expires_at < now`).
    async fn prune_revocations(&self, now: i64) -> Result<u64, StoreError>;

    /// Adds `add` attempts (0: only reads) to `key`'s count in the minute starting at `window`
    /// (unix seconds, a multiple of 60) in one statement, and returns the counts of that minute
    /// and of the one before it (`rate_limit.scope = "cluster"`).
    async fn count_attempts(
        &self,
        key: &[u8],
        window: i64,
        add: i32,
    ) -> Result<(i64, i64), StoreError>;

    /// Deletes attempt counts of minutes that started before `before`.
    async fn prune_attempts(&self, before: i64) -> Result<u64, StoreError>;

    /// Cheap round trip for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The connection pool's state, for metrics; `None` for stores without a pool.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
}

/// Most roles one user may hold, and the longest role.
pub const MAX_ROLES: usize = 32;
pub const MAX_ROLE_BYTES: usize = 64;

/// Roles as given on the command line, checked and in a canonical order (sorted, no
/// duplicates): each 1..=64 bytes of `A-Za-z0-9` and `_.:-` (what a claim rule can name in TOML
/// without quoting surprises and what no header or log line needs to escape).
pub fn valid_roles(given: &[String]) -> Result<Vec<String>, String> {
    let mut roles: Vec<String> = Vec::with_capacity(given.len());
    for role in given {
        let ok = !role.is_empty()
            && role.len() <= MAX_ROLE_BYTES
            && role
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if !ok {
            return Err(format!(
                "role `{}` must be 1 to {MAX_ROLE_BYTES} of A-Z a-z 0-9 _ . : -",
                role.escape_default()
            ));
        }
        roles.push(role.clone());
    }
    roles.sort();
    roles.dedup();
    if roles.len() > MAX_ROLES {
        return Err(format!("at most {MAX_ROLES} roles"));
    }
    Ok(roles)
}

/// A connection pool at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    pub max: usize,
    pub open: usize,
    pub idle: usize,
    pub waiting: usize,
}

pub type SharedStore = Arc<dyn UserStore>;

/// Applies the pending migrations of a store.
#[async_trait]
pub trait Migrate: Send + Sync + std::fmt::Debug {
    async fn migrate(&self) -> Result<(), StoreError>;
}

/// Whether the store can serve the identity endpoints: migrated, and answering.
#[derive(Debug, Default)]
pub struct StoreHealth {
    pub migrated: std::sync::atomic::AtomicBool,
    pub up: std::sync::atomic::AtomicBool,
}

impl StoreHealth {
    pub fn ready(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.migrated.load(Relaxed) && self.up.load(Relaxed)
    }

    pub fn set_up(&self, up: bool) -> bool {
        let was = self.up.swap(up, std::sync::atomic::Ordering::Relaxed);
        crate::ops::metrics::STORE_UP.set(i64::from(up));
        was
    }
}

/// A store opened from its URL, with the extra abilities its kind has.
#[derive(Debug)]
pub struct Opened {
    pub store: SharedStore,
    pub migrator: Arc<dyn Migrate>,
    /// Postgres only: a `LISTEN` connection for fast revocation news.
    pub listener: Option<Arc<dyn Listen>>,
}

/// Opens the store named by `url` without connecting (a store down at start is no config
/// error). The error is one line and never contains the URL's password.
pub fn open(url: &str) -> Result<Opened, String> {
    if url.starts_with("sqlite:") {
        let s = Arc::new(sqlite::SqliteStore::open(url)?);
        Ok(Opened {
            store: s.clone(),
            migrator: s,
            listener: None,
        })
    } else {
        let s = Arc::new(postgres::PostgresStore::new(url)?);
        Ok(Opened {
            store: s.clone(),
            migrator: s.clone(),
            listener: Some(s),
        })
    }
}

#[async_trait]
impl Migrate for sqlite::SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlite::SqliteStore::migrate(self).await
    }
}

#[async_trait]
impl Migrate for postgres::PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        postgres::PostgresStore::migrate(self).await
    }
}

#[async_trait]
impl Listen for postgres::PostgresStore {
    async fn listen(&self, notify: tokio::sync::mpsc::Sender<()>) -> Result<(), StoreError> {
        postgres::PostgresStore::listen(self, notify).await
    }
}

/// A store that can push revocation news (Postgres `LISTEN`).
#[async_trait]
pub trait Listen: Send + Sync + std::fmt::Debug {
    /// Sends `()` on every notification; returns when the connection drops.
    async fn listen(&self, notify: tokio::sync::mpsc::Sender<()>) -> Result<(), StoreError>;
}
