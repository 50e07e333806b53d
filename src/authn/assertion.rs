//! Signed identity assertions for upstreams (CONTRACT section 9): a short-lived JWT, signed
//! with the `[assertion]` key (Ed25519 or P-256), that a service behind the gateway verifies
//! against the gateway's JWKS instead of trusting the network. Claims: `iss`, `aud` (the
//! upstream's name), `sub`, `email`, `iat`, `exp` (≤ iat + ttl and never after the presented
//! token's own `exp`), `jti`, and `htm` / `htu` (method, canonical path and query) with
//! `bind_request`.
//!
//! Without `bind_request` an assertion depends only on the token and the upstream, so it is
//! minted once per (token, upstream) and handed out again from a per-thread cache (no lock,
//! bounded) until shortly before it expires. The token itself is still verified and checked
//! for revocation on every request before any assertion is handed out.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::{Value, json};

use super::verify::Verified;
use crate::config;

/// Assertions one worker thread keeps; when full the cache starts over (a bound, not an LRU:
/// a full cache means more distinct tokens per minute than it holds).
const CACHE_ENTRIES: usize = 4096;

/// An assertion is minted anew once less than this much of its life is left (or half its ttl,
/// if shorter): an upstream never receives one about to expire.
const REFRESH_BEFORE_SECS: u64 = 10;

enum Signer {
    Ed25519(signature::Ed25519KeyPair),
    P256(signature::EcdsaKeyPair, SystemRandom),
}

/// The JOSE `typ` of an assertion (RFC 8725 3.11, explicit typing): a service that checks it
/// can never take a user's own token for an assertion, whatever keys and audiences share.
pub const TYP: &str = "portcullis-assertion+jwt";

/// Mints assertions with the configured key.
pub struct Asserter {
    /// Distinct per signer in the process: the per-thread cache never hands out an assertion
    /// another signer (an older config) made.
    generation: u64,
    header: HeaderName,
    signer: Signer,
    /// `base64url({"alg":…,"kid":…,"typ":"JWT"})`.
    jose: String,
    issuer: String,
    ttl_secs: u64,
    bind_request: bool,
    jwk: Value,
}

impl std::fmt::Debug for Asserter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asserter")
            .field("header", &self.header)
            .field("jwk", &self.jwk)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    iat: u64,
    exp: u64,
    jti: uuid::Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    htm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    htu: Option<&'a str>,
}

/// The request an assertion is bound to (`bind_request`): method, canonical path and query.
#[derive(Debug, Clone, Copy)]
pub struct Bound<'a> {
    pub method: &'a str,
    pub target: &'a str,
}

