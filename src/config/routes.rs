//! `[[route]]`s, validated: the access mode, the upstream by index, and patterns a route table
//! can hold without surprise. Patterns are matchit's (`{name}` one segment, `{*name}` the
//! rest), canonical (`crate::path`), and no two of one shape: two patterns that match the same
//! paths are a config error, never a silent shadowing. An owner rule names a one-segment
//! parameter of its own pattern. Claim rules (`require`, `require_scopes`) are strings, on
//! routes that see a token.

use super::{Problems, Upstream, file};

/// What a route demands of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Optional,
    Required,
}

impl Access {
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Self::Public),
            "optional" => Some(Self::Optional),
            "required" => Some(Self::Required),
            _ => None,
        }
    }
}

/// One validated route.
#[derive(Debug, Clone)]
pub struct Route {
    pub pattern: String,
    /// Index into the config's upstreams.
    pub upstream: usize,
    pub access: Access,
    /// Path parameter that must equal the token's `sub`.
    pub owner: Option<String>,
    pub forward_token: bool,
    /// What a verified token's claims must hold (CONTRACT section 10; `authn::rules`).
    pub rules: ClaimRules,
    /// A signed identity assertion for the upstream (CONTRACT section 9): the route's
    /// `assertion`, else its upstream's.
    pub assertion: bool,
}

/// A route's claim rules: every `require` entry and every scope must be met, else 403
/// `insufficient_scope`. Empty: no rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimRules {
    /// (claim, value): the claim is that string, or an array holding it.
    pub require: Vec<(String, String)>,
    /// Each in `scope` (space-separated) or `scp`.
    pub scopes: Vec<String>,
}

impl ClaimRules {
    /// No rule at all (the identity endpoints' own checks, and most routes).
    pub const NONE: Self = Self {
        require: Vec::new(),
        scopes: Vec::new(),
    };

    pub fn is_empty(&self) -> bool {
        self.require.is_empty() && self.scopes.is_empty()
    }
}

impl Route {
    /// A route to the first upstream, for unit tests of what holds routes.
    #[cfg(test)]
    pub(crate) fn for_test(pattern: &str, access: Access, owner: Option<&str>) -> Self {
        Self {
            pattern: pattern.into(),
            upstream: 0,
            access,
            owner: owner.map(Into::into),
            forward_token: false,
            rules: ClaimRules::default(),
            assertion: false,
        }
    }

    /// Three routes that overlap as the contract allows: an owner route, a catch-all beside
    /// it and a static path under the catch-all.
    #[cfg(test)]
    pub(crate) fn example_table() -> Vec<Self> {
        vec![
            Self::for_test(
                "/api/{user_id}/tasks/{*rest}",
                Access::Required,
                Some("user_id"),
            ),
            Self::for_test("/api/{*rest}", Access::Public, None),
            Self::for_test("/api/health", Access::Public, None),
        ]
    }
}

pub(super) fn validate(
    p: &mut Problems,
    raw: &[file::Route],
    upstreams: &[Upstream],
) -> Vec<Route> {
    let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
    for r in raw {
        // Every problem of a route is reported, not only the first: a route with a problem
        // still joins the list (the config is refused anyway) so that duplicates among the
        // routes after it are found too.
        let at = format!("route `{}`", r.path);
        let upstream = upstreams.iter().position(|u| u.name == r.upstream);
        if upstream.is_none() {
            p.add(format!("{at}: upstream `{}` is not defined", r.upstream));
        }
        let access = Access::from_name(&r.auth);
        if access.is_none() {
            p.add(format!(
                "{at}: auth `{}` must be public, optional or required",
                r.auth
            ));
        }
        if r.owner.is_some() && access.is_some_and(|a| a != Access::Required) {
            p.add(format!("{at}: owner needs auth = \"required\""));
        }
        if crate::path::normalise(&r.path.replace(['{', '}', '*'], "")).is_err() {
            p.add(format!(
                "{at}: the path is not canonical (no `..`, `\\`, `%2F`, `//`)"
            ));
        }
        let rules = claim_rules(p, &at, r);
        if !rules.is_empty() && access == Some(Access::Public) {
            p.add(format!(
                "{at}: require / require_scopes need auth = \"required\" or \"optional\" (a public route sees no token)"
            ));
        }
        let route = Route {
            pattern: r.path.clone(),
            upstream: upstream.unwrap_or(usize::MAX),
            access: access.unwrap_or(Access::Required),
            owner: r.owner.clone(),
            forward_token: r.forward_token,
            rules,
            assertion: r
                .assertion
                .or_else(|| upstream.map(|u| upstreams[u].assertion))
                .unwrap_or(false),
        };
        if let Err(e) = check_pattern(&routes, &route) {
            p.add(e);
        }
        routes.push(route);
    }
    routes
}

/// Claims that hold numbers or are the token's own machinery: a string rule on them never
/// matches, or means something else.
const NOT_RULE_CLAIMS: [&str; 5] = ["exp", "nbf", "iat", "scope", "scp"];

/// Longest claim name or value, and longest scope, a rule may hold.
const MAX_RULE_BYTES: usize = 256;

