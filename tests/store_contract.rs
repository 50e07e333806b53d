//! The identity store contract: one suite of behaviours, run against both stores
//! (`sqlite::*` on a temporary file, `postgres::*` on `TEST_DATABASE_URL`), plus Postgres-only
//! tests for TLS (`sslmode`), availability errors, secrets in messages and `LISTEN`.
//!
//! `TEST_DATABASE_URL` must be set (CI exports it; locally e.g.
//! `postgres://postgres@127.0.0.1:5432/test`): without it the Postgres tests fail, they never
//! skip. Each Postgres test gets its own schema (`search_path` through the URL's `options`, so
//! refinery's history table lands there too) or, for `LISTEN`, its own database, so the tests
//! run in parallel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::accounts::store::postgres::PostgresStore;
use portcullis::accounts::store::sqlite::SqliteStore;
use portcullis::accounts::store::{Cursor, Revocation, StoreError, UserStore};
use tokio_postgres::NoTls;
use uuid::Uuid;

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn test_database_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_DATABASE_URL is not set: the Postgres store tests need a database, e.g. \
             TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test (they fail rather than skip)"
        )
    })
}

/// `url` with a query parameter appended (`value` already percent-encoded).
fn with_param(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// The pieces of a `postgres://user@host:port/db?query` URL, for rewriting host or database.
struct UrlParts {
    scheme_and_userinfo: String,
    host: String,
    port: String,
    db: String,
    query: String,
}

fn split_url(url: &str) -> UrlParts {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, ""));
    UrlParts {
        scheme_and_userinfo: format!("{scheme}://{userinfo}"),
        host: host.to_owned(),
        port: port.to_owned(),
        db: db.to_owned(),
        query: query.to_owned(),
    }
}

fn join_url(p: &UrlParts) -> String {
    let port = if p.port.is_empty() {
        String::new()
    } else {
        format!(":{}", p.port)
    };
    let query = if p.query.is_empty() {
        String::new()
    } else {
        format!("?{}", p.query)
    };
    format!("{}{}{port}/{}{query}", p.scheme_and_userinfo, p.host, p.db)
}

fn with_host(url: &str, host: &str) -> String {
    let mut parts = split_url(url);
    host.clone_into(&mut parts.host);
    join_url(&parts)
}

fn with_db(url: &str, db: &str) -> String {
    let mut parts = split_url(url);
    db.clone_into(&mut parts.db);
    join_url(&parts)
}

/// A plain (no TLS) admin connection, for setting up and inspecting test databases.
async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to TEST_DATABASE_URL: {e}"));
    tokio::spawn(connection);
    client
}

/// Runs SQL on a fresh connection from a thread of its own: usable from `Drop`.
fn run_detached(url: String, sql: String) {
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            if let Ok((client, connection)) = tokio_postgres::connect(&url, NoTls).await {
                tokio::spawn(connection);
                let _ = client.batch_execute(&sql).await;
            }
        });
    })
    .join();
}

/// A schema of its own, dropped at the end of the test.
struct PgSchema {
    base_url: String,
    name: String,
}

impl PgSchema {
    async fn create() -> Self {
        let base_url = test_database_url();
        let name = format!("t_{}", Uuid::new_v4().simple());
        admin(&base_url)
            .await
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create schema");
        Self { base_url, name }
    }

    /// The URL whose sessions put this schema first on the `search_path`.
    fn url(&self) -> String {
        with_param(
            &self.base_url,
            "options",
            &format!("-csearch_path%3D{}", self.name),
        )
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        run_detached(
            self.base_url.clone(),
            format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        );
    }
}

/// A database of its own (notifications are per database), dropped at the end of the test.
struct PgDatabase {
    base_url: String,
    name: String,
}

impl PgDatabase {
    async fn create() -> Self {
        let base_url = test_database_url();
        let name = format!("t_{}", Uuid::new_v4().simple());
        admin(&base_url)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        Self { base_url, name }
    }

