//! `meridian-dp`: the agent beside every workload.
//!
//! ```text
//!   Dataplane file/flags ──validate──> PUT to zone-cp ──> bootstrap.json ──> envoy (child)
//!        SIGTERM: drain listeners, stop Envoy, DELETE the Dataplane        ^ restarted with
//!                                                                           backoff if it dies
//! ```

#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod dns;
mod probe;
pub mod ready;
pub mod transparent_proxy;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use meridian_model::policies::dataplane::SERVICE_TAG;
use meridian_model::{Format, Kind, Resource, Spec, parse_one};
use meridian_telemetry::{LogArgs, init_logging, shutdown_signal};
use tracing::{info, warn};

use bootstrap::{BootstrapParams, CpAddress};

#[derive(Debug, Parser)]
#[command(
    name = "meridian-dp",
    version,
    about = "Runs Envoy beside a workload, configured by Meridian"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register the Dataplane and run its Envoy until SIGTERM.
    Run(Box<RunArgs>),
    /// Set something up on this host.
    #[command(subcommand)]
    Install(Install),
    /// Remove what `install` set up.
    #[command(subcommand)]
    Uninstall(Uninstall),
}

#[derive(Debug, Subcommand)]
pub enum Install {
    /// iptables rules that send the workload's TCP and DNS through its sidecar (as root, in
    /// the workload's network namespace); running it again replaces the rules.
    TransparentProxy(transparent_proxy::TransparentProxyArgs),
}

#[derive(Debug, Subcommand)]
pub enum Uninstall {
    /// Removes every rule and chain `install transparent-proxy` made, and nothing else.
    TransparentProxy {
        #[arg(long, env = "MERIDIAN_IP_FAMILY_MODE", value_enum, default_value_t = transparent_proxy::IpFamilyMode::Dualstack)]
        ip_family_mode: transparent_proxy::IpFamilyMode,
        #[command(flatten)]
        log: LogArgs,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The zone control plane's dataplane port (5678): registration and xDS both go there.
    /// Repeat (or separate by commas) to list every node: an unreachable one is skipped.
    #[arg(
        long = "cp-address",
        env = "MERIDIAN_CP_ADDRESS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:5678"
    )]
    pub cp_addresses: Vec<CpAddress>,
    /// How long to keep trying to register while no control plane answers (or the mesh does
    /// not exist yet) before giving up with an error; `0s` waits for ever.
    #[arg(long, env = "MERIDIAN_REGISTER_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub register_timeout: Duration,
    /// The Dataplane, in either form (universal or Kubernetes YAML); with `--proxy-type
    /// ingress`, the ZoneIngress.
    #[arg(long, env = "MERIDIAN_DATAPLANE_FILE", conflicts_with_all = ["name", "address", "inbound"])]
    pub dataplane_file: Option<PathBuf>,
    /// `sidecar`: Envoy beside a workload; `ingress`: the zone's ingress, through which other
    /// zones reach this zone's services (needs `--dataplane-file` with a ZoneIngress).
    #[arg(long, env = "MERIDIAN_PROXY_TYPE", value_enum, default_value_t = ProxyType::Sidecar)]
    pub proxy_type: ProxyType,
    /// How often each inbound's application is probed (a TCP connect, as Kuma's service
    /// probes; see --probe-http-path); a change is reported to the zone, which takes a
    /// not-ready instance out of every caller's endpoints. `0s` turns probing off.
    #[arg(long, env = "MERIDIAN_PROBE_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub probe_interval: Duration,
    /// Probe HTTP services (`kuma.io/protocol: http`, `http2`, `grpc`) with `GET PATH` instead:
    /// an answer under 500 within 2 s is ready. Pick a path that does no work (a health
    /// endpoint), not one that calls other services.
    #[arg(long, env = "MERIDIAN_PROBE_HTTP_PATH")]
    pub probe_http_path: Option<String>,
    #[command(flatten)]
    pub flags: DataplaneFlags,
    /// Where a transparently proxied workload's DNS is answered (`install transparent-proxy`
    /// redirects port 53 here): `<service>.mesh` from the zone's records, the rest forwarded
    /// to /etc/resolv.conf's servers. Only for Dataplanes with `transparentProxying`; `0` off.
    #[arg(long, env = "MERIDIAN_DNS_PORT", default_value_t = 15053)]
    pub dns_port: u16,
    /// The Dataplane was made by the control plane (on Kubernetes, from this pod): fetch it
    /// by `--name` and `--mesh` instead of registering one, wait for it up to
    /// --register-timeout, and leave it in place on exit (its owner removes it).
    #[arg(long, env = "MERIDIAN_DATAPLANE_REGISTERED", conflicts_with_all = ["dataplane_file", "inbound", "outbound"])]
    pub dataplane_registered: bool,
    /// Serve `GET /ready` on this port on every address (for the kubelet's probes): 200 once
    /// Envoy is LIVE. Unset: not served.
    #[arg(long, env = "MERIDIAN_READINESS_PORT")]
    pub readiness_port: Option<u16>,
    /// The Envoy to run (default: ./.venv/bin/envoy, else envoy on PATH).
    #[arg(long, env = "MERIDIAN_ENVOY_BINARY")]
    pub envoy_binary: Option<PathBuf>,
    /// Envoy's admin port on 127.0.0.1 (default: a free one).
    #[arg(long, env = "MERIDIAN_ADMIN_PORT")]
    pub admin_port: Option<u16>,
    /// The dataplane token (`meshctl generate dataplane-token --mesh M --name N` against the
    /// zone's API): shown on xDS and when registering.
    #[arg(long, env = "MERIDIAN_DATAPLANE_TOKEN_FILE")]
    pub dataplane_token_file: Option<PathBuf>,
    /// Where the bootstrap is written (default: a temporary directory).
    #[arg(long, env = "MERIDIAN_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Seconds Envoy drains its listeners on shutdown.
    #[arg(long, env = "MERIDIAN_DRAIN_TIME", default_value_t = 5)]
    pub drain_time: u64,
    #[arg(long, env = "MERIDIAN_ENVOY_LOG_LEVEL", default_value = "warning")]
    pub envoy_log_level: String,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyType {
    Sidecar,
    Ingress,
}

