//! `portcullis demo`: the whole thing with nothing installed. An embedded SQLite store under
//! `./data/`, a development secret generated once and kept in `./data/demo-secret`, the
//! built-in echo upstream behind a protected owner route and a public route, and the curl
//! lines that try it. For development only, and it says so.

pub mod echo;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::{self, Config, Env};

pub const LISTEN: &str = "127.0.0.1:8080";
pub const ADMIN: &str = "127.0.0.1:9090";
const SECRET_FILE: &str = "data/demo-secret";
const SECRET_ENV: &str = "PORTCULLIS_DEMO_SECRET";

/// The demo's config, around an already running echo upstream.
pub fn config(echo: SocketAddr) -> Result<Config, Vec<String>> {
    let secret = secret(Path::new(SECRET_FILE)).map_err(|e| vec![e])?;
    let text = format!(
        r#"
[server]
listen = "{LISTEN}"
admin_listen = "{ADMIN}"
grace_period_secs = 1
log_format = "pretty"

[store]
url = "sqlite://data/portcullis-demo.db"

[tokens]
secret_env = "{SECRET_ENV}"

[[upstream]]
name = "echo"
addrs = ["{echo}"]

[[route]]
path = "/api/{{user_id}}/tasks/{{*rest}}"
upstream = "echo"
auth = "required"
owner = "user_id"

[[route]]
path = "/public/{{*rest}}"
upstream = "echo"
auth = "public"

# The demo page (register, sign in, call the owner route, sign out), served by the echo.
[[route]]
path = "/"
upstream = "echo"
auth = "public"
"#
    );
    config::parse(&text, &DemoEnv(secret))
}

/// Only the demo secret; `DATABASE_URL` is deliberately ignored (the demo is embedded).
struct DemoEnv(String);

impl Env for DemoEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == SECRET_ENV).then(|| self.0.clone())
    }
}

/// The development secret: read from `path`, or generated and written there (mode 0600).
fn secret(path: &Path) -> Result<String, String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_owned();
        if s.len() >= config::MIN_SECRET_BYTES {
            return Ok(s);
        }
    }
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| "no system randomness".to_owned())?;
    let hex: String = raw.iter().fold(String::with_capacity(64), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(hex.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(hex)
}

/// What the demo prints before it starts serving.
pub fn banner(echo: SocketAddr) -> String {
    format!(
        r#"
Portcullis demo — FOR DEVELOPMENT ONLY
  gateway  http://{LISTEN}      admin  http://{ADMIN}/healthz
  store    ./data/portcullis-demo.db (SQLite)
  secret   ./data/{secret} — a generated DEVELOPMENT secret; never use it in production
  upstream built-in echo on {echo}: /api/{{user_id}}/tasks/* (owner only), /public/* (anyone)

Open http://{LISTEN}/ in a browser: register, sign in (an HttpOnly cookie, no token in
the page), call the owner route and see the X-User-Id the upstream received, sign out, get 401.

Or with curl (in another shell):

  B=http://{LISTEN}/api/v1/auth
  curl -s -X POST $B/register -H 'content-type: application/json' \
       -d '{{"email":"ada@example.com","password":"correct horse battery"}}'
  TOKEN=$(curl -s -X POST $B/signin -H 'content-type: application/json' \
       -d '{{"email":"ada@example.com","password":"correct horse battery"}}' | sed -E 's/.*"token":"([^"]+)".*/\1/')
  ME=$(curl -s $B/me -H "authorization: Bearer $TOKEN" | sed -E 's/.*"id":"([^"]+)".*/\1/')
  curl -s http://{LISTEN}/api/$ME/tasks/1 -H "authorization: Bearer $TOKEN"   # 200: the echo shows X-User-Id
  curl -s http://{LISTEN}/api/$ME/tasks/1                                       # 401 missing_token
  curl -s -X POST $B/signout -H "authorization: Bearer $TOKEN" -o /dev/null -w '%{{http_code}}\n'   # 204
  curl -s http://{LISTEN}/api/$ME/tasks/1 -H "authorization: Bearer $TOKEN"   # 401 token_revoked
"#,
        secret = "demo-secret",
    )
}
