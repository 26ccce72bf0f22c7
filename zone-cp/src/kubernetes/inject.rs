//! The sidecar injector: what the mutating webhook does to a Pod being created.
//!
//! A pod is injected when its own `kuma.io/sidecar-injection` label says so, or, without one,
//! its namespace's label does (`enabled`, `true` or `yes`; `disabled`, `false`, `no` opt out).
//! It gains Kuma's two containers, under Kuma's names so that users' `kubectl logs -c
//! kuma-sidecar` and dashboards keep working:
//! - `kuma-init`, an init container running `meridian-dp install transparent-proxy` as root
//!   with NET_ADMIN and NET_RAW, after the pod's own init containers (`kuma.io/init-first`
//!   puts it first);
//! - `kuma-sidecar`, meridian-dp as uid 5678, first among the containers, or, where the
//!   cluster has native sidecars, an init container that keeps running (`restartPolicy:
//!   Always`) right after `kuma-init`, so it is up before the app and outlives it.
//!
//! The pod annotations Kuma documents tune it: `traffic.kuma.io/exclude-inbound-ports`,
//! `-outbound-ports` and `-outbound-ips`, `kuma.io/builtin-dns` and `-port`,
//! `kuma.io/transparent-proxying-ip-family-mode`, `kuma.io/sidecar-drain-time`,
//! `kuma.io/sidecar-env-vars`, `kuma.io/envoy-admin-port`, `kuma.io/envoy-log-level`,
//! `kuma.io/service-account-token-volume` and `kuma.io/init-first`. A value that does not
//! parse refuses the pod with an error naming the annotation, rather than injecting something
//! the user did not ask for.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    Pod, Probe, ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meridian_model::{DEFAULT_MESH, FieldError, MESH_LABEL};

pub const INJECTION_LABEL: &str = "kuma.io/sidecar-injection";
pub const INJECTED: &str = "kuma.io/sidecar-injected";
pub const SIDECAR: &str = "kuma-sidecar";
pub const INIT: &str = "kuma-init";
pub const TRANSPARENT_PROXYING: &str = "kuma.io/transparent-proxying";
pub const INBOUND_PORT: &str = "kuma.io/transparent-proxying-inbound-port";
pub const OUTBOUND_PORT: &str = "kuma.io/transparent-proxying-outbound-port";
pub const IP_FAMILY_MODE: &str = "kuma.io/transparent-proxying-ip-family-mode";
pub const REACHABLE_SERVICES: &str = "kuma.io/transparent-proxying-reachable-services";
pub const SIDECAR_UID: &str = "kuma.io/sidecar-uid";
pub const ADMIN_PORT: &str = "kuma.io/envoy-admin-port";
pub const BUILTIN_DNS: &str = "kuma.io/builtin-dns";
pub const BUILTIN_DNS_PORT: &str = "kuma.io/builtin-dns-port";
const EXCLUDE_INBOUND_PORTS: &str = "traffic.kuma.io/exclude-inbound-ports";
const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.kuma.io/exclude-outbound-ports";
const EXCLUDE_OUTBOUND_IPS: &str = "traffic.kuma.io/exclude-outbound-ips";
const DRAIN_TIME: &str = "kuma.io/sidecar-drain-time";
const ENV_VARS: &str = "kuma.io/sidecar-env-vars";
const LOG_LEVEL: &str = "kuma.io/envoy-log-level";
const TOKEN_VOLUME: &str = "kuma.io/service-account-token-volume";
const INIT_FIRST: &str = "kuma.io/init-first";

const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const SIDECAR_TMP: &str = "kuma-sidecar-tmp";
const INIT_TMP: &str = "kuma-init-tmp";

/// What the injector puts into pods; the zone-cp's flags fill it.
#[derive(Clone, Debug)]
pub struct InjectorConfig {
    /// Where sidecars reach the zone's dataplane port (`http://meridian-zone.meridian-system:5678`).
    pub cp_address: String,
    /// The image holding `meridian-dp` and Envoy, for both containers.
    pub image: String,
    pub uid: i64,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub dns_port: u16,
    pub admin_port: u16,
    /// Where meridian-dp answers the kubelet's probes (`/ready`).
    pub readiness_port: u16,
    pub drain_time: Duration,
    /// The cluster runs sidecars as restartable init containers (Kubernetes 1.29 and later).
    pub native_sidecars: bool,
    pub builtin_dns: bool,
    pub dualstack: bool,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        Self {
            cp_address: "http://meridian-zone.meridian-system:5678".into(),
            image: format!("meridian/meridian-dp:{}", env!("CARGO_PKG_VERSION")),
            uid: 5678,
            inbound_port: 15006,
            outbound_port: 15001,
            dns_port: 15053,
            admin_port: 9901,
            readiness_port: 9902,
            drain_time: Duration::from_secs(30),
            native_sidecars: true,
            builtin_dns: true,
            dualstack: true,
        }
    }
}