    fn url(&self) -> String {
        with_db(&self.base_url, &self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        run_detached(
            self.base_url.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

enum Backend {
    Sqlite {
        store: Arc<SqliteStore>,
        url: String,
        path: PathBuf,
        _dir: tempfile::TempDir,
    },
    Postgres {
        store: Arc<PostgresStore>,
        url: String,
        _schema: PgSchema,
    },
}

/// One store under test, plus a side door into its database to inspect and age rows.
struct Harness {
    backend: Backend,
}

impl Harness {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested/dir/store.db");
        let url = format!("sqlite://{}", path.display());
        let store = Arc::new(SqliteStore::open(&url).expect("open sqlite"));
        store.migrate().await.expect("migrate sqlite");
        assert!(
            path.exists(),
            "the database file and its directory are created"
        );
        Self {
            backend: Backend::Sqlite {
                store,
                url,
                path,
                _dir: dir,
            },
        }
    }

    async fn postgres() -> Self {
        let schema = PgSchema::create().await;
        let url = schema.url();
        let store = Arc::new(PostgresStore::new(&url).expect("postgres url"));
        store.migrate().await.expect("migrate postgres");
        Self {
            backend: Backend::Postgres {
                store,
                url,
                _schema: schema,
            },
        }
    }

    fn store(&self) -> Arc<dyn UserStore> {
        match &self.backend {
            Backend::Sqlite { store, .. } => store.clone(),
            Backend::Postgres { store, .. } => store.clone(),
        }
    }

    /// Another store instance (another pool / connection) on the same database.
    async fn another(&self) -> Arc<dyn UserStore> {
        match &self.backend {
            Backend::Sqlite { url, .. } => {
                let store = SqliteStore::open(url).expect("open sqlite");
                store.migrate().await.expect("migrate");
                Arc::new(store)
            }
            Backend::Postgres { url, .. } => {
                let store = PostgresStore::new(url).expect("postgres url");
                store.migrate().await.expect("migrate");
                Arc::new(store)
            }
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite { store, .. } => store.migrate().await,
            Backend::Postgres { store, .. } => store.migrate().await,
        }
    }

    /// `SELECT count(*) FROM <table>` through the side door.
    async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).expect("side door");
                conn.query_row(&sql, [], |r| r.get(0)).expect("count")
            }
            Backend::Postgres { url, .. } => admin(url)
                .await
                .query_one(&sql, &[])
                .await
                .expect("count")
                .get(0),
        }
    }

    /// Moves the `created_at` of the revocation rows matching `filter` (SQL) `secs` seconds
    /// into the past, as if they had been recorded (or committed) earlier.
    async fn backdate_revocations(&self, filter: &str, secs: i64) {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).expect("side door");
                conn.busy_timeout(Duration::from_secs(5))
                    .expect("busy timeout");
                conn.execute(
                    &format!(
                        "UPDATE revocations SET created_at = created_at - {secs} * 1000000 WHERE {filter}"
                    ),
                    [],
                )
                .expect("backdate");
            }
            Backend::Postgres { url, .. } => {
                admin(url)
                    .await
                    .batch_execute(&format!(
                        "UPDATE revocations SET created_at = created_at - interval '{secs} seconds' WHERE {filter}"
                    ))
                    .await
                    .expect("backdate");
            }
        }
    }
}

/// The behaviours every store has, each an async fn over a [`Harness`].
mod contract {
    use super::*;

    const HASH: &str = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";

    pub async fn create_then_find_by_email(h: &Harness) {
        let store = h.store();
        let before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
        let created = store
            .create_user("Alice@Example.com", HASH)
            .await
            .expect("create");
        assert_eq!(created.email, "Alice@Example.com", "kept as registered");
        assert_eq!(created.created_at, created.updated_at);
        assert!(created.created_at > before);
        assert!(created.created_at < time::OffsetDateTime::now_utc() + time::Duration::minutes(1));

        // The caller trims; case does not matter.
        for spelling in [
            "Alice@Example.com",
            "alice@example.com",
            "ALICE@EXAMPLE.COM",
            "  aLiCe@eXample.COM \t".trim(),
        ] {
            let found = store
                .credentials_by_email(spelling)
                .await
                .expect("lookup")
                .unwrap_or_else(|| panic!("{spelling} finds the user"));
            assert_eq!(found.user, created, "round trip is exact (times included)");
            assert_eq!(found.password_hash, HASH);
        }
    }

