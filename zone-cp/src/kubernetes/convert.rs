//! A Pod with an injected sidecar, and the Services that select it, as the Dataplane the zone
//! stores, with Kuma's tags:
//! - one inbound per Service port whose target the pod serves, tagged with the pod's labels
//!   (but those under `kuma.io/`), `k8s.kuma.io/namespace`, `k8s.kuma.io/service-name`,
//!   `k8s.kuma.io/service-port`, `kuma.io/service: NAME_NAMESPACE_svc_PORT`, `kuma.io/zone`,
//!   and `kuma.io/protocol` from the port's `appProtocol` (when it is one of Kuma's), else
//!   the Service's `<port>.service.kuma.io/protocol` annotation, else `tcp`;
//! - a pod no Service selects gets Kuma's reserved inbound 49151, named after its workload
//!   (`<deployment>_<namespace>_svc`);
//! - an inbound is not ready while its container, or the sidecar, is not, or the pod is
//!   being deleted;
//! - transparent proxying as the injector annotated it.
//!
//! The Dataplane is built in the universal form and read back through the model, so it is
//! validated like one written by hand. A pod that is finished, evicted or has no IP yet has
//! no Dataplane (`Ok(None)`): the controller deletes the one it had.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meridian_model::{Format, Resource, ZONE_LABEL, parse_one};
use serde_json::{Value, json};

use super::inject::{INBOUND_PORT, INJECTED, IP_FAMILY_MODE, OUTBOUND_PORT, REACHABLE_SERVICES, SIDECAR};

/// Kuma's inbound port for a pod that no Service selects.
pub const SERVICELESS_PORT: i32 = 49151;
const IGNORE: &str = "kuma.io/ignore";
const PROTOCOLS: &[&str] = &["tcp", "http", "http2", "grpc", "kafka"];

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("a service selects pod {pod} but none of its ports is one of the pod's containers' ports")]
    NoPort { pod: String },
    #[error("pod {pod}: {source}")]
    Invalid {
        pod: String,
        #[source]
        source: meridian_model::ResourceError,
    },
}

/// The Dataplane's name: `<pod>-<namespace>`, or, where that is longer than a DNS label, its
/// first 54 characters and a hash of the whole (the universal form keeps `.` for a zone's
/// prefix, so Kuma's `<pod>.<namespace>` is not free here).
pub fn dataplane_name(pod: &str, namespace: &str) -> String {
    let full = format!("{pod}-{namespace}");
    if full.len() <= 63 {
        return full;
    }
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{}-{:08x}", full[..54].trim_end_matches('-'), hash as u32)
}

fn selects(service: &Service, labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = service.spec.as_ref() else {
        return false;
    };
    // A Service without a selector would take every pod: Kuma ignores it, and so do we.
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return false;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return false;
    }
    let ignored = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(IGNORE))
        .is_some_and(|v| v == "true");
    !ignored && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The container port a Service port reaches, and the container that has it.
fn target<'a>(port: &ServicePort, containers: &'a [Container]) -> Option<(i32, Option<&'a Container>)> {
    let protocol = |p: Option<&String>| p.map_or("TCP", String::as_str).to_owned();
    if protocol(port.protocol.as_ref()) != "TCP" {
        return None;
    }
    let declared = |want: &dyn Fn(&k8s_openapi::api::core::v1::ContainerPort) -> bool| {
        containers.iter().find_map(|c| {
            c.ports
                .iter()
                .flatten()
                .find(|p| want(p) && protocol(p.protocol.as_ref()) == "TCP")
                .map(|p| (p.container_port, Some(c)))
        })
    };
    match port.target_port.as_ref() {
        Some(IntOrString::String(name)) => declared(&|p| p.name.as_deref() == Some(name.as_str())),
        Some(IntOrString::Int(n)) => declared(&|p| p.container_port == *n).or(Some((*n, None))),
        None => declared(&|p| p.container_port == port.port).or(Some((port.port, None))),
    }
}

fn protocol_of(service: &Service, port: &ServicePort) -> String {
    if let Some(app) = port.app_protocol.as_deref().map(str::to_lowercase)
        && PROTOCOLS.contains(&app.as_str())
    {
        return app;
    }
    service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&format!("{}.service.kuma.io/protocol", port.port)))
        .map_or_else(|| "tcp".to_owned(), |p| p.to_lowercase())
}

fn ready(pod: &Pod, container: Option<&str>) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = pod.status.as_ref() else {
        return true;
    };
    let statuses = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten());
    let mut ok = true;
    for s in statuses {
        let counts = s.name == SIDECAR || container.is_none_or(|c| c == s.name);
        if counts && !s.ready {
            ok = false;
        }
    }
    ok
}

/// The workload a pod without a Service is named after: its Deployment (through its
/// ReplicaSet's `<deployment>-<hash>` name), CronJob, other owner, or itself.
fn workload(pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        return name;
    };
    let from_template = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .and_then(|hash| owner.name.strip_suffix(&format!("-{hash}")));
    match owner.kind.as_str() {
        "ReplicaSet" => from_template.unwrap_or(&owner.name).to_owned(),
        // A CronJob's Job is `<cronjob>-<schedule time>`.
        "Job" => owner
            .name
            .rsplit_once('-')
            .filter(|(_, t)| t.chars().all(|c| c.is_ascii_digit()))
            .map_or(owner.name.clone(), |(c, _)| c.to_owned()),
        _ => owner.name.clone(),
    }
}

