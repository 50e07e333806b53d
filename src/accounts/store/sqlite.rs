//! SQLite implementation of the identity store, the zero-setup default.
//!
//! One connection behind a mutex; every call runs on tokio's blocking pool. The file is in
//! WAL mode with a busy timeout, so several processes (or several stores) can share it.
//! Failures (a full disk, a read-only file, a locked database) come back as errors.
//! Revocations are replicated by polling `revocations_since` only: there is no `NOTIFY`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use percent_encoding::percent_decode_str;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Credentials, Cursor, Revocation, RevocationBatch, StoreError, User, UserStore};

/// How far behind its cursor `revocations_since` re-reads (see `revocations_since`).
const OVERLAP_MICROS: i64 = 5_000_000;
/// How long a statement waits for another writer before giving up with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// The file, or `:memory:`, for logs and `Debug`.
    location: String,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Where a `sqlite:` URL points.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    Memory,
    File(PathBuf),
}

fn parse_url(url: &str) -> Result<Location, String> {
    let rest = url
        .strip_prefix("sqlite:")
        .ok_or_else(|| "store.url: expected sqlite://path".to_owned())?;
    if rest == ":memory:" || rest == "//:memory:" {
        return Ok(Location::Memory);
    }
    if rest.contains('?') {
        return Err("store.url: sqlite URLs take no parameters".to_owned());
    }
    // sqlite://relative/path.db (working directory), sqlite:///abs/path.db, sqlite:path.db
    let path = rest.strip_prefix("//").unwrap_or(rest);
    let path = percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| "store.url: the sqlite path is not valid UTF-8".to_owned())?;
    if path.is_empty() || path.ends_with('/') {
        return Err("store.url: the sqlite URL names no file".to_owned());
    }
    Ok(Location::File(PathBuf::from(&*path)))
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // WAL: readers do not block the writer. In memory the answer is "memory", which is fine.
    let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    // Durable across a process crash; with WAL, NORMAL loses no committed data then.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating it and its directory if needed) the database a URL names:
    /// `sqlite://relative/path.db` (relative to the working directory),
    /// `sqlite:///abs/path.db`, or `sqlite::memory:`.
    pub fn open(url: &str) -> Result<Self, String> {
        let (conn, location) = match parse_url(url)? {
            Location::Memory => (
                Connection::open_in_memory().map_err(|e| format!("store: {e}"))?,
                ":memory:".to_owned(),
            ),
            Location::File(path) => {
                let shown = path.display().to_string();
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        format!("store: cannot create directory {}: {e}", parent.display())
                    })?;
                }
                let conn = Connection::open(&path)
                    .map_err(|e| format!("store: cannot open {shown}: {e}"))?;
                (conn, shown)
            }
        };
        configure(&conn).map_err(|e| format!("store: cannot set up {location}: {e}"))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            location,
        })
    }

    /// The database file (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        (self.location != ":memory:").then(|| Path::new(&self.location))
    }

    /// Applies the migrations in `migrations/sqlite` (refinery, history in
    /// `refinery_schema_history`). Idempotent.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            let report = embedded::migrations::runner()
                .run(conn)
                .map_err(|e| StoreError::Other(format!("migration: {e}")))?;
            for migration in report.applied_migrations() {
                tracing::info!(migration = %migration, "applied migration");
            }
            Ok(())
        })
        .await
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves no transaction open (rusqlite rolls back
            // on drop), so the connection is still usable.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
    }
}

fn map(error: &rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::OutOfMemory => StoreError::Unavailable(error.to_string()),
            _ => StoreError::Other(error.to_string()),
        },
        _ => StoreError::Other(error.to_string()),
    }
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

/// Now, in unix microseconds (the precision both stores keep).
fn now_micros() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