    pub async fn duplicate_email_in_another_case_is_taken(h: &Harness) {
        let store = h.store();
        let first = store.create_user("bob@x.com", HASH).await.expect("create");
        for other in ["bob@x.com", "BOB@X.COM", "Bob@X.com"] {
            let err = store
                .create_user(other, "$2b$12$other")
                .await
                .expect_err("duplicate");
            assert!(matches!(err, StoreError::EmailTaken), "{other}: {err:?}");
        }
        assert_eq!(h.count("users").await, 1, "nothing stored twice");
        let found = store
            .credentials_by_email("BOB@x.COM")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.user, first);
        assert_eq!(
            found.password_hash, HASH,
            "the first registration is untouched"
        );
    }

    pub async fn user_by_id(h: &Harness) {
        let store = h.store();
        let created = store.create_user("carol@x.com", HASH).await.unwrap();
        let other = store.create_user("dave@x.com", HASH).await.unwrap();
        assert_ne!(created.id, other.id);
        assert_eq!(store.user_by_id(created.id).await.unwrap(), Some(created));
        assert_eq!(store.user_by_id(other.id).await.unwrap(), Some(other));
        assert_eq!(store.user_by_id(Uuid::new_v4()).await.unwrap(), None);
    }

    pub async fn roles_are_set_by_email_read_back_everywhere_and_cleared(h: &Harness) {
        let store = h.store();
        let created = store.create_user("Erin@x.com", HASH).await.unwrap();
        assert!(created.roles.is_empty(), "a new user has no roles");
        let other = store.create_user("frank@x.com", HASH).await.unwrap();
        let roles = vec!["admin".to_owned(), "ops:read".to_owned()];
        let set = store
            .set_roles("ERIN@X.COM", &roles)
            .await
            .unwrap()
            .expect("the user, found case-insensitively");
        assert_eq!((set.id, set.roles.clone()), (created.id, roles.clone()));
        assert!(set.updated_at >= created.updated_at);
        assert_eq!(set.created_at, created.created_at);
        assert_eq!(
            store.user_by_id(created.id).await.unwrap(),
            Some(set.clone())
        );
        let creds = store
            .credentials_by_email("erin@x.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(creds.user.roles, roles, "sign-in sees the roles");
        assert_eq!(creds.password_hash, HASH);
        // Nobody else's roles change.
        assert!(
            store
                .user_by_id(other.id)
                .await
                .unwrap()
                .unwrap()
                .roles
                .is_empty()
        );
        let cleared = store.set_roles("erin@x.com", &[]).await.unwrap().unwrap();
        assert!(cleared.roles.is_empty());
        assert!(
            store
                .set_roles("nobody@x.com", &roles)
                .await
                .unwrap()
                .is_none(),
            "an unknown email is None, not an error"
        );
    }

    pub async fn unknown_email_is_none(h: &Harness) {
        let store = h.store();
        assert!(
            store
                .credentials_by_email("nobody@x.com")
                .await
                .unwrap()
                .is_none()
        );
        store.create_user("somebody@x.com", HASH).await.unwrap();
        assert!(
            store
                .credentials_by_email("nobody@x.com")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .credentials_by_email("somebody@x.co")
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.credentials_by_email("").await.unwrap().is_none());
    }

    pub async fn revocations_show_up_from_the_start(h: &Harness) {
        let store = h.store();
        let now = unix_now();
        let user = store.create_user("erin@x.com", HASH).await.unwrap();
        let token = Revocation::Token {
            jti: "jti-1".into(),
            expires_at: now + 3600,
        };
        let all = Revocation::AllOfUser {
            user_id: user.id,
            issued_before: now,
            expires_at: now + 3600,
        };
        store.revoke(user.id, &token).await.unwrap();
        store.revoke(user.id, &all).await.unwrap();

        let batch = store
            .revocations_since(Cursor::default(), now)
            .await
            .unwrap();
        assert_eq!(batch.revocations, vec![token, all]);
        assert_ne!(batch.cursor, Cursor::default());
    }

    pub async fn incremental_cursor_returns_new_rows_only(h: &Harness) {
        let store = h.store();
        let now = unix_now();
        let user = Uuid::new_v4();
        let old = Revocation::Token {
            jti: "old".into(),
            expires_at: now + 3600,
        };
        store.revoke(user, &old).await.unwrap();
        // Recorded well before the overlap window of any cursor taken from now on.
        h.backdate_revocations("jti = 'old'", 60).await;

        let first = store
            .revocations_since(Cursor::default(), now)
            .await
            .unwrap();
        assert_eq!(first.revocations, vec![old.clone()]);

        let new = Revocation::Token {
            jti: "new".into(),
            expires_at: now + 3600,
        };
        let all = Revocation::AllOfUser {
            user_id: user,
            issued_before: now,
            expires_at: now + 7200,
        };
        store.revoke(user, &new).await.unwrap();
        store.revoke(user, &all).await.unwrap();
        let second = store.revocations_since(first.cursor, now).await.unwrap();
        assert_eq!(second.revocations, vec![new.clone(), all.clone()]);
        assert!(!second.revocations.contains(&old));

        // A row stamped a little before the last cursor (its transaction committed late) is
        // still returned: the overlap window. Repeats are allowed, old rows are not.
        let late = Revocation::Token {
            jti: "late".into(),
            expires_at: now + 3600,
        };
        store.revoke(user, &late).await.unwrap();
        h.backdate_revocations("jti = 'late'", 2).await;
        let third = store.revocations_since(second.cursor, now).await.unwrap();
        assert!(third.revocations.contains(&late), "{:?}", third.revocations);
        assert!(!third.revocations.contains(&old));

        // From the start again: everything in force.
        let again = store
            .revocations_since(Cursor::default(), now)
            .await
            .unwrap();
        assert_eq!(again.revocations, vec![old, new, all, late]);
    }

    pub async fn expired_rows_are_hidden_and_pruned(h: &Harness) {
        let store = h.store();
        let now = unix_now();
        let user = Uuid::new_v4();
        let expired = Revocation::Token {
            jti: "expired".into(),
            expires_at: now - 10,
        };
        let expired_all = Revocation::AllOfUser {
            user_id: user,
            issued_before: now - 100,
            expires_at: now - 1,
        };
        let last_second = Revocation::Token {
            jti: "last-second".into(),
            expires_at: now,
        };
        let live = Revocation::Token {
            jti: "live".into(),
            expires_at: now + 3600,
        };
        for r in [&expired, &expired_all, &last_second, &live] {
            store.revoke(user, r).await.unwrap();
        }

        let batch = store
            .revocations_since(Cursor::default(), now)
            .await
            .unwrap();
        assert_eq!(batch.revocations, vec![last_second.clone(), live.clone()]);
        let incremental = store
            .revocations_since(Cursor(batch.cursor.0 - 1), now)
            .await
            .unwrap();
        assert_eq!(incremental.revocations, vec![last_second, live.clone()]);

        assert_eq!(store.prune_revocations(now).await.unwrap(), 2);
        assert_eq!(h.count("revocations").await, 2);
        assert_eq!(store.prune_revocations(now).await.unwrap(), 0);
        assert_eq!(store.prune_revocations(now + 1).await.unwrap(), 1);
        assert_eq!(
            store
                .revocations_since(Cursor::default(), now + 1)
                .await
                .unwrap()
                .revocations,
            vec![live]
        );
    }

    pub async fn migrate_twice_is_a_no_op(h: &Harness) {
        let store = h.store();
        let user = store.create_user("frank@x.com", HASH).await.unwrap();
        store
            .revoke(
                user.id,
                &Revocation::Token {
                    jti: "j".into(),
                    expires_at: unix_now() + 60,
                },
            )
            .await
            .unwrap();
        let applied = h.count("refinery_schema_history").await;
        assert_eq!(applied, 4, "V1 to V4");

        h.migrate().await.expect("second migrate");
        h.migrate().await.expect("third migrate");
        let _other = h.another().await; // migrates as well

        assert_eq!(h.count("refinery_schema_history").await, applied);
        assert_eq!(h.count("users").await, 1);
        assert_eq!(h.count("revocations").await, 1);
        assert_eq!(store.user_by_id(user.id).await.unwrap(), Some(user));
    }

    pub async fn concurrent_creates_of_the_same_email(h: &Harness) {
        let stores = [h.store(), h.another().await];
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = stores[i % 2].clone();
            let email = if i % 3 == 0 {
                "Gina@X.com"
            } else {
                "gina@x.COM"
            };
            tasks.push(tokio::spawn(
                async move { store.create_user(email, HASH).await },
            ));
        }
        let mut created = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => created += 1,
                Err(StoreError::EmailTaken) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(created, 1, "exactly one create succeeds");
        assert_eq!(h.count("users").await, 1);
    }

    pub async fn ping(h: &Harness) {
        h.store().ping().await.expect("ping");
    }

    /// `rate_limit.scope = "cluster"`: one count per key and minute, shared by every store
    /// handle (replica), the previous minute beside it; old minutes pruned.
    pub async fn attempts_are_counted_per_key_and_minute_and_shared(h: &Harness) {
        let (a, b) = (h.store(), h.another().await);
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let minute = 1_800_000_000; // a multiple of 60
        assert_eq!(a.count_attempts(&k1, minute, 0).await.unwrap(), (0, 0));
        assert_eq!(a.count_attempts(&k1, minute, 1).await.unwrap(), (1, 0));
        assert_eq!(b.count_attempts(&k1, minute, 1).await.unwrap(), (2, 0));
        assert_eq!(
            b.count_attempts(&k1, minute, 0).await.unwrap(),
            (2, 0),
            "a read adds nothing"
        );
        assert_eq!(
            a.count_attempts(&k2, minute, 1).await.unwrap(),
            (1, 0),
            "keys apart"
        );
        assert_eq!(b.count_attempts(&k1, minute + 60, 1).await.unwrap(), (1, 2));
        assert_eq!(
            a.count_attempts(&k1, minute + 120, 0).await.unwrap(),
            (0, 1)
        );
        // Concurrent hits from both handles are all counted.
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                store.count_attempts(&[3u8; 32], minute, 1).await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            a.count_attempts(&[3u8; 32], minute, 0).await.unwrap(),
            (20, 0)
        );
        assert_eq!(a.prune_attempts(minute + 60).await.unwrap(), 3);
        assert_eq!(a.count_attempts(&k1, minute + 60, 0).await.unwrap(), (1, 0));
    }
}