use meridian_model::policies::zone_ingress::INGRESS_NODE_MESH as INGRESS_MESH;

/// The Dataplane by flags, for when there is no file.
#[derive(Debug, Args)]
pub struct DataplaneFlags {
    #[arg(long, env = "MERIDIAN_DATAPLANE_NAME")]
    pub name: Option<String>,
    #[arg(long, env = "MERIDIAN_MESH", default_value = "default")]
    pub mesh: String,
    /// The address other proxies reach this one on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: Option<String>,
    /// `PORT:SERVICE_PORT:SERVICE[:PROTOCOL]`, e.g. `10001:8080:reg-server:http` (repeatable).
    #[arg(long)]
    pub inbound: Vec<String>,
    /// `PORT:SERVICE`, e.g. `20001:reg-server` (repeatable).
    #[arg(long)]
    pub outbound: Vec<String>,
}

impl DataplaneFlags {
    /// The same Dataplane as YAML in the universal form, validated like any other.
    fn to_yaml(&self) -> anyhow::Result<String> {
        let Some(name) = &self.name else {
            bail!("give --dataplane-file FILE, or the Dataplane by flags (--name, --inbound ...)");
        };
        let mut yaml = format!(
            "type: Dataplane\nname: {name}\nmesh: {}\nnetworking:\n  address: {}\n  inbound:\n",
            self.mesh,
            self.address.as_deref().unwrap_or("127.0.0.1")
        );
        for spec in &self.inbound {
            let parts: Vec<&str> = spec.split(':').collect();
            let (port, service_port, service, protocol) = match parts.as_slice() {
                [p, sp, s] => (*p, *sp, *s, None),
                [p, sp, s, proto] => (*p, *sp, *s, Some(*proto)),
                _ => bail!("--inbound {spec:?} must be PORT:SERVICE_PORT:SERVICE[:PROTOCOL]"),
            };
            yaml.push_str(&format!(
                "  - port: {port}\n    servicePort: {service_port}\n    tags:\n      {SERVICE_TAG}: {service}\n"
            ));
            if let Some(p) = protocol {
                yaml.push_str(&format!("      kuma.io/protocol: {p}\n"));
            }
        }
        if !self.outbound.is_empty() {
            yaml.push_str("  outbound:\n");
            for spec in &self.outbound {
                let Some((port, service)) = spec.split_once(':') else {
                    bail!("--outbound {spec:?} must be PORT:SERVICE");
                };
                yaml.push_str(&format!(
                    "  - port: {port}\n    tags:\n      {SERVICE_TAG}: {service}\n"
                ));
            }
        }
        Ok(yaml)
    }
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => run(*args).await,
            Command::Install(Install::TransparentProxy(args)) => {
                init_logging(meridian_telemetry::LogFormat::Text);
                transparent_proxy::install(&args)
            }
            Command::Uninstall(Uninstall::TransparentProxy { ip_family_mode, log }) => {
                init_logging(log.log_format);
                transparent_proxy::uninstall(ip_family_mode)
            }
        }
    }
}