/// Why a pod is refused.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error("mesh {0:?} does not exist: create it before the pods that join it")]
    NoMesh(String),
}

/// `enabled`/`true`/`yes` or `disabled`/`false`/`no`, as Kuma reads its switches.
fn switch(value: &str) -> Option<bool> {
    match value {
        "enabled" | "true" | "yes" => Some(true),
        "disabled" | "false" | "no" => Some(false),
        _ => None,
    }
}

fn label_path(key: &str) -> String {
    format!("metadata.labels[{key:?}]")
}

fn annotation_path(key: &str) -> String {
    format!("metadata.annotations[{key:?}]")
}

/// Whether `pod` (in a namespace labelled `namespace_labels`) is to be injected.
pub fn wanted(pod: &Pod, namespace_labels: &BTreeMap<String, String>) -> Result<bool, InjectError> {
    let already = |cs: Option<&Vec<Container>>| cs.is_some_and(|cs| cs.iter().any(|c| c.name == SIDECAR));
    let spec = pod.spec.as_ref();
    if already(spec.map(|s| &s.containers)) || already(spec.and_then(|s| s.init_containers.as_ref())) {
        return Ok(false);
    }
    let (value, path) = match pod.metadata.labels.as_ref().and_then(|l| l.get(INJECTION_LABEL)) {
        Some(v) => (v, label_path(INJECTION_LABEL)),
        None => match namespace_labels.get(INJECTION_LABEL) {
            Some(v) => (v, format!("namespace's {}", label_path(INJECTION_LABEL))),
            None => return Ok(false),
        },
    };
    switch(value).ok_or_else(|| {
        InjectError::Invalid(vec![FieldError::new(
            path,
            format!("must be enabled or disabled, got {value:?}"),
        )])
    })
}

/// The mesh a pod joins: its `kuma.io/mesh` label or annotation, else its namespace's, else
/// `default`.
pub fn mesh_of(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    namespace_annotations: &BTreeMap<String, String>,
) -> String {
    let m = &pod.metadata;
    [
        m.labels.as_ref(),
        m.annotations.as_ref(),
        Some(namespace_labels),
        Some(namespace_annotations),
    ]
    .into_iter()
    .flatten()
    .find_map(|map| map.get(MESH_LABEL).filter(|v| !v.is_empty()))
    .cloned()
    .unwrap_or_else(|| DEFAULT_MESH.to_owned())
}

/// The pod's annotations, read with the errors of those that do not parse.
struct Annotations<'a> {
    map: &'a BTreeMap<String, String>,
    errors: Vec<FieldError>,
}

impl<'a> Annotations<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.map.get(key).map(String::as_str)
    }

    fn fail(&mut self, key: &str, message: String) {
        self.errors.push(FieldError::new(annotation_path(key), message));
    }

    fn switch(&mut self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(v) => switch(v).unwrap_or_else(|| {
                self.fail(key, format!("must be enabled or disabled, got {v:?}"));
                default
            }),
        }
    }

    fn port(&mut self, key: &str, default: u16) -> u16 {
        match self.get(key) {
            None => default,
            Some(v) => match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    self.fail(key, format!("must be a port (1 to 65535), got {v:?}"));
                    default
                }
            },
        }
    }

    /// A comma-separated list whose items each pass `check`; returned as written, trimmed.
    fn list(&mut self, key: &str, what: &str, check: impl Fn(&str) -> bool) -> Vec<String> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let items: Vec<String> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(bad) = items.iter().find(|i| !check(i)) {
            self.fail(
                key,
                format!("{bad:?} is not {what}; expected a comma-separated list"),
            );
        }
        items
    }
}

fn is_port(s: &str) -> bool {
    s.parse::<u16>().is_ok_and(|p| p > 0)
}

fn is_ip_or_cidr(s: &str) -> bool {
    let (ip, prefix) = s.split_once('/').unwrap_or((s, ""));
    match ip.parse::<std::net::IpAddr>() {
        Ok(addr) if prefix.is_empty() => addr.is_ipv4() || addr.is_ipv6(),
        Ok(addr) => prefix
            .parse::<u8>()
            .is_ok_and(|p| p <= if addr.is_ipv4() { 32 } else { 128 }),
        Err(_) => false,
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: path.into(),
            }),
            ..Default::default()
        }),
    }
}

fn resources(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> ResourceRequirements {
    let map = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                .collect(),
        )
    };
    ResourceRequirements {
        requests: map(requests),
        limits: map(limits),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn probe(port: u16, failure_threshold: i32, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ready".into()),
            port: IntOrString::Int(i32::from(port)),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(5),
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        success_threshold: Some(1),
        ..Default::default()
    }
}