macro_rules! contract_suite {
    ($($behaviour:ident),* $(,)?) => {
        /// The contract against SQLite (a temporary file).
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let harness = super::Harness::sqlite().await;
                    super::contract::$behaviour(&harness).await;
                }
            )*
        }

        /// The contract against Postgres (`TEST_DATABASE_URL`, a schema per test).
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let harness = super::Harness::postgres().await;
                    super::contract::$behaviour(&harness).await;
                }
            )*
        }
    };
}

contract_suite!(
    create_then_find_by_email,
    duplicate_email_in_another_case_is_taken,
    user_by_id,
    roles_are_set_by_email_read_back_everywhere_and_cleared,
    unknown_email_is_none,
    revocations_show_up_from_the_start,
    incremental_cursor_returns_new_rows_only,
    expired_rows_are_hidden_and_pruned,
    migrate_twice_is_a_no_op,
    concurrent_creates_of_the_same_email,
    ping,
    attempts_are_counted_per_key_and_minute_and_shared,
);

/// SQLite only.
mod sqlite_only {
    use super::*;

    #[tokio::test]
    async fn in_memory_store_works() {
        let store = SqliteStore::open("sqlite::memory:").unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        let user = store.create_user("mem@x.com", "h").await.unwrap();
        assert_eq!(
            store
                .credentials_by_email("MEM@x.com")
                .await
                .unwrap()
                .unwrap()
                .user,
            user
        );
    }

