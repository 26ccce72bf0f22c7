//! MeshTLS on inbounds, with mesh mTLS on: the TLS versions and cipher suites the inbound's
//! mTLS filter chain accepts, and its mode (`Permissive` adds a plaintext chain beside it,
//! `Strict` leaves mTLS alone), where the Mesh's mode is the default. With mTLS off it has
//! nothing to shape.

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsParameters;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use meridian_model::Kind;
use meridian_model::policies::mesh_tls::{TlsConf, TlsMode, TlsVersion};
use meridian_model::resolve::inbound;

use super::{Generated, InboundTls, PolicyPlugin, ProxyInput};
use crate::xds::cache::{LISTENER, Types};

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshTLS]
    }

    fn shapes(&self) -> Types {
        Types::of(&[LISTENER])
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        let policies = &input.ctx.policies.tls;
        if policies.is_empty() || input.tls.is_none() {
            return;
        }
        for i in &mut generated.inbounds {
            if let Some(resolved) = inbound(policies, &input.view, &i.spec) {
                i.tls = Some(inbound_tls(&resolved.conf));
            }
        }
    }
}

fn protocol(v: Option<TlsVersion>) -> i32 {
    let p = match v {
        None | Some(TlsVersion::Auto) => TlsProtocol::TlsAuto,
        Some(TlsVersion::Tls10) => TlsProtocol::TlSv10,
        Some(TlsVersion::Tls11) => TlsProtocol::TlSv11,
        Some(TlsVersion::Tls12) => TlsProtocol::TlSv12,
        Some(TlsVersion::Tls13) => TlsProtocol::TlSv13,
    };
    p as i32
}

fn inbound_tls(conf: &TlsConf) -> InboundTls {
    let range = conf.tls_version.as_ref();
    let params = (conf.tls_version.is_some() || conf.tls_ciphers.is_some()).then(|| TlsParameters {
        tls_minimum_protocol_version: protocol(range.and_then(|r| r.min)),
        tls_maximum_protocol_version: protocol(range.and_then(|r| r.max)),
        cipher_suites: conf.tls_ciphers.clone().unwrap_or_default(),
        ..Default::default()
    });
    InboundTls {
        permissive: conf.mode.map(|m| m == TlsMode::Permissive),
        params,
    }
}
