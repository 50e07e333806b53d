//! The key set: every key a token may be verified with, parsed once at start, each pinned to
//! one algorithm. Also the public JWKS document, rendered once.
//!
//! Keys are turned into ready-to-use aws-lc-rs objects here (an HMAC key schedule, a parsed
//! public key) so that verification on the hot path does no parsing and no allocation for them.

use std::fmt;

use aws_lc_rs::signature::{self, KeyPair, ParsedPublicKey};
use aws_lc_rs::{hmac, rsa};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde_json::{Map, Value, json};

pub use crate::config::Alg;

/// The signature check of an asymmetric algorithm.
fn verification(alg: Alg) -> &'static dyn signature::VerificationAlgorithm {
    match alg {
        Alg::EdDSA => &signature::ED25519,
        Alg::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        Alg::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        Alg::ES512 => &signature::ECDSA_P521_SHA512_FIXED,
        Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        // HS256 never reaches here: it has no public key.
        Alg::RS256 | Alg::HS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
    }
}

/// How a signature is checked.
#[allow(
    clippy::large_enum_variant,
    reason = "a handful of keys live for the process; the HMAC key stays inline for locality"
)]
pub(crate) enum Verifier {
    Hmac(hmac::Key),
    Public(ParsedPublicKey),
}

impl Verifier {
    pub(crate) fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match self {
            Self::Hmac(key) => hmac::verify(key, message, sig).is_ok(),
            Self::Public(key) => key.verify_sig(message, sig).is_ok(),
        }
    }
}

/// One key a token may be verified with.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Alg,
    pub(crate) verifier: Verifier,
    /// The public JWK (without `kid`, `alg`, `use`), for asymmetric keys.
    jwk: Option<Map<String, Value>>,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// An HS256 key from its shared secret.
    pub fn hmac(kid: Option<String>, secret: &[u8]) -> Self {
        Self {
            kid,
            alg: Alg::HS256,
            verifier: Verifier::Hmac(hmac::Key::new(hmac::HMAC_SHA256, secret)),
            jwk: None,
        }
    }

    /// The verifying half of a PKCS#8 private key in PEM, checked against `alg`.
    pub fn from_private_pem(
        kid: Option<String>,
        alg: Alg,
        pem_text: &[u8],
    ) -> Result<Self, String> {
        let der = pem_der(pem_text, "PRIVATE KEY")?;
        let mismatch = |e: aws_lc_rs::error::KeyRejected| {
            format!("not a PKCS#8 {} private key ({e})", key_kind(alg))
        };
        let (public, jwk) = match alg {
            Alg::EdDSA => {
                let pair = signature::Ed25519KeyPair::from_pkcs8(&der).map_err(mismatch)?;
                let raw = pair.public_key().as_ref().to_vec();
                (raw.clone(), okp_jwk(&raw))
            }
            Alg::ES256 => {
                let pair = signature::EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &der,
                )
                .map_err(mismatch)?;
                let point = pair.public_key().as_ref().to_vec();
                let jwk = ec_jwk(&point)?;
                (point, jwk)
            }
            Alg::RS256 => {
                let pair = rsa::KeyPair::from_pkcs8(&der).map_err(mismatch)?;
                let public = pair.public_key();
                (public.as_ref().to_vec(), rsa_jwk(public))
            }
            Alg::HS256 => return Err("HS256 takes a secret, not a key file".into()),
            Alg::ES384 | Alg::ES512 | Alg::PS256 => {
                return Err(format!("{} is for other issuers' keys only", alg.as_str()));
            }
        };
        Self::public(kid, alg, &public, jwk)
    }

    /// A public key in PEM (SPKI, `-----BEGIN PUBLIC KEY-----`), checked against `alg`.
    pub fn from_public_pem(kid: Option<String>, alg: Alg, pem_text: &[u8]) -> Result<Self, String> {
        let der = pem_der(pem_text, "PUBLIC KEY")?;
        let jwk = match alg {
            Alg::EdDSA => {
                let parsed = parse_public(alg, &der)?;
                let spki = parsed.as_ref();
                okp_jwk(&spki[spki.len().saturating_sub(32)..])
            }
            Alg::ES256 => {
                let parsed = parse_public(alg, &der)?;
                let spki = parsed.as_ref();
                ec_jwk(&spki[spki.len().saturating_sub(65)..])?
            }
            Alg::RS256 => {
                let public = rsa::PublicKey::from_der(&der)
                    .map_err(|e| format!("not an RSA public key ({e})"))?;
                rsa_jwk(&public)
            }
            Alg::HS256 => return Err("HS256 takes a secret, not a key file".into()),
            Alg::ES384 | Alg::ES512 | Alg::PS256 => {
                return Err(format!("{} is for other issuers' keys only", alg.as_str()));
            }
        };
        Self::public(kid, alg, &der, jwk)
    }

    /// A key parsed elsewhere (from a fetched JWK): nothing to publish.
    pub(crate) fn from_parsed(kid: Option<String>, alg: Alg, parsed: ParsedPublicKey) -> Self {
        Self {
            kid,
            alg,
            verifier: Verifier::Public(parsed),
            jwk: None,
        }
    }

    fn public(
        kid: Option<String>,
        alg: Alg,
        public: &[u8],
        jwk: Map<String, Value>,
    ) -> Result<Self, String> {
        let parsed = parse_public(alg, public)?;
        Ok(Self {
            kid,
            alg,
            verifier: Verifier::Public(parsed),
            jwk: Some(jwk),
        })
    }
}

