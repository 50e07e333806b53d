//! The TOML file, mirrored field for field. Nothing here is trusted yet: `config::load`
//! validates it into the internal model. Unknown keys are an error everywhere.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub store: Store,
    pub tokens: Tokens,
    #[serde(default)]
    pub cookie: Cookie,
    #[serde(default)]
    pub rate_limit: RateLimit,
    #[serde(default)]
    pub password: Password,
    #[serde(default)]
    pub identity: Identity,
    #[serde(default)]
    pub cors: Cors,
    #[serde(default)]
    pub upstream: Vec<Upstream>,
    #[serde(default)]
    pub route: Vec<Route>,
    #[serde(default)]
    pub issuer: Vec<Issuer>,
    #[serde(default)]
    pub forward_auth: ForwardAuth,
    pub assertion: Option<Assertion>,
}

/// `[assertion]` (CONTRACT section 9): the key that signs identity assertions for upstreams.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    #[serde(default = "default_assertion_header")]
    pub header: String,
    pub private_key_file: Option<String>,
    pub kid: Option<String>,
    #[serde(default = "default_assertion_ttl")]
    pub ttl_secs: u64,
    #[serde(default)]
    pub bind_request: bool,
}

fn default_assertion_header() -> String {
    "X-Portcullis-Assertion".to_owned()
}

fn default_assertion_ttl() -> u64 {
    60
}

/// `[forward_auth]` (CONTRACT section 11).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuth {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_forward_auth_proxies")]
    pub trusted_proxies: Vec<String>,
}

impl Default for ForwardAuth {
    fn default() -> Self {
        Self {
            enabled: false,
            trusted_proxies: default_forward_auth_proxies(),
        }
    }
}

fn default_forward_auth_proxies() -> Vec<String> {
    vec!["127.0.0.1/32".to_owned()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: String,
    pub admin_listen: String,
    pub threads: usize,
    /// Seconds in-flight requests get to finish after SIGTERM / SIGINT.
    pub grace_period_secs: u64,
    /// Milliseconds a client has to send a complete request head (see `deadline`).
    pub request_head_timeout_ms: u64,
    /// A `Server-Timing` header with the gateway's own time on every response (CONTRACT 15).
    pub server_timing: bool,
    /// `"json"` or `"pretty"`; absent: pretty when stderr is a terminal, JSON otherwise.
    pub log_format: Option<String>,
    pub tls: Option<Tls>,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            threads: 2,
            grace_period_secs: 10,
            request_head_timeout_ms: 10_000,
            server_timing: false,
            log_format: None,
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    pub url: String,
    pub auto_migrate: bool,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            url: "sqlite://data/portcullis.db".into(),
            auto_migrate: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    pub secret_env: Option<String>,
    pub private_key_file: Option<String>,
    pub kid: Option<String>,
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    #[serde(default = "default_name")]
    pub issuer: String,
    #[serde(default = "default_name")]
    pub audience: String,
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    #[serde(default)]
    pub previous_keys: Vec<PreviousKey>,
}

fn default_algorithm() -> String {
    "HS256".into()
}
fn default_ttl() -> u64 {
    3600
}
fn default_name() -> String {
    "portcullis".into()
}
fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousKey {
    pub kid: Option<String>,
    pub public_key_file: Option<String>,
    pub secret_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cookie {
    pub name: String,
    pub secure: bool,
    pub same_site: String,
}

impl Default for Cookie {
    fn default() -> Self {
        Self {
            name: "portcullis_token".into(),
            secure: true,
            same_site: "Strict".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    pub per_ip_per_minute: u32,
    pub failed_signins_per_email_per_minute: u32,
    pub trusted_proxies: Vec<String>,
    /// `"replica"` or `"cluster"` (counted in the Postgres store, shared by every replica).
    pub scope: String,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_ip_per_minute: 30,
            failed_signins_per_email_per_minute: 5,
            trusted_proxies: Vec::new(),
            scope: "replica".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Password {
    pub bcrypt_cost: u32,
}

impl Default for Password {
    fn default() -> Self {
        Self { bcrypt_cost: 12 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Identity {
    /// Where the gateway serves register / signin / signout / me.
    pub prefix: String,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            prefix: "/api/v1/auth".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cors {
    /// Frontend origins allowed to call the gateway with credentials (exact, no wildcards).
    pub allowed_origins: Vec<String>,
    /// Request headers a preflight allows (default: authorization, content-type, x-request-id).
    pub allowed_headers: Vec<String>,
    pub max_age_secs: u64,
}

impl Default for Cors {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_headers: Vec::new(),
            max_age_secs: 600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    pub addrs: Vec<String>,
    /// Names among `addrs` are resolved again this often.
    #[serde(default = "default_resolve_secs")]
    pub resolve_secs: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout")]
    pub read_timeout_ms: u64,
    #[serde(default = "default_health_interval")]
    pub health_check_interval_ms: u64,
    #[serde(default)]
    pub forward_token: bool,
    /// A signed identity assertion on requests with identity (CONTRACT section 9).
    #[serde(default)]
    pub assertion: bool,
}

fn default_resolve_secs() -> u64 {
    30
}
fn default_connect_timeout() -> u64 {
    2_000
}
fn default_read_timeout() -> u64 {
    30_000
}
fn default_health_interval() -> u64 {
    5_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub path: String,
    pub upstream: String,
    pub auth: String,
    pub owner: Option<String>,
    #[serde(default)]
    pub forward_token: bool,
    /// Claim rules (CONTRACT section 10): claim name → the string it must equal or hold.
    /// Values are checked by `config::routes`, so that a wrong shape gets a clear line.
    pub require: Option<toml::Value>,
    pub require_scopes: Option<toml::Value>,
    /// Overrides the upstream's `assertion`.
    pub assertion: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    pub name: String,
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
    #[serde(default = "default_sub")]
    pub user_id_claim: String,
    #[serde(default = "default_email")]
    pub email_claim: String,
    /// Seconds between JWKS fetches when the answer carries no `Cache-Control: max-age`, and
    /// the longest a fetched set is kept before it is fetched again.
    #[serde(default = "default_refresh")]
    pub refresh_secs: u64,
    /// Fewest seconds between two scheduled fetches (a short `max-age` cannot make us poll
    /// faster), and the window in which unknown `kid`s may ask for at most 10 refetches (one
    /// per second): what bounds the JWKS traffic a spray of forged tokens can cause. Retries
    /// after a failed fetch follow their own backoff.
    #[serde(default = "default_min_refresh")]
    pub min_refresh_secs: u64,
    /// One fetch, connect to last byte, must finish within this; also the longest a request
    /// with an unknown `kid` waits for a refetch.
    #[serde(default = "default_jwks_timeout")]
    pub timeout_ms: u64,
}

fn default_refresh() -> u64 {
    300
}
fn default_min_refresh() -> u64 {
    30
}
fn default_jwks_timeout() -> u64 {
    5_000
}

fn default_sub() -> String {
    "sub".into()
}
fn default_email() -> String {
    "email".into()
}
