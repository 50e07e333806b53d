//! PostgreSQL (and Neon) implementation of the identity store.
//!
//! - Connections come from a small deadpool pool, created lazily: [`PostgresStore::new`] only
//!   parses the URL and prepares TLS, so a database that is down (or a Neon compute that is
//!   scaled to zero) at start is not a configuration error; requests see
//!   [`StoreError::Unavailable`] until it answers.
//! - Every statement is sent unnamed (`query_typed*` / `execute_typed` / `simple_query`: Parse
//!   with the empty statement name and explicit parameter types, all in one round trip), never a
//!   named prepared statement, so the store also works through Neon's pooler (PgBouncer in
//!   transaction mode). Only built-in column types are read, so tokio-postgres never has to
//!   look a type up (which would prepare a named statement).
//! - `sslmode` follows libpq; see `tls.rs`.
//! - Error messages never contain the URL or the password.

#[path = "tls.rs"]
pub(crate) mod tls;

use std::fmt;
use std::future::poll_fn;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use percent_encoding::percent_decode_str;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Row};
use tokio_postgres_rustls::MakeRustlsConnect;
use uuid::Uuid;

use self::tls::{RootCert, SslMode};
use super::{Credentials, Cursor, Revocation, RevocationBatch, StoreError, User, UserStore};

/// The channel `revoke` notifies and `listen` listens on.
pub const CHANNEL: &str = "portcullis_revocations";

/// How far behind its cursor `revocations_since` re-reads, so that a row whose transaction
/// committed after a later-stamped one was read is still seen (see `revocations_since`).
const OVERLAP_MICROS: i64 = 5_000_000;

const POOL_SIZE: usize = 8;
/// Waiting for a free connection, opening one (TCP + TLS + auth: a Neon compute waking from
/// zero takes a few hundred milliseconds), and checking an idle one before reuse.
const WAIT_TIMEOUT: Duration = Duration::from_secs(5);
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(2);
/// One store operation end to end: waiting for a connection, the statement, the answer.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP connect, when the URL does not set `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A dedicated connection (migrations, the listener): connect + TLS + auth.
const DEDICATED_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

pub struct PostgresStore {
    pool: Pool,
    /// For the dedicated (non-pooled) connections: migrations and the listener.
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// `host:port/db (sslmode=…)`, for logs and `Debug`; never the password.
    target: String,
    /// The password as written in the URL and decoded, to scrub it from any message.
    secrets: Vec<String>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .field("pool_size", &self.pool.status().max_size)
            .finish_non_exhaustive()
    }
}

/// A `postgres://` URL split into what this module handles (TLS) and what it hands on to
/// tokio-postgres.
struct ParsedUrl {
    /// The URL with the parameters handled here removed.
    rest: String,
    sslmode: Option<SslMode>,
    root: Option<RootCert>,
    sni: bool,
    fallback_application_name: Option<String>,
    secrets: Vec<String>,
}

fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let body = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| "store.url: expected postgres:// or postgresql://".to_owned())?;
    let (before_query, query) = body.split_once('?').unwrap_or((body, ""));

    // user:password@host — the password only matters here to keep it out of messages. The
    // last '@' ends the user info even if the password holds an unencoded '/'.
    let mut secrets = Vec::new();
    let password = before_query
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|password| !password.is_empty());
    if let Some(password) = password {
        secrets.push(password.to_owned());
        let decoded = percent_decode_str(password)
            .decode_utf8_lossy()
            .into_owned();
        if decoded != password {
            secrets.push(decoded);
        }
    }

    let mut parsed = ParsedUrl {
        rest: String::new(),
        sslmode: None,
        root: None,
        sni: true,
        fallback_application_name: None,
        secrets,
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode_str(key).decode_utf8_lossy();
        let value = percent_decode_str(value).decode_utf8_lossy();
        match &*key {
            "sslmode" => parsed.sslmode = Some(tls::SslMode::parse(&value)?),
            "sslrootcert" => {
                parsed.root = match &*value {
                    "" => None,
                    "system" => Some(RootCert::System),
                    path => Some(RootCert::File(path.to_owned())),
                }
            }
            "sslsni" => {
                parsed.sni = match &*value {
                    "1" => true,
                    "0" => false,
                    _ => return Err("store.url: invalid sslsni (expected 0 or 1)".to_owned()),
                }
            }
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(format!(
                    "store.url: {key} (TLS client certificates) is not supported"
                ));
            }
            // libpq settings tokio-postgres does not know, harmless to drop: GSS encryption is
            // never used ("prefer" falls back, "disable" is what happens anyway), TLS
            // compression neither.
            "gssencmode" if value != "require" => {}
            "sslcompression" => {}
            "fallback_application_name" => parsed.fallback_application_name = Some(value.into()),
            _ => kept.push(pair),
        }
    }
    parsed.rest = if kept.is_empty() {
        format!("postgresql://{before_query}")
    } else {
        format!("postgresql://{before_query}?{}", kept.join("&"))
    };
    Ok(parsed)
}