    #[tokio::test]
    async fn relative_url_is_relative_to_the_working_directory() {
        let name = format!("target/store-contract-{}/p.db", Uuid::new_v4().simple());
        let store = SqliteStore::open(&format!("sqlite://{name}")).unwrap();
        store.migrate().await.unwrap();
        let expected = std::env::current_dir().unwrap().join(&name);
        assert!(expected.exists(), "{}", expected.display());
        drop(store);
        let _ = std::fs::remove_dir_all(expected.parent().unwrap());
    }

    #[tokio::test]
    async fn unusable_path_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"not a directory").unwrap();
        // The "directory" is a regular file: it cannot be created.
        let err = SqliteStore::open(&format!("sqlite://{}/x.db", file.display())).unwrap_err();
        assert!(err.contains("cannot create directory"), "{err}");
        // Not a database at all.
        let err = match SqliteStore::open(&format!("sqlite://{}", file.display())) {
            Err(e) => e,
            Ok(store) => match store.migrate().await {
                Err(e) => e.to_string(),
                Ok(()) => panic!("a garbage file migrated"),
            },
        };
        assert!(err.contains("not a database"), "{err}");
    }

    #[tokio::test]
    async fn queries_before_migrate_are_errors() {
        let store = SqliteStore::open("sqlite::memory:").unwrap();
        let err = store.create_user("x@x.com", "h").await.unwrap_err();
        assert!(matches!(err, StoreError::Other(_)), "{err:?}");
    }
}