/// The Dataplane of `pod` in `mesh` among `services` (those of the pod's namespace), or
/// `None` when the pod should have none.
pub fn dataplane(
    pod: &Pod,
    services: &[Service],
    mesh: &str,
    zone: Option<&str>,
) -> Result<Option<Resource>, ConvertError> {
    let meta = &pod.metadata;
    let empty = BTreeMap::new();
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    if annotations.get(INJECTED).map(String::as_str) != Some("true") {
        return Ok(None);
    }
    let status = pod.status.as_ref();
    let ip = status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty());
    let finished = status.and_then(|s| s.phase.as_deref()) == Some("Succeeded")
        || status.and_then(|s| s.reason.as_deref()) == Some("Evicted");
    let Some(ip) = ip.filter(|_| !finished) else {
        return Ok(None);
    };
    let pod_name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let apps: Vec<Container> = containers.iter().filter(|c| c.name != SIDECAR).cloned().collect();
    let mut base: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, v)| !k.contains("kuma.io/") && !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    base.insert("k8s.kuma.io/namespace".into(), namespace.clone());
    if let Some(zone) = zone {
        base.insert(ZONE_LABEL.into(), zone.to_owned());
    }

    let mut selecting: Vec<&Service> = services.iter().filter(|s| selects(s, labels)).collect();
    selecting.sort_by_key(|s| s.metadata.name.clone());
    let mut inbounds = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for service in &selecting {
        let svc_name = service.metadata.name.clone().unwrap_or_default();
        let spec = service.spec.as_ref();
        let headless = spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None");
        for port in spec.and_then(|s| s.ports.as_ref()).into_iter().flatten() {
            let Some((container_port, container)) = target(port, &apps) else {
                continue;
            };
            // Two Services reaching one container port make one inbound: the first by name.
            if !used.insert(container_port) {
                continue;
            }
            let mut tags = base.clone();
            tags.insert("k8s.kuma.io/service-name".into(), svc_name.clone());
            tags.insert("k8s.kuma.io/service-port".into(), port.port.to_string());
            tags.insert(
                "kuma.io/service".into(),
                format!("{svc_name}_{namespace}_svc_{}", port.port),
            );
            tags.insert("kuma.io/protocol".into(), protocol_of(service, port));
            if headless {
                tags.insert("kuma.io/instance".into(), pod_name.clone());
            }
            inbounds.push(json!({
                "port": container_port,
                "tags": tags,
                "health": {"ready": ready(pod, container.map(|c| c.name.as_str()))},
            }));
        }
    }
    if !selecting.is_empty() && inbounds.is_empty() {
        return Err(ConvertError::NoPort { pod: pod_name });
    }
    if selecting.is_empty() {
        let mut tags: BTreeMap<String, String> = labels
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tags.extend(base);
        tags.insert(
            "kuma.io/service".into(),
            format!("{}_{namespace}_svc", workload(pod)),
        );
        tags.insert("kuma.io/protocol".into(), "tcp".into());
        tags.insert("kuma.io/instance".into(), pod_name.clone());
        tags.remove(meridian_model::MESH_LABEL);
        inbounds.push(json!({"port": SERVICELESS_PORT, "tags": tags, "health": {"ready": ready(pod, None)}}));
    }

    let mut networking = json!({"address": ip, "inbound": inbounds});
    if annotations
        .get(super::inject::TRANSPARENT_PROXYING)
        .map(String::as_str)
        == Some("enabled")
    {
        let port = |key: &str| annotations.get(key).and_then(|p| p.parse::<u32>().ok());
        let mut tp = serde_json::Map::new();
        if let Some(p) = port(INBOUND_PORT) {
            tp.insert("redirectPortInbound".into(), p.into());
        }
        if let Some(p) = port(OUTBOUND_PORT) {
            tp.insert("redirectPortOutbound".into(), p.into());
        }
        if let Some(mode) = annotations.get(IP_FAMILY_MODE) {
            let mode = if mode == "ipv4" { "IPv4" } else { "DualStack" };
            tp.insert("ipFamilyMode".into(), mode.into());
        }
        if let Some(list) = annotations.get(REACHABLE_SERVICES) {
            let services: Vec<Value> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect();
            tp.insert("reachableServices".into(), Value::Array(services));
        }
        networking["transparentProxying"] = Value::Object(tp);
    }
    if let Some(p) = annotations
        .get(super::inject::ADMIN_PORT)
        .and_then(|p| p.parse::<u32>().ok())
    {
        networking["admin"] = json!({"port": p});
    }
    let document = json!({
        "type": "Dataplane",
        "name": dataplane_name(&pod_name, &namespace),
        "mesh": mesh,
        "networking": networking,
    });
    let text = document.to_string();
    let parsed = parse_one(&text, Format::Json).map_err(|source| ConvertError::Invalid {
        pod: format!("{namespace}/{pod_name}"),
        source,
    })?;
    Ok(Some(parsed.resource))
}