impl Asserter {
    /// The signer of `[assertion]`, its `iss` the gateway's `tokens.issuer`. The key must be
    /// Ed25519 or P-256 (PKCS#8 PEM); the error names the file.
    pub fn new(a: &config::Assertion, issuer: &str) -> Result<Self, String> {
        let der = pem::parse(&a.key.bytes)
            .ok()
            .filter(|p| p.tag() == "PRIVATE KEY")
            .map(pem::Pem::into_contents)
            .ok_or_else(|| format!("{}: not a PKCS#8 PEM private key", a.key.source))?;
        let (signer, alg, jwk) = if let Ok(pair) = signature::Ed25519KeyPair::from_pkcs8(&der) {
            let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
            (
                Signer::Ed25519(pair),
                "EdDSA",
                json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
            )
        } else if let Ok(pair) =
            signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der)
        {
            let point = pair.public_key().as_ref();
            // Uncompressed: 0x04 ‖ x ‖ y.
            let (x, y) = point[1..].split_at(32);
            let jwk = json!({"kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)});
            (Signer::P256(pair, SystemRandom::new()), "ES256", jwk)
        } else {
            return Err(format!(
                "{}: an assertion key must be Ed25519 or P-256 (PKCS#8), never HS256 or RSA",
                a.key.source
            ));
        };
        let mut jwk = jwk;
        jwk["kid"] = a.kid.as_str().into();
        jwk["alg"] = alg.into();
        jwk["use"] = "sig".into();
        let jose =
            URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": a.kid, "typ": TYP}).to_string());
        Ok(Self {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            header: a.header.clone(),
            signer,
            jose,
            issuer: issuer.to_owned(),
            ttl_secs: a.ttl.as_secs(),
            bind_request: a.bind_request,
            jwk,
        })
    }

    /// The header it travels in (the client's own of that name is stripped on every route).
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Its public key as a JWK (`kid`, `alg`, `use`), for the gateway's JWKS.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// Whether assertions are bound to their request (minted per request, never cached).
    pub fn binds_request(&self) -> bool {
        self.bind_request
    }

    /// The assertion for `who`, presented with `token`, on its way to upstream `aud` (index
    /// `upstream`): from this thread's cache, or minted. `bound` is the request, used only
    /// with `bind_request`.
    pub fn for_request(
        &self,
        token: &[u8],
        upstream: usize,
        aud: &str,
        who: &Verified,
        now: u64,
        bound: Bound<'_>,
    ) -> Option<HeaderValue> {
        // A token accepted within its leeway past `exp`: an assertion would be born expired.
        if who.exp <= now {
            return None;
        }
        if self.bind_request {
            return self.mint(who, aud, now, Some(bound));
        }
        // 128 bits of two secret-keyed hashes: another token's assertion is never handed out.
        let key = (
            KEYS.0.hash_one(token),
            KEYS.1.hash_one(token),
            upstream,
            self.generation,
        );
        let refresh = REFRESH_BEFORE_SECS.min(self.ttl_secs / 2);
        let cached = CACHE.with_borrow(|c| {
            c.get(&key)
                .filter(|(_, exp)| *exp > now.saturating_add(refresh))
                .map(|(v, _)| v.clone())
        });
        if let Some(v) = cached {
            CACHED.inc();
            return Some(v);
        }
        let minted = self.mint(who, aud, now, None)?;
        let exp = self.exp(who, now);
        CACHE.with_borrow_mut(|c| {
            if c.len() >= CACHE_ENTRIES {
                c.clear();
            }
            c.insert(key, (minted.clone(), exp));
        });
        Some(minted)
    }

    fn exp(&self, who: &Verified, now: u64) -> u64 {
        now.saturating_add(self.ttl_secs).min(who.exp)
    }

    /// A new assertion (counted). `None` only if signing fails, which the key check at start
    /// rules out; the caller then sends none rather than a broken one.
    pub fn mint(
        &self,
        who: &Verified,
        aud: &str,
        now: u64,
        bound: Option<Bound<'_>>,
    ) -> Option<HeaderValue> {
        let claims = Claims {
            iss: &self.issuer,
            aud,
            sub: who.sub(),
            email: who.email.as_ref().and_then(|e| e.to_str().ok()),
            iat: now,
            exp: self.exp(who, now),
            jti: uuid::Uuid::new_v4(),
            htm: bound.map(|b| b.method),
            htu: bound.map(|b| b.target),
        };
        let payload = serde_json::to_vec(&claims).ok()?;
        let mut jwt = String::with_capacity(self.jose.len() + payload.len() * 4 / 3 + 100);
        jwt.push_str(&self.jose);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut jwt);
        let signature = match &self.signer {
            Signer::Ed25519(pair) => pair.sign(jwt.as_bytes()).as_ref().to_vec(),
            Signer::P256(pair, rng) => pair.sign(rng, jwt.as_bytes()).ok()?.as_ref().to_vec(),
        };
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut jwt);
        MINTED.inc();
        HeaderValue::from_maybe_shared(Bytes::from(jwt)).ok()
    }
}

/// Hands each [`Asserter`] its generation.
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

/// (token hash, token hash, upstream index, signer generation).
type CacheKey = (u64, u64, usize, u64);

/// `portcullis_assertions_total` by result, resolved once (no label hash per request).
static MINTED: LazyLock<prometheus::IntCounter> =
    LazyLock::new(|| crate::ops::metrics::ASSERTIONS.with_label_values(&["minted"]));
static CACHED: LazyLock<prometheus::IntCounter> =
    LazyLock::new(|| crate::ops::metrics::ASSERTIONS.with_label_values(&["cached"]));

/// The cache's two hash keys: process-wide (a request may move between worker threads
/// between admission and the upstream request) and secret.
static KEYS: LazyLock<(RandomState, RandomState)> =
    LazyLock::new(|| (RandomState::new(), RandomState::new()));

