//! Claim rules of a route (CONTRACT section 10), checked against a verified token's claims:
//! every `require`d claim equals its string or is an array holding it, every required scope is
//! in `scope` or `scp`. Read in one pass over the claims JSON, borrowing from it, looking only
//! at the claims the rules name; routes without rules never get here.
//!
//! `scope` and `scp` are each read as a space-separated string (RFC 8693 / RFC 9068) or as an
//! array of strings (Okta's and Azure AD's `scp`): a scope counts when either holds it. A rule's
//! claim that appears twice in one token fails the rule (no first-wins, no last-wins).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

pub use crate::config::ClaimRules;

/// Most `require` entries and most scopes a route may list (each is one bit below).
pub const MAX_RULES: usize = 32;

/// Whether the claims (a verified token's JSON payload) satisfy every rule. Claims that are not
/// an object, or not JSON, satisfy none.
pub fn admits(rules: &ClaimRules, claims: &[u8]) -> bool {
    if rules.is_empty() {
        return true;
    }
    let mut de = serde_json::Deserializer::from_slice(claims);
    match (Pass { rules }).deserialize(&mut de) {
        Ok(met) => {
            met.claims == full(rules.require.len()) && met.scopes == full(rules.scopes.len())
        }
        Err(_) => false,
    }
}

/// A mask with the low `n` bits set.
const fn full(n: usize) -> u32 {
    if n >= 32 { u32::MAX } else { (1 << n) - 1 }
}

/// Which rules the claims met, one bit each.
#[derive(Default)]
struct Met {
    claims: u32,
    scopes: u32,
}

struct Pass<'r> {
    rules: &'r ClaimRules,
}

impl<'de> DeserializeSeed<'de> for Pass<'_> {
    type Value = Met;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Met, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Pass<'_> {
    type Value = Met;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a claims object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Met, A::Error> {
        let mut met = Met::default();
        // Rule claims seen so far (and `scope` / `scp`), to refuse a duplicate.
        let mut seen = 0u32;
        let (mut seen_scope, mut seen_scp) = (false, false);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if let Some(i) = self.rules.require.iter().position(|(c, _)| *c == key) {
                if seen & (1 << i) != 0 {
                    return Err(de::Error::custom("duplicate claim"));
                }
                seen |= 1 << i;
                let want = self.rules.require[i].1.as_str();
                let mut hit = false;
                map.next_value_seed(Strings::of(&mut |s: &str, _| hit |= s == want))?;
                if hit {
                    met.claims |= 1 << i;
                }
            } else if !self.rules.scopes.is_empty() && (key == "scope" || key == "scp") {
                let twice = if key == "scope" {
                    std::mem::replace(&mut seen_scope, true)
                } else {
                    std::mem::replace(&mut seen_scp, true)
                };
                if twice {
                    return Err(de::Error::custom("duplicate claim"));
                }
                let scopes = &self.rules.scopes;
                let mut grant = |s: &str| {
                    if let Some(i) = scopes.iter().position(|w| w == s) {
                        met.scopes |= 1 << i;
                    }
                };
                map.next_value_seed(Strings::of(&mut |s: &str, whole: bool| {
                    if whole {
                        s.split_ascii_whitespace().for_each(&mut grant);
                    } else {
                        grant(s);
                    }
                }))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(met)
    }
}

/// Hands each string of a claim value to the callback: the value itself when it is a string
/// (`true`), each string element when it is an array (`false`); anything else, and any other
/// element (a nested array among them), hands over nothing.
struct Strings<'f> {
    found: &'f mut dyn FnMut(&str, bool),
    /// The claim's value itself, not an element of it.
    top: bool,
}

impl<'f> Strings<'f> {
    fn of(found: &'f mut dyn FnMut(&str, bool)) -> Self {
        Self { found, top: true }
    }
}

