//! `portcullis demo`, the README's first command, walked through as its printed curl lines do.
//! It binds the fixed demo ports 127.0.0.1:8080 and :9090; this is the only test that does.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Response, request_bytes, send_raw};
use serde_json::json;

#[test]
fn demo_serves_register_signin_protected_route_and_signout_with_nothing_installed() {
    let gateway: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let admin: SocketAddr = "127.0.0.1:9090".parse().unwrap();
    for port in [gateway, admin] {
        assert!(
            TcpListener::bind(port).is_ok(),
            "{port} is taken: the demo test needs the demo's fixed ports free"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::bin())
        .arg("demo")
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while common::try_get(admin, "/healthz").is_err() {
        assert!(Instant::now() < deadline, "demo did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }

    let post = |path: &str, body: Option<&serde_json::Value>, auth: Option<&str>| -> Response {
        let body = body.map(ToString::to_string);
        let mut headers = vec![("Content-Type", "application/json")];
        let bearer;
        if let Some(t) = auth {
            bearer = format!("Bearer {t}");
            headers.push(("Authorization", &bearer));
        }
        send_raw(
            gateway,
            &request_bytes("POST", path, &headers, body.as_deref().map(str::as_bytes)),
        )
    };
    let creds = json!({"email": "ada@example.com", "password": "correct horse battery"});
    assert_eq!(
        post("/api/v1/auth/register", Some(&creds), None).status,
        201
    );
    let signin = post("/api/v1/auth/signin", Some(&creds), None);
    assert_eq!(signin.status, 200);
    let token = signin.json()["token"].as_str().unwrap().to_owned();
    let me = common::get(
        gateway,
        "/api/v1/auth/me",
        &[("Authorization", &format!("Bearer {token}"))],
    );
    let id = me.json()["id"].as_str().unwrap().to_owned();

    let path = format!("/api/{id}/tasks/1");
    let ok = common::get(
        gateway,
        &path,
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(ok.status, 200);
    assert!(ok.text().contains(&id), "the echo upstream shows X-User-Id");
    assert_eq!(common::get(gateway, &path, &[]).status, 401);
    assert_eq!(common::get(gateway, "/public/hello", &[]).status, 200);
    assert_eq!(post("/api/v1/auth/signout", None, Some(&token)).status, 204);
    let revoked = common::get(
        gateway,
        &path,
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(revoked.json()["code"], "token_revoked");

    // Embedded store and the development secret under ./data/, the secret private.
    assert!(dir.path().join("data/portcullis-demo.db").exists());
    let secret = dir.path().join("data/demo-secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the demo secret is readable by others");
    }

    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "demo exits 0 on SIGTERM: {status}");
    let mut printed = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut printed).unwrap();
    assert!(
        printed.contains("DEVELOPMENT"),
        "the demo says it is for development only"
    );
    assert!(printed.contains("curl"), "the demo prints the curl lines");
}
