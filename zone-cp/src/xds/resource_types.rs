//! The Envoy resource types Meridian serves, in push order, and sets of them.

/// Envoy resource types, in the order a change is pushed (make before break).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// SDS secrets (certificates) go first: clusters and listeners that use them wait for them.
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
pub const PUSH_ORDER: [&str; 5] = [SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// A set of resource types: what a change can alter in a proxy's snapshot.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Types(u8);

impl Types {
    pub const NONE: Self = Self(0);
    pub const ALL: Self = Self((1 << PUSH_ORDER.len()) - 1);

    /// The set of `type_urls` (each one of [`PUSH_ORDER`]).
    pub const fn of(type_urls: &[&str]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < type_urls.len() {
            bits |= Self::bit(type_urls[i]);
            i += 1;
        }
        Self(bits)
    }

    const fn bit(type_url: &str) -> u8 {
        let mut i = 0;
        while i < PUSH_ORDER.len() {
            if const_eq(PUSH_ORDER[i], type_url) {
                return 1 << i;
            }
            i += 1;
        }
        panic!("not an xDS resource type Meridian serves")
    }

    pub fn contains(self, type_url: &str) -> bool {
        PUSH_ORDER
            .iter()
            .position(|t| *t == type_url)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_all(self) -> bool {
        self == Self::ALL
    }

    /// The types in the set, in push order.
    pub fn iter(self) -> impl Iterator<Item = &'static str> {
        PUSH_ORDER.into_iter().filter(move |t| self.contains(t))
    }
}

/// The short names of the types, as logs and test failures show them: `{"Cluster", "Listener"}`.
impl std::fmt::Debug for Types {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.iter().map(|t| t.rsplit('.').next().unwrap_or(t)))
            .finish()
    }
}

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_holds_what_it_was_made_of() {
        let set = Types::of(&[LISTENER, CLUSTER]);
        assert_eq!(set.iter().collect::<Vec<_>>(), [CLUSTER, LISTENER]);
        assert!(set.intersects(Types::of(&[CLUSTER])) && !set.intersects(Types::of(&[ROUTE])));
        assert_eq!(set.union(Types::of(&[SECRET, ENDPOINT, ROUTE])), Types::ALL);
        assert!(!Types::ALL.contains("type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"));
        assert_eq!(Types::NONE.iter().count(), 0);
        assert_eq!(format!("{set:?}"), r#"{"Cluster", "Listener"}"#);
    }
}