thread_local! {
    /// Per worker thread: (token hashes, upstream) → (assertion, its exp).
    static CACHE: RefCell<HashMap<CacheKey, (HeaderValue, u64)>> = RefCell::new(HashMap::new());
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn asserter(key: &str, bind: bool, ttl: u64) -> Asserter {
        let path = format!("{}/tests/fixtures/keys/{key}", env!("CARGO_MANIFEST_DIR"));
        let a = config::Assertion {
            header: HeaderName::from_static("x-portcullis-assertion"),
            key: config::KeyMaterial {
                kid: Some("a1".into()),
                form: config::KeyForm::PrivatePem,
                bytes: std::fs::read(&path).unwrap(),
                source: format!("assertion.private_key_file `{key}`"),
            },
            kid: "a1".into(),
            ttl: Duration::from_secs(ttl),
            bind_request: bind,
        };
        Asserter::new(&a, "portcullis").unwrap()
    }

    fn who(sub: &str, exp: u64) -> Verified {
        Verified {
            user_id: HeaderValue::from_str(sub).unwrap(),
            email: Some(HeaderValue::from_static("u@example.test")),
            exp,
            iat: Some(1000),
            jti: None,
            user_uuid: None,
            external: false,
        }
    }

    /// Verified with jsonwebtoken and the published JWK: the claims.
    fn verify(a: &Asserter, jwt: &HeaderValue, aud: &str, now: u64) -> Value {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(a.jwk().clone()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let header = jsonwebtoken::decode_header(jwt.to_str().unwrap()).unwrap();
        assert_eq!(header.kid.as_deref(), Some("a1"));
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.set_audience(&[aud]);
        v.set_issuer(&["portcullis"]);
        v.validate_exp = false;
        let data = jsonwebtoken::decode::<Value>(jwt.to_str().unwrap(), &key, &v).unwrap();
        let c = data.claims;
        assert!(c["exp"].as_u64().unwrap() >= now);
        c
    }

    #[test]
    fn ed25519_and_p256_assertions_verify_against_the_published_jwk() {
        for (key, alg) in [("ed25519.pem", "EdDSA"), ("p256.pem", "ES256")] {
            let a = asserter(key, false, 60);
            assert_eq!(a.jwk()["alg"], alg);
            assert_eq!(a.jwk()["use"], "sig");
            let jwt = a.mint(&who("user-1", 10_000), "app", 1000, None).unwrap();
            let c = verify(&a, &jwt, "app", 1000);
            assert_eq!(c["sub"], "user-1");
            assert_eq!(c["email"], "u@example.test");
            assert_eq!(
                (c["iat"].as_u64(), c["exp"].as_u64()),
                (Some(1000), Some(1060))
            );
            assert!(c.get("htm").is_none() && c.get("htu").is_none());
            assert!(uuid::Uuid::parse_str(c["jti"].as_str().unwrap()).is_ok());
        }
    }

    #[test]
    fn assertions_are_explicitly_typed_and_none_is_made_for_a_token_past_its_exp() {
        let a = asserter("ed25519.pem", false, 60);
        let jwt = a.mint(&who("u", 10_000), "app", 1000, None).unwrap();
        let header = jsonwebtoken::decode_header(jwt.to_str().unwrap()).unwrap();
        assert_eq!(header.typ.as_deref(), Some(TYP));
        let b = Bound {
            method: "GET",
            target: "/",
        };
        // Accepted within the leeway, but expired: no assertion, minted or cached.
        assert!(
            a.for_request(b"t", 0, "app", &who("u", 1000), 1000, b)
                .is_none()
        );
        assert!(
            a.for_request(b"t", 0, "app", &who("u", 990), 1000, b)
                .is_none()
        );
    }

    #[test]
    fn an_assertion_never_outlives_the_token_it_stands_for() {
        let a = asserter("ed25519.pem", false, 300);
        let jwt = a.mint(&who("u", 1030), "app", 1000, None).unwrap();
        assert_eq!(verify(&a, &jwt, "app", 1000)["exp"], 1030);
    }

    #[test]
    fn bound_assertions_carry_the_request_and_are_never_reused() {
        let a = asserter("p256.pem", true, 60);
        let w = who("u", 10_000);
        let bound = Bound {
            method: "POST",
            target: "/api/x?a=1",
        };
        let one = a.for_request(b"tok", 0, "app", &w, 1000, bound).unwrap();
        let two = a.for_request(b"tok", 0, "app", &w, 1000, bound).unwrap();
        assert_ne!(one, two);
        let c = verify(&a, &one, "app", 1000);
        assert_eq!(
            (c["htm"].as_str(), c["htu"].as_str()),
            (Some("POST"), Some("/api/x?a=1"))
        );
    }

    #[test]
    fn unbound_assertions_are_reused_per_token_and_upstream_until_shortly_before_they_expire() {
        let a = asserter("ed25519.pem", false, 60);
        let w = who("u", 10_000);
        let b = Bound {
            method: "GET",
            target: "/",
        };
        let first = a.for_request(b"token-a", 0, "app", &w, 1000, b).unwrap();
        assert_eq!(
            a.for_request(b"token-a", 0, "app", &w, 1040, b).unwrap(),
            first
        );
        // Another token, another upstream: their own.
        assert_ne!(
            a.for_request(b"token-b", 0, "app", &w, 1000, b).unwrap(),
            first
        );
        let other = a
            .for_request(b"token-a", 1, "billing", &w, 1000, b)
            .unwrap();
        assert_eq!(verify(&a, &other, "billing", 1000)["aud"], "billing");
        // Less than 10 s of the 60 left: a new one.
        let renewed = a.for_request(b"token-a", 0, "app", &w, 1051, b).unwrap();
        assert_ne!(renewed, first);
        assert_eq!(verify(&a, &renewed, "app", 1051)["iat"], 1051);
    }

    #[test]
    fn rsa_and_other_keys_are_refused_with_the_file_named() {
        let path = format!("{}/tests/fixtures/keys/rsa.pem", env!("CARGO_MANIFEST_DIR"));
        let a = config::Assertion {
            header: HeaderName::from_static("x-portcullis-assertion"),
            key: config::KeyMaterial {
                kid: Some("a1".into()),
                form: config::KeyForm::PrivatePem,
                bytes: std::fs::read(path).unwrap(),
                source: "assertion.private_key_file `rsa.pem`".into(),
            },
            kid: "a1".into(),
            ttl: Duration::from_secs(60),
            bind_request: false,
        };
        let e = Asserter::new(&a, "portcullis").unwrap_err();
        assert!(
            e.contains("rsa.pem") && e.contains("Ed25519 or P-256"),
            "{e}"
        );
    }
}