fn scrub(mut message: String, secrets: &[String]) -> String {
    for secret in secrets {
        if !secret.is_empty() && message.contains(secret.as_str()) {
            message = message.replace(secret.as_str(), "********");
        }
    }
    message
}

/// An error and its sources, one line. A database error shows SQLSTATE and message only: its
/// DETAIL can quote row values (an email, say), which do not belong in logs.
fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether a failed statement says the database cannot be used right now (worth a retry) rather
/// than that the statement itself is wrong.
fn is_unavailable(error: &tokio_postgres::Error) -> bool {
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        // 08 connection exception, 28 invalid authorization, 53 insufficient resources,
        // 57P01..57P05 shutdown / cannot connect now / idle timeouts, 40001/40P01 are retried by
        // the caller as "unavailable" too: transient by definition.
        return code.starts_with("08")
            || code.starts_with("28")
            || code.starts_with("53")
            || code.starts_with("57P")
            || code == "40001"
            || code == "40P01";
    }
    if error.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    let text = error.to_string();
    [
        "error communicating with the server",
        "error connecting to server",
        "error performing TLS handshake",
        "timeout waiting for server",
        "authentication error",
    ]
    .iter()
    .any(|prefix| text.starts_with(prefix))
}

impl PostgresStore {
    /// Parses a `postgres://` / `postgresql://` URL (as Neon hands it out) and prepares the
    /// pool and TLS. Does not connect.
    pub fn new(url: &str) -> Result<Self, String> {
        let parsed = parse_url(url)?;
        let secrets = parsed.secrets;
        let fail = |message: String| scrub(message, &secrets);

        let mode = tls::effective_mode(parsed.sslmode, parsed.root.as_ref())
            .map_err(|e| fail(format!("store.url: {e}")))?;
        let mut config = tokio_postgres::Config::from_str(&parsed.rest).map_err(|e| {
            let mut text = e.to_string();
            if let Some(cause) = std::error::Error::source(&e) {
                text = format!("{text}: {cause}");
            }
            fail(format!("store.url: {text}"))
        })?;
        if config.get_hosts().is_empty() {
            return Err("store.url: no host".to_owned());
        }
        config.ssl_mode(mode.transport());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            let name = parsed.fallback_application_name.as_deref();
            config.application_name(name.unwrap_or("portcullis"));
        }
        let mut client_config = tls::client_config(mode, parsed.root.as_ref(), parsed.sni)
            .map_err(|e| fail(format!("store.url: {e}")))?;
        if config.get_ssl_negotiation() == tokio_postgres::config::SslNegotiation::Direct {
            // Direct TLS (PostgreSQL 17+) requires the ALPN protocol "postgresql".
            client_config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        let tls = MakeRustlsConnect::new(client_config);

        let target = describe_target(&config, mode);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT_TIMEOUT))
            .create_timeout(Some(CREATE_TIMEOUT))
            .recycle_timeout(Some(RECYCLE_TIMEOUT))
            .build()
            .map_err(|e| fail(format!("store: {e}")))?;
        Ok(Self {
            pool,
            config,
            tls,
            target,
            secrets,
        })
    }

    /// Applies the migrations in `migrations/postgres` (refinery; its history table
    /// `refinery_schema_history` lives in the first schema of the `search_path`). Runs on a
    /// dedicated connection: refinery prepares its statements, which needs a session (or the
    /// transaction it runs them in) of its own. Idempotent. Two gateways starting together may
    /// race on the first run; the loser retries once and then finds everything applied.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.migrate_once().await {
            Err(StoreError::Other(first)) => {
                tracing::warn!(error = %first, "migration failed; retrying once");
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.migrate_once().await
            }
            result => result,
        }
    }

    async fn migrate_once(&self) -> Result<(), StoreError> {
        let (mut client, driver) = self.connect_dedicated().await?;
        let result = embedded::migrations::runner()
            .run_async(&mut client)
            .await
            .map(|report| {
                for migration in report.applied_migrations() {
                    tracing::info!(migration = %migration, "applied migration");
                }
            })
            .map_err(|e| StoreError::Other(self.scrub(format!("migration: {e}"))));
        drop(client);
        driver.abort();
        result
    }

    /// Listens for revocations: opens a dedicated connection (not from the pool), runs
    /// `LISTEN portcullis_revocations` and sends `()` on `notify` for every notification.
    /// Once the `LISTEN` is in place it also sends one `()` straight away, so the caller
    /// catches up on whatever was recorded while it was not listening.
    ///
    /// Returns `Err` when the connection cannot be opened or drops (the caller reconnects with
    /// backoff), `Ok(())` when the receiver is gone. Needs a direct endpoint: Neon's pooled
    /// endpoint (transaction mode) does not deliver notifications, so there the caller falls
    /// back to polling `revocations_since`.
    pub async fn listen(&self, notify: mpsc::Sender<()>) -> Result<(), StoreError> {
        let mut config = self.config.clone();
        // Notice a silently dead listener (NAT, suspended compute) within about a minute.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        let connect = config.connect(self.tls.clone());
        let (client, mut connection) = tokio::time::timeout(DEDICATED_CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| StoreError::Unavailable("timed out connecting to the database".into()))?
            .map_err(|e| StoreError::Unavailable(self.scrub(describe(&e))))?;

        let statement = format!("LISTEN {CHANNEL}");
        let listen = client.batch_execute(&statement);
        let mut listen = std::pin::pin!(listen);
        let mut listening = false;
        loop {
            tokio::select! {
                result = &mut listen, if !listening => {
                    result.map_err(|e| self.map(&e))?;
                    listening = true;
                    tracing::debug!(store = %self.target, "listening for revocations");
                    if !signal(&notify) {
                        return Ok(());
                    }
                }
                message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if n.channel() == CHANNEL && !signal(&notify) {
                            return Ok(());
                        }
                    }
                    Some(Ok(AsyncMessage::Notice(notice))) => {
                        tracing::debug!(notice = %notice.message(), "database notice");
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(StoreError::Unavailable(self.scrub(describe(&e)))),
                    None => {
                        return Err(StoreError::Unavailable("listener connection closed".into()));
                    }
                },
                () = notify.closed() => return Ok(()),
            }
        }
    }

    /// Whether the pooled session runs over TLS (from `pg_stat_ssl`), for diagnostics.
    pub async fn session_uses_tls(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_typed_one(
                "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                &[],
            )
            .await
            .map_err(|e| self.map(&e))?;
        row.try_get(0).map_err(|e| self.map(&e))
    }

    async fn connect_dedicated(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
        let connect = self.config.connect(self.tls.clone());
        let (client, connection) = tokio::time::timeout(DEDICATED_CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| StoreError::Unavailable("timed out connecting to the database".into()))?
            .map_err(|e| StoreError::Unavailable(self.scrub(describe(&e))))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "dedicated database connection ended");
            }
        });
        Ok((client, driver))
    }

    /// Runs one store operation (connection wait included) under [`OPERATION_TIMEOUT`]. A
    /// database that stops answering without closing anything (a frozen server, a partition
    /// that swallows packets) would otherwise hold the request, and the revocation sync, for
    /// as long as TCP keeps the connection: for ever when the peer's kernel still acknowledges.
    /// On a time-out the idle connections are dropped too: they may be stuck the same way.
    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if let Ok(result) = tokio::time::timeout(OPERATION_TIMEOUT, op).await {
            result
        } else {
            self.pool.retain(|_, _| false);
            Err(StoreError::Unavailable(format!(
                "no answer from {} within {OPERATION_TIMEOUT:?}",
                self.target
            )))
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Timeout(_) => StoreError::Unavailable(format!(
                "timed out getting a database connection ({})",
                self.target
            )),
            PoolError::Backend(e) => StoreError::Unavailable(self.scrub(describe(&e))),
            PoolError::Closed => StoreError::Unavailable("connection pool closed".into()),
            other => StoreError::Other(self.scrub(other.to_string())),
        })
    }

    fn map(&self, error: &tokio_postgres::Error) -> StoreError {
        let message = self.scrub(describe(error));
        if is_unavailable(error) {
            StoreError::Unavailable(message)
        } else {
            StoreError::Other(message)
        }
    }

    fn scrub(&self, message: String) -> String {
        scrub(message, &self.secrets)
    }
}

