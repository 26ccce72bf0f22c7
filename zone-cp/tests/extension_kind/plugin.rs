//! The plugin half of MeshTestHeader: each outbound HTTP route configuration gets the headers
//! the policies resolve to for its service.

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use meridian_model::Kind;
use meridian_model::resolve::outbound;
use meridian_zone_cp::xds::policies::{Generated, PolicyPlugin, ProxyInput};

use super::mesh_test_header::{KIND, MeshTestHeaderSpec};

pub struct Plugin;

static KINDS: [Kind; 1] = [Kind::Extension(&KIND)];

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &KINDS
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        let policies = input
            .ctx
            .policies
            .extension::<MeshTestHeaderSpec>(Kind::Extension(&KIND));
        for o in &mut generated.outbounds {
            let (Some(route), Some(conf)) = (o.route.as_mut(), outbound(&policies, &input.view, &o.service))
            else {
                continue;
            };
            route.request_headers_to_add = (conf.conf.set.iter())
                .map(|(key, value)| HeaderValueOption {
                    header: Some(HeaderValue {
                        key: key.clone(),
                        value: value.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect();
        }
    }
}
