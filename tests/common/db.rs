//! Databases for the store tests: a fresh Postgres database per test at `TEST_DATABASE_URL`
//! (never skipped when unset: the test fails), an SQLite file in the gateway's directory, and
//! a TCP forwarder that can cut and restore the way to Postgres without touching the server.

/// Runs each named `fn(Store)` once per store, as the tests `sqlite::name` and
/// `postgres::name`.
#[allow(unused_macros)]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name($crate::common::db::Store::Sqlite) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name($crate::common::db::Store::Postgres) } )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_stores;

#[derive(Clone, Copy, Debug)]
pub enum Store {
    Sqlite,
    Postgres,
}

/// A database for one test; dropped (Postgres) when the test ends.
pub struct Db {
    pub url: String,
    pg: Option<(String, String)>,
}

impl Db {
    pub fn new(store: Store) -> Db {
        match store {
            Store::Sqlite => Db {
                url: "sqlite://{DIR}/identity.db".into(),
                pg: None,
            },
            Store::Postgres => {
                let base = std::env::var("TEST_DATABASE_URL").expect(
                    "TEST_DATABASE_URL must point at a Postgres server (e.g. \
                     postgres://postgres@127.0.0.1:5432/test): the Postgres tests never skip",
                );
                let name = format!("t_{}", uuid::Uuid::new_v4().simple());
                admin_sql(&base, &format!("CREATE DATABASE {name}"));
                let (prefix, _) = base.rsplit_once('/').expect("a database URL");
                let (_, query) = base.split_once('?').unwrap_or((&base, ""));
                let mut url = format!("{prefix}/{name}");
                if !query.is_empty() {
                    url = format!("{url}?{query}");
                }
                Db {
                    url,
                    pg: Some((base, name)),
                }
            }
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some((base, name)) = &self.pg {
            admin_sql(
                base,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

/// Runs one statement on the server at `url` (for creating and dropping test databases).
pub fn admin_sql(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot reach TEST_DATABASE_URL: {e}"));
        let driver = tokio::spawn(conn);
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        drop(client);
        let _ = driver.await;
    });
}

/// A TCP forwarder to the test Postgres that can be cut and restored (connections dropped, new
/// ones refused) or frozen and thawed (connections open, nothing passes: a database that stops
/// answering): outages on demand, without touching the shared server.
pub struct Cuttable {
    pub addr: std::net::SocketAddr,
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    live: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Cuttable {
    pub fn to(target: String) -> Cuttable {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let live = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (on2, live2, frozen2) = (on.clone(), live.clone(), frozen.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                // Checked and registered under the lock `cut` takes: a connection opened while
                // the cut happens is either refused or shut down by it, never missed.
                let mut l = live2.lock().unwrap();
                if !on2.load(Ordering::SeqCst) {
                    continue; // dropped: refused, in effect
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                l.push(client.try_clone().unwrap());
                l.push(server.try_clone().unwrap());
                drop(l);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let frozen = frozen2.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            while frozen.load(Ordering::SeqCst) {
                                std::thread::sleep(std::time::Duration::from_millis(5));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Cuttable {
            addr,
            on,
            frozen,
            live,
        }
    }

    /// Nothing passes any more, in either direction; connections stay open.
    pub fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn cut(&self) {
        let mut live = self.live.lock().unwrap();
        self.on.store(false, std::sync::atomic::Ordering::SeqCst);
        for s in live.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.on.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Cuttable {
    /// A forwarder to the server `url` names, and `url` rewritten to go through it.
    pub fn in_front_of(url: &str) -> (Cuttable, String) {
        let (before_at, after_at) = url.split_once('@').expect("user@host in the database URL");
        let (host_port, rest) = after_at.split_once('/').expect("a database name");
        let cut = Cuttable::to(host_port.to_owned());
        let through = format!("{before_at}@{}/{rest}", cut.addr);
        (cut, through)
    }
}

impl Db {
    /// Every stored email, in insertion order, read straight from the database behind a gateway
    /// whose directory is `gateway_dir` (where `{DIR}` of an SQLite URL points).
    pub fn emails(&self, gateway_dir: &std::path::Path) -> Vec<String> {
        let sql = "SELECT email FROM users ORDER BY created_at, email";
        if self.pg.is_none() {
            let file = self
                .url
                .strip_prefix("sqlite://")
                .expect("an sqlite URL")
                .replace("{DIR}", &gateway_dir.to_string_lossy());
            let conn = rusqlite::Connection::open(file).expect("open the sqlite store");
            let mut stmt = conn.prepare(sql).unwrap();
            stmt.query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        } else {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                    .await
                    .expect("connect to the test database");
                let driver = tokio::spawn(conn);
                let rows = client.query(sql, &[]).await.expect(sql);
                drop(client);
                let _ = driver.await;
                rows.iter().map(|r| r.get::<_, String>(0)).collect()
            })
        }
    }
}