/// Sends a wake-up, coalescing: if one is already queued the receiver will catch up anyway.
/// `false` when the receiver is gone.
fn signal(notify: &mpsc::Sender<()>) -> bool {
    !matches!(
        notify.try_send(()),
        Err(mpsc::error::TrySendError::Closed(()))
    )
}

fn describe_target(config: &tokio_postgres::Config, mode: SslMode) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db} (sslmode={})", mode.as_str())
}

/// The columns [`user_from`] reads.
const USER_COLUMNS: &str = "id, email, created_at, updated_at, roles";

fn user_from(row: &Row) -> Result<User, tokio_postgres::Error> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        roles: row.try_get("roles")?,
    })
}

fn is_email_taken(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.code().code() == "23505")
}

fn micros_to_time(micros: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .map_err(|e| StoreError::Other(format!("cursor out of range: {e}")))
}

#[async_trait]
impl UserStore for PostgresStore {
    fn pool_status(&self) -> Option<super::PoolStatus> {
        let st = self.pool.status();
        Some(super::PoolStatus {
            max: st.max_size,
            open: st.size,
            idle: st.available,
            waiting: st.waiting,
        })
    }

    async fn create_user(&self, email: &str, password_hash: &str) -> Result<User, StoreError> {
        self.bounded(async {
            let client = self.client().await?;
            let id = Uuid::new_v4();
            let row = client
                .query_typed_one(
                    &format!(
                        "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3) \
                         RETURNING {USER_COLUMNS}"
                    ),
                    &[
                        (&id, Type::UUID),
                        (&email, Type::TEXT),
                        (&password_hash, Type::TEXT),
                    ],
                )
                .await
                .map_err(|e| {
                    if is_email_taken(&e) {
                        StoreError::EmailTaken
                    } else {
                        self.map(&e)
                    }
                })?;
            user_from(&row).map_err(|e| self.map(&e))
        })
        .await
    }

