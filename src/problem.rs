//! The one place where a gateway-made error becomes an `application/problem+json` response
//! (RFC 9457). Callers name a [`Code`], or hand over a lower error with `?`: every failure of
//! a store, the password pool, a token, the request framing, the path, minting or the upstream
//! is turned into a [`Problem`] here ("The rescue", below), and only here. The status, the
//! title and the headers follow from the code. Bodies carry plain words and the code, never a
//! token, a password, a secret or a cause; the cause goes to the log.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use serde::Serialize;

use crate::accounts::password::PoolError;
use crate::accounts::ratelimit::Limited;
use crate::accounts::store::StoreError;
use crate::authn::Refusal;
use crate::authn::issue::MintError;
use crate::edge::framing::FramingError;
use crate::edge::headers::AmbiguousCredential;
use crate::path::PathError;

/// Every error code of CONTRACT section 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    MissingToken,
    InvalidToken,
    TokenExpired,
    TokenRevoked,
    Forbidden,
    InsufficientScope,
    NotFound,
    InvalidCredentials,
    EmailTaken,
    ValidationFailed,
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    ServiceUnavailable,
    BadGateway,
    GatewayTimeout,
    Internal,
}

impl Code {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::TokenRevoked => "token_revoked",
            Self::Forbidden => "forbidden",
            Self::InsufficientScope => "insufficient_scope",
            Self::NotFound => "not_found",
            Self::InvalidCredentials => "invalid_credentials",
            Self::EmailTaken => "email_taken",
            Self::ValidationFailed => "validation_failed",
            Self::BadRequest => "bad_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited => "rate_limited",
            Self::ServiceUnavailable => "service_unavailable",
            Self::BadGateway => "bad_gateway",
            Self::GatewayTimeout => "gateway_timeout",
            Self::Internal => "internal",
        }
    }

    pub const fn status(self) -> u16 {
        match self {
            Self::MissingToken
            | Self::InvalidToken
            | Self::TokenExpired
            | Self::TokenRevoked
            | Self::InvalidCredentials => 401,
            Self::Forbidden | Self::InsufficientScope => 403,
            Self::NotFound => 404,
            Self::EmailTaken => 409,
            Self::ValidationFailed => 422,
            Self::BadRequest => 400,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::RateLimited => 429,
            Self::ServiceUnavailable => 503,
            Self::BadGateway => 502,
            Self::GatewayTimeout => 504,
            Self::Internal => 500,
        }
    }

    const fn title(self) -> &'static str {
        match self.status() {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            409 => "Conflict",
            413 => "Payload Too Large",
            415 => "Unsupported Media Type",
            422 => "Unprocessable Content",
            429 => "Too Many Requests",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Internal Server Error",
        }
    }

    /// The sentence a client sees when the caller has nothing more specific to say.
    const fn default_detail(self) -> &'static str {
        match self {
            Self::MissingToken => "Authentication required",
            Self::InvalidToken => "The token is not valid",
            Self::TokenExpired => "The token has expired",
            Self::TokenRevoked => "The token has been revoked",
            Self::Forbidden => "This resource belongs to another user",
            Self::InsufficientScope => "The token lacks a claim or scope this route requires",
            Self::NotFound => "No such resource",
            Self::InvalidCredentials => "Email or password is wrong",
            Self::EmailTaken => "An account with this email already exists",
            Self::ValidationFailed => "The request body has invalid fields",
            Self::BadRequest => "The request is malformed",
            Self::PayloadTooLarge => "The request body is too large",
            Self::UnsupportedMediaType => "The request body must be application/json",
            Self::RateLimited => "Too many requests; retry later",
            Self::ServiceUnavailable => "The service is temporarily unavailable; retry later",
            Self::BadGateway => "The upstream service could not be reached",
            Self::GatewayTimeout => "The upstream service did not answer in time",
            Self::Internal => "An internal error occurred",
        }
    }
}

/// A gateway-made error on its way to the client.
#[derive(Debug, Clone)]
pub struct Problem {
    pub code: Code,
    detail: Cow<'static, str>,
    errors: Option<BTreeMap<String, String>>,
    /// A token was presented (RFC 6750: `error="invalid_token"` on the challenge).
    token_presented: bool,
    retry_after_secs: Option<u64>,
}