fn parse_public(alg: Alg, der: &[u8]) -> Result<ParsedPublicKey, String> {
    ParsedPublicKey::new(verification(alg), der)
        .map_err(|e| format!("not a {} public key ({e})", key_kind(alg)))
}

fn key_kind(alg: Alg) -> &'static str {
    match alg {
        Alg::EdDSA => "Ed25519",
        Alg::ES256 => "P-256 EC",
        Alg::RS256 | Alg::PS256 => "RSA",
        Alg::ES384 => "P-384 EC",
        Alg::ES512 => "P-521 EC",
        Alg::HS256 => "HMAC",
    }
}

fn pem_der(text: &[u8], want: &str) -> Result<Vec<u8>, String> {
    let parsed = pem::parse(text).map_err(|e| format!("not a PEM file ({e})"))?;
    if parsed.tag() != want {
        return Err(format!(
            "PEM holds `{}`, expected `{want}` (PKCS#8 / SPKI)",
            parsed.tag()
        ));
    }
    Ok(parsed.into_contents())
}

fn b64(bytes: &[u8]) -> Value {
    Value::String(URL_SAFE_NO_PAD.encode(bytes))
}

fn okp_jwk(raw: &[u8]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("kty".into(), "OKP".into());
    m.insert("crv".into(), "Ed25519".into());
    m.insert("x".into(), b64(raw));
    m
}

fn ec_jwk(point: &[u8]) -> Result<Map<String, Value>, String> {
    ec_point_jwk(point, "P-256", 32)
}

/// The JWK of an uncompressed SEC1 point, 0x04 || x || y, on `crv` (coordinates of `len` bytes).
fn ec_point_jwk(point: &[u8], crv: &str, len: usize) -> Result<Map<String, Value>, String> {
    if point.len() != 1 + 2 * len || point[0] != 4 {
        return Err(format!("EC public key is not an uncompressed {crv} point"));
    }
    let mut m = Map::new();
    m.insert("kty".into(), "EC".into());
    m.insert("crv".into(), crv.into());
    m.insert("x".into(), b64(&point[1..=len]));
    m.insert("y".into(), b64(&point[1 + len..]));
    Ok(m)
}

/// The public JWK (`kty` and `crv`/`x`/`y`, `n`/`e` or `x`) of a public key in PEM (SPKI), as
/// an issuer publishes it for `alg`: how the fuzz targets and property tests build another
/// issuer's JWKS from the fixture keys.
pub(crate) fn public_jwk(alg: Alg, pem_text: &[u8]) -> Result<Map<String, Value>, String> {
    let der = pem_der(pem_text, "PUBLIC KEY")?;
    parse_public(alg, &der)?;
    let tail = |n: usize| &der[der.len().saturating_sub(n)..];
    match alg {
        Alg::EdDSA => Ok(okp_jwk(tail(32))),
        Alg::ES256 => ec_point_jwk(tail(65), "P-256", 32),
        Alg::ES384 => ec_point_jwk(tail(97), "P-384", 48),
        Alg::ES512 => ec_point_jwk(tail(133), "P-521", 66),
        Alg::RS256 | Alg::PS256 => rsa::PublicKey::from_der(&der)
            .map(|k| rsa_jwk(&k))
            .map_err(|e| format!("not an RSA public key ({e})")),
        Alg::HS256 => Err("HS256 has no public key".into()),
    }
}

