//! Token verification: pure, synchronous, no I/O, no locks.
//!
//! Why not `jsonwebtoken::decode`: it rebuilds the verifier (for HS256 the HMAC key schedule)
//! and boxes it on every call, parses the claims twice, and folds distinct failures together.
//! Here the keys are ready-made ([`KeySet`]), the three parts are decoded into stack buffers,
//! the JSON is read borrowing from them, and the only heap allocations are the two header
//! values handed to the upstream. `benches/hot_path.rs` measures both.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed as _, Deserializer, IgnoredAny, SeqAccess, Visitor};

use super::keys::{Alg, KeySet, VerifyKey};

/// Longest token accepted, in bytes. Anything longer is refused before it is decoded.
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Longest `sub` / `email` claim forwarded as a header value.
pub const MAX_CLAIM_BYTES: usize = 256;

const MAX_HEADER_B64: usize = 1024;
/// An RSA-8192 signature is 1024 bytes, the largest any accepted algorithm makes.
const MAX_SIG_BYTES: usize = 1024;

/// Why a token was refused. The `&'static str` is for logs and tests, never for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed, badly signed, wrong algorithm, wrong issuer or audience, not yet valid.
    Invalid(&'static str),
    /// `exp` passed by more than the leeway.
    Expired,
}

/// The identity a verified token proves, ready to be forwarded.
#[derive(Debug, Clone)]
pub struct Verified {
    pub user_id: HeaderValue,
    pub email: Option<HeaderValue>,
    pub exp: u64,
    pub iat: Option<u64>,
    /// `jti` when it is a UUID (ours always are): what a sign-out revokes.
    pub jti: Option<uuid::Uuid>,
    /// `sub` when it is a UUID (our users' ids); never set for an external issuer's token.
    pub user_uuid: Option<uuid::Uuid>,
    /// Minted by an `[[issuer]]`, not by this gateway: not ours to revoke, sign out or show.
    pub external: bool,
}

impl Verified {
    /// The `sub` claim. It was checked to be visible ASCII when the token was verified.
    pub fn sub(&self) -> &str {
        self.user_id.to_str().unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    /// RFC 7515 4.1.11: extensions we do not understand must make the token invalid.
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Claims<'a> {
    #[serde(borrow, default)]
    sub: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    email: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date_up")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<u64>,
    #[serde(borrow, default)]
    iss: Option<Cow<'a, str>>,
    #[serde(default)]
    aud: Option<Audience<'a>>,
    #[serde(borrow, default)]
    jti: Option<Cow<'a, str>>,
}

/// Verify `token` against `keys` at `now` (seconds since the epoch).
pub fn verify(token: &[u8], keys: &KeySet, now: u64) -> Result<Verified, TokenError> {
    let mut scratch = Scratch::new();
    parse(token, &mut scratch)?.check(keys, None, now)
}

/// Where a token is decoded: on the caller's stack. Typical payloads fit the small buffer;
/// only unusually large ones touch the heap.
#[derive(Debug)]
pub struct Scratch {
    header: [u8; MAX_HEADER_B64],
    sig: [u8; MAX_SIG_BYTES],
    small: [u8; 768],
    large: Vec<u8>,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            header: [0; MAX_HEADER_B64],
            sig: [0; MAX_SIG_BYTES],
            small: [0; 768],
            large: Vec::new(),
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Which claims carry the identity of an external issuer's token (`[[issuer]]`
/// `user_id_claim` / `email_claim`).
#[derive(Debug, Clone, Copy)]
pub struct ClaimNames<'n> {
    pub user_id: &'n str,
    pub email: &'n str,
}

/// A token taken apart, not yet trusted: its `iss` only says which key set to check it with.
pub struct Unverified<'s, 't> {
    alg: Alg,
    kid: Option<Cow<'s, str>>,
    signed: &'t [u8],
    sig: &'s [u8],
    payload: &'s [u8],
    claims: Claims<'s>,
}

impl fmt::Debug for Unverified<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unverified")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Decodes the three parts of `token` into `scratch`. The claims are read before the signature
/// is checked because `iss` picks the keys; nothing in them counts until [`Unverified::check`].
pub fn parse<'s, 't>(
    token: &'t [u8],
    scratch: &'s mut Scratch,
) -> Result<Unverified<'s, 't>, TokenError> {
    use TokenError::Invalid;

    if token.len() > MAX_TOKEN_BYTES {
        return Err(Invalid("token too large"));
    }
    let (signed, sig_b64) = split_last_dot(token).ok_or(Invalid("not a JWS compact token"))?;
    let (header_b64, payload_b64) =
        split_last_dot(signed).ok_or(Invalid("not a JWS compact token"))?;
    if header_b64.contains(&b'.') {
        return Err(Invalid("too many segments"));
    }
    let Scratch {
        header: header_buf,
        sig: sig_buf,
        small,
        large,
    } = scratch;

    let header_bytes = decode_into(header_b64, header_buf).ok_or(Invalid("bad header"))?;
    let header: Header<'_> = json_text(header_bytes).ok_or(Invalid("bad header"))?;
    if header.crit.is_some() {
        return Err(Invalid("unsupported critical header"));
    }
    // `none` and every algorithm we do not configure end here.
    let alg = Alg::from_name(&header.alg).ok_or(Invalid("unsupported alg"))?;

    let sig = decode_into(sig_b64, sig_buf).ok_or(Invalid("bad signature encoding"))?;
    if sig.is_empty() {
        return Err(Invalid("empty signature"));
    }

    let payload_buf: &mut [u8] = if payload_b64.len() / 4 * 3 + 3 <= small.len() {
        small
    } else {
        large.resize(payload_b64.len() / 4 * 3 + 3, 0);
        large
    };
    let payload: &[u8] = decode_into(payload_b64, payload_buf).ok_or(Invalid("bad payload"))?;
    let claims: Claims<'_> = json_text(payload).ok_or(Invalid("bad claims"))?;
    Ok(Unverified {
        alg,
        kid: header.kid,
        signed,
        sig,
        payload,
        claims,
    })
}

impl Unverified<'_, '_> {
    /// The `iss` claim, as the token states it (unverified).
    pub fn iss(&self) -> Option<&str> {
        self.claims.iss.as_deref()
    }