    async fn credentials_by_email(&self, email: &str) -> Result<Option<Credentials>, StoreError> {
        self.bounded(async {
            let client = self.client().await?;
            let row = client
                .query_typed_opt(
                    &format!(
                        "SELECT {USER_COLUMNS}, password_hash FROM users \
                         WHERE lower(email) = lower($1)"
                    ),
                    &[(&email, Type::TEXT)],
                )
                .await
                .map_err(|e| self.map(&e))?;
            row.map(|row| {
                Ok(Credentials {
                    user: user_from(&row)?,
                    password_hash: row.try_get("password_hash")?,
                })
            })
            .transpose()
            .map_err(|e| self.map(&e))
        })
        .await
    }

    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        self.bounded(async {
            let client = self.client().await?;
            let row = client
                .query_typed_opt(
                    &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
                    &[(&id, Type::UUID)],
                )
                .await
                .map_err(|e| self.map(&e))?;
            row.as_ref()
                .map(user_from)
                .transpose()
                .map_err(|e| self.map(&e))
        })
        .await
    }

    async fn set_roles(&self, email: &str, roles: &[String]) -> Result<Option<User>, StoreError> {
        self.bounded(async {
            let client = self.client().await?;
            let row = client
                .query_typed_opt(
                    &format!(
                        "UPDATE users SET roles = $1, updated_at = now() \
                         WHERE lower(email) = lower($2) RETURNING {USER_COLUMNS}"
                    ),
                    &[(&roles, Type::TEXT_ARRAY), (&email, Type::TEXT)],
                )
                .await
                .map_err(|e| self.map(&e))?;
            row.as_ref()
                .map(user_from)
                .transpose()
                .map_err(|e| self.map(&e))
        })
        .await
    }

    /// Inserts the row and notifies in one statement (one implicit transaction): the
    /// notification is delivered at commit, when the row is visible to the listeners' catch-up.
    async fn revoke(&self, user_id: Uuid, revocation: &Revocation) -> Result<(), StoreError> {
        self.bounded(async {
            // An all-tokens revocation is enforced for the user it names, so that one is stored.
            let (user_id, jti, issued_before, expires_at) = match revocation {
                Revocation::Token { jti, expires_at } => {
                    (user_id, Some(jti.as_str()), None, *expires_at)
                }
                Revocation::AllOfUser {
                    user_id,
                    issued_before,
                    expires_at,
                } => (*user_id, None, Some(*issued_before), *expires_at),
            };
            let client = self.client().await?;
            client
                .execute_typed(
                    "WITH r AS ( \
                       INSERT INTO revocations (user_id, jti, issued_before, expires_at) \
                       VALUES ($1, $2, $3, $4) RETURNING seq \
                     ) \
                     SELECT pg_notify('portcullis_revocations', seq::text) IS NULL FROM r",
                    &[
                        (&user_id, Type::UUID),
                        (&jti, Type::TEXT),
                        (&issued_before, Type::INT8),
                        (&expires_at, Type::INT8),
                    ],
                )
                .await
                .map_err(|e| self.map(&e))?;
            Ok(())
        })
        .await
    }

    /// The cursor is a time on the database's clock, in microseconds since the epoch: the
    /// `statement_timestamp()` of the read (taken before the statement's snapshot). A
    /// revocation's `created_at` is `clock_timestamp()` at insert, so a row not yet committed
    /// when a read ran either has `created_at` after that read's cursor, or was inserted
    /// before it and committed less than the overlap window (5 s) later; the next read,
    /// which asks for `created_at > cursor - 5 s`, returns it either way. Rows can come back
    /// twice; applying a revocation twice is harmless. `seq` alone would not do: sequence
    /// numbers are handed out before commit, so a smaller one can become visible after a
    /// larger one was read. Only the database's clock is involved, never a gateway's.
    async fn revocations_since(
        &self,
        cursor: Cursor,
        now: i64,
    ) -> Result<RevocationBatch, StoreError> {
        self.bounded(async {
            const SELECT: &str = "SELECT floor(extract(epoch FROM statement_timestamp()) * 1000000)::int8, \
                    r.user_id, r.jti, r.issued_before, r.expires_at \
                 FROM (SELECT 1) AS one \
                 LEFT JOIN revocations r ON r.expires_at >= $1";
            let client = self.client().await?;
            let rows = if cursor == Cursor::default() {
                client
                    .query_typed(&format!("{SELECT} ORDER BY r.seq"), &[(&now, Type::INT8)])
                    .await
            } else {
                let after = micros_to_time(cursor.0.saturating_sub(OVERLAP_MICROS))?;
                client
                    .query_typed(
                        &format!("{SELECT} AND r.created_at > $2 ORDER BY r.seq"),
                        &[(&now, Type::INT8), (&after, Type::TIMESTAMPTZ)],
                    )
                    .await
            }
            .map_err(|e| self.map(&e))?;

            let mut batch = RevocationBatch {
                revocations: Vec::with_capacity(rows.len()),
                cursor,
            };
            for row in rows {
                let decode = || -> Result<(i64, Option<Revocation>), tokio_postgres::Error> {
                    let clock: i64 = row.try_get(0)?;
                    let Some(user_id) = row.try_get::<_, Option<Uuid>>(1)? else {
                        return Ok((clock, None)); // the LEFT JOIN's empty side: no rows
                    };
                    let jti: Option<String> = row.try_get(2)?;
                    let issued_before: Option<i64> = row.try_get(3)?;
                    let expires_at: i64 = row.try_get(4)?;
                    Ok((
                        clock,
                        match (jti, issued_before) {
                            (Some(jti), _) => Some(Revocation::Token { jti, expires_at }),
                            (None, Some(issued_before)) => Some(Revocation::AllOfUser {
                                user_id,
                                issued_before,
                                expires_at,
                            }),
                            (None, None) => None,
                        },
                    ))
                };
                let (clock, revocation) = decode().map_err(|e| self.map(&e))?;
                // The clock as read, even if it went backwards: that only widens the next read.
                batch.cursor = Cursor(clock);
                batch.revocations.extend(revocation);
            }
            Ok(batch)
        })
        .await
    }

    async fn prune_revocations(&self, now: i64) -> Result<u64, StoreError> {
        self.bounded(async {
            let client = self.client().await?;
            client
                .execute_typed(
                    "DELETE FROM revocations WHERE expires_at < $1",
                    &[(&now, Type::INT8)],
                )
                .await
                .map_err(|e| self.map(&e))
        })
        .await
    }

    async fn count_attempts(
        &self,
        key: &[u8],
        window: i64,
        add: i32,
    ) -> Result<(i64, i64), StoreError> {
        // One unnamed statement either way: safe behind a transaction-mode pooler.
        let sql = if add == 0 {
            "SELECT COALESCE(SUM(count) FILTER (WHERE window_start = $2), 0)::int8, \
                    COALESCE(SUM(count) FILTER (WHERE window_start = $2 - 60), 0)::int8 \
             FROM attempts WHERE key = $1 AND window_start IN ($2, $2 - 60) AND $3 = 0"
        } else {
            "WITH now AS ( \
               INSERT INTO attempts (key, window_start, count) VALUES ($1, $2, $3) \
               ON CONFLICT (key, window_start) DO UPDATE SET count = attempts.count + EXCLUDED.count \
               RETURNING count \
             ) \
             SELECT (SELECT count FROM now)::int8, \
                    COALESCE((SELECT count FROM attempts WHERE key = $1 AND window_start = $2 - 60), 0)::int8"
        };
        self.bounded(async {
            let client = self.client().await?;
            let row = client
                .query_typed_one(
                    sql,
                    &[
                        (&key, Type::BYTEA),
                        (&window, Type::INT8),
                        (&add, Type::INT4),
                    ],
                )
                .await
                .map_err(|e| self.map(&e))?;
            Ok((row.get(0), row.get(1)))
        })
        .await
    }

    async fn prune_attempts(&self, before: i64) -> Result<u64, StoreError> {
        self.bounded(async {
            let client = self.client().await?;
            client
                .execute_typed(
                    "DELETE FROM attempts WHERE window_start < $1",
                    &[(&before, Type::INT8)],
                )
                .await
                .map_err(|e| self.map(&e))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let client = self.client().await?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| self.map(&e))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_what_tokio_postgres_does_not_know() {
        let p = parse_url(
            "postgres://alice:p%40ss@ep-cool-1.eu-central-1.aws.neon.tech/neondb?sslmode=verify-full&sslrootcert=system&channel_binding=require&options=-csearch_path%3Dx",
        )
        .unwrap();
        assert_eq!(p.sslmode, Some(SslMode::VerifyFull));
        assert_eq!(p.root, Some(RootCert::System));
        assert_eq!(
            p.rest,
            "postgresql://alice:p%40ss@ep-cool-1.eu-central-1.aws.neon.tech/neondb?channel_binding=require&options=-csearch_path%3Dx"
        );
        assert_eq!(p.secrets, vec!["p%40ss".to_owned(), "p@ss".to_owned()]);
        tokio_postgres::Config::from_str(&p.rest).unwrap();

        let p = parse_url(
            "postgresql://u@h/db?gssencmode=disable&sslcompression=0&fallback_application_name=psql",
        )
        .unwrap();
        assert_eq!(p.rest, "postgresql://u@h/db");
        assert_eq!(p.fallback_application_name.as_deref(), Some("psql"));
        assert!(
            parse_url("postgresql://u@h/db?gssencmode=require")
                .is_ok_and(|p| p.rest.contains("gssencmode"))
        );
        assert!(
            PostgresStore::new("postgresql://u@h/db?sslnegotiation=direct&sslmode=require").is_ok()
        );
    }

    #[test]
    fn messages_never_hold_the_password() {
        for url in [
            "postgres://u:hunter2secret@host:notaport/db",
            "postgres://u:hunter2secret@host/db?sslmode=bogus",
            "postgres://u:hunter2secret@host/db?frobnicate=1",
            "postgresql://u:hunter2secret@/db",
            "mysql://u:hunter2secret@host/db",
            "postgres://u:hunter2secret/x@host:notaport/db",
        ] {
            let e = PostgresStore::new(url).unwrap_err();
            assert!(!e.contains("hunter2secret"), "{e}");
            assert!(!e.contains("host:notaport"), "{e}");
        }
    }

    #[tokio::test]
    async fn new_does_not_connect_and_debug_is_clean() {
        let store = PostgresStore::new("postgresql://u:hunter2secret@127.0.0.1:1/db").unwrap();
        let debug = format!("{store:?}");
        assert!(!debug.contains("hunter2secret"), "{debug}");
        assert!(debug.contains("sslmode=prefer"), "{debug}");
    }
}