/// Reads and validates the Dataplane (or, for an ingress, the ZoneIngress); every problem is
/// reported with its field.
pub fn load_proxy(
    file: Option<&Path>,
    flags: &DataplaneFlags,
    proxy_type: ProxyType,
) -> anyhow::Result<Resource> {
    if proxy_type == ProxyType::Sidecar {
        return load_dataplane(file, flags);
    }
    let Some(path) = file else {
        bail!("--proxy-type ingress needs --dataplane-file FILE holding a ZoneIngress");
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let submission = parse_one(&text, Format::Yaml).map_err(|e| {
        let causes: Vec<String> = e.causes().iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "the ZoneIngress in {} is invalid:\n  {}",
            path.display(),
            causes.join("\n  ")
        )
    })?;
    if submission.resource.kind() != Kind::ZoneIngress {
        bail!(
            "{} holds a {}, not a ZoneIngress (--proxy-type ingress)",
            path.display(),
            submission.resource.kind()
        );
    }
    Ok(submission.resource)
}

/// Reads and validates the Dataplane; every problem is reported with its field.
pub fn load_dataplane(file: Option<&Path>, flags: &DataplaneFlags) -> anyhow::Result<Resource> {
    let (text, origin) = match file {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (flags.to_yaml()?, "the flags".to_owned()),
    };
    let submission = parse_one(&text, Format::Yaml).map_err(|e| {
        let causes: Vec<String> = e.causes().iter().map(ToString::to_string).collect();
        anyhow::anyhow!("the Dataplane in {origin} is invalid:\n  {}", causes.join("\n  "))
    })?;
    let resource = submission.resource;
    if resource.kind() != Kind::Dataplane {
        bail!("{origin} holds a {}, not a Dataplane", resource.kind());
    }
    Ok(resource)
}

