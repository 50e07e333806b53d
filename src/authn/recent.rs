//! Tokens of ours verified recently, so that the next request with the same token skips the
//! signature and the decoding (base64, two JSON documents, the identity's header values) and
//! keeps only what can change while it is valid: the time, the revocations, the route's
//! claim rules ([`Authenticator`](super::Authenticator) re-checks those on every hit).
//!
//! A fixed table of slots, each one entry or none, read without a lock (`ArcSwapOption`). The
//! slot is picked by the token's signature, which nobody can choose for a token that verifies;
//! a hit needs the whole token to match, compared in constant time. Only tokens that verified
//! with our own key set go in, and the table belongs to one [`Authenticator`]: a reload, which
//! builds a new one with the new keys, starts with an empty table. A token that does not verify
//! is never stored, so invalid traffic cannot evict anything; a new valid token takes its
//! slot's place (the older one is verified again when it comes back).

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::verify::Verified;

/// 2^12 slots: 32 KiB of pointers; a full table holds about 3 MiB of entries.
const SLOT_BITS: u32 = 12;

/// What a verification established, to be re-checked against the clock, the revocations and
/// a route's rules.
pub struct Entry {
    token: Box<[u8]>,
    pub who: Verified,
    pub nbf: Option<u64>,
    /// The decoded claims JSON, for claim rules.
    pub claims: Box<[u8]>,
}

pub struct Recent {
    slots: Box<[ArcSwapOption<Entry>]>,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            slots: (0..1usize << SLOT_BITS)
                .map(|_| ArcSwapOption::empty())
                .collect(),
        }
    }
}

/// Never the tokens: they are credentials.
impl fmt::Debug for Recent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recent")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Recent {
    /// `f` of the entry of exactly `token`, if it verified recently.
    pub fn with<R>(&self, token: &[u8], f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let guard = self.slots[slot(token)].load();
        let entry = guard.as_deref()?;
        same(&entry.token, token).then(|| f(entry))
    }

    /// Remembers a token that verified with our keys.
    pub fn put(&self, token: &[u8], who: &Verified, nbf: Option<u64>, claims: &[u8]) {
        self.slots[slot(token)].store(Some(Arc::new(Entry {
            token: token.into(),
            who: who.clone(),
            nbf,
            claims: claims.into(),
        })));
    }
}

/// The slot of a token: from the characters just before its last (whose low bits base64url
/// leaves unused), which are the signature's.
fn slot(token: &[u8]) -> usize {
    let end = token.len().saturating_sub(1);
    let mut tail = [0u8; 8];
    let from = end.saturating_sub(tail.len());
    tail[..end - from].copy_from_slice(&token[from..end]);
    let mixed = u64::from_le_bytes(tail).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    usize::try_from(mixed >> (64 - SLOT_BITS)).unwrap_or_default()
}

/// Equal bytes, in time that depends on the lengths only: how much of a stored token a
/// presented one shares must not show in how long the answer takes.
fn same(stored: &[u8], presented: &[u8]) -> bool {
    if stored.len() != presented.len() {
        return false;
    }
    let diff = stored
        .iter()
        .zip(presented)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(sub: &str) -> Verified {
        Verified {
            user_id: http::HeaderValue::from_str(sub).unwrap(),
            email: None,
            exp: 10,
            iat: None,
            jti: None,
            user_uuid: None,
            external: false,
        }
    }

    #[test]
    fn only_the_exact_token_is_found() {
        let r = Recent::default();
        let token = b"aaaa.bbbb.signature-of-the-token-x";
        r.put(token, &who("u1"), None, b"{}");
        assert_eq!(r.with(token, |e| e.who.sub().to_owned()).unwrap(), "u1");
        let mut other = token.to_vec();
        other[0] = b'c';
        assert!(r.with(&other, |_| ()).is_none(), "same slot, another token");
        assert!(r.with(&token[..token.len() - 1], |_| ()).is_none());
        assert!(r.with(b"", |_| ()).is_none());
    }

    #[test]
    fn a_new_token_in_the_same_slot_replaces_the_old() {
        let r = Recent::default();
        let (a, b) = (b"one.claims.same-tail-zz", b"two.claims.same-tail-zz");
        assert_eq!(slot(a), slot(b));
        r.put(a, &who("a"), None, b"{}");
        r.put(b, &who("b"), None, b"{}");
        assert!(r.with(a, |_| ()).is_none());
        assert_eq!(r.with(b, |e| e.who.sub().to_owned()).unwrap(), "b");
    }

    #[test]
    fn tokens_spread_over_the_slots() {
        let tails = [
            "abcdefgh", "abcdefgi", "zbcdefgh", "AAAAAAAA", "AAAAAAAB", "x",
        ];
        let slots: std::collections::HashSet<_> = tails
            .iter()
            .map(|t| slot(format!("h.p.{t}Q").as_bytes()))
            .collect();
        assert_eq!(slots.len(), tails.len());
        assert!(slots.iter().all(|&s| s < 1 << SLOT_BITS));
    }

    #[test]
    fn debug_never_shows_a_token() {
        let r = Recent::default();
        r.put(b"secret.token.value", &who("u"), None, b"{}");
        assert!(!format!("{r:?}").contains("secret"));
    }
}
