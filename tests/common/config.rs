//! Test configs, built from shared pieces instead of TOML copied into every file.
//!
//! [`TestConfig::new`] is the smallest config a test gateway starts with: both listeners on the
//! placeholders [`super::Gateway::start`] fills (`{LISTEN}`, `{ADMIN}`), an SQLite store under
//! `{DIR}`, HS256 tokens from [`super::SECRET_ENV`] and the test cookie name. Each file adds what
//! its tests are about: upstreams, routes, sections. Placeholders (`{UPSTREAM}`, `{KEYS}`, ...)
//! are left for the gateway to fill, so the builder never needs `format!` escapes.

use std::fmt::Write as _;

/// HS256 with the test secret and the contract's defaults.
pub const HS256: &str = r#"[tokens]
algorithm = "HS256"
secret_env = "PORTCULLIS_TEST_SECRET"
ttl_secs = 3600
issuer = "portcullis"
audience = "portcullis"
leeway_secs = 30
"#;

/// EdDSA with the fixture key `k1`, and the retired key `k0` still accepted.
pub const EDDSA: &str = r#"[tokens]
algorithm = "EdDSA"
private_key_file = "{KEYS}/ed25519.pem"
kid = "k1"
ttl_secs = 3600
issuer = "portcullis"
audience = "portcullis"
leeway_secs = 30

[[tokens.previous_keys]]
kid = "k0"
public_key_file = "{KEYS}/ed25519-old.pub.pem"
"#;

/// ES256 with the fixture key `ec1`.
pub const ES256: &str = r#"[tokens]
algorithm = "ES256"
private_key_file = "{KEYS}/p256.pem"
kid = "ec1"
issuer = "portcullis"
audience = "portcullis"
leeway_secs = 30
"#;

/// RS256 with the fixture key `rsa1`.
pub const RS256: &str = r#"[tokens]
algorithm = "RS256"
private_key_file = "{KEYS}/rsa.pem"
kid = "rsa1"
issuer = "portcullis"
audience = "portcullis"
leeway_secs = 30
"#;

/// The contract's example route: a user's own tasks, for that user only.
pub const OWNER_ROUTE: (&str, &str) = ("/api/{user_id}/tasks/{*rest}", "owner = \"user_id\"");

/// A config under construction; [`TestConfig::build`] renders it.
#[derive(Debug, Clone)]
pub struct TestConfig {
    server: Vec<String>,
    server_tables: Vec<String>,
    store: String,
    tokens: String,
    cookie: Vec<String>,
    sections: Vec<String>,
    upstreams: Vec<String>,
    routes: Vec<String>,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TestConfig {
    pub fn new() -> Self {
        Self {
            server: vec![
                r#"listen = "{LISTEN}""#.to_owned(),
                r#"admin_listen = "{ADMIN}""#.to_owned(),
            ],
            server_tables: Vec::new(),
            store: "sqlite://{DIR}/p.db".to_owned(),
            tokens: "[tokens]\nsecret_env = \"PORTCULLIS_TEST_SECRET\"\n".to_owned(),
            cookie: vec![format!("name = \"{}\"", super::COOKIE)],
            sections: Vec::new(),
            upstreams: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// A line of `[server]`, e.g. `threads = 2`.
    #[must_use]
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.to_owned());
        self
    }

    /// A table under `[server]` (e.g. `[server.tls]` with its keys), written after it.
    #[must_use]
    pub fn server_table(mut self, toml: &str) -> Self {
        self.server_tables.push(toml.to_owned());
        self
    }

    /// `store.url`.
    #[must_use]
    pub fn store(mut self, url: &str) -> Self {
        url.clone_into(&mut self.store);
        self
    }

    /// The whole `[tokens]` section (with its `[[tokens.previous_keys]]`): one of the constants
    /// above, or a test's own.
    #[must_use]
    pub fn tokens(mut self, toml: &str) -> Self {
        toml.clone_into(&mut self.tokens);
        self
    }

    /// A line of `[cookie]`, e.g. `secure = false`.
    #[must_use]
    pub fn cookie(mut self, line: &str) -> Self {
        self.cookie.push(line.to_owned());
        self
    }

    /// No `[cookie]` section: the contract's default cookie (`portcullis_token`, Secure, Strict).
    #[must_use]
    pub fn default_cookie(mut self) -> Self {
        self.cookie.clear();
        self
    }

    /// `password.bcrypt_cost = 10`: the cheapest cost the config accepts, for tests that
    /// register and sign in.
    #[must_use]
    pub fn fast_bcrypt(self) -> Self {
        self.section("[password]\nbcrypt_cost = 10\n")
    }

    /// Rate limits high enough that a test's own traffic never meets them.
    #[must_use]
    pub fn no_rate_limits(self) -> Self {
        self.section(
            "[rate_limit]\nper_ip_per_minute = 1000000\nfailed_signins_per_email_per_minute = 1000000\n",
        )
    }

    /// Any other section, as TOML (`[cors]`, `[rate_limit]`, `[[issuer]]`, ...).
    #[must_use]
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(toml.to_owned());
        self
    }

    /// An `[[upstream]]` named `name` at `addrs` (TOML array items, e.g. `"{UPSTREAM}"`), with
    /// extra key lines.
    #[must_use]
    pub fn upstream(mut self, name: &str, addrs: &str, extra: &[&str]) -> Self {
        let mut t = format!("[[upstream]]\nname = \"{name}\"\naddrs = [{addrs}]\n");
        for line in extra {
            t.push_str(line);
            t.push('\n');
        }
        self.upstreams.push(t);
        self
    }

    /// The upstream `app` at the recording upstream (`{UPSTREAM}`).
    #[must_use]
    pub fn app(self, extra: &[&str]) -> Self {
        self.upstream("app", "\"{UPSTREAM}\"", extra)
    }

    /// A `[[route]]` to `upstream` with access `auth`, with extra key lines.
    #[must_use]
    pub fn route(mut self, path: &str, upstream: &str, auth: &str, extra: &[&str]) -> Self {
        let mut t =
            format!("[[route]]\npath = \"{path}\"\nupstream = \"{upstream}\"\nauth = \"{auth}\"\n");
        for line in extra {
            t.push_str(line);
            t.push('\n');
        }
        self.routes.push(t);
        self
    }

    /// [`OWNER_ROUTE`] on `app`.
    #[must_use]
    pub fn owner_route(self) -> Self {
        self.route(OWNER_ROUTE.0, "app", "required", &[OWNER_ROUTE.1])
    }

    /// Raw `[[upstream]]` / `[[route]]` TOML a test writes itself, appended last.
    #[must_use]
    pub fn raw(mut self, toml: &str) -> Self {
        self.routes.push(toml.to_owned());
        self
    }

    /// The TOML text.
    pub fn build(&self) -> String {
        let mut out = format!("[server]\n{}\n", self.server.join("\n"));
        for t in &self.server_tables {
            out.push('\n');
            out.push_str(t);
        }
        let _ = write!(out, "\n[store]\nurl = \"{}\"\n\n", self.store);
        out.push_str(&self.tokens);
        if !self.cookie.is_empty() {
            let _ = write!(out, "\n[cookie]\n{}\n", self.cookie.join("\n"));
        }
        for s in self
            .sections
            .iter()
            .chain(&self.upstreams)
            .chain(&self.routes)
        {
            out.push('\n');
            out.push_str(s);
        }
        out
    }
}
