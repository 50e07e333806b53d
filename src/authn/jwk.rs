//! JWK Sets (RFC 7517) fetched from external issuers, turned into verification keys.
//!
//! Only asymmetric signing keys become keys: OKP/Ed25519 (EdDSA), EC/P-256 (ES256), EC/P-384
//! (ES384), EC/P-521 (ES512) and RSA of 2048 to 8192 bits (RS256, or PS256 — RSA-PSS — when the
//! key says `alg: PS256`). Each key is bound to the one algorithm its `kty` / `crv` / `alg`
//! name. A key that is symmetric (`oct`), marked for another use, declares
//! another algorithm, or is malformed is skipped, as RFC 7517 section 5 asks; a document with
//! no usable key at all, more than [`MAX_JWKS_KEYS`] keys, or two usable keys under one `kid`
//! is refused whole, and the caller keeps the keys it had.

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::keys::{Alg, VerifyKey};

/// Most keys a JWKS document may hold (usable or not). Real sets hold two or three.
pub const MAX_JWKS_KEYS: usize = 32;
/// Longest `kid` kept (it is compared on every external token, and logged).
const MAX_KID_BYTES: usize = 256;

/// One JWK as published; every member optional so that one odd key cannot spoil the set.
#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    kid: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// The usable keys of a JWKS document, and why each other key was skipped (for the log).
#[derive(Debug)]
pub struct Parsed {
    pub keys: Vec<VerifyKey>,
    pub skipped: Vec<String>,
}

/// Parses a JWKS document. `Err` when the document as a whole is unusable.
pub fn parse_jwks(body: &[u8]) -> Result<Parsed, String> {
    let doc: Document = serde_json::from_slice(body).map_err(|e| format!("not a JWK Set ({e})"))?;
    if doc.keys.len() > MAX_JWKS_KEYS {
        return Err(format!(
            "{} keys, more than the {MAX_JWKS_KEYS} accepted",
            doc.keys.len()
        ));
    }
    let mut keys: Vec<VerifyKey> = Vec::new();
    let mut skipped = Vec::new();
    for (i, value) in doc.keys.into_iter().enumerate() {
        match serde_json::from_value::<Jwk>(value)
            .map_err(|e| format!("malformed ({e})"))
            .and_then(key)
        {
            Ok(k) => {
                if keys.iter().any(|o| o.kid.is_some() && o.kid == k.kid) {
                    return Err(format!(
                        "two keys share the kid `{}`",
                        k.kid.as_deref().unwrap_or_default()
                    ));
                }
                keys.push(k);
            }
            Err(why) => skipped.push(format!("key {i}: {why}")),
        }
    }
    if keys.is_empty() {
        let why = skipped.first().map_or("it is empty", String::as_str);
        return Err(format!("no usable signing key ({why})"));
    }
    Ok(Parsed { keys, skipped })
}

