//! The route table: which upstream a canonical path goes to, and what it takes to get there.
//! Patterns are matchit's (`{name}` one segment, `{*name}` the rest), checked by config (no
//! two of one shape, owners are parameters); the most specific pattern wins (segment by
//! segment: static over parameter over catch-all).
//!
//! matchit alone refuses some sets the contract allows (`/api/{*rest}` beside
//! `/api/{user_id}/tasks/{*rest}`), so routes are spread over a few layered routers: a pattern
//! goes into the first layer it does not conflict with, and a lookup keeps the most specific
//! match over all layers. There are as many layers as the deepest such overlap, usually one.

pub use crate::config::{Access, Route};

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
    /// The table of the config's (validated) routes, in their order.
    pub fn new(routes: &[Route]) -> Result<Self, String> {
        let mut table = Self::default();
        for route in routes {
            table.add(route.clone())?;
        }
        Ok(table)
    }

    /// Adds a route to the first layer it does not conflict with; the error is a one-line
    /// reason (a pattern config let through that matchit still refuses).
    fn add(&mut self, route: Route) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::new(&Route::example_table()).unwrap()
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
}
