//! Entry points for the fuzz targets in `fuzz/` and the property tests in `tests/`: the few
//! internals they drive, reached here so that the modules themselves stay private. Not an API:
//! hidden from the docs, changed whenever the targets need it.

use std::collections::HashMap;
use std::time::Duration;

use crate::authn::issue::TokenIssuer;
use crate::authn::{Alg, KeySet};
use crate::config::{self, Config, Env};
use crate::problem::Problem;

pub use crate::accounts::body::{EmailPassword, MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES};
pub use crate::authn::verify::{TokenError, Verified, verify};

/// Another issuer's key set (`[[issuer]]`), made as the JWKS refresher makes it: each public
/// key (SPKI PEM) published as a JWK under its kid and `alg`, the document parsed by
/// `authn::jwk`; issuer, audience and leeway are [`ISSUER`], [`AUDIENCE`], [`LEEWAY_SECS`].
pub fn external_keys(keys: &[(Alg, &str, &[u8])]) -> Result<KeySet, String> {
    let mut jwks = Vec::with_capacity(keys.len());
    for &(alg, kid, pem) in keys {
        let mut jwk = crate::authn::keys::public_jwk(alg, pem)?;
        jwk.insert("kid".into(), kid.into());
        jwk.insert("alg".into(), alg.as_str().into());
        jwk.insert("use".into(), "sig".into());
        jwks.push(serde_json::Value::Object(jwk));
    }
    let doc = serde_json::json!({ "keys": jwks }).to_string();
    let parsed = crate::authn::jwk::parse_jwks(doc.as_bytes())?;
    if let Some(why) = parsed.skipped.first() {
        return Err(why.clone());
    }
    Ok(KeySet::external(
        parsed.keys,
        ISSUER.to_owned(),
        AUDIENCE.to_owned(),
        LEEWAY_SECS,
    ))
}

/// Verifies `token` as another issuer's (its user in `sub`, its email in `email`; no `jti`
/// needed), with [`external_keys`].
pub fn verify_external(token: &[u8], keys: &KeySet, now: u64) -> Result<Verified, TokenError> {
    let mut scratch = crate::authn::verify::Scratch::new();
    let names = crate::authn::verify::ClaimNames {
        user_id: "sub",
        email: "email",
    };
    crate::authn::verify::parse(token, &mut scratch)?.check(keys, Some(names), now)
}
pub use crate::edge::headers::{is_identity_header, strip_identity_headers};
pub use crate::path::{PathError, normalise};

/// The identity endpoints' body parser (`POST /register`, `POST /signin`).
pub fn parse_credentials(body: &[u8]) -> Result<EmailPassword, Problem> {
    crate::accounts::body::email_password(body)
}

/// The identity endpoints' `Content-Type` check.
pub fn require_json(content_type: Option<&[u8]>) -> Result<(), Problem> {
    crate::accounts::body::require_json(content_type)
}

/// An environment made of a map, so that a config can be validated without touching the
/// process environment.
#[derive(Debug, Default, Clone)]
pub struct MapEnv(pub HashMap<String, String>);

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// Validates config text exactly as `check-config` does after reading the file.
pub fn parse_config(text: &str, env: &MapEnv) -> Result<Config, Vec<String>> {
    let config = config::parse(text, env)?;
    crate::assemble(&config)?;
    Ok(config)
}

/// Issuer and audience of every fixture key set.
pub const ISSUER: &str = "portcullis";
pub const AUDIENCE: &str = "portcullis";
pub const LEEWAY_SECS: u64 = 30;

/// A signer and the verifying key set that trusts it, built from one key as the config
/// would build them: `material` is the HS256 secret or the PKCS#8 PEM of the private key.
/// `previous` are retired public keys (PEM, with their kid) that the set also accepts.
pub fn signer_and_keys(
    alg: Alg,
    kid: Option<&str>,
    material: &[u8],
    previous: &[(&str, &[u8])],
    ttl: Duration,
) -> Result<(TokenIssuer, KeySet), String> {
    use config::{KeyForm, KeyMaterial};
    let kid = kid.map(str::to_owned);
    let signing = KeyMaterial {
        kid,
        form: if alg.is_symmetric() {
            KeyForm::Secret
        } else {
            KeyForm::PrivatePem
        },
        bytes: material.to_vec(),
        source: "signing key".to_owned(),
    };
    let previous = previous
        .iter()
        .map(|(prev_kid, pem)| KeyMaterial {
            kid: Some((*prev_kid).to_owned()),
            form: KeyForm::PublicPem,
            bytes: pem.to_vec(),
            source: format!("previous key {prev_kid}"),
        })
        .collect();
    let tokens = config::Tokens {
        alg,
        ttl,
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        leeway_secs: LEEWAY_SECS,
        signing,
        previous,
    };
    let issuer = TokenIssuer::new(&tokens)?;
    let set = KeySet::from_config(&tokens).map_err(|p| p.join("; "))?;
    Ok((issuer, set))
}
