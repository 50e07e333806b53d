//! Configuration: parse the TOML (`file`), then validate it into the internal model that the
//! rest of the gateway uses: plain, checked data (`routes` for the route patterns, `jwks_url`
//! for issuers' URLs), from which each wing builds its own runtime objects. Config imports no
//! wing. Every problem found is reported, one line each; a config with any problem never
//! starts a gateway. Secrets come from the environment, never from the file. Key material is
//! read here and parsed by `authn` (`crate::assemble` reports what it refuses).

pub mod file;
mod jwks_url;
mod routes;

pub use jwks_url::JwksUrl;
pub use routes::{Access, ClaimRules, Route};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

/// HS256 secrets shorter than this are refused (RFC 7518 3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;
pub const MIN_BCRYPT_COST: u32 = 10;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    pub grace_period: Duration,
    /// How long a client has to send a complete request head (`crate::edge::deadline`).
    pub request_head_timeout: Duration,
    /// `Server-Timing` on every response (`crate::edge::timing`).
    pub server_timing: bool,
    /// `server.log_format`; `None`: pretty on a terminal, JSON otherwise (`crate::ops::logging`).
    pub log_format: Option<LogFormat>,
    pub tls: Option<TlsFiles>,
    pub store: Store,
    pub tokens: Tokens,
    pub cookie: Cookie,
    pub rate_limit: RateLimit,
    pub bcrypt_cost: u32,
    pub identity_prefix: String,
    pub cors: Cors,
    pub upstreams: Vec<Upstream>,
    /// In file order; patterns checked (canonical, owner a parameter, no two of one shape).
    pub routes: Vec<Route>,
    pub issuers: Vec<Issuer>,
    /// `[forward_auth]` when `enabled` (CONTRACT section 11; `crate::edge::forward_auth`).
    pub forward_auth: Option<ForwardAuth>,
    /// `[assertion]` (CONTRACT section 9; `crate::authn::assertion`).
    pub assertion: Option<Assertion>,
    /// Hex SHA-256 of the config text as read (`config_sha256` on `/readyz`).
    pub sha256: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// One readable line per event: timestamp, level, message, fields.
    Pretty,
}

/// The forward-auth endpoints, on: only peers in `trusted_proxies` may ask.
#[derive(Debug, Clone)]
pub struct ForwardAuth {
    pub trusted_proxies: Vec<IpNet>,
}

/// Where the forward-auth endpoints live; no route may start with it while they are on.
pub const FORWARD_AUTH_PREFIX: &str = "/_portcullis/auth/";

/// An external issuer whose tokens are trusted (`[[issuer]]`), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    pub name: String,
    pub jwks_url: JwksUrl,
    /// The `iss` its tokens carry.
    pub issuer: String,
    pub audience: String,
    pub user_id_claim: String,
    pub email_claim: String,
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Clone)]
pub struct Store {
    /// May carry a password: never logged, never printed (see `Debug`).
    pub url: String,
    pub auto_migrate: bool,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("scheme", &self.url.split(':').next())
            .field("auto_migrate", &self.auto_migrate)
            .finish()
    }
}

/// The signature algorithms Portcullis signs and verifies its own tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    HS256,
    EdDSA,
    ES256,
    RS256,
    /// The next three only for other issuers' tokens (`[[issuer]]` JWKS), never our own.
    ES384,
    ES512,
    PS256,
}

impl Alg {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "HS256" => Some(Self::HS256),
            "EdDSA" => Some(Self::EdDSA),
            "ES256" => Some(Self::ES256),
            "RS256" => Some(Self::RS256),
            "ES384" => Some(Self::ES384),
            "ES512" => Some(Self::ES512),
            "PS256" => Some(Self::PS256),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
            Self::ES384 => "ES384",
            Self::ES512 => "ES512",
            Self::PS256 => "PS256",
        }
    }

    /// Whether the gateway signs its own tokens with it (`tokens.algorithm`).
    pub const fn signs_own_tokens(self) -> bool {
        matches!(self, Self::HS256 | Self::EdDSA | Self::ES256 | Self::RS256)
    }

    pub const fn is_symmetric(self) -> bool {
        matches!(self, Self::HS256)
    }
}

/// How new tokens are minted, and the keys they are verified with.
#[derive(Clone)]
pub struct Tokens {
    pub alg: Alg,
    pub ttl: Duration,
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
    /// What new tokens are signed with (the HS256 secret or the PKCS#8 PEM of the private
    /// key, and the `kid` they carry); its verifying half is trusted first.
    pub signing: KeyMaterial,
    /// Retired keys, still trusted (`previous_keys`).
    pub previous: Vec<KeyMaterial>,
}

impl Tokens {
    /// Every key a token may be verified with: the signing key first, then the retired ones.
    pub fn verify_keys(&self) -> impl Iterator<Item = &KeyMaterial> {
        std::iter::once(&self.signing).chain(&self.previous)
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("alg", &self.alg)
            .field("ttl", &self.ttl)
            .field("signing", &self.signing)
            .field("previous", &self.previous)
            .finish_non_exhaustive()
    }
}

