//! Entry points for the fuzz targets in `fuzz/` and the property tests in `tests/`: the few
//! internals they drive, reached here so that the modules themselves stay private. Not an API:
//! hidden from the docs, changed whenever the targets need it.

use std::collections::HashMap;
use std::time::Duration;

use crate::authn::issue::TokenIssuer;
use crate::authn::{Alg, KeySet, VerifyKey};
use crate::config::{self, Config, Env};
use crate::problem::Problem;

pub use crate::accounts::body::{EmailPassword, MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES};
pub use crate::authn::verify::{TokenError, Verified, verify};
pub use crate::edge::headers::{is_identity_header, strip_identity_headers};
pub use crate::edge::path::{PathError, normalise};

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
    config::parse(text, env)
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
    let kid = kid.map(str::to_owned);
    let mut keys = vec![if alg.is_symmetric() {
        VerifyKey::hmac(kid.clone(), material)
    } else {
        VerifyKey::from_private_pem(kid.clone(), alg, material)?
    }];
    for (prev_kid, pem) in previous {
        keys.push(VerifyKey::from_public_pem(
            Some((*prev_kid).to_owned()),
            alg,
            pem,
        )?);
    }
    let issuer = TokenIssuer::new(&config::Tokens {
        alg,
        kid,
        ttl,
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        signing_material: material.to_vec(),
    })?;
    let set = KeySet::new(keys, ISSUER.to_owned(), AUDIENCE.to_owned(), LEEWAY_SECS);
    Ok((issuer, set))
}
