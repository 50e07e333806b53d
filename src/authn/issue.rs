//! Minting tokens at sign-in and registration. Not on the hot path: uses `jsonwebtoken`
//! with a key prepared once at start.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use uuid::Uuid;

use super::keys::Alg;
use crate::config;

/// Signs new tokens with the configured key.
pub struct TokenIssuer {
    header: Header,
    key: EncodingKey,
    ttl_secs: u64,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("alg", &self.header.alg)
            .field("kid", &self.header.kid)
            .finish_non_exhaustive()
    }
}

/// A freshly minted token.
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    pub jti: Uuid,
    pub exp: u64,
    pub ttl_secs: u64,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: Uuid,
    email: &'a str,
    iat: u64,
    exp: u64,
    jti: Uuid,
    iss: &'a str,
    aud: &'a str,
    /// The user's roles (CONTRACT section 10), left out when there are none.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
}

impl TokenIssuer {
    pub fn new(t: &config::Tokens) -> Result<Self, String> {
        let m = &t.signing.bytes;
        let (alg, key) = match t.alg {
            Alg::HS256 => (Algorithm::HS256, Ok(EncodingKey::from_secret(m))),
            Alg::EdDSA => (Algorithm::EdDSA, EncodingKey::from_ed_pem(m)),
            Alg::ES256 => (Algorithm::ES256, EncodingKey::from_ec_pem(m)),
            Alg::RS256 => (Algorithm::RS256, EncodingKey::from_rsa_pem(m)),
            // Config refuses them for tokens.algorithm: other issuers' only.
            Alg::ES384 | Alg::ES512 | Alg::PS256 => {
                return Err(format!("tokens: {} signs no tokens here", t.alg.as_str()));
            }
        };
        let key = key.map_err(|e| format!("tokens: cannot load the signing key: {e}"))?;
        let mut header = Header::new(alg);
        header.kid.clone_from(&t.signing.kid);
        Ok(Self {
            header,
            key,
            ttl_secs: t.ttl.as_secs(),
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
        })
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// A token for `user` issued at `iat` (unix seconds), valid for the configured TTL, with
    /// the user's `roles` (none: no `roles` claim).
    pub fn mint(
        &self,
        user: Uuid,
        email: &str,
        roles: &[String],
        iat: u64,
    ) -> Result<Minted, MintError> {
        let jti = Uuid::new_v4();
        let exp = iat + self.ttl_secs;
        let claims = Claims {
            sub: user,
            email,
            iat,
            exp,
            jti,
            iss: &self.issuer,
            aud: &self.audience,
            roles,
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map_err(|e| MintError(e.to_string()))?;
        Ok(Minted {
            token,
            jti,
            exp,
            ttl_secs: self.ttl_secs,
        })
    }
}

/// Signing a token failed (a key the config check let through, or a library fault): the
/// cause is for the log only.
#[derive(Debug, thiserror::Error)]
#[error("signing a token failed: {0}")]
pub struct MintError(String);
