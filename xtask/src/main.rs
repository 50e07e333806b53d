//! The README's two set-up commands, for a fresh Debian machine with only Rust:
//!
//! - `cargo xtask demo`: the build's needs (cmake for Pingora's zlib-ng, a C compiler for
//!   aws-lc and SQLite), then `cargo run --release -- demo`.
//! - `cargo xtask test`: the test suite's needs as well (openssl and curl for the TLS tests,
//!   Chromium for the browser test, nginx for forward-auth, Node with the e2e, downstream and
//!   Better Auth packages, PyJWT for the downstream snippets, a PostgreSQL answering on
//!   127.0.0.1:5432: started when installed and down, installed when absent), then
//!   `TEST_DATABASE_URL=… cargo test --all-targets`. `.ci/run` calls the same command.
//!
//! What is missing is installed with apt-get when running as root; otherwise the command stops
//! with one line naming what to install. Nothing is ever skipped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A command the build or the tests need, and the Debian package that brings it.
struct Need {
    command: &'static str,
    package: &'static str,
}

const BUILD: &[Need] = &[
    Need {
        command: "cmake",
        package: "cmake",
    },
    Need {
        command: "cc",
        package: "build-essential",
    },
];

const TESTS: &[Need] = &[
    Need {
        command: "openssl",
        package: "openssl",
    },
    Need {
        command: "curl",
        package: "curl",
    },
    Need {
        command: "chromium",
        package: "chromium",
    },
    Need {
        command: "nginx",
        package: "nginx-light",
    },
    Need {
        command: "node",
        package: "nodejs",
    },
    Need {
        command: "npm",
        package: "npm",
    },
    Need {
        command: "pg_isready",
        package: "postgresql-client",
    },
    Need {
        command: "python3",
        package: "python3-pip",
    },
];

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ is in the repository")
        .to_owned();
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "demo" => demo(&root),
        "test" => test(&root, std::env::args().skip(2).collect()),
        _ => Err("usage: cargo xtask demo | cargo xtask test [cargo test arguments]".to_owned()),
    };
    match result {
        Ok(code) => code,
        Err(why) => {
            eprintln!("xtask: {why}");
            ExitCode::FAILURE
        }
    }
}

fn demo(root: &Path) -> Result<ExitCode, String> {
    install_missing(BUILD.iter())?;
    run(Command::new("cargo")
        .args(["run", "--release", "--", "demo"])
        .current_dir(root))
}

/// Sets up what the suite needs, then `cargo test --all-targets`, or `cargo test` with `args`
/// when there are any (`cargo xtask test --test reload`).
fn test(root: &Path, args: Vec<String>) -> Result<ExitCode, String> {
    install_missing(BUILD.iter().chain(TESTS))?;
    postgres()?;
    for dir in ["e2e", "docs/downstream", "tests/better-auth"] {
        step(
            Command::new("npm")
                .args(["ci", "--prefix", dir, "--no-audit", "--no-fund"])
                .current_dir(root),
            &format!("npm ci --prefix {dir}"),
        )?;
    }
    step(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
                "-r",
                "docs/downstream/requirements.txt",
            ])
            .current_dir(root),
        "pip install -r docs/downstream/requirements.txt",
    )?;
    let url = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DATABASE_URL.to_owned());
    let args = if args.is_empty() {
        vec!["--all-targets".to_owned()]
    } else {
        args
    };
    run(Command::new("cargo")
        .arg("test")
        .args(args)
        .env("TEST_DATABASE_URL", url)
        .current_dir(root))
}

fn have(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Installs the packages of the missing commands (as root), or says in one line what to install.
fn install_missing<'a>(needs: impl Iterator<Item = &'a Need>) -> Result<(), String> {
    let mut missing: Vec<&str> = needs
        .filter(|n| !have(n.command))
        .map(|n| n.package)
        .collect();
    missing.dedup();
    apt_install(&missing)
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    if packages.is_empty() {
        return Ok(());
    }
    let list = packages.join(" ");
    if !is_root() || !have("apt-get") {
        return Err(format!(
            "missing, install first: sudo apt-get install -y {list}"
        ));
    }
    eprintln!("xtask: installing {list}");
    step(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    step(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("apt-get install {list}"),
    )
}

fn answers(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// A PostgreSQL on 127.0.0.1:5432 with trust auth and a `test` database: left as it is when one
/// answers; started when installed; installed (as root) when absent; `test` made when missing.
fn postgres() -> Result<(), String> {
    if std::env::var_os("TEST_DATABASE_URL").is_some() {
        return Ok(());
    }
    if !answers("127.0.0.1:5432") {
        start_postgres()?;
    }
    test_database()
}

/// Starts the installed cluster, installing PostgreSQL first when there is none.
fn start_postgres() -> Result<(), String> {
    let clusters = || {
        std::fs::read_dir("/etc/postgresql")
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .map(|e| e.file_name())
    };
    if clusters().is_none() {
        apt_install(&["postgresql"])?;
        // A fresh cluster: local trust for the tests (this machine's own server only).
        trust_local();
    }
    let version =
        clusters().ok_or("PostgreSQL is installed but has no cluster under /etc/postgresql")?;
    let version = version.to_string_lossy().into_owned();
    let _ = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "start"])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answers("127.0.0.1:5432") {
        if Instant::now() > deadline {
            return Err(
                "PostgreSQL does not answer on 127.0.0.1:5432; the Postgres tests cannot run"
                    .to_owned(),
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// The `test` database, made unless it is there.
fn test_database() -> Result<(), String> {
    let has_test = psql("-tAc", "SELECT 1 FROM pg_database WHERE datname = 'test'")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1");
    if has_test {
        return Ok(());
    }
    step(
        &mut psql("-c", "CREATE DATABASE test"),
        "creating the test database",
    )
}

/// `psql` as the tests' superuser on 127.0.0.1, running `sql` with `flag` (`-c`, `-tAc`).
fn psql(flag: &str, sql: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "postgres",
        flag,
        sql,
    ]);
    cmd
}

/// Local connections trusted in a cluster this task just installed.
fn trust_local() {
    let Ok(dirs) = std::fs::read_dir("/etc/postgresql") else {
        return;
    };
    for version in dirs.flatten() {
        let hba: PathBuf = version.path().join("main/pg_hba.conf");
        if let Ok(text) = std::fs::read_to_string(&hba) {
            let trusted: String = text
                .lines()
                .map(|l| {
                    if l.starts_with("local") || l.starts_with("host") {
                        l.replace("peer", "trust")
                            .replace("scram-sha-256", "trust")
                            .replace("md5", "trust")
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            let _ = std::fs::write(&hba, trusted + "\n");
        }
    }
}

fn step(cmd: &mut Command, what: &str) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{what} failed ({s})")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn run(cmd: &mut Command) -> Result<ExitCode, String> {
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