    /// The claims JSON: to be read only once [`Self::check`] has passed (`authn::rules`).
    pub fn claims_json(&self) -> &[u8] {
        self.payload
    }

    /// The `nbf` claim, as the token states it (unverified).
    pub fn nbf(&self) -> Option<u64> {
        self.claims.nbf
    }

    /// The `kid` header, as the token states it (unverified).
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Checks the token against `keys`: issuer, signature (the algorithm pinned to the key),
    /// expiry, audience. `names` is `None` for our own tokens (identity in `sub` / `email`,
    /// `jti` and `sub` kept for revocation), else the external issuer's claim mapping.
    pub fn check(
        &self,
        keys: &KeySet,
        names: Option<ClaimNames<'_>>,
        now: u64,
    ) -> Result<Verified, TokenError> {
        use TokenError::Invalid;

        let claims = &self.claims;
        if claims.iss.as_deref() != Some(keys.issuer.as_str()) {
            return Err(Invalid("wrong issuer"));
        }
        let (alg, signed, sig) = (self.alg, self.signed, self.sig);
        let verified_with = match self.kid.as_deref() {
            Some(kid) => {
                let key = keys
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or(Invalid("unknown kid"))?;
                // The algorithm is pinned to the key: no symmetric/asymmetric swap.
                (key.alg == alg && key.verifier.verify(signed, sig)).then_some(key)
            }
            None => keys
                .keys
                .iter()
                .filter(|k| k.alg == alg)
                .find(|k| k.verifier.verify(signed, sig)),
        };
        let _key: &VerifyKey = verified_with.ok_or(Invalid("signature does not verify"))?;

        let exp = claims.exp.ok_or(Invalid("missing exp"))?;
        in_time(exp, claims.nbf, now, keys.leeway_secs)?;
        if !claims
            .aud
            .as_ref()
            .is_some_and(|a| a.contains(&keys.audience))
        {
            return Err(Invalid("wrong audience"));
        }
        let Some(names) = names else {
            let sub = claims.sub.as_deref().ok_or(Invalid("missing sub"))?;
            let user_id = header_value(sub).ok_or(Invalid("sub is not a usable header value"))?;
            return Ok(Verified {
                user_id,
                email: email_value(claims.email.as_deref())?,
                exp,
                iat: claims.iat,
                jti: claims
                    .jti
                    .as_deref()
                    .and_then(|j| uuid::Uuid::try_parse(j).ok()),
                user_uuid: uuid::Uuid::try_parse(sub).ok(),
                external: false,
            });
        };
        // Another issuer's user: its ids and jtis are not ours to revoke or look up.
        let (user_id, email) = if names.user_id == "sub" && names.email == "email" {
            (claims.sub.clone(), claims.email.clone())
        } else {
            let mapped = MappedSeed(names)
                .deserialize(&mut serde_json::Deserializer::from_slice(self.payload))
                .map_err(|_| Invalid("bad claims"))?;
            (
                string_claim(mapped.user_id, "user id claim is not a string")?,
                string_claim(mapped.email, "email claim is not a string")?,
            )
        };
        let user_id = user_id.ok_or(Invalid("missing user id claim"))?;
        Ok(Verified {
            user_id: header_value(&user_id)
                .ok_or(Invalid("user id is not a usable header value"))?,
            email: email_value(email.as_deref())?,
            exp,
            iat: claims.iat,
            jti: None,
            user_uuid: None,
            external: true,
        })
    }
}

/// A token's validity period at `now`: expired once `exp` is more than `leeway` behind, not
/// yet valid while `nbf` is more than `leeway` ahead.
pub fn in_time(exp: u64, nbf: Option<u64>, now: u64, leeway: u64) -> Result<(), TokenError> {
    if now > exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = nbf
        && nbf > now.saturating_add(leeway)
    {
        return Err(TokenError::Invalid("not yet valid"));
    }
    Ok(())
}

/// A mapped claim: absent, or a string; present with another type makes the token invalid.
fn string_claim<'a>(v: Claim<'a>, why: &'static str) -> Result<Option<Cow<'a, str>>, TokenError> {
    match v {
        Claim::Other => Err(TokenError::Invalid(why)),
        Claim::Str(s) => Ok(Some(s)),
        Claim::Absent => Ok(None),
    }
}

fn email_value(email: Option<&str>) -> Result<Option<HeaderValue>, TokenError> {
    match email {
        Some(e) => Ok(Some(
            header_value(e).ok_or(TokenError::Invalid("email is not a usable header value"))?,
        )),
        None => Ok(None),
    }
}

/// The two claims an external issuer's mapping names, read from the payload.
struct Mapped<'a> {
    user_id: Claim<'a>,
    email: Claim<'a>,
}