/// Postgres only: TLS, availability, secrets, notifications.
mod postgres_only {
    use super::*;

    async fn tls_in_use(url: &str) -> Result<bool, StoreError> {
        let store = PostgresStore::new(url).expect("valid url");
        store.ping().await?;
        store.session_uses_tls().await
    }

    #[tokio::test]
    async fn sslmode_require_encrypts_without_verifying() {
        let url = with_param(&test_database_url(), "sslmode", "require");
        assert!(tls_in_use(&url).await.expect("require connects"));
    }

    #[tokio::test]
    async fn sslmode_prefer_is_the_default_and_uses_tls_when_offered() {
        assert!(tls_in_use(&test_database_url()).await.expect("connects"));
        let url = with_param(&test_database_url(), "sslmode", "prefer");
        assert!(tls_in_use(&url).await.expect("prefer connects"));
    }

    #[tokio::test]
    async fn sslmode_disable_is_plaintext() {
        let url = with_param(&test_database_url(), "sslmode", "disable");
        assert!(!tls_in_use(&url).await.expect("disable connects"));
    }

    #[tokio::test]
    async fn verify_full_with_the_right_root_and_host_works() {
        let url = with_param(
            &with_param(
                &with_host(&test_database_url(), "localhost"),
                "sslmode",
                "verify-full",
            ),
            "sslrootcert",
            SNAKEOIL,
        );
        assert!(tls_in_use(&url).await.expect("verify-full connects"));
    }