fn rsa_jwk(public: &rsa::PublicKey) -> Map<String, Value> {
    let parts: rsa::PublicKeyComponents<Vec<u8>> = public.into();
    let strip = |b: &[u8]| -> Vec<u8> {
        let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
        b[first..].to_vec()
    };
    let mut m = Map::new();
    m.insert("kty".into(), "RSA".into());
    m.insert("n".into(), b64(&strip(&parts.n)));
    m.insert("e".into(), b64(&strip(&parts.e)));
    m
}

/// All keys tokens may be verified with, plus the claims every token must carry.
#[derive(Debug)]
pub struct KeySet {
    /// The signing key's verifying half first, then the retired keys, in config order.
    pub keys: Vec<VerifyKey>,
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
    jwks: Option<Bytes>,
}

impl KeySet {
    pub fn new(keys: Vec<VerifyKey>, issuer: String, audience: String, leeway_secs: u64) -> Self {
        let jwks = render_jwks(&keys);
        Self {
            keys,
            issuer,
            audience,
            leeway_secs,
            jwks,
        }
    }

    /// Our own key set, from the config's key material: every key parsed and checked against
    /// the algorithm; each refusal is one problem line naming where the key came from.
    pub fn from_config(t: &crate::config::Tokens) -> Result<Self, Vec<String>> {
        use crate::config::KeyForm;
        let mut problems = Vec::new();
        let mut keys = Vec::with_capacity(1 + t.previous.len());
        for m in t.verify_keys() {
            let parsed = match m.form {
                KeyForm::Secret => Ok(VerifyKey::hmac(m.kid.clone(), &m.bytes)),
                KeyForm::PrivatePem => VerifyKey::from_private_pem(m.kid.clone(), t.alg, &m.bytes),
                KeyForm::PublicPem => VerifyKey::from_public_pem(m.kid.clone(), t.alg, &m.bytes),
            };
            match parsed {
                Ok(k) => keys.push(k),
                Err(e) => problems.push(format!("{}: {e}", m.source)),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self::new(
            keys,
            t.issuer.clone(),
            t.audience.clone(),
            t.leeway_secs,
        ))
    }

    /// The keys of another issuer (fetched from its JWKS): never republished here.
    pub fn external(
        keys: Vec<VerifyKey>,
        issuer: String,
        audience: String,
        leeway_secs: u64,
    ) -> Self {
        Self {
            keys,
            issuer,
            audience,
            leeway_secs,
            jwks: None,
        }
    }

    /// Is there a key with this id?
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Publishes one more public key (the `[assertion]` key) beside the token keys: with HS256
    /// tokens the JWKS then holds it alone.
    pub fn publish_also(&mut self, jwk: Value) {
        let mut doc: Value = self
            .jwks
            .as_ref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_else(|| json!({ "keys": [] }));
        if let Some(keys) = doc["keys"].as_array_mut() {
            keys.push(jwk);
        }
        self.jwks = Some(Bytes::from(doc.to_string()));
    }

    /// The JWKS document (RFC 7517) when there are public keys to publish.
    pub fn jwks(&self) -> Option<&Bytes> {
        self.jwks.as_ref()
    }
}

fn render_jwks(keys: &[VerifyKey]) -> Option<Bytes> {
    let published: Vec<Value> = keys
        .iter()
        .filter_map(|k| {
            let mut jwk = k.jwk.clone()?;
            if let Some(kid) = &k.kid {
                jwk.insert("kid".into(), kid.as_str().into());
            }
            jwk.insert("alg".into(), k.alg.as_str().into());
            jwk.insert("use".into(), "sig".into());
            Some(Value::Object(jwk))
        })
        .collect();
    if published.is_empty() {
        return None;
    }
    let doc = json!({ "keys": published });
    Some(Bytes::from(doc.to_string()))
}