/// One mapped claim: absent, a string, or present with another JSON type (invalid).
#[derive(Clone)]
enum Claim<'a> {
    Absent,
    Str(Cow<'a, str>),
    Other,
}

struct MappedSeed<'n>(ClaimNames<'n>);

impl<'de> de::DeserializeSeed<'de> for MappedSeed<'_> {
    type Value = Mapped<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MappedSeed<'_> {
    type Value = Mapped<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a claims object")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Mapped {
            user_id: Claim::Absent,
            email: Claim::Absent,
        };
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let is_id = key == self.0.user_id;
            let is_email = key == self.0.email;
            if !is_id && !is_email {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let seen = |c: &Claim<'_>| !matches!(c, Claim::Absent);
            if (is_id && seen(&out.user_id)) || (is_email && seen(&out.email)) {
                return Err(de::Error::custom("duplicate claim"));
            }
            let value = map.next_value::<MaybeStr<'de>>()?.0;
            if is_id {
                out.user_id = value.clone();
            }
            if is_email {
                out.email = value;
            }
        }
        Ok(out)
    }
}

/// A claim value: the string, or [`Claim::Other`] for any other JSON type.
struct MaybeStr<'a>(Claim<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Claim::Str(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Claim::Str(Cow::Owned(v.to_owned()))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr(Claim::Other))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr(Claim::Other))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr(Claim::Other))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr(Claim::Other))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(Claim::Other))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(Claim::Other))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(Claim::Other))
            }
        }
        d.deserialize_any(V)
    }
}