/// The route's `require` and `require_scopes`, every wrong shape reported.
fn claim_rules(p: &mut Problems, at: &str, r: &file::Route) -> ClaimRules {
    use crate::authn::rules::MAX_RULES;
    let mut rules = ClaimRules::default();
    let usable =
        |s: &str| !s.is_empty() && s.len() <= MAX_RULE_BYTES && !s.chars().any(char::is_control);
    let require = match &r.require {
        Some(toml::Value::Table(t)) => Some(t),
        Some(other) => {
            p.add(format!(
                "{at}: require must be a table of claim = \"value\", not {}",
                other.type_str()
            ));
            None
        }
        None => None,
    };
    if let Some(require) = require {
        if require.is_empty() {
            p.add(format!(
                "{at}: require is empty (remove it, or name a claim)"
            ));
        }
        if require.len() > MAX_RULES {
            p.add(format!("{at}: require lists more than {MAX_RULES} claims"));
        }
        for (claim, value) in require {
            if NOT_RULE_CLAIMS.contains(&claim.as_str()) {
                let hint = if claim.starts_with('s') {
                    "use require_scopes"
                } else {
                    "it is a number"
                };
                p.add(format!(
                    "{at}: require.{claim} is not a claim a rule can test ({hint})"
                ));
                continue;
            }
            if !usable(claim) {
                p.add(format!(
                    "{at}: require has an empty, control-character or over-long claim name"
                ));
                continue;
            }
            match value {
                toml::Value::String(v) if usable(v) => rules.require.push((claim.clone(), v.clone())),
                toml::Value::String(_) => p.add(format!(
                    "{at}: require.{claim} must be a non-empty string of at most {MAX_RULE_BYTES} bytes without control characters"
                )),
                other => p.add(format!(
                    "{at}: require.{claim} must be a string, not {} (the claim must equal it, or be an array holding it)",
                    other.type_str()
                )),
            }
        }
    }
    let scopes = match &r.require_scopes {
        Some(toml::Value::Array(a)) => Some(a),
        Some(other) => {
            p.add(format!(
                "{at}: require_scopes must be a list of scopes, not {}",
                other.type_str()
            ));
            None
        }
        None => None,
    };
    if let Some(scopes) = scopes {
        if scopes.is_empty() {
            p.add(format!(
                "{at}: require_scopes is empty (remove it, or list a scope)"
            ));
        }
        if scopes.len() > MAX_RULES {
            p.add(format!(
                "{at}: require_scopes lists more than {MAX_RULES} scopes"
            ));
        }
        for scope in scopes {
            match scope {
                toml::Value::String(s)
                    if usable(s) && !s.chars().any(char::is_whitespace) =>
                {
                    if !rules.scopes.contains(s) {
                        rules.scopes.push(s.clone());
                    }
                }
                toml::Value::String(s) => p.add(format!(
                    "{at}: require_scopes entry `{}` must be one non-empty scope of at most {MAX_RULE_BYTES} bytes, without spaces",
                    s.escape_default()
                )),
                other => p.add(format!(
                    "{at}: require_scopes must list strings, not {}",
                    other.type_str()
                )),
            }
        }
    }
    rules
}

/// Whether `route` may join `before`: the pattern's own grammar, its owner rule, and no
/// earlier route of the same shape. The error is one line.
fn check_pattern(before: &[Route], route: &Route) -> Result<(), String> {
    if !route.pattern.starts_with('/') {
        return Err(format!("route `{}` must start with `/`", route.pattern));
    }
    if let Some(owner) = &route.owner
        && !segment_params(&route.pattern).any(|p| p == owner)
    {
        return Err(format!(
            "route `{}`: owner `{owner}` is not a `{{{owner}}}` segment of its path",
            route.pattern
        ));
    }
    if let Some(twin) = before
        .iter()
        .find(|r| shape(&r.pattern) == shape(&route.pattern))
    {
        return Err(format!(
            "route `{}` duplicates route `{}`",
            route.pattern, twin.pattern
        ));
    }
    // matchit's grammar (a catch-all last, parameters closed, ...): a router of its own cannot
    // conflict, so any error is the pattern's.
    matchit::Router::new()
        .insert(route.pattern.as_str(), ())
        .map_err(|e| format!("route `{}`: {e}", route.pattern))
}

/// The pattern with parameter names erased: two routes of one shape match the same paths.
fn shape(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|seg| match seg.strip_prefix('{') {
            Some(p) if p.starts_with('*') => "{*}",
            Some(_) => "{}",
            None => seg,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Names of the one-segment parameters (`{name}`) of a pattern; catch-alls are not owners.
fn segment_params(pattern: &str) -> impl Iterator<Item = &str> {
    pattern.split('/').filter_map(|seg| {
        let inner = seg.strip_prefix('{')?.strip_suffix('}')?;
        (!inner.starts_with('*')).then_some(inner)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(pattern: &str, access: Access, owner: Option<&str>) -> Route {
        Route::for_test(pattern, access, owner)
    }

    fn table() -> Vec<Route> {
        Route::example_table()
    }

    #[test]
    fn owner_must_be_a_segment_parameter() {
        let e = check_pattern(
            &[],
            &route("/u/{id}/{*rest}", Access::Required, Some("rest")),
        )
        .unwrap_err();
        assert!(e.contains("owner `rest`"), "{e}");
        assert!(check_pattern(&[], &route("/u/{id}", Access::Required, Some("user"))).is_err());
    }

    #[test]
    fn duplicate_and_conflicting_patterns_are_refused() {
        let t = table();
        for (i, r) in t.iter().enumerate() {
            check_pattern(&t[..i], r).unwrap();
        }
        assert!(check_pattern(&t, &route("/api/health", Access::Public, None)).is_err());
        assert!(
            check_pattern(
                &t,
                &route("/api/{other}/tasks/{*rest}", Access::Public, None)
            )
            .is_err()
        );
    }
}