    #[tokio::test]
    async fn verify_full_with_platform_roots_only_fails() {
        let url = with_param(
            &with_host(&test_database_url(), "localhost"),
            "sslmode",
            "verify-full",
        );
        let err = tls_in_use(&url)
            .await
            .expect_err("self-signed is untrusted");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");

        // sslrootcert=system is the same thing, and implies verify-full.
        let url = with_param(
            &with_host(&test_database_url(), "localhost"),
            "sslrootcert",
            "system",
        );
        let err = tls_in_use(&url).await.expect_err("untrusted");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
        let base = with_param(
            &with_host(&test_database_url(), "127.0.0.1"),
            "sslrootcert",
            SNAKEOIL,
        );
        let err = tls_in_use(&with_param(&base, "sslmode", "verify-full"))
            .await
            .expect_err("the certificate is for localhost, not 127.0.0.1");
        assert!(err.to_string().contains("not valid for name"), "{err}");

        assert!(
            tls_in_use(&with_param(&base, "sslmode", "verify-ca"))
                .await
                .expect("verify-ca: the chain is trusted, the name is not checked")
        );
        let err = tls_in_use(&with_param(
            &with_host(&test_database_url(), "127.0.0.1"),
            "sslmode",
            "verify-ca",
        ))
        .await
        .expect_err("verify-ca still verifies the chain");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn require_with_sslrootcert_verifies_the_chain() {
        let base = with_param(&test_database_url(), "sslmode", "require");
        assert!(
            tls_in_use(&with_param(&base, "sslrootcert", SNAKEOIL))
                .await
                .expect("trusted chain")
        );
        let err = tls_in_use(&with_param(
            &base,
            "sslrootcert",
            "/etc/ssl/certs/ca-certificates.crt",
        ))
        .await
        .expect_err("the snakeoil certificate is not signed by a public CA");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn bad_tls_settings_are_config_errors() {
        let base = "postgres://u:pw-in-url-123@db.example.com/app";
        for url in [
            format!("{base}?sslmode=verify_full"),
            format!("{base}?sslmode=require&sslrootcert=/nonexistent/root.crt"),
            format!("{base}?sslmode=require&sslrootcert=system"),
            format!("{base}?sslcert=/c.pem"),
        ] {
            let err = PostgresStore::new(&url).expect_err(&url);
            assert!(!err.contains("pw-in-url-123"), "{err}");
        }
    }

    #[tokio::test]
    async fn closed_port_is_unavailable_quickly_and_new_succeeds() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let store = PostgresStore::new(&format!(
            "postgres://portcullis:closed-port-secret@127.0.0.1:{port}/db?sslmode=require"
        ))
        .expect("new does not connect");
        let started = Instant::now();
        let err = store.ping().await.expect_err("nothing listens");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(!err.to_string().contains("closed-port-secret"), "{err}");
        let err = store.create_user("x@x.com", "h").await.expect_err("down");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let err = store.migrate().await.expect_err("down");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        // A host that does not resolve: new still succeeds, the error comes later.
        let store = PostgresStore::new(
            "postgresql://u:secret-unresolvable@does-not-exist.invalid/db?sslmode=require",
        )
        .expect("new does not resolve either");
        let err = store.ping().await.expect_err("unresolvable");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(!err.to_string().contains("secret-unresolvable"), "{err}");
    }

    #[tokio::test]
    async fn messages_and_debug_never_contain_the_password() {
        let secret = "Sup3r%2Fsecret";
        let decoded = "Sup3r/secret";
        for url in [
            format!("postgres://alice:{secret}@127.0.0.1:notaport/db"),
            format!("postgres://alice:{secret}@127.0.0.1/db?unknown_param=1"),
            format!("postgres://alice:{secret}@127.0.0.1/db?sslmode=nope"),
            format!("postgres://alice:{secret}@127.0.0.1/db?connect_timeout=soon"),
            format!("postgres://alice:{secret}@/db"),
        ] {
            let err = PostgresStore::new(&url).expect_err(&url);
            assert!(!err.contains(secret) && !err.contains(decoded), "{err}");
            assert!(!err.contains(&url), "{err}");
        }
        let store = PostgresStore::new(&format!(
            "postgres://alice:{secret}@ep-cool-1.eu-central-1.aws.neon.tech/neondb?sslmode=require&channel_binding=require"
        ))
        .expect("a Neon URL");
        let debug = format!("{store:?}");
        assert!(
            !debug.contains(secret) && !debug.contains(decoded),
            "{debug}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listen_receives_a_revocation_from_another_instance() {
        let db = PgDatabase::create().await;
        let listener_store = Arc::new(PostgresStore::new(&db.url()).unwrap());
        let writer = PostgresStore::new(&db.url()).unwrap();
        listener_store.migrate().await.unwrap();

        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let listening = {
            let store = Arc::clone(&listener_store);
            tokio::spawn(async move { store.listen(tx).await })
        };
        // The first signal says the LISTEN is in place (and asks for a catch-up).
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("listening within 5 s")
            .expect("a signal");
        while rx.try_recv().is_ok() {}

        let user = Uuid::new_v4();
        let revocation = Revocation::AllOfUser {
            user_id: user,
            issued_before: unix_now(),
            expires_at: unix_now() + 3600,
        };
        let started = Instant::now();
        writer.revoke(user, &revocation).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .expect("notified within 1 s of the revoke")
            .expect("a signal");
        assert!(started.elapsed() < Duration::from_secs(1));
        let batch = listener_store
            .revocations_since(Cursor::default(), unix_now())
            .await
            .unwrap();
        assert_eq!(batch.revocations, vec![revocation]);

        // The listener's connection dies: listen returns an error (the caller reconnects).
        admin(&db.url())
            .await
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{}' AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
                db.name
            ))
            .await
            .unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), listening)
            .await
            .expect("listen ends when its connection drops")
            .unwrap();
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn listen_stops_when_the_receiver_is_gone() {
        let store = PostgresStore::new(&test_database_url()).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(rx);
        let result = tokio::time::timeout(Duration::from_secs(5), store.listen(tx))
            .await
            .expect("returns");
        assert!(result.is_ok(), "{result:?}");
    }
}