/// JSON is UTF-8 text (RFC 8259). `serde_json::from_slice` checks only the strings it keeps,
/// so a member it skips (an unknown claim) could hold bytes that are not UTF-8: the whole
/// part is checked first, as other JWT libraries do.
fn json_text<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    serde_json::from_str(std::str::from_utf8(bytes).ok()?).ok()
}

fn split_last_dot(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().rposition(|&c| c == b'.')?;
    Some((&b[..i], &b[i + 1..]))
}

/// Strict base64url without padding into `buf`; `None` if malformed or too large.
fn decode_into<'b>(input: &[u8], buf: &'b mut [u8]) -> Option<&'b [u8]> {
    if input.len() / 4 * 3 + 3 > buf.len() {
        return None;
    }
    let n = URL_SAFE_NO_PAD.decode_slice(input, buf).ok()?;
    Some(&buf[..n])
}

/// A claim forwarded as a header: non-empty, short, visible ASCII only (no CR/LF, no controls).
fn header_value(s: &str) -> Option<HeaderValue> {
    if s.is_empty() || s.len() > MAX_CLAIM_BYTES || !s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return None;
    }
    HeaderValue::from_str(s).ok()
}

/// RFC 7519 NumericDate: a JSON number of seconds, possibly fractional. Negative, non-finite
/// or absurd values make the token invalid. Rounded down: right for `exp` (a fraction of a
/// second less validity) and `iat` (issued earlier is revoked sooner).
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    numeric_date_rounded(d, f64::floor)
}

/// `nbf` rounds up: a token valid from 12.5 s is not valid at 12 s.
fn numeric_date_up<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    numeric_date_rounded(d, f64::ceil)
}

fn numeric_date_rounded<'de, D: Deserializer<'de>>(
    d: D,
    round: fn(f64) -> f64,
) -> Result<Option<u64>, D::Error> {
    let v = f64::deserialize(d)?;
    if !v.is_finite() || !(0.0..=1e13).contains(&v) {
        return Err(de::Error::custom("bad NumericDate"));
    }
    // In range by the check above, so the cast is exact for whole seconds.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(Some(round(v) as u64))
}