fn envoy_binary(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| Some(PathBuf::from(".venv/bin/envoy")).filter(|p| p.exists()))
        .unwrap_or_else(|| PathBuf::from("envoy"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Why a registration ended without success.
#[derive(Debug)]
enum RegisterError {
    Refused {
        status: reqwest::StatusCode,
        body: String,
    },
    NoAddress,
}

impl RegisterError {
    fn into_anyhow(self) -> anyhow::Error {
        match self {
            Self::Refused { status, body } if status == reqwest::StatusCode::UNAUTHORIZED => anyhow::anyhow!(
                "the control plane refused the dataplane token ({status}): {body}; \
                 give a valid one with --dataplane-token-file \
                 (meshctl generate dataplane-token --mesh M --name N)"
            ),
            Self::Refused { status, body } if status == reqwest::StatusCode::FORBIDDEN => {
                anyhow::anyhow!("the dataplane token does not allow this Dataplane ({status}): {body}")
            }
            Self::Refused { status, body } => {
                anyhow::anyhow!("the control plane refused the Dataplane ({status}): {body}")
            }
            Self::NoAddress => anyhow::anyhow!("no control-plane address to register with"),
        }
    }
}

/// An error with its causes, as one line (reqwest's own message hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[derive(Clone)]
struct Registration {
    http: reqwest::Client,
    /// The Dataplane's URL on each control-plane node.
    urls: Vec<String>,
    /// This process registered the Dataplane, and so removes it.
    owned: bool,
}

impl Registration {
    fn new(control_planes: &[CpAddress], resource: &Resource, token: Option<&str>) -> anyhow::Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the dataplane token is not valid header text")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .default_headers(headers)
            .build()?;
        let urls = control_planes
            .iter()
            .map(|cp| {
                let base = cp.http_base();
                match resource.kind() {
                    Kind::ZoneIngress => format!("{base}/zoneingresses/{}", resource.name),
                    _ => format!("{base}/meshes/{}/dataplanes/{}", resource.mesh, resource.name),
                }
            })
            .collect();
        Ok(Self {
            http,
            urls,
            owned: true,
        })
    }

    /// Registers, retrying (on the next node) while no control plane answers or the mesh does
    /// not exist yet, for at most `timeout` (zero: for ever); a refusal is final at once.
    async fn register_within(&self, resource: &Resource, timeout: Duration) -> anyhow::Result<()> {
        if timeout.is_zero() {
            return self.register(resource).await;
        }
        let last = std::sync::Mutex::new(None);
        match tokio::time::timeout(timeout, self.register_noting(resource, &last)).await {
            Ok(r) => r.map_err(RegisterError::into_anyhow),
            Err(_) => {
                let why = last.lock().map(|l| l.clone()).unwrap_or_default();
                bail!(
                    "could not register with the control plane at {} within {} ({}); \
                     check --cp-address (the zone control plane's dataplane port, 5678), \
                     or pass --register-timeout 0s to wait for ever",
                    self.urls.join(", "),
                    humantime::format_duration(timeout),
                    why.unwrap_or_else(|| "no answer".to_owned())
                )
            }
        }
    }

    async fn register(&self, resource: &Resource) -> anyhow::Result<()> {
        self.register_noting(resource, &std::sync::Mutex::new(None))
            .await
            .map_err(RegisterError::into_anyhow)
    }

    async fn register_noting(
        &self,
        resource: &Resource,
        last: &std::sync::Mutex<Option<String>>,
    ) -> Result<(), RegisterError> {
        let note = |why: String| {
            if let Ok(mut l) = last.lock() {
                *l = Some(why);
            }
        };
        let mut delay = Duration::from_millis(200);
        for url in self.urls.iter().cycle() {
            match self.http.put(url).json(&resource.to_universal()).send().await {
                Ok(r) if r.status().is_success() => {
                    info!(url = %url, "dataplane registered");
                    return Ok(());
                }
                // A federated zone may not have the mesh from global yet.
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                    warn!(url = %url, "the mesh does not exist (yet); retrying");
                    note(format!("{url}: mesh {:?} not found", resource.mesh));
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    return Err(RegisterError::Refused { status, body });
                }
                Ok(r) => {
                    warn!(status = %r.status(), "registration failed; retrying");
                    note(format!("{url} answered {}", r.status()));
                }
                Err(e) => {
                    warn!(url = %url, error = %e, "control plane unreachable; retrying");
                    note(format!("{url} unreachable: {}", error_chain(&e)));
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        Err(RegisterError::NoAddress)
    }

    /// The Dataplane its owner made, retried (on the next node) until it exists, for at most
    /// `timeout` (zero: for ever).
    async fn fetch_within(&self, timeout: Duration) -> anyhow::Result<Resource> {
        let fetch = async {
            let mut delay = Duration::from_millis(200);
            for url in self.urls.iter().cycle() {
                match self.http.get(url).send().await {
                    Ok(r) if r.status().is_success() => {
                        let body = r.text().await.unwrap_or_default();
                        let submission = parse_one(&body, Format::Json).map_err(|e| {
                            anyhow::anyhow!("{url} answered a Dataplane that does not parse: {e}")
                        })?;
                        info!(url = %url, "dataplane found");
                        return Ok(submission.resource);
                    }
                    Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                        info!(url = %url, "the dataplane is not made yet; waiting");
                    }
                    Ok(r) if r.status().is_client_error() => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        return Err(RegisterError::Refused { status, body }.into_anyhow());
                    }
                    Ok(r) => {
                        warn!(url = %url, status = %r.status(), "fetching the dataplane failed; retrying")
                    }
                    Err(e) => warn!(url = %url, error = %e, "control plane unreachable; retrying"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(RegisterError::NoAddress.into_anyhow())
        };
        if timeout.is_zero() {
            return fetch.await;
        }
        tokio::time::timeout(timeout, fetch).await.unwrap_or_else(|_| {
            bail!(
                "the control plane at {} made no Dataplane for this proxy within {}; \
                 check that its pod was injected and its mesh exists",
                self.urls.join(", "),
                humantime::format_duration(timeout)
            )
        })
    }

    /// Deregisters through the first node that answers (only a Dataplane this process made).
    async fn deregister(&self) {
        if !self.owned {
            return;
        }
        for url in &self.urls {
            match self.http.delete(url).send().await {
                Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND => {
                    info!("dataplane deregistered");
                    return;
                }
                Ok(r) => warn!(url = %url, status = %r.status(), "deregistration failed"),
                Err(e) => warn!(url = %url, error = %e, "deregistration failed"),
            }
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        cp_addresses,
        register_timeout,
        dataplane_file,
        proxy_type,
        probe_interval,
        probe_http_path,
        flags,
        dns_port,
        dataplane_registered,
        readiness_port,
        envoy_binary: given_envoy,
        admin_port,
        dataplane_token_file,
        work_dir,
        drain_time,
        envoy_log_level,
        log,
    } = args;
    init_logging(log.log_format);
    let token = dataplane_token_file
        .map(|file| {
            std::fs::read_to_string(&file)
                .map(|t| t.trim().to_owned())
                .with_context(|| format!("reading --dataplane-token-file {}", file.display()))
        })
        .transpose()?;
    let resource = if dataplane_registered {
        let Some(name) = flags.name.as_deref() else {
            bail!("--dataplane-registered needs --name (the Dataplane the control plane made)");
        };
        let placeholder = load_dataplane(
            None,
            &DataplaneFlags {
                name: Some(name.to_owned()),
                mesh: flags.mesh.clone(),
                address: None,
                inbound: Vec::new(),
                outbound: Vec::new(),
            },
        )?;
        let lookup = Registration::new(&cp_addresses, &placeholder, token.as_deref())?;
        tokio::select! {
            r = lookup.fetch_within(register_timeout) => r?,
            _ = shutdown_signal() => return Ok(()),
        }
    } else {
        load_proxy(dataplane_file.as_deref(), &flags, proxy_type)?
    };
    let (mesh, service) = match &resource.spec {
        Spec::Dataplane(dp) => (
            resource.mesh.clone(),
            dp.networking
                .inbound
                .iter()
                .flatten()
                .find_map(|i| i.tags.get(SERVICE_TAG).cloned())
                .unwrap_or_else(|| resource.name.clone()),
        ),
        _ => (INGRESS_MESH.to_owned(), resource.name.clone()),
    };
    let admin_port = match admin_port {
        Some(p) => p,
        None => free_port()?,
    };
    // A work dir we made is ours to remove on the way out.
    let (work_dir, made_work_dir) = match work_dir {
        Some(dir) => (dir, false),
        None => (
            std::env::temp_dir().join(format!("meridian-dp-{}", std::process::id())),
            true,
        ),
    };
    // The bootstrap carries the dataplane token.
    meridian_telemetry::private_dir(&work_dir)?;
    let bootstrap_path = work_dir.join(format!("bootstrap-{mesh}-{}.json", resource.name));
    let bootstrap = bootstrap::bootstrap(&BootstrapParams {
        mesh: &mesh,
        name: &resource.name,
        service: &service,
        control_planes: &cp_addresses,
        admin_port,
        token: token.as_deref(),
    });
    std::fs::write(&bootstrap_path, serde_json::to_vec_pretty(&bootstrap)?)?;

    let mut registration = Registration::new(&cp_addresses, &resource, token.as_deref())?;
    if dataplane_registered {
        // Its owner reports readiness (from the pod) and removes it.
        registration.owned = false;
    } else {
        tokio::select! {
            r = registration.register_within(&resource, register_timeout) => r?,
            _ = shutdown_signal() => return Ok(()),
        }
    }
    let readiness = readiness_port.map(|port| {
        tokio::spawn(async move {
            let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
            if let Err(e) = ready::serve(addr, admin_port).await {
                tracing::error!(%addr, error = %e, "the readiness port could not be served");
            }
        })
    });
    let probing =
        (!probe_interval.is_zero() && proxy_type == ProxyType::Sidecar && registration.owned).then(|| {
            tokio::spawn(probe::run(
                resource.clone(),
                registration.clone(),
                probe_interval,
                probe_http_path.clone(),
            ))
        });
    let transparent =
        matches!(&resource.spec, Spec::Dataplane(dp) if dp.networking.transparent_proxying.is_some());
    let dns = (transparent && dns_port != 0).then(|| {
        let (records_tx, records) = tokio::sync::watch::channel(Default::default());
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let upstreams = dns::upstreams(&resolv);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], dns_port));
        (
            tokio::spawn(dns::follow_records(admin_port, records_tx)),
            tokio::spawn(async move {
                if let Err(e) = dns::serve(addr, records, upstreams).await {
                    tracing::error!(%addr, error = %e, "mesh DNS could not start");
                }
            }),
        )
    });
    let envoy = envoy_binary(given_envoy);
    info!(envoy = %envoy.display(), admin_port, bootstrap = %bootstrap_path.display(), "starting envoy");
    let result = supervise(
        &envoy,
        &bootstrap_path,
        admin_port,
        drain_time,
        &envoy_log_level,
        &registration,
        probing.as_ref().map(|p| p.abort_handle()).as_ref(),
    )
    .await;
    if let Some(p) = probing {
        p.abort();
    }
    if let Some(r) = readiness {
        r.abort();
    }
    if let Some((follow, serve)) = dns {
        follow.abort();
        serve.abort();
    }
    if result.is_err() {
        registration.deregister().await;
    }
    if made_work_dir {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    result
}

/// Runs Envoy, restarting it with backoff when it dies, until a shutdown signal; then
/// deregisters (so callers stop choosing this endpoint) and drains.
async fn supervise(
    envoy: &Path,
    bootstrap: &Path,
    admin_port: u16,
    drain_time: u64,
    log_level: &str,
    registration: &Registration,
    probing: Option<&tokio::task::AbortHandle>,
) -> anyhow::Result<()> {
    // Readiness reports stop before deregistering: a late one would register it again.
    let deregister = || async {
        if let Some(p) = probing {
            p.abort();
        }
        registration.deregister().await;
    };
    let mut backoff = Duration::from_secs(1);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let started = Instant::now();
        let mut child = tokio::process::Command::new(envoy)
            .arg("-c")
            .arg(bootstrap)
            .args(["--disable-hot-restart", "--log-level", log_level])
            .args([
                "--drain-time-s",
                &drain_time.to_string(),
                "--drain-strategy",
                "immediate",
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (install it with `cargo xtask setup`, or pass --envoy-binary)",
                    envoy.display()
                )
            })?;
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                warn!(%status, restart_in = ?backoff, "envoy exited; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut shutdown => {
                        deregister().await;
                        return Ok(());
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            _ = &mut shutdown => {
                deregister().await;
                drain(&mut child, admin_port, drain_time).await;
                return Ok(());
            }
        }
    }
}

/// Stops accepting connections, lets in-flight ones finish for up to `drain_time`, then stops.
async fn drain(child: &mut tokio::process::Child, admin_port: u16, drain_time: u64) {
    let admin = format!("http://127.0.0.1:{admin_port}");
    let http = reqwest::Client::new();
    info!(drain_time, "draining envoy");
    let _ = http
        .post(format!("{admin}/drain_listeners?graceful"))
        .send()
        .await;
    let deadline = Instant::now() + Duration::from_secs(drain_time);
    while Instant::now() < deadline {
        let active = http
            // Listeners on an address end in `_PORT`; the admin listener does not count.
            .get(format!(
                "{admin}/stats?filter=^listener\\..*_[0-9]+\\.downstream_cx_active$&format=json"
            ))
            .send()
            .await
            .ok();
        let idle = match active {
            Some(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["stats"].as_array().cloned())
                .is_some_and(|stats| stats.iter().all(|s| s["value"].as_u64().unwrap_or(0) == 0)),
            None => true,
        };
        if idle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = http.post(format!("{admin}/quitquitquit")).send().await;
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    info!("envoy stopped");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn flags(inbound: &[&str], outbound: &[&str]) -> DataplaneFlags {
        DataplaneFlags {
            name: Some("demo-1".into()),
            mesh: "default".into(),
            address: Some("127.0.0.1".into()),
            inbound: inbound.iter().map(|s| s.to_string()).collect(),
            outbound: outbound.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn flags_make_the_same_dataplane_as_a_file() {
        let r =
            load_dataplane(None, &flags(&["10001:8080:demo:http"], &["20001:reg-server"])).expect("valid");
        let Spec::Dataplane(dp) = r.spec else {
            panic!("not a dataplane")
        };
        let inbound = &dp.networking.inbound.expect("inbound")[0];
        assert_eq!((inbound.port, inbound.service_port), (10001, Some(8080)));
        assert_eq!(
            dp.networking.outbound.expect("outbound")[0].service(),
            Some("reg-server")
        );
    }

    #[test]
    fn bad_dataplanes_name_the_field() {
        let err = load_dataplane(None, &flags(&["70000:8080:demo"], &[])).expect_err("port out of range");
        assert!(err.to_string().contains("networking.inbound[0].port"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("dp.yaml");
        std::fs::write(&file, "type: Dataplane\nname: x\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 1000\n    tags: {version: v1}\n").expect("write");
        let err = load_dataplane(Some(&file), &flags(&[], &[])).expect_err("no service tag");
        assert!(
            err.to_string()
                .contains("networking.inbound[0].tags.kuma.io/service"),
            "{err}"
        );
    }
}