impl Problem {
    pub fn new(code: Code) -> Self {
        Self {
            code,
            detail: Cow::Borrowed(code.default_detail()),
            errors: None,
            token_presented: false,
            retry_after_secs: None,
        }
    }

    /// A client-facing sentence. It must never contain secrets or internal causes.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = detail.into();
        self
    }

    #[must_use]
    pub fn field_errors(mut self, errors: BTreeMap<String, String>) -> Self {
        self.errors = Some(errors);
        self
    }

    #[must_use]
    pub fn token_presented(mut self, presented: bool) -> Self {
        self.token_presented = presented;
        self
    }

    #[must_use]
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    pub fn body(&self) -> Bytes {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            title: &'static str,
            status: u16,
            detail: &'a str,
            code: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            errors: Option<&'a BTreeMap<String, String>>,
        }
        let body = Body {
            kind: "about:blank",
            title: self.code.title(),
            status: self.status(),
            detail: &self.detail,
            code: self.code.as_str(),
            errors: self.errors.as_ref(),
        };
        // Serialising a struct of strings and integers cannot fail.
        Bytes::from(serde_json::to_vec(&body).expect("problem body serialises"))
    }

    /// The full response: status, problem+json body and the headers its code calls for.
    pub fn response(&self) -> (ResponseHeader, Bytes) {
        let body = self.body();
        let mut header = head(
            self.status(),
            Some("application/problem+json"),
            body.len(),
            "no-store",
        );
        if self.status() == 401 {
            let challenge = if self.token_presented {
                r#"Bearer realm="portcullis", error="invalid_token""#
            } else {
                r#"Bearer realm="portcullis""#
            };
            insert(&mut header, "www-authenticate", challenge);
        }
        if self.code == Code::InsufficientScope {
            insert(
                &mut header,
                "www-authenticate",
                r#"Bearer realm="portcullis", error="insufficient_scope""#,
            );
        }
        if let Some(secs) = self.retry_after_secs {
            insert(&mut header, "retry-after", &secs.to_string());
        }
        (header, body)
    }
}

/// The head of every response the gateway makes itself: status, content type (when there is
/// a body), length and caching. Callers add what their kind of answer needs.
pub fn head(
    status: u16,
    content_type: Option<&'static str>,
    len: usize,
    cache_control: &'static str,
) -> ResponseHeader {
    let mut header = ResponseHeader::build(status, Some(6)).expect("gateway statuses are valid");
    if let Some(ct) = content_type {
        insert(&mut header, "content-type", ct);
    }
    insert(&mut header, "content-length", &len.to_string());
    insert(&mut header, "cache-control", cache_control);
    header
}

fn insert(header: &mut ResponseHeader, name: &'static str, value: &str) {
    header
        .insert_header(name, value)
        .expect("static header names and ASCII values are valid");
}

// The rescue: every lower error that becomes a response, mapped once.

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmailTaken => Self::new(Code::EmailTaken),
            StoreError::Unavailable(cause) => {
                tracing::warn!(cause = %cause, "identity store unavailable");
                Self::new(Code::ServiceUnavailable).retry_after(1)
            }
            StoreError::Other(cause) => {
                tracing::error!(cause = %cause, "identity store error");
                Self::new(Code::Internal)
            }
        }
    }
}

impl From<PoolError> for Problem {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Saturated => Self::new(Code::ServiceUnavailable).retry_after(1),
            PoolError::Failed => {
                tracing::error!("bcrypt failed");
                Self::new(Code::Internal)
            }
        }
    }
}

impl From<Limited> for Problem {
    fn from(l: Limited) -> Self {
        Self::new(Code::RateLimited).retry_after(l.retry_after_secs)
    }
}

impl From<Refusal> for Problem {
    fn from(r: Refusal) -> Self {
        let code = match r {
            Refusal::Invalid | Refusal::UnknownKid => Code::InvalidToken,
            Refusal::Expired => Code::TokenExpired,
            Refusal::Revoked => Code::TokenRevoked,
            Refusal::InsufficientScope => Code::InsufficientScope,
        };
        Self::new(code).token_presented(true)
    }
}