impl<'de> DeserializeSeed<'de> for Strings<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strings<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        (self.found)(v, self.top);
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.top {
            let found = self.found;
            while let Some(()) = seq.next_element_seed(Strings {
                found: &mut *found,
                top: false,
            })? {}
        } else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{ClaimRules, admits};

    fn rules(require: &[(&str, &str)], scopes: &[&str]) -> ClaimRules {
        ClaimRules {
            require: require
                .iter()
                .map(|(c, v)| ((*c).to_owned(), (*v).to_owned()))
                .collect(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn ok(r: &ClaimRules, claims: &str) -> bool {
        admits(r, claims.as_bytes())
    }

    #[test]
    fn a_required_claim_is_a_string_equal_or_an_array_holding_it() {
        let r = rules(&[("role", "admin")], &[]);
        assert!(ok(&r, r#"{"sub":"u","role":"admin"}"#));
        assert!(ok(&r, r#"{"role":["user","admin"],"sub":"u"}"#));
        // Escaped spellings of the same string are the same string.
        assert!(ok(&r, r#"{"role":"\u0061dmin"}"#));
        for refused in [
            r#"{"sub":"u"}"#,
            r#"{"role":"Admin"}"#,
            r#"{"role":"admin "}"#,
            r#"{"role":"user admin"}"#,
            r#"{"role":["user"]}"#,
            r#"{"role":[["admin"]]}"#,
            r#"{"role":{"admin":true}}"#,
            r#"{"role":true}"#,
            r#"{"role":null}"#,
            r#"{"roles":"admin"}"#,
            r#"{"nested":{"role":"admin"}}"#,
        ] {
            assert!(!ok(&r, refused), "{refused}");
        }
    }

    #[test]
    fn every_listed_claim_must_match() {
        let r = rules(&[("role", "admin"), ("org", "acme")], &[]);
        assert!(ok(&r, r#"{"org":"acme","role":"admin"}"#));
        assert!(!ok(&r, r#"{"role":"admin"}"#));
        assert!(!ok(&r, r#"{"org":"acme","role":"user"}"#));
    }

    #[test]
    fn scopes_come_from_a_space_separated_scope_or_an_scp_array_or_string() {
        let r = rules(&[], &["tasks:write", "tasks:read"]);
        assert!(ok(&r, r#"{"scope":"openid tasks:read  tasks:write"}"#));
        assert!(ok(&r, r#"{"scp":["tasks:write","tasks:read"]}"#));
        assert!(ok(&r, r#"{"scp":"tasks:write tasks:read"}"#));
        // Granted between the two claims together.
        assert!(ok(&r, r#"{"scope":"tasks:read","scp":["tasks:write"]}"#));
        for refused in [
            r#"{"scope":"tasks:read"}"#,
            r#"{"scope":"tasks:readtasks:write"}"#,
            r#"{"scope":"TASKS:WRITE tasks:read"}"#,
            // An array element is one scope, never split.
            r#"{"scp":["tasks:write tasks:read"]}"#,
            r#"{"scope":["tasks"]}"#,
            r#"{"scopes":"tasks:write tasks:read"}"#,
            "{}",
        ] {
            assert!(!ok(&r, refused), "{refused}");
        }
    }

    #[test]
    fn a_rule_claim_that_appears_twice_fails_the_rule() {
        let r = rules(&[("role", "admin")], &[]);
        assert!(!ok(&r, r#"{"role":"admin","role":"admin"}"#));
        assert!(!ok(&r, r#"{"role":"user","role":"admin"}"#));
        let s = rules(&[], &["a"]);
        assert!(!ok(&s, r#"{"scope":"a","scope":"a"}"#));
        // A duplicate of a claim no rule names changes nothing.
        assert!(ok(&r, r#"{"x":1,"x":2,"role":"admin"}"#));
    }

    #[test]
    fn claims_that_are_not_an_object_satisfy_no_rule_and_no_rules_admit_anything() {
        let r = rules(&[("role", "admin")], &[]);
        for bad in ["", "[]", "\"admin\"", "{", r#"{"role":"admin""#, "null"] {
            assert!(!ok(&r, bad), "{bad}");
        }
        assert!(ok(&ClaimRules::default(), "not even json"));
    }

    #[test]
    fn thirty_two_rules_are_each_their_own_bit() {
        let names: Vec<String> = (0..32).map(|i| format!("c{i}")).collect();
        let require: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let r = rules(&require, &[]);
        let all: Vec<String> = names.iter().map(|n| format!(r#""{n}":"v""#)).collect();
        assert!(ok(&r, &format!("{{{}}}", all.join(","))));
        assert!(!ok(&r, &format!("{{{}}}", all[1..].join(","))));
        assert!(!ok(&r, &format!("{{{}}}", all[..31].join(","))));
    }
}