/// One verification key as the config names it: read, not yet parsed (`authn::keys` parses
/// it and reports what it refuses under `source`).
#[derive(Clone)]
pub struct KeyMaterial {
    pub kid: Option<String>,
    pub form: KeyForm,
    /// The secret or the PEM text. Never printed.
    pub bytes: Vec<u8>,
    /// Where it came from, for problem lines: e.g. ``tokens.private_key_file `k.pem` ``.
    pub source: String,
}

/// What [`KeyMaterial::bytes`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyForm {
    /// An HS256 shared secret.
    Secret,
    /// A PKCS#8 private key in PEM (the signing key of an asymmetric algorithm).
    PrivatePem,
    /// An SPKI public key in PEM (a retired key).
    PublicPem,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("kid", &self.kid)
            .field("form", &self.form)
            .finish_non_exhaustive()
    }
}

/// The validated `[cors]` settings: exact origins, lower-cased, without a trailing `/`.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    pub allowed_origins: Vec<String>,
    /// The `Access-Control-Allow-Headers` value; `None` for the default list.
    pub allowed_headers: Option<http::HeaderValue>,
    pub max_age_secs: u64,
}

impl Cors {
    pub fn new(origins: &[String], headers: &[String], max_age_secs: u64) -> Result<Self, String> {
        let mut allowed_origins = Vec::with_capacity(origins.len());
        for o in origins {
            let lower = o.trim_end_matches('/').to_ascii_lowercase();
            let authority = lower.split_once("://").map(|(_, a)| a);
            let ok = (lower.starts_with("https://") || lower.starts_with("http://"))
                && !lower.contains('*')
                && authority.is_some_and(|a| !a.is_empty() && !a.contains('/'));
            if !ok {
                return Err(format!(
                    "cors.allowed_origins: `{o}` must be an exact origin like https://app.example.com"
                ));
            }
            allowed_origins.push(lower);
        }
        let allowed_headers = if headers.is_empty() {
            None
        } else {
            Some(
                http::HeaderValue::from_str(&headers.join(", ").to_ascii_lowercase())
                    .map_err(|_| "cors.allowed_headers: not valid header names".to_owned())?,
            )
        };
        Ok(Self {
            allowed_origins,
            allowed_headers,
            max_age_secs,
        })
    }
}

/// The identity endpoints' rate limits, and the proxies whose `X-Forwarded-For` counts.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub per_ip_per_minute: u32,
    pub failed_signins_per_email_per_minute: u32,
    pub trusted_proxies: Vec<IpNet>,
    /// Count in the shared store as well (`scope = "cluster"`; `crate::accounts::ratelimit`).
    pub cluster: bool,
}

#[derive(Debug, Clone)]
pub struct Cookie {
    pub name: String,
    pub secure: bool,
    pub same_site: SameSite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub addrs: Vec<UpstreamAddr>,
    /// How often names among `addrs` are resolved again.
    pub resolve: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub health_check_interval: Duration,
    pub forward_token: bool,
    /// Requests with identity carry a signed assertion (unless their route says otherwise).
    pub assertion: bool,
}

