//! MeshTrafficPermission and TrafficPermission: who may call each inbound, enforced by Envoy
//! RBAC over mTLS (only there is the caller known). The resolution is the model's
//! (`meridian_model::resolve::access`); the filters are built when the inbound is packed.

use crate::xds::cache::{LISTENER, Types};
use meridian_model::Kind;

use super::{Generated, PolicyPlugin, ProxyInput};

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshTrafficPermission, Kind::TrafficPermission]
    }

    fn shapes(&self) -> Types {
        Types::of(&[LISTENER])
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        if input.tls.is_none() {
            return;
        }
        for inbound in &mut generated.inbounds {
            inbound.access = Some(
                input
                    .ctx
                    .policies
                    .permissions(&input.view, &inbound.spec)
                    .access(),
            );
        }
    }
}