/// `aud` as a string or an array of strings, checked without collecting the array.
enum Audience<'a> {
    One(Cow<'a, str>),
    /// Whether the array held the configured audience is only known after the fact, so the
    /// array form keeps its (few) members.
    Many(Vec<Cow<'a, str>>),
}

impl Audience<'_> {
    fn contains(&self, want: &str) -> bool {
        match self {
            Self::One(a) => a == want,
            Self::Many(all) => all.iter().any(|a| a == want),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Audience<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Audience<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Audience::One(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Audience::One(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut all = Vec::new();
                while let Some(a) = seq.next_element::<Cow<'de, str>>()? {
                    if all.len() == 16 {
                        return Err(de::Error::custom("too many audiences"));
                    }
                    all.push(a);
                }
                Ok(Audience::Many(all))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::keys::{KeySet, VerifyKey};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn keys() -> KeySet {
        KeySet::new(
            vec![VerifyKey::hmac(None, SECRET)],
            "portcullis".into(),
            "portcullis".into(),
            30,
        )
    }

    fn hs256(header: &serde_json::Value, claims: &serde_json::Value, secret: &[u8]) -> String {
        let signed = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
        let tag = aws_lc_rs::hmac::sign(&key, signed.as_bytes());
        format!("{signed}.{}", B64.encode(tag.as_ref()))
    }

    fn claims() -> serde_json::Value {
        json!({"sub":"5f0c3c9e-4d7a-4a43-9c1e-0b8f1f2d3e4a","email":"a@example.com",
               "iat":NOW,"exp":NOW+3600,"iss":"portcullis","aud":"portcullis",
               "jti":"6b1d1a44-3e4b-4d3f-8a2b-1c2d3e4f5a6b"})
    }

    fn check(claims: &serde_json::Value) -> Result<Verified, TokenError> {
        let t = hs256(&json!({"alg":"HS256","typ":"JWT"}), claims, SECRET);
        verify(t.as_bytes(), &keys(), NOW)
    }

    #[test]
    fn a_good_token_yields_its_identity() {
        let v = check(&claims()).unwrap();
        assert_eq!(v.sub(), "5f0c3c9e-4d7a-4a43-9c1e-0b8f1f2d3e4a");
        assert_eq!(v.email.unwrap(), "a@example.com");
    }

    #[test]
    fn audience_may_be_an_array() {
        let mut c = claims();
        c["aud"] = json!(["other", "portcullis"]);
        assert!(check(&c).is_ok());
        c["aud"] = json!(["other"]);
        assert_eq!(
            check(&c).unwrap_err(),
            TokenError::Invalid("wrong audience")
        );
    }

    #[test]
    fn expiry_respects_the_leeway() {
        let mut c = claims();
        c["exp"] = json!(NOW - 10);
        assert!(check(&c).is_ok());
        c["exp"] = json!(NOW - 31);
        assert_eq!(check(&c).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn a_fractional_nbf_is_not_reached_before_its_second_ends() {
        let mut c = claims();
        c["nbf"] = json!(1_800_000_030.5);
        assert_eq!(check(&c).unwrap_err(), TokenError::Invalid("not yet valid"));
        c["nbf"] = json!(NOW + 30);
        assert!(check(&c).is_ok());
        c["exp"] = json!(1_799_999_969.5);
        assert_eq!(check(&c).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn claims_that_must_be_present_and_right() {
        for (field, value, why) in [
            ("exp", serde_json::Value::Null, "missing exp"),
            ("iss", json!("evil"), "wrong issuer"),
            ("aud", json!("evil"), "wrong audience"),
            ("nbf", json!(NOW + 120), "not yet valid"),
            (
                "sub",
                json!("a\r\nX-User-Id: x"),
                "sub is not a usable header value",
            ),
            ("sub", json!(""), "sub is not a usable header value"),
        ] {
            let mut c = claims();
            if value.is_null() {
                c.as_object_mut().unwrap().remove(field);
            } else {
                c[field] = value;
            }
            assert_eq!(check(&c).unwrap_err(), TokenError::Invalid(why), "{field}");
        }
    }

    #[test]
    fn wrong_secret_alg_none_and_tampering_are_invalid() {
        let c = claims();
        let t = hs256(
            &json!({"alg":"HS256"}),
            &c,
            b"another-secret-another-secret-xx",
        );
        assert!(matches!(
            verify(t.as_bytes(), &keys(), NOW),
            Err(TokenError::Invalid(_))
        ));

        let none = format!(
            "{}.{}.",
            B64.encode(json!({"alg":"none"}).to_string()),
            B64.encode(c.to_string())
        );
        assert_eq!(
            verify(none.as_bytes(), &keys(), NOW).unwrap_err(),
            TokenError::Invalid("unsupported alg")
        );

        let good = hs256(&json!({"alg":"HS256"}), &c, SECRET);
        let mut parts: Vec<&str> = good.split('.').collect();
        let evil = B64.encode(
            json!({"sub":"someone-else","exp":NOW+3600,"iss":"portcullis","aud":"portcullis"})
                .to_string(),
        );
        parts[1] = &evil;
        let forged = parts.join(".");
        assert!(verify(forged.as_bytes(), &keys(), NOW).is_err());
    }

    #[test]
    fn padding_extra_segments_and_size_are_refused() {
        let good = hs256(&json!({"alg":"HS256"}), &claims(), SECRET);
        assert!(verify(format!("{good}=").as_bytes(), &keys(), NOW).is_err());
        assert!(verify(format!("x.{good}").as_bytes(), &keys(), NOW).is_err());
        assert!(verify(b"", &keys(), NOW).is_err());
        assert!(verify(b"..", &keys(), NOW).is_err());
        let big = vec![b'a'; MAX_TOKEN_BYTES + 1];
        assert_eq!(
            verify(&big, &keys(), NOW).unwrap_err(),
            TokenError::Invalid("token too large")
        );
    }

    #[test]
    fn unknown_kid_and_crit_are_refused() {
        let t = hs256(&json!({"alg":"HS256","kid":"nope"}), &claims(), SECRET);
        assert_eq!(
            verify(t.as_bytes(), &keys(), NOW).unwrap_err(),
            TokenError::Invalid("unknown kid")
        );
        let t = hs256(&json!({"alg":"HS256","crit":["exp"]}), &claims(), SECRET);
        assert!(verify(t.as_bytes(), &keys(), NOW).is_err());
    }

    #[test]
    fn an_external_mapping_reads_the_named_claims_strictly() {
        let names = ClaimNames {
            user_id: "uid",
            email: "mail",
        };
        let check = |extra: &str| {
            let payload = format!(
                r#"{{"iss":"portcullis","aud":"portcullis","exp":{},{extra}}}"#,
                NOW + 60
            );
            let signed = format!(
                "{}.{}",
                B64.encode(json!({"alg":"HS256"}).to_string()),
                B64.encode(payload)
            );
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
            let t = format!(
                "{signed}.{}",
                B64.encode(aws_lc_rs::hmac::sign(&key, signed.as_bytes()).as_ref())
            );
            let mut scratch = Scratch::new();
            parse(t.as_bytes(), &mut scratch)?.check(&keys(), Some(names), NOW)
        };
        let who = check(r#""uid":"u-9","mail":"m@x","sub":"ignored""#).unwrap();
        assert_eq!(who.sub(), "u-9");
        assert_eq!(who.email.unwrap(), "m@x");
        assert!(who.external && who.jti.is_none() && who.user_uuid.is_none());
        assert!(check(r#""uid":"u-9""#).unwrap().email.is_none());
        for (extra, why) in [
            (r#""sub":"s""#, "missing user id claim"),
            (r#""uid":42"#, "user id claim is not a string"),
            (r#""uid":"a","mail":["m"]"#, "email claim is not a string"),
            (r#""uid":"a","uid":"b""#, "bad claims"),
            (r#""uid":"a b""#, "user id is not a usable header value"),
        ] {
            assert_eq!(
                check(extra).unwrap_err(),
                TokenError::Invalid(why),
                "{extra}"
            );
        }
    }

    #[test]
    fn claims_or_a_header_that_are_not_utf8_are_refused_even_in_unknown_members() {
        let sign = |header: &[u8], payload: &[u8]| {
            let signed = format!("{}.{}", B64.encode(header), B64.encode(payload));
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
            let tag = aws_lc_rs::hmac::sign(&key, signed.as_bytes());
            format!("{signed}.{}", B64.encode(tag.as_ref()))
        };
        let good = claims().to_string();
        // an unknown member whose string is not UTF-8, then the good claims
        let mut bad = b"{\"x\":\"".to_vec();
        bad.extend([0xd3, 0xce]);
        bad.extend(b"\",");
        bad.extend(&good.as_bytes()[1..]);
        assert!(std::str::from_utf8(&bad).is_err());
        let t = sign(br#"{"alg":"HS256"}"#, &bad);
        assert_eq!(
            verify(t.as_bytes(), &keys(), NOW).unwrap_err(),
            TokenError::Invalid("bad claims")
        );
        let t = sign(b"{\"alg\":\"HS256\",\"x\":\"\xff\"}", good.as_bytes());
        assert_eq!(
            verify(t.as_bytes(), &keys(), NOW).unwrap_err(),
            TokenError::Invalid("bad header")
        );
        assert!(
            verify(
                sign(br#"{"alg":"HS256"}"#, good.as_bytes()).as_bytes(),
                &keys(),
                NOW
            )
            .is_ok()
        );
    }

    #[test]
    fn duplicate_claims_are_refused() {
        let signed = format!(
            "{}.{}",
            B64.encode(json!({"alg":"HS256"}).to_string()),
            B64.encode(
                r#"{"sub":"a","sub":"b","exp":1900000000,"iss":"portcullis","aud":"portcullis"}"#
            )
        );
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
        let t = format!(
            "{signed}.{}",
            B64.encode(aws_lc_rs::hmac::sign(&key, signed.as_bytes()).as_ref())
        );
        assert_eq!(
            verify(t.as_bytes(), &keys(), NOW).unwrap_err(),
            TokenError::Invalid("bad claims")
        );
    }
}
