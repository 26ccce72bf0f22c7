//! VirtualIPs: the virtual IP each service of a mesh has in this zone, which transparently
//! proxied workloads reach it at (as `<service>.mesh`). One per mesh, named after the mesh;
//! the zone control plane allocates them and stores them through its Raft log, so every node
//! answers the same, and neither global nor users write them.
//!
//! An address, once given, stays with its service for as long as the service exists: restarts,
//! leader changes and a full resync from global keep it (Kuma users lost theirs on a global
//! reconnect, kumahq/kuma#13592). A new service gets the address its name hashes to, or the
//! next free one, so a service that goes and comes back usually gets its old one again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{Validate, Validator};

/// Kuma's default range for virtual IPs (class E, never routed).
pub const DEFAULT_RANGE: Range = Range {
    base: Ipv4Addr::new(240, 0, 0, 0),
    prefix: 4,
};

/// The name `<service>.mesh` resolves to the service's virtual IP.
pub const DOMAIN: &str = "mesh";

/// The port a service's virtual IP listens on for its callers (Kuma's `serviceVipPort`).
pub const VIP_PORT: u32 = 80;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualIpsSpec {
    /// Each service's virtual IP.
    #[serde(default)]
    pub services: BTreeMap<String, Ipv4Addr>,
}

impl Validate for VirtualIpsSpec {
    fn validate(&self, v: &mut Validator) {
        let mut seen = BTreeMap::new();
        v.field("services", |v| {
            for (service, ip) in &self.services {
                if let Some(other) = seen.insert(*ip, service) {
                    v.error_at(service, format!("{ip} is also {other}'s"));
                }
            }
        });
    }
}

/// An IPv4 range, `base/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Range {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "must be an IPv4 CIDR with room for addresses (240.0.0.0/4)";
        let (base, prefix) = text.split_once('/').ok_or(EXPECTED)?;
        let base: Ipv4Addr = base.parse().map_err(|_| EXPECTED)?;
        let prefix: u8 = prefix.parse().map_err(|_| EXPECTED)?;
        if !(1..=30).contains(&prefix) {
            return Err(EXPECTED);
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            base: Ipv4Addr::from(u32::from(base) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl Range {
    /// The addresses services may get: all but the range's first and last.
    fn usable(&self) -> (u32, u32) {
        let size = 1u64 << (32 - self.prefix);
        (u32::from(self.base) + 1, (size - 2) as u32)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (first, count) = self.usable();
        (first..first + count).contains(&u32::from(ip))
    }
}

/// FNV-1a: a hash that is the same in every build, so a name prefers the same address on
/// every node and after every upgrade.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The allocation for `wanted` given `current`: every wanted service keeps the address it has
/// (if it is in `range`); each new one gets its preferred address or the next free one; the
/// services no longer wanted give theirs back. `None` when the range is full.
pub fn allocate(
    current: &BTreeMap<String, Ipv4Addr>,
    wanted: &BTreeSet<&str>,
    range: Range,
) -> Option<BTreeMap<String, Ipv4Addr>> {
    let (first, count) = range.usable();
    let mut next: BTreeMap<String, Ipv4Addr> = current
        .iter()
        .filter(|(s, ip)| wanted.contains(s.as_str()) && range.contains(**ip))
        .map(|(s, ip)| (s.clone(), *ip))
        .collect();
    let mut used: BTreeSet<u32> = next.values().map(|ip| u32::from(*ip)).collect();
    let new: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|s| !next.contains_key(*s))
        .collect();
    for service in new {
        if used.len() as u64 >= u64::from(count) {
            return None;
        }
        let mut offset = (stable_hash(service) % u64::from(count)) as u32;
        while used.contains(&(first + offset)) {
            offset = (offset + 1) % count;
        }
        used.insert(first + offset);
        next.insert(service.to_owned(), Ipv4Addr::from(first + offset));
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
        names.iter().copied().collect()
    }

    #[test]
    fn addresses_stay_with_their_services() {
        let first = allocate(&BTreeMap::new(), &set(&["a", "b"]), DEFAULT_RANGE).expect("room");
        assert!(first.values().all(|ip| DEFAULT_RANGE.contains(*ip)));
        let more = allocate(&first, &set(&["a", "b", "c"]), DEFAULT_RANGE).expect("room");
        assert_eq!((more["a"], more["b"]), (first["a"], first["b"]));
        let fewer = allocate(&more, &set(&["b", "c"]), DEFAULT_RANGE).expect("room");
        assert_eq!(fewer.len(), 2);
        assert_eq!((fewer["b"], fewer["c"]), (more["b"], more["c"]));
        // Back again: its preferred address, which nobody took meanwhile.
        let back = allocate(&fewer, &set(&["a", "b", "c"]), DEFAULT_RANGE).expect("room");
        assert_eq!(back["a"], first["a"]);
    }

    #[test]
    fn collisions_take_the_next_free_address_and_a_full_range_says_so() {
        let tiny: Range = "10.0.0.0/30".parse().expect("range"); // two usable addresses
        let two = allocate(&BTreeMap::new(), &set(&["x", "y"]), tiny).expect("room");
        assert_ne!(two["x"], two["y"]);
        assert!(two.values().all(|ip| tiny.contains(*ip)));
        assert_eq!(allocate(&two, &set(&["x", "y", "z"]), tiny), None);
        // The holder keeps its address whatever the order of arrival.
        let x_first = allocate(&BTreeMap::new(), &set(&["x"]), tiny).expect("room");
        let then_y = allocate(&x_first, &set(&["x", "y"]), tiny).expect("room");
        assert_eq!(then_y["x"], x_first["x"]);
    }

    #[test]
    fn ranges_parse_and_bad_ones_say_what_was_expected() {
        let r: Range = "240.1.2.3/4".parse().expect("range");
        assert_eq!(r.to_string(), "240.0.0.0/4");
        assert!(!r.contains(Ipv4Addr::new(240, 0, 0, 0)));
        assert!(r.contains(Ipv4Addr::new(240, 0, 0, 1)));
        assert!(!r.contains(Ipv4Addr::new(255, 255, 255, 255)));
        assert!("240.0.0.0".parse::<Range>().is_err());
        assert!("240.0.0.0/31".parse::<Range>().unwrap_err().contains("IPv4 CIDR"));
    }
}