impl From<MintError> for Problem {
    fn from(e: MintError) -> Self {
        tracing::error!(cause = %e, "minting a token failed");
        Self::new(Code::Internal)
    }
}

/// A reply body that would not serialise (our own structs of strings and numbers: a bug).
#[derive(Debug)]
pub struct Unserialisable(pub serde_json::Error);

impl From<Unserialisable> for Problem {
    fn from(e: Unserialisable) -> Self {
        tracing::error!(cause = %e.0, "a reply body did not serialise");
        Self::new(Code::Internal)
    }
}

impl From<FramingError> for Problem {
    fn from(e: FramingError) -> Self {
        tracing::debug!(reason = ?e, "request head refused");
        let detail = match e {
            FramingError::TargetTooLong
            | FramingError::HeaderTooLong
            | FramingError::HeadTooLarge => "The request head is too large",
            FramingError::RepeatedLength | FramingError::UnclearTransferEncoding => {
                "The request framing is ambiguous"
            }
        };
        Self::new(Code::BadRequest).detail(detail)
    }
}

impl From<AmbiguousCredential> for Problem {
    fn from(_: AmbiguousCredential) -> Self {
        Self::new(Code::BadRequest).detail("More than one credential was presented")
    }
}

impl From<PathError> for Problem {
    fn from(e: PathError) -> Self {
        tracing::debug!(reason = ?e, "path refused");
        match e {
            PathError::NotOriginForm => {
                Self::new(Code::BadRequest).detail("The request target must be a path")
            }
            PathError::Unrepresentable => Self::new(Code::BadRequest),
            _ => Self::new(Code::BadRequest).detail("The request path is not acceptable"),
        }
    }
}

impl Problem {
    /// The problem for a failure while proxying; `None` when the client is already gone (no
    /// one to answer).
    pub fn of_proxy_error(e: &pingora::Error) -> Option<Self> {
        use ErrorType::{
            ConnectTimedout, ConnectionClosed, HTTPStatus, ReadError, ReadTimedout, WriteError,
            WriteTimedout,
        };
        use pingora::{ErrorSource, ErrorType};
        let code = match (e.esource(), e.etype()) {
            (_, HTTPStatus(504))
            | (ErrorSource::Upstream, ConnectTimedout | ReadTimedout | WriteTimedout) => {
                Code::GatewayTimeout
            }
            (_, HTTPStatus(502)) | (ErrorSource::Upstream, _) => Code::BadGateway,
            (ErrorSource::Downstream, WriteError | ReadError | ConnectionClosed | ReadTimedout) => {
                return None;
            }
            (ErrorSource::Downstream, _) => Code::BadRequest,
            _ => Code::Internal,
        };
        Some(Self::new(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_contract_fields() {
        let body = Problem::new(Code::MissingToken).body();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "about:blank");
        assert_eq!(v["title"], "Unauthorized");
        assert_eq!(v["status"], 401);
        assert_eq!(v["detail"], "Authentication required");
        assert_eq!(v["code"], "missing_token");
        assert!(v.get("errors").is_none());
    }

    #[test]
    fn challenge_names_invalid_token_only_when_a_token_was_presented() {
        let (h, _) = Problem::new(Code::MissingToken).response();
        assert_eq!(
            h.headers["www-authenticate"],
            r#"Bearer realm="portcullis""#
        );
        let (h, _) = Problem::new(Code::TokenExpired)
            .token_presented(true)
            .response();
        assert_eq!(
            h.headers["www-authenticate"],
            r#"Bearer realm="portcullis", error="invalid_token""#
        );
        let (h, _) = Problem::new(Code::Forbidden).response();
        assert!(h.headers.get("www-authenticate").is_none());
    }

    #[test]
    fn validation_errors_are_listed_by_field() {
        let mut errors = BTreeMap::new();
        errors.insert("email".to_owned(), "must be an email address".to_owned());
        let body = Problem::new(Code::ValidationFailed)
            .field_errors(errors)
            .body();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 422);
        assert_eq!(v["errors"]["email"], "must be an email address");
    }
}