/// One JWK as a verification key, or why not.
fn key(jwk: Jwk) -> Result<VerifyKey, String> {
    if let Some(u) = jwk.use_.as_deref()
        && u != "sig"
    {
        return Err(format!("use `{u}` is not `sig`"));
    }
    if let Some(ops) = &jwk.key_ops
        && !ops.iter().any(|o| o == "verify")
    {
        return Err("key_ops does not include `verify`".into());
    }
    if let Some(kid) = &jwk.kid
        && (kid.is_empty() || kid.len() > MAX_KID_BYTES)
    {
        return Err("kid is empty or too long".into());
    }
    let kty = jwk.kty.as_deref().ok_or("no kty")?;
    let (alg, parsed) = match (kty, jwk.crv.as_deref()) {
        ("OKP", Some("Ed25519")) => {
            let x = bytes(jwk.x.as_deref(), "x")?;
            if x.len() != 32 {
                return Err("Ed25519 x is not 32 bytes".into());
            }
            (Alg::EdDSA, public(Alg::EdDSA, &signature::ED25519, &x)?)
        }
        ("EC", Some(crv @ ("P-256" | "P-384" | "P-521"))) => {
            let (alg, size, verification): (_, _, &'static dyn signature::VerificationAlgorithm) =
                match crv {
                    "P-256" => (Alg::ES256, 32, &signature::ECDSA_P256_SHA256_FIXED),
                    "P-384" => (Alg::ES384, 48, &signature::ECDSA_P384_SHA384_FIXED),
                    _ => (Alg::ES512, 66, &signature::ECDSA_P521_SHA512_FIXED),
                };
            let x = bytes(jwk.x.as_deref(), "x")?;
            let y = bytes(jwk.y.as_deref(), "y")?;
            if x.len() != size || y.len() != size {
                return Err(format!("{crv} coordinates are not {size} bytes"));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (alg, public(alg, verification, &point)?)
        }
        ("RSA", _) => {
            let n = bytes(jwk.n.as_deref(), "n")?;
            let e = bytes(jwk.e.as_deref(), "e")?;
            let bits = bit_len(&n);
            if !(2048..=8192).contains(&bits) {
                return Err(format!(
                    "RSA modulus of {bits} bits (2048 to 8192 accepted)"
                ));
            }
            // RS256 unless the key is declared for RSA-PSS; a key is never used for both.
            let (alg, verification): (_, &'static signature::RsaParameters) =
                if jwk.alg.as_deref() == Some("PS256") {
                    (Alg::PS256, &signature::RSA_PSS_2048_8192_SHA256)
                } else {
                    (Alg::RS256, &signature::RSA_PKCS1_2048_8192_SHA256)
                };
            let components = RsaPublicKeyComponents { n: &n, e: &e };
            let parsed = components
                .to_parsed_public_key(verification)
                .map_err(|e| format!("not a usable RSA key ({e})"))?;
            (alg, parsed)
        }
        ("oct", _) => return Err("symmetric (oct) keys are never trusted from a JWKS".into()),
        (kty, crv) => {
            return Err(format!(
                "unsupported key type `{kty}`{}",
                crv.map(|c| format!(" / curve `{c}`")).unwrap_or_default()
            ));
        }
    };
    // A declared algorithm must be the one the key type implies: no other use of the key.
    if let Some(declared) = jwk.alg.as_deref()
        && declared != alg.as_str()
    {
        let expected = match alg {
            Alg::RS256 | Alg::PS256 => "RS256 or PS256".to_owned(),
            other => other.as_str().to_owned(),
        };
        return Err(format!(
            "alg `{declared}` is not supported for a {kty} key{} (expected {expected})",
            jwk.crv
                .as_deref()
                .map(|c| format!(" on {c}"))
                .unwrap_or_default()
        ));
    }
    Ok(VerifyKey::from_parsed(jwk.kid, alg, parsed))
}

fn public(
    alg: Alg,
    verification: &'static dyn signature::VerificationAlgorithm,
    raw: &[u8],
) -> Result<ParsedPublicKey, String> {
    ParsedPublicKey::new(verification, raw)
        .map_err(|e| format!("not a usable {} key ({e})", alg.as_str()))
}

fn bytes(value: Option<&str>, name: &str) -> Result<Vec<u8>, String> {
    let v = value.ok_or_else(|| format!("no `{name}`"))?;
    URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|_| format!("`{name}` is not base64url"))
}

/// Bits in a big-endian unsigned integer, leading zero bytes ignored.
fn bit_len(n: &[u8]) -> usize {
    let Some(first) = n.iter().position(|&b| b != 0) else {
        return 0;
    };
    (n.len() - first - 1) * 8 + (8 - n[first].leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ED_PEM: &[u8] = include_bytes!("../../tests/fixtures/keys/ed25519.pem");
    const P256_PEM: &[u8] = include_bytes!("../../tests/fixtures/keys/p256.pem");
    const RSA_PEM: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa.pem");

    /// The public JWK our own key code renders for a fixture key.
    fn jwk_of(alg: Alg, pem: &[u8], kid: &str) -> serde_json::Value {
        let key = VerifyKey::from_private_pem(Some(kid.into()), alg, pem).unwrap();
        let set = crate::authn::KeySet::new(vec![key], "i".into(), "a".into(), 0);
        let doc: serde_json::Value = serde_json::from_slice(set.jwks().unwrap()).unwrap();
        doc["keys"][0].clone()
    }

    fn doc(keys: &[serde_json::Value]) -> Vec<u8> {
        json!({ "keys": keys }).to_string().into_bytes()
    }

    #[test]
    fn ed25519_p256_and_rsa_keys_are_read_with_their_kid_and_alg() {
        let body = doc(&[
            jwk_of(Alg::EdDSA, ED_PEM, "ed"),
            jwk_of(Alg::ES256, P256_PEM, "ec"),
            jwk_of(Alg::RS256, RSA_PEM, "rs"),
        ]);
        let parsed = parse_jwks(&body).unwrap();
        let got: Vec<_> = parsed
            .keys
            .iter()
            .map(|k| (k.kid.clone().unwrap(), k.alg))
            .collect();
        assert_eq!(
            got,
            [
                ("ed".to_owned(), Alg::EdDSA),
                ("ec".to_owned(), Alg::ES256),
                ("rs".to_owned(), Alg::RS256)
            ]
        );
        assert!(parsed.skipped.is_empty());
    }

    /// Tokens signed elsewhere (`jsonwebtoken`) verify with the keys read from the JWKS, each
    /// only under its own algorithm.
    #[test]
    fn tokens_of_each_algorithm_verify_with_the_parsed_keys() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let body = doc(&[
            jwk_of(Alg::EdDSA, ED_PEM, "ed"),
            jwk_of(Alg::ES256, P256_PEM, "ec"),
            jwk_of(Alg::RS256, RSA_PEM, "rs"),
        ]);
        let keys = crate::authn::KeySet::external(
            parse_jwks(&body).unwrap().keys,
            "https://idp".into(),
            "app".into(),
            30,
        );
        let now = crate::clock::unix_secs();
        let claims = json!({"sub":"u-1","email":"u@idp","iat":now,"exp":now + 60,
                            "iss":"https://idp","aud":"app"});
        let names = crate::authn::verify::ClaimNames {
            user_id: "sub",
            email: "email",
        };
        let check = |token: &str| {
            let mut scratch = crate::authn::verify::Scratch::new();
            crate::authn::verify::parse(token.as_bytes(), &mut scratch)
                .and_then(|t| t.check(&keys, Some(names), now))
        };
        let sign = |alg, key: EncodingKey, kid: &str| {
            let mut h = Header::new(alg);
            h.kid = Some(kid.into());
            jsonwebtoken::encode(&h, &claims, &key).unwrap()
        };
        let ed = || EncodingKey::from_ed_pem(ED_PEM).unwrap();
        let ec = || EncodingKey::from_ec_pem(P256_PEM).unwrap();
        let rs = || EncodingKey::from_rsa_pem(RSA_PEM).unwrap();
        for token in [
            sign(Algorithm::EdDSA, ed(), "ed"),
            sign(Algorithm::ES256, ec(), "ec"),
            sign(Algorithm::RS256, rs(), "rs"),
        ] {
            let who = check(&token).unwrap();
            assert_eq!(who.sub(), "u-1");
            assert!(who.external && who.user_uuid.is_none() && who.jti.is_none());
        }
        // A key under another kid, or an algorithm the key is not for: refused.
        assert!(check(&sign(Algorithm::ES256, ec(), "rs")).is_err());
        assert!(check(&sign(Algorithm::EdDSA, ed(), "ec")).is_err());
        assert!(check(&sign(Algorithm::RS256, rs(), "ed")).is_err());
        let hs = sign(
            Algorithm::HS256,
            EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            "ed",
        );
        assert!(check(&hs).is_err());
    }

    /// ES384, ES512 and PS256 from other issuers (Better Auth offers all three): keys made
    /// here, tokens signed by jsonwebtoken where it can (ES384, PS256) and by aws-lc for
    /// ES512, each verified only under its own key's algorithm.
    #[test]
    fn es384_es512_and_ps256_keys_verify_their_tokens_and_only_theirs() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{
            ECDSA_P384_SHA384_FIXED_SIGNING, ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair,
            KeyPair as _, RSA_PSS_SHA256, RsaKeyPair,
        };
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let rng = SystemRandom::new();
        let ec_jwk = |pair: &EcdsaKeyPair, crv: &str, alg: &str, kid: &str| {
            let point = pair.public_key().as_ref();
            let (x, y) = point[1..].split_at((point.len() - 1) / 2);
            json!({"kty":"EC","crv":crv,"x":b64(x),"y":b64(y),"alg":alg,"use":"sig","kid":kid})
        };
        let p384 = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
        let p521 = EcdsaKeyPair::generate(&ECDSA_P521_SHA512_FIXED_SIGNING).unwrap();
        let mut ps = jwk_of(Alg::RS256, RSA_PEM, "ps");
        ps["alg"] = "PS256".into();
        let body = doc(&[
            ec_jwk(&p384, "P-384", "ES384", "e384"),
            ec_jwk(&p521, "P-521", "ES512", "e512"),
            ps,
            jwk_of(Alg::RS256, RSA_PEM, "rs"),
        ]);
        let parsed = parse_jwks(&body).unwrap();
        let algs: Vec<Alg> = parsed.keys.iter().map(|k| k.alg).collect();
        assert_eq!(algs, [Alg::ES384, Alg::ES512, Alg::PS256, Alg::RS256]);
        let keys =
            crate::authn::KeySet::external(parsed.keys, "https://idp".into(), "app".into(), 30);
        let now = crate::clock::unix_secs();
        let claims = json!({"sub":"u-1","iat":now,"exp":now + 60,"iss":"https://idp","aud":"app"});
        let names = crate::authn::verify::ClaimNames {
            user_id: "sub",
            email: "email",
        };
        let check = |token: &str| {
            let mut scratch = crate::authn::verify::Scratch::new();
            crate::authn::verify::parse(token.as_bytes(), &mut scratch)
                .and_then(|t| t.check(&keys, Some(names), now))
        };
        // jsonwebtoken signs ES384 (from the key's PKCS#8) and PS256 (the RSA fixture).
        let pem = |der: &[u8]| pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()));
        let p384_pem = pem(p384.to_pkcs8v1().unwrap().as_ref());
        let jwt = |alg, key: &EncodingKey, kid: &str| {
            let mut h = Header::new(alg);
            h.kid = Some(kid.into());
            jsonwebtoken::encode(&h, &claims, key).unwrap()
        };
        let es384 = jwt(
            Algorithm::ES384,
            &EncodingKey::from_ec_pem(p384_pem.as_bytes()).unwrap(),
            "e384",
        );
        let rsa = EncodingKey::from_rsa_pem(RSA_PEM).unwrap();
        let ps256 = jwt(Algorithm::PS256, &rsa, "ps");
        // ES512 by hand: jsonwebtoken has no P-521.
        let signing_input = format!(
            "{}.{}",
            b64(json!({"alg":"ES512","kid":"e512","typ":"JWT"})
                .to_string()
                .as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = p521.sign(&rng, signing_input.as_bytes()).unwrap();
        let es512 = format!("{signing_input}.{}", b64(sig.as_ref()));
        for token in [&es384, &es512, &ps256] {
            assert_eq!(check(token).unwrap().sub(), "u-1", "{token}");
        }
        // Each key under its own algorithm only: a PKCS#1 v1.5 signature under the PSS key,
        // and a PSS one under the RS256 key, are refused; so is a P-384 token naming P-521.
        assert!(check(&jwt(Algorithm::RS256, &rsa, "ps")).is_err());
        assert!(check(&jwt(Algorithm::PS256, &rsa, "rs")).is_err());
        let renamed = es384.replacen(
            &es384[..es384.find('.').unwrap()],
            &b64(br#"{"alg":"ES512","kid":"e512","typ":"JWT"}"#),
            1,
        );
        assert!(check(&renamed).is_err());
        // RSA-PSS by hand too (aws-lc), against the same key.
        let pair = RsaKeyPair::from_pkcs8(&pem::parse(RSA_PEM).unwrap().into_contents()).unwrap();
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"PS256","kid":"ps"}"#),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(&RSA_PSS_SHA256, &rng, input.as_bytes(), &mut sig)
            .unwrap();
        assert!(check(&format!("{input}.{}", b64(&sig))).is_ok());
    }

    #[test]
    fn unsupported_curves_and_algorithms_are_skipped_with_a_precise_reason_keeping_the_rest() {
        let mut ps384 = jwk_of(Alg::RS256, RSA_PEM, "ps384");
        ps384["alg"] = "PS384".into();
        let k1 = json!({"kty":"EC","crv":"secp256k1","x":"AA","y":"AA","kid":"k1"});
        let short = json!({"kty":"EC","crv":"P-384","x":"AAAA","y":"AAAA","kid":"short"});
        let parsed =
            parse_jwks(&doc(&[ps384, k1, short, jwk_of(Alg::EdDSA, ED_PEM, "ed")])).unwrap();
        assert_eq!(parsed.keys.len(), 1, "the usable key is kept");
        let why = parsed.skipped.join("\n");
        assert!(
            why.contains("alg `PS384` is not supported for a RSA key (expected RS256 or PS256)"),
            "{why}"
        );
        assert!(why.contains("curve `secp256k1`"), "{why}");
        assert!(why.contains("P-384 coordinates are not 48 bytes"), "{why}");
    }

    #[test]
    fn a_key_without_alg_or_use_gets_the_algorithm_its_type_implies() {
        let mut k = jwk_of(Alg::EdDSA, ED_PEM, "ed");
        k.as_object_mut().unwrap().remove("alg");
        k.as_object_mut().unwrap().remove("use");
        let parsed = parse_jwks(&doc(&[k])).unwrap();
        assert_eq!(parsed.keys[0].alg, Alg::EdDSA);
    }

    #[test]
    fn unusable_keys_are_skipped_and_a_set_of_only_those_is_refused() {
        let good = jwk_of(Alg::EdDSA, ED_PEM, "good");
        let mut enc = jwk_of(Alg::EdDSA, ED_PEM, "enc");
        enc["use"] = json!("enc");
        let mut swapped = jwk_of(Alg::EdDSA, ED_PEM, "swap");
        swapped["alg"] = json!("HS256");
        let mut none = jwk_of(Alg::ES256, P256_PEM, "none");
        none["alg"] = json!("none");
        let mut no_verify = jwk_of(Alg::ES256, P256_PEM, "ops");
        no_verify["key_ops"] = json!(["encrypt"]);
        let oct = json!({"kty":"oct","kid":"hmac","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"});
        let bad_point = json!({"kty":"EC","crv":"P-256","kid":"pt","x":"AAAA","y":"AAAA"});
        let p384 = json!({"kty":"EC","crv":"P-384","kid":"p384","x":"AA","y":"AA"});
        let unusable = [enc, swapped, none, no_verify, oct, bad_point, p384];

        let mut all = vec![good];
        all.extend(unusable.iter().cloned());
        let parsed = parse_jwks(&doc(&all)).unwrap();
        assert_eq!(parsed.keys.len(), 1);
        assert_eq!(parsed.keys[0].kid.as_deref(), Some("good"));
        assert_eq!(parsed.skipped.len(), unusable.len(), "{:?}", parsed.skipped);

        for bad in unusable {
            assert!(
                parse_jwks(&doc(std::slice::from_ref(&bad))).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn rsa_below_2048_bits_is_refused() {
        let mut small = jwk_of(Alg::RS256, RSA_PEM, "small");
        // A 1024-bit modulus (top bit set, odd).
        let mut n = vec![0xc5u8; 128];
        n[127] |= 1;
        small["n"] = json!(URL_SAFE_NO_PAD.encode(&n));
        let e = parse_jwks(&doc(&[small])).unwrap_err();
        assert!(e.contains("1024 bits"), "{e}");
        assert_eq!(bit_len(&[0, 0, 1]), 1);
        assert_eq!(bit_len(&[0x80, 0]), 16);
    }

    #[test]
    fn garbage_too_many_keys_and_duplicate_kids_refuse_the_document() {
        assert!(parse_jwks(b"<html>").is_err());
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
        assert!(parse_jwks(br#"{"keys":"x"}"#).is_err());
        let k = jwk_of(Alg::EdDSA, ED_PEM, "same");
        assert!(
            parse_jwks(&doc(&[k.clone(), k.clone()]))
                .unwrap_err()
                .contains("share")
        );
        let many: Vec<_> = (0..=MAX_JWKS_KEYS)
            .map(|i| {
                let mut k = k.clone();
                k["kid"] = json!(format!("k{i}"));
                k
            })
            .collect();
        assert!(parse_jwks(&doc(&many)).unwrap_err().contains("more than"));
    }
}
