//! TLS for the black-box tests: a certificate made by the `openssl` CLI at test time and the
//! `curl` CLI as the client (both must be installed: without them the tests fail, never skip).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Runs a tool, failing the test with an install hint when it is missing.
pub fn run_tool(tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the TLS tests need the `{tool}` command line tool ({e}); install it \
                 (Debian/Ubuntu: apt-get install -y curl openssl)"
            )
        })
}

pub fn openssl(args: &[&str]) {
    let out = run_tool("openssl", args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed P-256 certificate for `localhost` and 127.0.0.1 and its PKCS#8 key.
pub struct Cert {
    pub dir: tempfile::TempDir,
}

impl Cert {
    pub fn generate() -> Cert {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &p("generated.key"),
            "-out",
            &p("cert.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ]);
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &p("generated.key"),
            "-out",
            &p("key.pem"),
        ]);
        let key = std::fs::read_to_string(p("key.pem")).unwrap();
        assert!(
            key.contains("-----BEGIN PRIVATE KEY-----"),
            "openssl pkcs8 -topk8 must write a PKCS#8 key"
        );
        Cert { dir }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    pub fn vars(&self, key: &Path) -> Vec<(&'static str, String)> {
        vec![
            ("CERT", self.cert().to_string_lossy().into_owned()),
            ("KEY", key.to_string_lossy().into_owned()),
        ]
    }
}

/// curl's arguments for `https://localhost:<port>` (resolved to 127.0.0.1), verifying the
/// server against `cert`, with no proxy and no ~/.curlrc.
pub fn curl_base(port: u16, cert: &Cert) -> Vec<String> {
    [
        "-q",
        "-sS",
        "--noproxy",
        "*",
        "--cacert",
        &cert.cert().to_string_lossy(),
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
    ]
    .map(str::to_owned)
    .to_vec()
}