fn tmp_volume(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("10M".into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `pod` as the webhook returns it: unchanged when it is not to be injected, else with the
/// init container, the sidecar, their volumes and Kuma's annotations. `mesh_exists` answers
/// whether the zone knows a mesh.
pub fn inject(
    config: &InjectorConfig,
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    namespace_annotations: &BTreeMap<String, String>,
    mesh_exists: impl Fn(&str) -> bool,
) -> Result<Pod, InjectError> {
    if !wanted(pod, namespace_labels)? {
        return Ok(pod.clone());
    }
    let mesh = mesh_of(pod, namespace_labels, namespace_annotations);
    if !mesh_exists(&mesh) {
        return Err(InjectError::NoMesh(mesh));
    }
    let empty = BTreeMap::new();
    let mut a = Annotations {
        map: pod.metadata.annotations.as_ref().unwrap_or(&empty),
        errors: Vec::new(),
    };
    let spec = pod.spec.clone().unwrap_or_default();
    for (i, c) in spec.containers.iter().enumerate() {
        if c.security_context.as_ref().and_then(|s| s.run_as_user) == Some(config.uid) {
            a.errors.push(FieldError::new(
                format!("spec.containers[{i}].securityContext.runAsUser"),
                format!(
                    "{} is the sidecar's user, whose traffic is never redirected: run {:?} as another user",
                    config.uid, c.name
                ),
            ));
        }
    }
    let exclude_in = a.list(EXCLUDE_INBOUND_PORTS, "a port", is_port);
    let exclude_out = a.list(EXCLUDE_OUTBOUND_PORTS, "a port", is_port);
    let exclude_ips = a.list(EXCLUDE_OUTBOUND_IPS, "an IP address or CIDR", is_ip_or_cidr);
    let dns = a.switch(BUILTIN_DNS, config.builtin_dns);
    let dns_port = a.port(BUILTIN_DNS_PORT, config.dns_port);
    let admin_port = a.port(ADMIN_PORT, config.admin_port);
    let init_first = a.switch(INIT_FIRST, false);
    let dualstack = match a.get(IP_FAMILY_MODE) {
        None => config.dualstack,
        Some("dualstack") => true,
        Some("ipv4") => false,
        Some(v) => {
            a.fail(IP_FAMILY_MODE, format!("must be dualstack or ipv4, got {v:?}"));
            config.dualstack
        }
    };
    let drain_time = match a.get(DRAIN_TIME) {
        None => config.drain_time,
        Some(v) => humantime::parse_duration(v).unwrap_or_else(|_| {
            a.fail(DRAIN_TIME, format!("must be a duration such as 30s, got {v:?}"));
            config.drain_time
        }),
    };
    let mut extra_env = Vec::new();
    if let Some(v) = a.get(ENV_VARS) {
        for pair in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, val)) if !k.is_empty() => extra_env.push(env(k, val)),
                _ => a.fail(
                    ENV_VARS,
                    format!("{pair:?} is not KEY=VALUE; expected KEY=VALUE;KEY=VALUE"),
                ),
            }
        }
    }
    let log_level = a.get(LOG_LEVEL).map(str::to_owned);
    // The token the sidecar shows: the volume the annotation names, else wherever the app's
    // containers have the service account's token mounted.
    let token_mount = match a.get(TOKEN_VOLUME) {
        Some(volume) => {
            let exists = spec
                .volumes
                .as_ref()
                .is_some_and(|vs| vs.iter().any(|v| v.name == volume));
            if !exists {
                a.fail(
                    TOKEN_VOLUME,
                    format!("names {volume:?}, which is not one of the pod's volumes"),
                );
            }
            Some(mount(volume, TOKEN_DIR, true))
        }
        None => spec
            .containers
            .iter()
            .flat_map(|c| c.volume_mounts.iter().flatten())
            .find(|m| m.mount_path == TOKEN_DIR)
            .cloned(),
    };
    if !a.errors.is_empty() {
        return Err(InjectError::Invalid(a.errors));
    }

    let mut init_args = vec![
        "install".to_owned(),
        "transparent-proxy".to_owned(),
        format!("--redirect-inbound-port={}", config.inbound_port),
        format!("--redirect-outbound-port={}", config.outbound_port),
        format!("--dp-user={}", config.uid),
        format!(
            "--ip-family-mode={}",
            if dualstack { "dualstack" } else { "ipv4" }
        ),
    ];
    if dns {
        init_args.push(format!("--redirect-dns-port={dns_port}"));
    } else {
        init_args.push("--redirect-dns=false".into());
    }
    // The sidecar's own ports are never redirected: the kubelet probes them directly.
    let mut inbound_excluded = exclude_in;
    inbound_excluded.push(config.readiness_port.to_string());
    init_args.push(format!("--exclude-inbound-ports={}", inbound_excluded.join(",")));
    if !exclude_out.is_empty() {
        init_args.push(format!("--exclude-outbound-ports={}", exclude_out.join(",")));
    }
    if !exclude_ips.is_empty() {
        init_args.push(format!("--exclude-outbound-ips={}", exclude_ips.join(",")));
    }
    let init = Container {
        name: INIT.into(),
        image: Some(config.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["meridian-dp".into()]),
        args: Some(init_args),
        env: Some(vec![env("XTABLES_LOCKFILE", "/tmp/xtables.lock")]),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        resources: Some(resources(
            &[("cpu", "20m"), ("memory", "20M")],
            &[("cpu", "100m"), ("memory", "50M")],
        )),
        volume_mounts: Some(vec![mount(INIT_TMP, "/tmp", false)]),
        ..Default::default()
    };

    // POD_NAME and POD_NAMESPACE come first: the Dataplane's name refers to them.
    let mut sidecar_env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("INSTANCE_IP", "status.podIP"),
    ];
    let mut settings = vec![
        env("MERIDIAN_ADMIN_PORT", admin_port.to_string()),
        env("MERIDIAN_CP_ADDRESS", config.cp_address.clone()),
        // The controller names the Dataplane `<pod>-<namespace>` (convert::dataplane_name).
        env("MERIDIAN_DATAPLANE_NAME", "$(POD_NAME)-$(POD_NAMESPACE)"),
        env("MERIDIAN_DATAPLANE_REGISTERED", "true"),
        env("MERIDIAN_DATAPLANE_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
        env(
            "MERIDIAN_DNS_PORT",
            if dns { dns_port.to_string() } else { "0".into() },
        ),
        env("MERIDIAN_DRAIN_TIME", drain_time.as_secs().to_string()),
        env("MERIDIAN_MESH", mesh.clone()),
        env("MERIDIAN_READINESS_PORT", config.readiness_port.to_string()),
        env("MERIDIAN_WORK_DIR", "/tmp"),
    ];
    if let Some(level) = log_level {
        settings.push(env("MERIDIAN_ENVOY_LOG_LEVEL", level));
    }
    // The pod's own variables win over the injector's.
    for extra in extra_env {
        settings.retain(|e| e.name != extra.name);
        settings.push(extra);
    }
    settings.sort_by(|x, y| x.name.cmp(&y.name));
    sidecar_env.extend(settings);
    let mut sidecar_mounts: Vec<VolumeMount> = token_mount.into_iter().collect();
    sidecar_mounts.push(mount(SIDECAR_TMP, "/tmp", false));
    let mut sidecar = Container {
        name: SIDECAR.into(),
        image: Some(config.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["meridian-dp".into()]),
        args: Some(vec!["run".into()]),
        env: Some(sidecar_env),
        security_context: Some(SecurityContext {
            run_as_user: Some(config.uid),
            run_as_group: Some(config.uid),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        readiness_probe: Some(probe(config.readiness_port, 12, 1)),
        liveness_probe: Some(probe(config.readiness_port, 12, 60)),
        resources: Some(resources(
            &[("cpu", "50m"), ("memory", "64Mi")],
            &[("cpu", "1000m"), ("memory", "512Mi")],
        )),
        volume_mounts: Some(sidecar_mounts),
        ..Default::default()
    };

    let mut out = pod.clone();
    let mut spec = spec;
    let mut inits = spec.init_containers.take().unwrap_or_default();
    if config.native_sidecars {
        sidecar.restart_policy = Some("Always".into());
        sidecar.startup_probe = Some(probe(config.readiness_port, 60, 1));
        inits.insert(0, sidecar);
        inits.insert(0, init);
    } else {
        if init_first {
            inits.insert(0, init);
        } else {
            inits.push(init);
        }
        spec.containers.insert(0, sidecar);
    }
    spec.init_containers = Some(inits);
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(tmp_volume(INIT_TMP));
    volumes.push(tmp_volume(SIDECAR_TMP));
    out.spec = Some(spec);

    let annotations = out.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in [
        (INJECTED, "true".to_owned()),
        (MESH_LABEL, mesh.clone()),
        (SIDECAR_UID, config.uid.to_string()),
        (TRANSPARENT_PROXYING, "enabled".to_owned()),
        (INBOUND_PORT, config.inbound_port.to_string()),
        (OUTBOUND_PORT, config.outbound_port.to_string()),
        (
            IP_FAMILY_MODE,
            if dualstack { "dualstack" } else { "ipv4" }.to_owned(),
        ),
        (ADMIN_PORT, admin_port.to_string()),
        (BUILTIN_DNS, if dns { "enabled" } else { "disabled" }.to_owned()),
        (BUILTIN_DNS_PORT, dns_port.to_string()),
    ] {
        annotations.insert(k.to_owned(), v);
    }
    out.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MESH_LABEL.to_owned(), mesh);
    Ok(out)
}
