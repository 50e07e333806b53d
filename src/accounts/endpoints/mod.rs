//! The identity endpoints the gateway serves itself (never proxied): register, signin,
//! signout, me. Each endpoint is one file, a function from the parsed request and the shared
//! dependencies to a reply or a problem. `body.rs` owns request parsing and validation.

mod me;
mod register;
mod signin;
mod signout;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use serde::Serialize;

use crate::accounts::body;
use crate::accounts::limits::Limit;
use crate::accounts::password::PasswordPool;
use crate::accounts::ratelimit::TrustedProxies;
use crate::accounts::store::{SharedStore, StoreHealth, User};
use crate::authn::Authenticator;
use crate::authn::issue::{Minted, TokenIssuer};
use crate::config;
use crate::problem::{Code, Problem, Unserialisable};

/// Everything the endpoints need, built from a config (again by a reload, which keeps the
/// store, the bcrypt pool and the rate-limit counts whose limit is unchanged).
#[derive(Debug)]
pub struct Identity {
    pub prefix: String,
    pub store: SharedStore,
    pub health: Arc<StoreHealth>,
    pub passwords: PasswordPool,
    pub issuer: TokenIssuer,
    pub auth: Arc<Authenticator>,
    pub cookie: config::Cookie,
    pub per_ip: Limit<IpAddr>,
    pub failed_per_email: Limit<String>,
    pub trusted_proxies: TrustedProxies,
}

/// Which endpoint a path and method name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Register,
    Signin,
    Signout,
    Me,
}

/// What the proxy hands an endpoint.
#[derive(Debug)]
pub struct Request<'a> {
    pub endpoint: Endpoint,
    pub content_type: Option<&'a [u8]>,
    pub body: Bytes,
    pub query: Option<&'a str>,
    /// The presented credential, if any (already checked not to be ambiguous).
    pub token: Option<&'a [u8]>,
    pub client_ip: IpAddr,
}

/// A successful answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Option<Bytes>,
    pub set_cookie: Option<String>,
}

impl Endpoint {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Signin => "signin",
            Self::Signout => "signout",
            Self::Me => "me",
        }
    }
}

impl Identity {
    /// The endpoint for `path` (already canonical) under the prefix; `None` when the path is
    /// not the identity service's; `Some(Err)` for a wrong method or an unknown endpoint.
    pub fn route(&self, method: &http::Method, path: &str) -> Option<Result<Endpoint, Problem>> {
        let rest = path.strip_prefix(self.prefix.as_str())?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let endpoint = match (method.as_str(), rest) {
            ("POST", "/register") => Endpoint::Register,
            ("POST", "/signin") => Endpoint::Signin,
            ("POST", "/signout") => Endpoint::Signout,
            ("GET" | "HEAD", "/me") => Endpoint::Me,
            (_, "/register" | "/signin" | "/signout" | "/me") => {
                return Some(Err(
                    Problem::new(Code::NotFound).detail("This endpoint does not take this method")
                ));
            }
            _ => return Some(Err(Problem::new(Code::NotFound))),
        };
        Some(Ok(endpoint))
    }

    pub async fn handle(&self, req: Request<'_>) -> Result<Reply, Problem> {
        // Not migrated yet (the store was down at start): answer fast instead of erroring.
        if !self
            .health
            .migrated
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Problem::new(Code::ServiceUnavailable).retry_after(1));
        }
        match req.endpoint {
            Endpoint::Register => register::handle(self, req).await,
            Endpoint::Signin => signin::handle(self, req).await,
            Endpoint::Signout => signout::handle(self, req).await,
            Endpoint::Me => me::handle(self, req).await,
        }
    }

    /// `Set-Cookie` carrying a token, per the `[cookie]` config.
    fn auth_cookie(&self, token: &str, max_age: u64) -> String {
        let c = &self.cookie;
        let same_site = match c.same_site {
            config::SameSite::Strict => "Strict",
            config::SameSite::Lax => "Lax",
        };
        let secure = if c.secure { "; Secure" } else { "" };
        format!(
            "{}={token}; HttpOnly{secure}; SameSite={same_site}; Path=/; Max-Age={max_age}",
            c.name
        )
    }

    fn clear_cookie(&self) -> String {
        self.auth_cookie("", 0)
    }
}

/// The body of register and signin answers.
#[derive(Serialize)]
struct SessionBody<'a> {
    user: UserBody<'a>,
    token: &'a str,
    token_type: &'static str,
    expires_in: u64,
}

#[derive(Serialize)]
struct UserBody<'a> {
    id: uuid::Uuid,
    email: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    created_at: time::OffsetDateTime,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    updated_at: Option<time::OffsetDateTime>,
}

impl<'a> UserBody<'a> {
    fn of(user: &'a User, with_updated: bool) -> Self {
        Self {
            id: user.id,
            email: &user.email,
            created_at: user.created_at,
            updated_at: with_updated.then_some(user.updated_at),
        }
    }
}

fn json(value: &impl Serialize) -> Result<Bytes, Problem> {
    Ok(Bytes::from(
        serde_json::to_vec(value).map_err(Unserialisable)?,
    ))
}

/// The answer for a freshly authenticated user: body and cookie.
fn session_reply(
    id: &Identity,
    status: u16,
    user: &User,
    minted: &Minted,
) -> Result<Reply, Problem> {
    let body = json(&SessionBody {
        user: UserBody::of(user, false),
        token: &minted.token,
        token_type: "Bearer",
        expires_in: minted.ttl_secs,
    })?;
    Ok(Reply {
        status,
        body: Some(body),
        set_cookie: Some(id.auth_cookie(&minted.token, minted.ttl_secs)),
    })
}

/// The reply as a Pingora response.
pub fn response(reply: &Reply) -> (ResponseHeader, Bytes) {
    let body = reply.body.clone().unwrap_or_default();
    let mut head = crate::problem::head(
        reply.status,
        reply.body.is_some().then_some("application/json"),
        body.len(),
        "no-store",
    );
    if let Some(cookie) = &reply.set_cookie {
        let _ = head.insert_header("set-cookie", cookie.as_str());
    }
    (head, body)
}

/// The common start of register and signin: the per-IP limit, a JSON body with valid
/// credentials, and the per-email limit. Returns the credentials and the email's limit key.
async fn credentials_request(
    id: &Identity,
    req: &Request<'_>,
) -> Result<(body::EmailPassword, String), Problem> {
    id.per_ip.hit(&req.client_ip).await?;
    body::require_json(req.content_type)?;
    let input = body::email_password(&req.body)?;
    let email_key = input.email.to_ascii_lowercase();
    id.failed_per_email.check(&email_key).await?;
    Ok((input, email_key))
}

/// The caller of signout and me: a valid, unrevoked token of one of our users.
fn authenticated_user(
    id: &Identity,
    req: &Request<'_>,
) -> Result<(crate::authn::Verified, uuid::Uuid), Problem> {
    let token = req.token.ok_or_else(|| Problem::new(Code::MissingToken))?;
    let who = id
        .auth
        .authenticate(token, now(), &crate::authn::ClaimRules::NONE)?;
    // An external issuer's token (`[[issuer]]`): its user has no account here, so there is
    // nothing of ours to sign out of or to show; signing out is the issuer's business.
    let not_ours = || Problem::new(Code::Forbidden).detail("This token was not issued here");
    if who.external {
        return Err(not_ours());
    }
    let user = who.user_uuid.ok_or_else(not_ours)?;
    Ok((who, user))
}

use crate::clock::unix_secs as now;