/// One entry of an upstream's `addrs`: an address, or a name resolved in the background
/// (`crate::edge::resolve`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl UpstreamAddr {
    /// `IP:port`, `[IPv6]:port` or `host:port` (a DNS name: letters, digits, `-`, `_`, dots).
    pub fn parse(text: &str) -> Option<Self> {
        if let Ok(addr) = text.parse() {
            return Some(Self::Ip(addr));
        }
        let (host, port) = text.rsplit_once(':')?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let is_name = (1..=253).contains(&host.len())
            && host.split('.').all(label_ok)
            // All digits and dots is an IP address that did not parse, not a name.
            && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        is_name.then(|| Self::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    pub const fn is_name(&self) -> bool {
        matches!(self, Self::Name { .. })
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(addr) => write!(f, "{addr}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// `[assertion]`, validated: the signing key is read, not yet parsed (`authn::assertion`
/// parses it and reports what it refuses under its `source`).
#[derive(Debug, Clone)]
pub struct Assertion {
    pub header: http::HeaderName,
    pub key: KeyMaterial,
    pub kid: String,
    pub ttl: Duration,
    pub bind_request: bool,
}

/// Headers an assertion may not be carried in: the identity, the credential, framing.
const NOT_ASSERTION_HEADERS: [&str; 9] = [
    "x-user-id",
    "x-user-email",
    "x-request-id",
    "authorization",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

fn assertion(p: &mut Problems, raw: Option<&file::Assertion>) -> Option<Assertion> {
    let raw = raw?;
    let header = match http::HeaderName::from_bytes(raw.header.as_bytes()) {
        Ok(h)
            if NOT_ASSERTION_HEADERS.contains(&h.as_str())
                || h.as_str().starts_with("x-user-")
                || h.as_str().starts_with("x-forwarded-")
                || h.as_str().starts_with("x-original-")
                || !h.as_str().starts_with("x-") =>
        {
            p.add(format!(
                "assertion.header `{}` must be an X- header the gateway does not set or read itself",
                raw.header
            ));
            None
        }
        Ok(h) => Some(h),
        Err(_) => {
            p.add(format!(
                "assertion.header `{}` is not a header name",
                raw.header.escape_default()
            ));
            None
        }
    };
    if !(1..=300).contains(&raw.ttl_secs) {
        p.add("assertion.ttl_secs must be between 1 and 300");
    }
    let kid = match raw.kid.as_deref() {
        Some(k) if !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Some(k.to_owned())
        }
        Some(_) => {
            p.add("assertion.kid must be 1 to 128 visible ASCII characters");
            None
        }
        None => {
            p.add("assertion.kid is required");
            None
        }
    };
    let key = if let Some(file) = raw.private_key_file.as_deref() {
        readable(p, "assertion.private_key_file", file).map(|bytes| KeyMaterial {
            kid: kid.clone(),
            form: KeyForm::PrivatePem,
            bytes,
            source: format!("assertion.private_key_file `{file}`"),
        })
    } else {
        p.add("assertion.private_key_file is required (Ed25519 or P-256, PKCS#8 PEM)");
        None
    };
    Some(Assertion {
        header: header?,
        key: key?,
        kid: kid?,
        ttl: Duration::from_secs(raw.ttl_secs),
        bind_request: raw.bind_request,
    })
}

/// An assertion must never be mistaken for a user's token, nor one for it: its `kid` is not a
/// token key's, and no upstream that receives assertions is named like the tokens' audience.
fn assertion_apart_from_tokens(
    p: &mut Problems,
    a: &Assertion,
    raw: &file::FileConfig,
    routes: &[Route],
    upstreams: &[Upstream],
) {
    let token_kids = std::iter::once(raw.tokens.kid.as_deref())
        .chain(raw.tokens.previous_keys.iter().map(|k| k.kid.as_deref()))
        .flatten();
    if token_kids.into_iter().any(|k| k == a.kid) {
        p.add(format!(
            "assertion.kid `{}` is also a token key's kid: give the assertion key its own",
            a.kid
        ));
    }
    let audience = raw.tokens.audience.as_str();
    for r in routes.iter().filter(|r| r.assertion) {
        if let Some(u) = upstreams.get(r.upstream)
            && u.name == audience
        {
            p.add(format!(
                "upstream `{}` receives assertions and is named like tokens.audience: a user's token would pass for its assertion",
                u.name
            ));
        }
    }
}

/// Where secrets and overrides come from; the process environment in production, a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path, env: &dyn Env) -> Result<Config, Vec<String>> {
    let text = read_regular_file(path)
        .and_then(|b| String::from_utf8(b).map_err(|_| "not UTF-8 text".to_owned()))
        .map_err(|e| vec![format!("cannot read config file {}: {e}", path.display())])?;
    parse(&text, env)
}

/// Largest file the config is, or names (keys, certificates): far above any real PEM chain.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a regular file of at most [`MAX_FILE_BYTES`]. Anything else is refused before a byte
/// is read: a FIFO or `/dev/stdin` would block `check-config` for ever, `/dev/zero` would eat
/// memory until the process dies. The file is opened non-blocking (opening a FIFO otherwise
/// waits for a writer) and checked on the open descriptor, so nothing can be swapped in
/// between the check and the read.
pub fn read_regular_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    let too_large = || format!("larger than {} KiB", MAX_FILE_BYTES / 1024);
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Validates config text.
pub fn parse(text: &str, env: &dyn Env) -> Result<Config, Vec<String>> {
    let raw: file::FileConfig = toml::from_str(text).map_err(|e| vec![toml_error(&e)])?;
    let mut config = validate(&raw, env)?;
    config.sha256 = sha256_hex(text.as_bytes());
    Ok(config)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl Config {
    /// What differs from `running` that only a restart applies (a reload warns of each).
    pub fn needs_restart(&self, running: &Self) -> Vec<&'static str> {
        let tls = |c: &Self| {
            c.tls
                .as_ref()
                .map(|t| (t.cert_file.clone(), t.key_file.clone()))
        };
        [
            ("server.listen", self.listen != running.listen),
            (
                "server.admin_listen",
                self.admin_listen != running.admin_listen,
            ),
            ("server.threads", self.threads != running.threads),
            (
                "server.grace_period_secs",
                self.grace_period != running.grace_period,
            ),
            (
                "server.request_head_timeout_ms",
                self.request_head_timeout != running.request_head_timeout,
            ),
            ("server.tls", tls(self) != tls(running)),
            ("server.log_format", self.log_format != running.log_format),
            ("store.url", self.store.url != running.store.url),
            (
                "store.auto_migrate",
                self.store.auto_migrate != running.store.auto_migrate,
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

fn toml_error(e: &toml::de::Error) -> String {
    // toml's message spans several lines (with a source excerpt); keep one.
    let msg = e.message().replace('\n', " ");
    one_line(match e.span() {
        Some(span) => format!("config syntax: {msg} (at byte {})", span.start),
        None => format!("config syntax: {msg}"),
    })
}

/// Collects problems; each is one line.
#[derive(Default)]
pub(crate) struct Problems(Vec<String>);

impl Problems {
    pub(crate) fn add(&mut self, p: impl Into<String>) {
        self.0.push(one_line(p.into()));
    }
}

/// Control characters escaped: a problem quotes values (and keys) from the file, and one
/// holding a newline or a terminal escape must not forge more lines of output.
pub fn one_line(p: String) -> String {
    if !p.contains(char::is_control) {
        return p;
    }
    let mut line = String::with_capacity(p.len() + 8);
    for c in p.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

fn validate(raw: &file::FileConfig, env: &dyn Env) -> Result<Config, Vec<String>> {
    let mut p = Problems::default();

    let listen = addr(&mut p, "server.listen", &raw.server.listen);
    let admin_listen = addr(&mut p, "server.admin_listen", &raw.server.admin_listen);
    if let (Some(a), Some(b)) = (listen, admin_listen)
        && a == b
    {
        p.add("server.listen and server.admin_listen must differ");
    }
    if raw.server.threads == 0 || raw.server.threads > 1024 {
        p.add("server.threads must be between 1 and 1024");
    }
    let log_format = log_format(&mut p, raw.server.log_format.as_deref());
    if !(100..=600_000).contains(&raw.server.request_head_timeout_ms) {
        p.add("server.request_head_timeout_ms must be between 100 and 600000");
    }
    let tls = raw.server.tls.as_ref().map(|t| {
        let cert = readable(&mut p, "server.tls.cert_file", &t.cert_file);
        let key = readable(&mut p, "server.tls.key_file", &t.key_file);
        if let (Some(cert), Some(key)) = (cert, key) {
            tls_pair(&mut p, &cert, &key);
        }
        TlsFiles {
            cert_file: t.cert_file.clone().into(),
            key_file: t.key_file.clone().into(),
        }
    });

    let store = store(&mut p, &raw.store, env);
    let tokens = tokens(&mut p, &raw.tokens, env);
    let cookie = cookie(&mut p, &raw.cookie);
    let rate_limit = rate_limit(&mut p, &raw.rate_limit);
    if raw.password.bcrypt_cost < MIN_BCRYPT_COST || raw.password.bcrypt_cost > 31 {
        p.add(format!(
            "password.bcrypt_cost must be between {MIN_BCRYPT_COST} and 31, got {}",
            raw.password.bcrypt_cost
        ));
    }
    let prefix = raw.identity.prefix.trim_end_matches('/').to_owned();
    if !prefix.starts_with('/') || crate::path::normalise(&prefix).ok().as_deref() != Some(&prefix)
    {
        p.add(format!(
            "identity.prefix `{}` must be a canonical absolute path",
            raw.identity.prefix
        ));
    }
    let cors = Cors::new(
        &raw.cors.allowed_origins,
        &raw.cors.allowed_headers,
        raw.cors.max_age_secs,
    )
    .map_err(|e| p.add(e))
    .unwrap_or_default();
    let upstreams = upstreams(&mut p, &raw.upstream);
    let routes = routes::validate(&mut p, &raw.route, &upstreams);
    let issuers = issuers(&mut p, &raw.issuer, &raw.tokens.issuer);
    let forward_auth = forward_auth(&mut p, raw, &prefix);
    let assertion_conf = assertion(&mut p, raw.assertion.as_ref());
    if let Some(a) = &assertion_conf {
        assertion_apart_from_tokens(&mut p, a, raw, &routes, &upstreams);
    }
    if raw.assertion.is_none() {
        for r in routes.iter().filter(|r| r.assertion) {
            p.add(format!(
                "route `{}`: assertion = true needs an [assertion] section (its key)",
                r.pattern
            ));
        }
    }
    match (listen, admin_listen, tokens, cookie) {
        (Some(listen), Some(admin_listen), Some(tokens), Some(cookie)) if p.0.is_empty() => {
            Ok(Config {
                listen,
                admin_listen,
                threads: raw.server.threads,
                grace_period: Duration::from_secs(raw.server.grace_period_secs),
                request_head_timeout: Duration::from_millis(raw.server.request_head_timeout_ms),
                server_timing: raw.server.server_timing,
                log_format,
                tls,
                store,
                tokens,
                cookie,
                rate_limit,
                bcrypt_cost: raw.password.bcrypt_cost,
                identity_prefix: prefix,
                cors,
                upstreams,
                routes,
                issuers,
                forward_auth,
                assertion: assertion_conf,
                sha256: String::new(),
            })
        }
        _ => Err(p.0),
    }
}

fn log_format(p: &mut Problems, value: Option<&str>) -> Option<LogFormat> {
    match value? {
        "json" => Some(LogFormat::Json),
        "pretty" => Some(LogFormat::Pretty),
        other => {
            p.add(format!(
                "server.log_format `{other}` must be \"json\" or \"pretty\""
            ));
            None
        }
    }
}

fn addr(p: &mut Problems, key: &str, value: &str) -> Option<SocketAddr> {
    let parsed = value.parse().ok();
    if parsed.is_none() {
        p.add(format!("{key} `{value}` is not an IP:port address"));
    }
    parsed
}

fn readable(p: &mut Problems, key: &str, file: &str) -> Option<Vec<u8>> {
    match read_regular_file(Path::new(file)) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            p.add(format!("{key}: cannot read `{file}`: {e}"));
            None
        }
    }
}

/// `server.tls` must be what the listener will load: a PEM chain and a PEM PKCS#8 key that
/// belongs to its first certificate. Pingora builds the acceptor inside the proxy's thread and
/// panics there on a bad pair, which would leave the admin listener up and ready over a dead
/// public port: so the pair is proven here, before anything starts.
fn tls_pair(p: &mut Problems, cert: &[u8], key: &[u8]) {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    let certs = match CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if !certs.is_empty() => certs,
        Ok(_) => {
            p.add("server.tls.cert_file: no PEM certificate in it");
            return;
        }
        Err(e) => {
            p.add(format!(
                "server.tls.cert_file: not a PEM certificate chain: {e}"
            ));
            return;
        }
    };
    let key = match PrivatePkcs8KeyDer::from_pem_slice(key) {
        Ok(key) => key,
        Err(e) => {
            p.add(format!(
                "server.tls.key_file: not a PEM PKCS#8 private key ({e}); convert with `openssl pkcs8 -topk8 -nocrypt`"
            ));
            return;
        }
    };
    let built = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key.into()));
    if let Err(e) = built {
        p.add(format!(
            "server.tls.key_file: unusable with server.tls.cert_file: {e}"
        ));
    }
}

fn store(p: &mut Problems, raw: &file::Store, env: &dyn Env) -> Store {
    let (url, from) = match env.var("DATABASE_URL").filter(|u| !u.is_empty()) {
        Some(u) => (u, "DATABASE_URL"),
        None => (raw.url.clone(), "store.url"),
    };
    let scheme = url.split("://").next().unwrap_or_default();
    if !url.contains("://") || !matches!(scheme, "sqlite" | "postgres" | "postgresql") {
        // The URL may hold a password: name the scheme only.
        p.add(format!(
            "{from} must start with sqlite:// or postgres:// (got scheme `{}`)",
            if url.contains("://") { scheme } else { "none" }
        ));
    }
    Store {
        url,
        auto_migrate: raw.auto_migrate,
    }
}

fn tokens(p: &mut Problems, raw: &file::Tokens, env: &dyn Env) -> Option<Tokens> {
    let before = p.0.len();
    let Some(alg) = Alg::from_name(&raw.algorithm).filter(|a| a.signs_own_tokens()) else {
        p.add(format!(
            "tokens.algorithm `{}` is not one of HS256, EdDSA, ES256, RS256",
            raw.algorithm
        ));
        return None;
    };
    if raw.ttl_secs == 0 || raw.ttl_secs > 86_400 {
        p.add("tokens.ttl_secs must be between 1 and 86400");
    }
    if raw.leeway_secs > 300 {
        p.add("tokens.leeway_secs must be at most 300");
    }
    for (key, v) in [
        ("tokens.issuer", &raw.issuer),
        ("tokens.audience", &raw.audience),
    ] {
        if v.trim().is_empty() {
            p.add(format!("{key} must not be empty"));
        }
    }

    let signing = signing_key(p, raw, alg, env);
    let previous: Vec<KeyMaterial> = raw
        .previous_keys
        .iter()
        .enumerate()
        .filter_map(|(i, prev)| {
            previous_key(p, &format!("tokens.previous_keys[{i}]"), prev, alg, env)
        })
        .collect();
    let mut kids: Vec<&str> = signing
        .iter()
        .chain(&previous)
        .filter_map(|k| k.kid.as_deref())
        .collect();
    kids.sort_unstable();
    if kids.windows(2).any(|w| w[0] == w[1]) {
        p.add("tokens: every kid must be unique across the signing key and previous_keys");
    }

    let signing = signing?;
    if p.0.len() != before {
        return None;
    }
    Some(Tokens {
        alg,
        ttl: Duration::from_secs(raw.ttl_secs),
        issuer: raw.issuer.clone(),
        audience: raw.audience.clone(),
        leeway_secs: raw.leeway_secs,
        signing,
        previous,
    })
}

/// The signing key as the config names it, or `None` (with the problems added).
fn signing_key(
    p: &mut Problems,
    raw: &file::Tokens,
    alg: Alg,
    env: &dyn Env,
) -> Option<KeyMaterial> {
    if alg.is_symmetric() {
        if raw.private_key_file.is_some() {
            p.add("tokens.private_key_file is for EdDSA / ES256 / RS256; HS256 uses tokens.secret_env");
        }
        let Some(var) = raw.secret_env.as_deref() else {
            p.add("tokens.secret_env is required for HS256");
            return None;
        };
        return Some(KeyMaterial {
            kid: raw.kid.clone(),
            form: KeyForm::Secret,
            bytes: secret(p, "tokens.secret_env", var, env)?,
            source: "tokens.secret_env".to_owned(),
        });
    }
    if raw.secret_env.is_some() {
        p.add(format!(
            "tokens.secret_env is for HS256; {} uses tokens.private_key_file",
            alg.as_str()
        ));
    }
    if raw.kid.as_deref().is_none_or(str::is_empty) {
        p.add(format!("tokens.kid is required for {}", alg.as_str()));
    }
    let Some(file) = raw.private_key_file.as_deref() else {
        p.add(format!(
            "tokens.private_key_file is required for {}",
            alg.as_str()
        ));
        return None;
    };
    Some(KeyMaterial {
        kid: raw.kid.clone(),
        form: KeyForm::PrivatePem,
        bytes: readable(p, "tokens.private_key_file", file)?,
        source: format!("tokens.private_key_file `{file}`"),
    })
}

/// A retired key, still accepted for verification.
fn previous_key(
    p: &mut Problems,
    at: &str,
    prev: &file::PreviousKey,
    alg: Alg,
    env: &dyn Env,
) -> Option<KeyMaterial> {
    if alg.is_symmetric() {
        if prev.public_key_file.is_some() {
            p.add(format!(
                "{at}: HS256 keys use secret_env, not public_key_file"
            ));
        }
        let Some(var) = prev.secret_env.as_deref() else {
            p.add(format!("{at}.secret_env is required for HS256"));
            return None;
        };
        let s = secret(p, &format!("{at}.secret_env"), var, env)?;
        return Some(KeyMaterial {
            kid: prev.kid.clone(),
            form: KeyForm::Secret,
            bytes: s,
            source: format!("{at}.secret_env"),
        });
    }
    if prev.kid.as_deref().is_none_or(str::is_empty) {
        p.add(format!("{at}.kid is required for {}", alg.as_str()));
    }
    let Some(file) = prev.public_key_file.as_deref() else {
        p.add(format!(
            "{at}.public_key_file is required for {}",
            alg.as_str()
        ));
        return None;
    };
    let pem = readable(p, &format!("{at}.public_key_file"), file)?;
    Some(KeyMaterial {
        kid: prev.kid.clone(),
        form: KeyForm::PublicPem,
        bytes: pem,
        source: format!("{at}.public_key_file `{file}`"),
    })
}

fn secret(p: &mut Problems, key: &str, var: &str, env: &dyn Env) -> Option<Vec<u8>> {
    match env.var(var) {
        None => {
            p.add(format!("{key}: environment variable {var} is not set"));
            None
        }
        Some(s) if s.len() < MIN_SECRET_BYTES => {
            // Say how long, never what.
            p.add(format!(
                "{key}: {var} is {} bytes; HS256 needs at least {MIN_SECRET_BYTES}",
                s.len()
            ));
            None
        }
        Some(s) => Some(s.into_bytes()),
    }
}

fn cookie(p: &mut Problems, raw: &file::Cookie) -> Option<Cookie> {
    let token_char = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    let mut ok = true;
    if raw.name.is_empty() || !raw.name.bytes().all(token_char) {
        p.add(format!(
            "cookie.name `{}` is not a valid cookie name",
            raw.name
        ));
        ok = false;
    }
    let same_site = match raw.same_site.as_str() {
        "Strict" => SameSite::Strict,
        "Lax" => SameSite::Lax,
        other => {
            p.add(format!("cookie.same_site `{other}` must be Strict or Lax"));
            return None;
        }
    };
    ok.then(|| Cookie {
        name: raw.name.clone(),
        secure: raw.secure,
        same_site,
    })
}

fn rate_limit(p: &mut Problems, raw: &file::RateLimit) -> RateLimit {
    if raw.per_ip_per_minute == 0 {
        p.add("rate_limit.per_ip_per_minute must be at least 1");
    }
    if raw.failed_signins_per_email_per_minute == 0 {
        p.add("rate_limit.failed_signins_per_email_per_minute must be at least 1");
    }
    let trusted_proxies = cidrs(p, "rate_limit.trusted_proxies", &raw.trusted_proxies);
    let cluster = match raw.scope.as_str() {
        "replica" => false,
        "cluster" => true,
        other => {
            p.add(format!(
                "rate_limit.scope `{other}` must be \"replica\" or \"cluster\""
            ));
            false
        }
    };
    RateLimit {
        per_ip_per_minute: raw.per_ip_per_minute,
        failed_signins_per_email_per_minute: raw.failed_signins_per_email_per_minute,
        trusted_proxies,
        cluster,
    }
}

/// `[forward_auth]` when enabled: its CIDRs, and nothing else of the config under its prefix.
fn forward_auth(p: &mut Problems, raw: &file::FileConfig, prefix: &str) -> Option<ForwardAuth> {
    if !raw.forward_auth.enabled {
        return None;
    }
    let trusted_proxies = cidrs(
        p,
        "forward_auth.trusted_proxies",
        &raw.forward_auth.trusted_proxies,
    );
    for r in raw
        .route
        .iter()
        .filter(|r| r.path.starts_with(FORWARD_AUTH_PREFIX))
    {
        p.add(format!(
            "route `{}`: {FORWARD_AUTH_PREFIX} is the forward-auth endpoints' while forward_auth.enabled",
            r.path
        ));
    }
    if format!("{prefix}/").starts_with(FORWARD_AUTH_PREFIX) {
        p.add(format!(
            "identity.prefix `{prefix}` is under the forward-auth endpoints' {FORWARD_AUTH_PREFIX}"
        ));
    }
    Some(ForwardAuth { trusted_proxies })
}

/// A list of CIDRs (`key` names it in the problems); a bare address is a network of one.
fn cidrs(p: &mut Problems, key: &str, raw: &[String]) -> Vec<IpNet> {
    raw.iter()
        .filter_map(|cidr| {
            let net = cidr
                .parse::<IpNet>()
                .ok()
                .or_else(|| cidr.parse::<std::net::IpAddr>().ok().map(IpNet::from));
            if net.is_none() {
                p.add(format!(
                    "{key}: `{}` is not a CIDR (e.g. 10.0.0.0/8)",
                    cidr.escape_default()
                ));
            }
            net
        })
        .collect()
}

fn upstreams(p: &mut Problems, raw: &[file::Upstream]) -> Vec<Upstream> {
    let mut out: Vec<Upstream> = Vec::new();
    for u in raw {
        let at = format!("upstream `{}`", u.name);
        if u.name.is_empty() {
            p.add("upstream.name must not be empty");
        }
        if out.iter().any(|o| o.name == u.name) {
            p.add(format!("{at} is defined twice"));
        }
        if u.addrs.is_empty() {
            p.add(format!(
                "{at}: addrs must list at least one IP:port or host:port"
            ));
        }
        let addrs: Vec<UpstreamAddr> = u
            .addrs
            .iter()
            .filter_map(|a| {
                let parsed = UpstreamAddr::parse(a);
                if parsed.is_none() {
                    p.add(format!(
                        "{at}: addr `{a}` is not an IP:port or host:port address"
                    ));
                }
                parsed
            })
            .collect();
        if u.resolve_secs == 0 || u.resolve_secs > 86_400 {
            p.add(format!("{at}: resolve_secs must be between 1 and 86400"));
        }
        for (key, ms) in [
            ("connect_timeout_ms", u.connect_timeout_ms),
            ("read_timeout_ms", u.read_timeout_ms),
            ("health_check_interval_ms", u.health_check_interval_ms),
        ] {
            if ms == 0 || ms > 3_600_000 {
                p.add(format!("{at}: {key} must be between 1 and 3600000"));
            }
        }
        out.push(Upstream {
            name: u.name.clone(),
            addrs,
            resolve: Duration::from_secs(u.resolve_secs),
            connect_timeout: Duration::from_millis(u.connect_timeout_ms),
            read_timeout: Duration::from_millis(u.read_timeout_ms),
            health_check_interval: Duration::from_millis(u.health_check_interval_ms),
            forward_token: u.forward_token,
            assertion: u.assertion,
        });
    }
    out
}

fn issuers(p: &mut Problems, raw: &[file::Issuer], local_issuer: &str) -> Vec<Issuer> {
    let mut out = Vec::new();
    for (i, iss) in raw.iter().enumerate() {
        let at = format!("issuer `{}`", iss.name);
        if raw[..i].iter().any(|o| o.name == iss.name) {
            p.add(format!("{at} is defined twice"));
        }
        let target = JwksUrl::parse(&iss.jwks_url)
            .map_err(|e| p.add(format!("{at}: jwks_url {e}")))
            .ok();
        for (key, v) in [
            ("name", &iss.name),
            ("issuer", &iss.issuer),
            ("audience", &iss.audience),
            ("user_id_claim", &iss.user_id_claim),
            ("email_claim", &iss.email_claim),
        ] {
            if v.trim().is_empty() {
                p.add(format!("{at}: {key} must not be empty"));
            }
        }
        // `iss` picks the keys a token is checked with: it must name one key set only.
        if iss.issuer == local_issuer {
            p.add(format!(
                "{at}: issuer `{}` is tokens.issuer; an external issuer needs its own",
                iss.issuer
            ));
        }
        if raw[..i].iter().any(|o| o.issuer == iss.issuer) {
            p.add(format!(
                "{at}: issuer `{}` is already another [[issuer]]'s",
                iss.issuer
            ));
        }
        let refresh_ok = (1..=86_400).contains(&iss.refresh_secs);
        if !refresh_ok {
            p.add(format!("{at}: refresh_secs must be between 1 and 86400"));
        }
        if iss.min_refresh_secs == 0 || (refresh_ok && iss.min_refresh_secs > iss.refresh_secs) {
            p.add(format!(
                "{at}: min_refresh_secs must be between 1 and refresh_secs ({})",
                iss.refresh_secs
            ));
        }
        if !(100..=60_000).contains(&iss.timeout_ms) {
            p.add(format!("{at}: timeout_ms must be between 100 and 60000"));
        }
        if let Some(target) = target {
            out.push(Issuer {
                name: iss.name.clone(),
                jwks_url: target,
                issuer: iss.issuer.clone(),
                audience: iss.audience.clone(),
                user_id_claim: iss.user_id_claim.clone(),
                email_claim: iss.email_claim.clone(),
                refresh: Duration::from_secs(iss.refresh_secs),
                min_refresh: Duration::from_secs(iss.min_refresh_secs),
                timeout: Duration::from_millis(iss.timeout_ms),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, &'static str>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| (*s).to_owned())
        }
    }

    fn env() -> MapEnv {
        MapEnv(HashMap::from([(
            "SECRET",
            "0123456789abcdef0123456789abcdef",
        )]))
    }

    const BASE: &str = r#"
[tokens]
secret_env = "SECRET"
[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000"]
[[route]]
path = "/api/{user_id}/tasks/{*rest}"
upstream = "app"
auth = "required"
owner = "user_id"
"#;

    fn problems(extra: &str) -> Vec<String> {
        parse(&format!("{BASE}{extra}"), &env()).unwrap_err()
    }

    #[test]
    fn the_minimal_config_is_valid_with_contract_defaults() {
        let c = parse(BASE, &env()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.tokens.ttl, Duration::from_secs(3600));
        assert_eq!(c.cookie.name, "portcullis_token");
        assert_eq!(c.bcrypt_cost, 12);
        assert_eq!(c.identity_prefix, "/api/v1/auth");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = problems("[cookie]\nnmae = \"x\"\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("unknown field"), "{e:?}");
    }

    #[test]
    fn every_problem_is_reported_on_its_own_line() {
        let e = problems(
            "[[route]]\npath = \"/x/{id}\"\nupstream = \"nope\"\nauth = \"public\"\n\
             [[route]]\npath = \"/y/{id}\"\nupstream = \"app\"\nauth = \"optional\"\nowner = \"id\"\n\
             [password]\nbcrypt_cost = 9\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e.iter().all(|l| !l.contains('\n')));
    }

    #[test]
    fn every_problem_of_one_route_is_reported() {
        let e = problems(
            "[[route]]\npath = \"/x/{id}\"\nupstream = \"nope\"\nauth = \"public\"\nowner = \"id\"\n\
             [[route]]\npath = \"/x/{other}\"\nupstream = \"app\"\nauth = \"public\"\n\
             [[route]]\npath = \"/y/{id}\"\nupstream = \"gone\"\nauth = \"required\"\nowner = \"user\"\n",
        );
        assert!(e.iter().any(|l| l.contains("upstream `nope`")), "{e:?}");
        assert!(e.iter().any(|l| l.contains("owner needs")), "{e:?}");
        assert!(e.iter().any(|l| l.contains("duplicates")), "{e:?}");
        assert!(e.iter().any(|l| l.contains("upstream `gone`")), "{e:?}");
        assert!(e.iter().any(|l| l.contains("owner `user`")), "{e:?}");
    }

    #[test]
    fn a_problem_quoting_a_value_with_control_characters_stays_on_one_line() {
        let e = problems(
            "[server]\nlisten = \"a\\nerror: forged\\r\\u001b[2J\"\n[[issuer]]\nname = \"x\\ny\"\njwks_url = \"ftp://\"\nissuer = \"i\"\naudience = \"a\"\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        for line in &e {
            assert!(!line.contains(['\n', '\r', '\u{1b}']), "{line:?}");
        }
        assert!(e[0].contains(r"a\nerror: forged\r\u{1b}[2J"), "{e:?}");
        let e = problems("[cookie]\n\"na\\u001b[2Jme\\n\" = 1\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(!e[0].contains(['\n', '\u{1b}']), "{e:?}");
    }

    #[test]
    fn a_short_or_missing_secret_is_refused_without_echoing_it() {
        let short = MapEnv(HashMap::from([("SECRET", "tooshort")]));
        let e = parse(BASE, &short).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(
            e[0].contains("8 bytes") && !e[0].contains("tooshort"),
            "{e:?}"
        );
        let none = MapEnv(HashMap::new());
        assert!(parse(BASE, &none).unwrap_err()[0].contains("not set"));
    }

    #[test]
    fn database_url_overrides_store_url_and_is_never_printed() {
        let env = MapEnv(HashMap::from([
            ("SECRET", "0123456789abcdef0123456789abcdef"),
            ("DATABASE_URL", "mysql://user:hunter2@db/x"),
        ]));
        let e = parse(BASE, &env).unwrap_err();
        assert!(
            e[0].contains("DATABASE_URL") && !e[0].contains("hunter2"),
            "{e:?}"
        );
    }
}
