//! Mesh mTLS in Envoy's terms: the SDS secrets a proxy gets, the TLS contexts of its inbound
//! listeners and outbound clusters, and the RBAC filters that enforce permissions.
//!
//! ```text
//!   SDS (on the ADS stream): identity_cert = the proxy's leaf + key, mesh_ca = the mesh's root
//!   inbound:  TLS, client certificate required and checked against mesh_ca
//!             ──> RBAC (peer SPIFFE id) ──> app        (PERMISSIVE: plaintext also accepted)
//!   outbound: TLS with identity_cert; the server must present spiffe://MESH/SERVICE
//! ```

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{ConfigSource, DataSource};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, ListenerFilter};
use envoy_types::pb::envoy::config::rbac::v3::principal::{Authenticated, Identifier, Set};
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, Rbac, permission, rbac};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext, secret,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use meridian_api::ca::spiffe_id;

use meridian_model::resolve::access::{Access, Who};

/// The SDS name of a proxy's own certificate and key.
pub const IDENTITY_SECRET: &str = "identity_cert";
/// The SDS name of the mesh's root certificate.
pub const CA_SECRET: &str = "mesh_ca";

fn pack<M: prost::Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn inline(text: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineString(text.to_owned())),
        ..Default::default()
    })
}

/// The proxy's certificate chain and key, as an SDS secret.
pub fn identity_secret(cert: &str, key: &str) -> Any {
    pack(&Secret {
        name: IDENTITY_SECRET.into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(cert),
            private_key: inline(key),
            ..Default::default()
        })),
    })
}

/// The mesh's root, as an SDS secret peers are checked against.
pub fn ca_secret(ca_cert: &str) -> Any {
    pack(&Secret {
        name: CA_SECRET.into(),
        r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(ca_cert),
            ..Default::default()
        })),
    })
}

fn sds(name: &str, ads: &ConfigSource) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
        sds_config: Some(ads.clone()),
    }
}

fn socket<M: prost::Message + prost::Name>(context: &M) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(SocketConfig::TypedConfig(pack(context))),
    }
}

/// An inbound's TLS: present our identity, require a certificate signed by the mesh CA.
pub fn inbound_socket(ads: &ConfigSource, params: Option<TlsParameters>) -> TransportSocket {
    socket(&DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: params,
            tls_certificate_sds_secret_configs: vec![sds(IDENTITY_SECRET, ads)],
            validation_context_type: Some(ValidationContextType::ValidationContextSdsSecretConfig(sds(
                CA_SECRET, ads,
            ))),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    })
}

/// An outbound cluster's TLS: present our identity, accept only `service` of `mesh`.
/// TLS to `service`'s identity; the SNI names the service and, for a subset, its tags (what a
/// zone ingress routes on).
pub fn outbound_socket(
    ads: &ConfigSource,
    mesh: &str,
    service: &str,
    tags: &std::collections::BTreeMap<String, String>,
) -> TransportSocket {
    let expected = SubjectAltNameMatcher {
        san_type: SanType::Uri as i32,
        matcher: Some(exact(&spiffe_id(mesh, service))),
        ..Default::default()
    };
    socket(&UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            // Envoy's clients stop at TLS 1.2 unless told; a MeshTLS may ask servers for 1.3.
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
                tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
                ..Default::default()
            }),
            tls_certificate_sds_secret_configs: vec![sds(IDENTITY_SECRET, ads)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: vec![expected],
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(CA_SECRET, ads)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        sni: super::crosszone::sni_tagged(mesh, service, tags),
        ..Default::default()
    })
}

/// Tells TLS from plaintext, so a PERMISSIVE inbound can take both.
pub fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(pack(&TlsInspector::default()))),
        ..Default::default()
    }
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(value.to_owned())),
        ..Default::default()
    }
}

fn principal(id: Identifier) -> Principal {
    Principal { identifier: Some(id) }
}

fn peer(matcher: StringMatcher) -> Principal {
    principal(Identifier::Authenticated(Authenticated {
        principal_name: Some(matcher),
    }))
}

fn any_of(mut ids: Vec<Principal>) -> Principal {
    if ids.len() == 1 {
        ids.remove(0)
    } else {
        principal(Identifier::OrIds(Set { ids }))
    }
}

fn who(mesh: &str, w: &Who) -> Principal {
    match w {
        Who::Anyone => principal(Identifier::Any(true)),
        Who::Service(s) => peer(exact(&spiffe_id(mesh, s))),
        Who::SpiffeExact(id) => peer(exact(id)),
        Who::SpiffePrefix(p) => peer(StringMatcher {
            match_pattern: Some(MatchPattern::Prefix(p.clone())),
            ..Default::default()
        }),
    }
}

/// The RBAC rules for `access`: one ALLOW policy, or none at all (which denies everyone).
fn rules(mesh: &str, access: &Access) -> Rbac {
    let mut policies = HashMap::new();
    if !access.allow.is_empty() {
        let allowed = any_of(access.allow.iter().map(|w| who(mesh, w)).collect());
        let principal = if access.deny.is_empty() {
            allowed
        } else {
            let denied = any_of(access.deny.iter().map(|w| who(mesh, w)).collect());
            principal(Identifier::AndIds(Set {
                ids: vec![allowed, principal(Identifier::NotId(Box::new(denied)))],
            }))
        };
        policies.insert(
            "permitted".to_owned(),
            Policy {
                permissions: vec![Permission {
                    rule: Some(permission::Rule::Any(true)),
                }],
                principals: vec![principal],
                ..Default::default()
            },
        );
    }
    Rbac {
        action: rbac::Action::Allow as i32,
        policies,
        ..Default::default()
    }
}

/// RBAC for an HTTP inbound: a denied request gets 403.
pub fn http_rbac(mesh: &str, access: &Access) -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.rbac".into(),
        config_type: Some(HttpFilterConfig::TypedConfig(pack(&HttpRbac {
            rules: Some(rules(mesh, access)),
            ..Default::default()
        }))),
        ..Default::default()
    }
}

/// RBAC for a TCP inbound: a denied connection is closed.
pub fn network_rbac(mesh: &str, access: &Access, stat_prefix: &str) -> Filter {
    Filter {
        name: "envoy.filters.network.rbac".into(),
        config_type: Some(FilterConfig::TypedConfig(pack(&NetworkRbac {
            rules: Some(rules(mesh, access)),
            stat_prefix: stat_prefix.to_owned(),
            ..Default::default()
        }))),
    }
}
