//! The route table: which upstream a canonical path goes to, and what it takes to get there.
//! Patterns are matchit's (`{name}` one segment, `{*name}` the rest); the most specific
//! pattern wins (segment by segment: static over parameter over catch-all), and two patterns
//! of the same shape are a config error, never a silent shadowing.
//!
//! matchit alone refuses some sets the contract allows (`/api/{*rest}` beside
//! `/api/{user_id}/tasks/{*rest}`), so routes are spread over a few layered routers: a pattern
//! goes into the first layer it does not conflict with, and a lookup keeps the most specific
//! match over all layers. There are as many layers as the deepest such overlap, usually one.

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

#[derive(Debug, Clone)]
pub struct Route {
    pub pattern: String,
    pub upstream: usize,
    pub access: Access,
    /// Path parameter that must equal the token's `sub`.
    pub owner: Option<String>,
    pub forward_token: bool,
}

/// A matched route and, when it has an owner rule, the owner segment of the path.
#[derive(Debug)]
pub struct Matched<'t, 'p> {
    pub index: usize,
    pub route: &'t Route,
    pub owner_value: Option<&'p str>,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    layers: Vec<matchit::Router<usize>>,
    routes: Vec<Route>,
    /// Per route, its specificity (see [`specificity`]), compared on lookup.
    ranks: Vec<Vec<u8>>,
}

impl RouteTable {
    /// Adds a route; the error is a one-line reason.
    pub fn add(&mut self, route: Route) -> Result<(), String> {
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
        if let Some(twin) = self
            .routes
            .iter()
            .find(|r| shape(&r.pattern) == shape(&route.pattern))
        {
            return Err(format!(
                "route `{}` duplicates route `{}`",
                route.pattern, twin.pattern
            ));
        }
        let index = self.routes.len();
        let mut placed = false;
        for layer in &mut self.layers {
            match layer.insert(route.pattern.clone(), index) {
                Ok(()) => {
                    placed = true;
                    break;
                }
                Err(matchit::InsertError::Conflict { .. }) => {}
                Err(e) => return Err(format!("route `{}`: {e}", route.pattern)),
            }
        }
        if !placed {
            let mut layer = matchit::Router::new();
            layer
                .insert(route.pattern.clone(), index)
                .map_err(|e| format!("route `{}`: {e}", route.pattern))?;
            self.layers.push(layer);
        }
        self.ranks.push(specificity(&route.pattern));
        self.routes.push(route);
        Ok(())
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for an already canonical path.
    pub fn find<'t, 'p>(&'t self, path: &'p str) -> Option<Matched<'t, 'p>> {
        let m = self
            .layers
            .iter()
            .filter_map(|layer| layer.at(path).ok())
            .max_by(|a, b| self.ranks[*a.value].cmp(&self.ranks[*b.value]))?;
        let index = *m.value;
        let route = &self.routes[index];
        let owner_value = route.owner.as_deref().and_then(|o| m.params.get(o));
        Some(Matched {
            index,
            route,
            owner_value,
        })
    }
}

/// Segment by segment: 3 for static, 2 for `{param}`, 1 for `{*rest}`; a longer pattern beats
/// its own prefix. Compared lexicographically, the larger is the more specific.
fn specificity(pattern: &str) -> Vec<u8> {
    pattern
        .split('/')
        .map(|seg| match seg.strip_prefix('{') {
            Some(p) if p.starts_with('*') => 1,
            Some(_) => 2,
            None => 3,
        })
        .collect()
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
        Route {
            pattern: pattern.into(),
            upstream: 0,
            access,
            owner: owner.map(Into::into),
            forward_token: false,
        }
    }

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        t.add(route(
            "/api/{user_id}/tasks/{*rest}",
            Access::Required,
            Some("user_id"),
        ))
        .unwrap();
        t.add(route("/api/{*rest}", Access::Public, None)).unwrap();
        t.add(route("/api/health", Access::Public, None)).unwrap();
        t
    }

    #[test]
    fn most_specific_pattern_wins() {
        let t = table();
        assert_eq!(t.find("/api/health").unwrap().route.pattern, "/api/health");
        let m = t.find("/api/u1/tasks/7").unwrap();
        assert_eq!(m.route.pattern, "/api/{user_id}/tasks/{*rest}");
        assert_eq!(m.owner_value, Some("u1"));
        assert_eq!(
            t.find("/api/u1/other").unwrap().route.pattern,
            "/api/{*rest}"
        );
        assert!(t.find("/elsewhere").is_none());
    }

    #[test]
    fn owner_must_be_a_segment_parameter() {
        let mut t = RouteTable::default();
        let e = t
            .add(route("/u/{id}/{*rest}", Access::Required, Some("rest")))
            .unwrap_err();
        assert!(e.contains("owner `rest`"), "{e}");
        assert!(
            t.add(route("/u/{id}", Access::Required, Some("user")))
                .is_err()
        );
    }

    #[test]
    fn duplicate_and_conflicting_patterns_are_refused() {
        let mut t = table();
        assert!(t.add(route("/api/health", Access::Public, None)).is_err());
        assert!(
            t.add(route("/api/{other}/tasks/{*rest}", Access::Public, None))
                .is_err()
        );
    }
}