fn time_from_micros(micros: i64) -> rusqlite::Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn uuid_from(text: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// The columns [`user_from`] reads, in its order.
const USER_COLUMNS: &str = "id, email, created_at, updated_at, roles";

/// Columns: [`USER_COLUMNS`] (then anything else).
fn user_from(row: &Row<'_>) -> rusqlite::Result<User> {
    let roles: String = row.get(4)?;
    Ok(User {
        id: uuid_from(&row.get::<_, String>(0)?)?,
        email: row.get(1)?,
        created_at: time_from_micros(row.get(2)?)?,
        updated_at: time_from_micros(row.get(3)?)?,
        roles: serde_json::from_str(&roles).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
        })?,
    })
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, email: &str, password_hash: &str) -> Result<User, StoreError> {
        let email = email.to_owned();
        let password_hash = password_hash.to_owned();
        self.run(move |conn| {
            let id = Uuid::new_v4();
            let now = now_micros();
            conn.prepare_cached(
                "INSERT INTO users (id, email, password_hash, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?4)",
            )
            .and_then(|mut insert| {
                insert.execute(params![id.to_string(), email, password_hash, now])
            })
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::EmailTaken
                } else {
                    map(&e)
                }
            })?;
            let at = time_from_micros(now).map_err(|e| map(&e))?;
            Ok(User {
                id,
                email,
                created_at: at,
                updated_at: at,
                roles: Vec::new(),
            })
        })
        .await
    }

    async fn credentials_by_email(&self, email: &str) -> Result<Option<Credentials>, StoreError> {
        let email = email.to_owned();
        self.run(move |conn| {
            // `email` is declared COLLATE NOCASE: the comparison and the index ignore case.
            conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = ?1"
            ))
            .and_then(|mut select| {
                select
                    .query_row([&email], |row| {
                        Ok(Credentials {
                            user: user_from(row)?,
                            password_hash: row.get(5)?,
                        })
                    })
                    .optional()
            })
            .map_err(|e| map(&e))
        })
        .await
    }

    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        self.run(move |conn| {
            conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))
                .and_then(|mut select| select.query_row([id.to_string()], user_from).optional())
                .map_err(|e| map(&e))
        })
        .await
    }

    async fn set_roles(&self, email: &str, roles: &[String]) -> Result<Option<User>, StoreError> {
        let email = email.to_owned();
        let roles = serde_json::to_string(roles).map_err(|e| StoreError::Other(e.to_string()))?;
        self.run(move |conn| {
            conn.prepare_cached(&format!(
                "UPDATE users SET roles = ?1, updated_at = ?2 WHERE email = ?3 \
                 RETURNING {USER_COLUMNS}"
            ))
            .and_then(|mut update| {
                update
                    .query_row(params![roles, now_micros(), email], user_from)
                    .optional()
            })
            .map_err(|e| map(&e))
        })
        .await
    }

    async fn revoke(&self, user_id: Uuid, revocation: &Revocation) -> Result<(), StoreError> {
        // An all-tokens revocation is enforced for the user it names, so that one is stored.
        let (user_id, jti, issued_before, expires_at) = match revocation {
            Revocation::Token { jti, expires_at } => {
                (user_id, Some(jti.clone()), None, *expires_at)
            }
            Revocation::AllOfUser {
                user_id,
                issued_before,
                expires_at,
            } => (*user_id, None, Some(*issued_before), *expires_at),
        };
        self.run(move |conn| {
            // The time is taken with the write lock held, so the row commits right after it:
            // that is what keeps the overlap window of `revocations_since` sufficient.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| map(&e))?;
            tx.prepare_cached(
                "INSERT INTO revocations (user_id, jti, issued_before, expires_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut insert| {
                insert.execute(params![
                    user_id.to_string(),
                    jti,
                    issued_before,
                    expires_at,
                    now_micros()
                ])
            })
            .map_err(|e| map(&e))?;
            tx.commit().map_err(|e| map(&e))
        })
        .await
    }

    /// The cursor is this machine's clock in unix microseconds, read just before the query
    /// (whose read snapshot starts after it). A revocation's `created_at` is taken while its
    /// writer holds the write lock, right before committing, so a row missed by one read has
    /// `created_at` after that read's cursor or at most a few milliseconds before it; the
    /// next read asks for `created_at > cursor - 5 s` and returns it. Rows can come back
    /// twice; applying a revocation twice is harmless. Every process sharing the file reads
    /// the same machine's clock.
    async fn revocations_since(
        &self,
        cursor: Cursor,
        now: i64,
    ) -> Result<RevocationBatch, StoreError> {
        self.run(move |conn| {
            let clock = now_micros();
            let decode = |row: &Row<'_>| -> rusqlite::Result<Option<Revocation>> {
                let user_id: String = row.get(0)?;
                let jti: Option<String> = row.get(1)?;
                let issued_before: Option<i64> = row.get(2)?;
                let expires_at: i64 = row.get(3)?;
                Ok(match (jti, issued_before) {
                    (Some(jti), _) => Some(Revocation::Token { jti, expires_at }),
                    (None, Some(issued_before)) => Some(Revocation::AllOfUser {
                        user_id: uuid_from(&user_id)?,
                        issued_before,
                        expires_at,
                    }),
                    (None, None) => None,
                })
            };
            let rows: rusqlite::Result<Vec<Option<Revocation>>> = if cursor == Cursor::default() {
                conn.prepare_cached(
                    "SELECT user_id, jti, issued_before, expires_at FROM revocations \
                     WHERE expires_at >= ?1 ORDER BY seq",
                )
                .and_then(|mut select| select.query_map([now], decode)?.collect())
            } else {
                let after = cursor.0.saturating_sub(OVERLAP_MICROS);
                conn.prepare_cached(
                    "SELECT user_id, jti, issued_before, expires_at FROM revocations \
                     WHERE expires_at >= ?1 AND created_at > ?2 ORDER BY seq",
                )
                .and_then(|mut select| select.query_map([now, after], decode)?.collect())
            };
            Ok(RevocationBatch {
                revocations: rows.map_err(|e| map(&e))?.into_iter().flatten().collect(),
                cursor: Cursor(clock),
            })
        })
        .await
    }

    async fn prune_revocations(&self, now: i64) -> Result<u64, StoreError> {
        self.run(move |conn| {
            conn.prepare_cached("DELETE FROM revocations WHERE expires_at < ?1")
                .and_then(|mut delete| delete.execute([now]))
                .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
                .map_err(|e| map(&e))
        })
        .await
    }

    async fn count_attempts(
        &self,
        key: &[u8],
        window: i64,
        add: i32,
    ) -> Result<(i64, i64), StoreError> {
        let key = key.to_vec();
        self.run(move |conn| {
            if add != 0 {
                conn.prepare_cached(
                    "INSERT INTO attempts (key, window_start, count) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (key, window_start) DO UPDATE SET count = count + excluded.count",
                )
                .and_then(|mut upsert| upsert.execute(rusqlite::params![key, window, add]))
                .map_err(|e| map(&e))?;
            }
            conn.prepare_cached(
                "SELECT COALESCE(SUM(CASE WHEN window_start = ?2 THEN count END), 0), \
                        COALESCE(SUM(CASE WHEN window_start = ?2 - 60 THEN count END), 0) \
                 FROM attempts WHERE key = ?1 AND window_start IN (?2, ?2 - 60)",
            )
            .and_then(|mut read| {
                read.query_row(rusqlite::params![key, window], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
            })
            .map_err(|e| map(&e))
        })
        .await
    }

    async fn prune_attempts(&self, before: i64) -> Result<u64, StoreError> {
        self.run(move |conn| {
            conn.prepare_cached("DELETE FROM attempts WHERE window_start < ?1")
                .and_then(|mut delete| delete.execute([before]))
                .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
                .map_err(|e| map(&e))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(|e| map(&e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("sqlite::memory:"), Ok(Location::Memory));
        assert_eq!(
            parse_url("sqlite://data/portcullis.db"),
            Ok(Location::File(PathBuf::from("data/portcullis.db")))
        );
        assert_eq!(
            parse_url("sqlite:///var/lib/p/p.db"),
            Ok(Location::File(PathBuf::from("/var/lib/p/p.db")))
        );
        assert_eq!(
            parse_url("sqlite://my%20dir/p.db"),
            Ok(Location::File(PathBuf::from("my dir/p.db")))
        );
        assert!(parse_url("sqlite://").is_err());
        assert!(parse_url("sqlite://data/").is_err());
        assert!(parse_url("sqlite://p.db?mode=ro").is_err());
        assert!(parse_url("postgres://x/y").is_err());
    }
}
