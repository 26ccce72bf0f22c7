//! `meshctl`: apply, read and delete Meridian resources through the REST API.
//!
//! Exit codes: 0 ok, 1 the server (or the input) refused, 2 usage.

#![forbid(unsafe_code)]

mod client;
mod inspect;
mod output;
mod resources;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use meridian_model::{DEFAULT_MESH, Kind};

use client::{Client, Failure};
use inspect::{Inspected, inspect};
use resources::{apply, delete, get};

#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    about = "The command line of the Meridian service mesh"
)]
pub struct Cli {
    /// URL of the control plane's REST API.
    #[arg(
        long,
        global = true,
        env = "MESHCTL_API_URL",
        default_value = "http://127.0.0.1:5681"
    )]
    pub api_url: String,
    /// The API token (`Authorization: Bearer`). Default: $MESHCTL_TOKEN, else the file
    /// ~/.config/meshctl/token, else none (the control plane's own host may be trusted).
    #[arg(long, global = true, env = "MESHCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// The token from ~/.config/meshctl/token (or $XDG_CONFIG_HOME/meshctl/token), if any.
fn token_from_config() -> Option<String> {
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    let token = std::fs::read_to_string(dir.join("meshctl").join("token")).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update resources from a file (`-` for standard input). Every document is
    /// validated before any is written.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: String,
    },
    /// Print what a file's resources come to in today's kinds: Kuma's older policies
    /// (TrafficRoute, Timeout, Retry, CircuitBreaker, HealthCheck, FaultInjection, RateLimit)
    /// as their targetRef equivalents, everything else as it is. Nothing is written.
    Convert {
        #[arg(short = 'f', long = "file")]
        file: String,
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Yaml)]
        output: OutputFormat,
    },
    /// Show one resource, or list a kind.
    Get {
        /// The kind: MeshTrace, meshtrace or meshtraces all work.
        kind: String,
        name: Option<String>,
        #[arg(short = 'm', long, default_value = DEFAULT_MESH)]
        mesh: String,
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Ask why. `inspect dataplane NAME`: what the control plane generated for a proxy and how
    /// the proxy took it (`--rules`: the policies' resolved rules and where each came from;
    /// `--endpoints`: each cluster's endpoints). `inspect KIND NAME` (a policy): the
    /// Dataplanes it selects. `inspect traffic --from A --to B`: may service A call service
    /// B, and which policy decides.
    Inspect {
        /// `dataplane`, a policy kind (meshtimeout, MeshTrafficPermission, ...), or `traffic`.
        kind: String,
        /// The Dataplane or policy (not for `traffic`).
        #[arg(required_unless_present_all = ["from", "to"])]
        name: Option<String>,
        #[arg(short = 'm', long, default_value = DEFAULT_MESH)]
        mesh: String,
        /// `table` shows the state and resource names; `yaml`/`json` include every resource's config.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        /// Show each cluster's endpoints instead: address, zone, priority, weight, health.
        #[arg(long, conflicts_with = "rules")]
        endpoints: bool,
        /// Show the resolved policy rules instead (Kuma's `_rules`).
        #[arg(long)]
        rules: bool,
        /// For `traffic`: the calling service (kuma.io/service).
        #[arg(long, requires = "to")]
        from: Option<String>,
        /// For `traffic`: the called service.
        #[arg(long, requires = "from")]
        to: Option<String>,
    },
    /// Generate a credential.
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
    /// The zone control plane's Raft cluster (against a zone's API).
    Zone {
        #[command(subcommand)]
        what: Zone,
    },
    /// Revoke a token: from now on (within a second, on every replica) it is refused.
    Revoke {
        #[command(subcommand)]
        what: Revoke,
    },
    /// The keys that sign this control plane's tokens; `rotate` makes a new one sign.
    SigningKeys {
        #[command(subcommand)]
        change: Option<KeyChange>,
    },
    /// Delete a resource.
    Delete {
        kind: String,
        name: String,
        #[arg(short = 'm', long, default_value = DEFAULT_MESH)]
        mesh: String,
        /// For a mesh: also delete everything in it.
        #[arg(long)]
        cascade: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Zone {
    /// The zone's Raft members, as the node asked sees them.
    Members {
        #[command(subcommand)]
        change: Option<MemberChange>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Revoke {
    /// A token issued by the control plane asked (user, dataplane, zone ingress or zone token).
    Token {
        /// The token itself (`-`: read it from standard input).
        #[arg(id = "revoked", value_name = "TOKEN", required_unless_present_any = ["file", "id"], conflicts_with_all = ["file", "id"])]
        revoked: Option<String>,
        /// Read the token from this file (a sidecar's --dataplane-token-file, say).
        #[arg(long, conflicts_with = "id")]
        file: Option<PathBuf>,
        /// The token's id, as the control plane logged it when it issued it.
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyChange {
    /// Make a new key sign KIND's tokens; tokens the old one signed stay good until they expire.
    Rotate {
        /// user, dataplane, zone-ingress or zone.
        #[arg(long)]
        kind: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberChange {
    /// Add a node (started with --node-id ID --raft-addr ADDRESS) as a voting member.
    Add {
        #[arg(long)]
        id: u64,
        /// The new node's Raft address, HOST:PORT.
        #[arg(long)]
        address: String,
    },
    /// Remove a node from the cluster.
    Remove {
        #[arg(long)]
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum Generate {
    /// A token for one Dataplane's sidecar (run against the zone's API):
    /// `meridian-dp run --dataplane-token-file FILE`.
    DataplaneToken {
        #[arg(short = 'm', long, default_value = DEFAULT_MESH)]
        mesh: String,
        #[arg(long)]
        name: String,
        /// A tag the Dataplane may claim, with the values it may have: `kuma.io/service=web`
        /// (or `=web,web-v2`); repeatable. A registration claiming other values is refused.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, Vec<String>)>,
        /// How long the token is good for (e.g. 720h); a year by default.
        #[arg(long)]
        valid_for: Option<String>,
    },
    /// A token for a zone ingress (run against the zone's API):
    /// `meridian-dp run --proxy-type ingress --dataplane-token-file FILE`.
    ZoneIngressToken {
        #[arg(long)]
        name: String,
        /// How long the token is good for (e.g. 720h); a year by default.
        #[arg(long)]
        valid_for: Option<String>,
    },
    /// A token for a person or a script; `--group mesh-system:admin` may change resources,
    /// other users may only read.
    UserToken {
        #[arg(long)]
        name: String,
        #[arg(long = "group")]
        groups: Vec<String>,
        /// How long the token is good for (e.g. 24h, the default).
        #[arg(long)]
        valid_for: Option<String>,
    },
    /// A token that lets a zone control plane sync from global as zone NAME.
    ZoneToken {
        #[arg(long)]
        zone: String,
        /// How long the token is good for (e.g. 720h, 30d); global's default is a year.
        #[arg(long)]
        valid_for: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Yaml,
    Json,
}

impl Cli {
    pub async fn run(self) -> ExitCode {
        let Cli {
            api_url,
            token,
            command,
        } = self;
        let token = token.map(|t| t.trim().to_owned()).or_else(token_from_config);
        // With OTEL_EXPORTER_OTLP_ENDPOINT set, the command is a trace of its own, which the
        // control planes continue.
        meridian_otlp::exporter::init("meshctl");
        let mut span = meridian_otlp::exporter::Span::start(
            format!("meshctl {}", command.name()),
            None,
            meridian_otlp::exporter::CLIENT,
        );
        let trace = span.is_live().then(|| span.context().traceparent());
        let client = match Client::traced(&api_url, token.as_deref(), trace.as_deref()) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        let result = match command {
            Command::Apply { file } => apply(&client, &file).await,
            Command::Convert { file, output } => resources::convert(&file, output),
            Command::Get {
                kind,
                name,
                mesh,
                output,
            } => get(&client, &kind, name.as_deref(), &mesh, output).await,
            Command::Delete {
                kind,
                name,
                mesh,
                cascade,
            } => delete(&client, &kind, &name, &mesh, cascade).await,
            Command::Generate {
                what: Generate::ZoneIngressToken { name, valid_for },
            } => client
                .post_text(
                    "/tokens/zone-ingress",
                    &serde_json::json!({ "name": name, "validFor": valid_for }),
                )
                .await
                .map(|t| println!("{}", t.trim())),
            Command::Generate {
                what:
                    Generate::DataplaneToken {
                        mesh,
                        name,
                        tags,
                        valid_for,
                    },
            } => {
                let mut allowed = std::collections::BTreeMap::<String, Vec<String>>::new();
                for (key, values) in tags {
                    allowed.entry(key).or_default().extend(values);
                }
                client
                    .post_text(
                        "/tokens/dataplane",
                        &serde_json::json!({ "mesh": mesh, "name": name, "tags": allowed, "validFor": valid_for }),
                    )
                    .await
                    .map(|t| println!("{}", t.trim()))
            }
            Command::Revoke {
                what: Revoke::Token { revoked, file, id },
            } => revoke(&client, revoked, file, id).await,
            Command::SigningKeys { change } => {
                let listed = match change {
                    None => Ok(()),
                    Some(KeyChange::Rotate { kind }) => client
                        .post("/tokens/signing-keys", &serde_json::json!({ "kind": kind }))
                        .await
                        .map(|r| {
                            println!(
                                "{} tokens are now signed by key {}",
                                r["kind"].as_str().unwrap_or(""),
                                r["serial"]
                            )
                        }),
                };
                match listed {
                    Ok(()) => client.get("/tokens/signing-keys").await.map(|k| print_keys(&k)),
                    Err(e) => Err(e),
                }
            }
            Command::Generate {
                what:
                    Generate::UserToken {
                        name,
                        groups,
                        valid_for,
                    },
            } => client
                .post_text(
                    "/tokens/user",
                    &serde_json::json!({ "name": name, "groups": groups, "validFor": valid_for }),
                )
                .await
                .map(|t| println!("{}", t.trim())),
            Command::Generate {
                what: Generate::ZoneToken { zone, valid_for },
            } => client
                .post_text(
                    "/tokens/zone",
                    &serde_json::json!({ "zone": zone, "validFor": valid_for }),
                )
                .await
                .map(|t| println!("{}", t.trim())),
            Command::Zone {
                what: Zone::Members { change },
            } => {
                let status = match change {
                    None => client.get("/raft").await,
                    Some(MemberChange::Add { id, address }) => {
                        client
                            .post(
                                "/raft/members",
                                &serde_json::json!({ "id": id, "address": address }),
                            )
                            .await
                    }
                    Some(MemberChange::Remove { id }) => client.delete(&format!("/raft/members/{id}")).await,
                };
                status.map(|s| print_members(&s))
            }
            Command::Inspect {
                kind,
                name,
                mesh,
                output,
                endpoints,
                rules,
                from,
                to,
            } => {
                let what = match (kind.as_str(), name, from, to) {
                    ("traffic", None, Some(from), Some(to)) => Inspected::Traffic { from, to },
                    ("traffic", ..) => {
                        return fail(Failure::Usage(
                            "inspect traffic takes --from SERVICE --to SERVICE, and no name".into(),
                        ));
                    }
                    (_, Some(name), None, None) => Inspected::Resource { kind, name },
                    _ => {
                        return fail(Failure::Usage(
                            "--from and --to are for `inspect traffic`; other kinds take a NAME".into(),
                        ));
                    }
                };
                inspect(&client, what, &mesh, output, endpoints, rules).await
            }
        };
        span.set("ok", result.is_ok());
        drop(span);
        meridian_otlp::exporter::flush(std::time::Duration::from_secs(2)).await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        }
    }
}

impl Command {
    /// The subcommand's name, for its span.
    fn name(&self) -> &'static str {
        match self {
            Command::Apply { .. } => "apply",
            Command::Convert { .. } => "convert",
            Command::Get { .. } => "get",
            Command::Delete { .. } => "delete",
            Command::Inspect { .. } => "inspect",
            Command::Generate { .. } => "generate",
            Command::Zone { .. } => "zone",
            Command::Revoke { .. } => "revoke",
            Command::SigningKeys { .. } => "signing-keys",
        }
    }
}

/// `--tag KEY=VALUE[,VALUE...]`.
fn parse_tag(text: &str) -> Result<(String, Vec<String>), String> {
    let (key, values) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE (e.g. kuma.io/service=web)"))?;
    let values: Vec<String> = values
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    if key.trim().is_empty() || values.is_empty() {
        return Err(format!("{text:?} is not KEY=VALUE (e.g. kuma.io/service=web)"));
    }
    Ok((key.trim().to_owned(), values))
}

async fn revoke(
    client: &Client,
    token: Option<String>,
    file: Option<PathBuf>,
    id: Option<String>,
) -> Result<(), Failure> {
    let read = |what: &str, r: std::io::Result<String>| {
        r.map(|t| t.trim().to_owned())
            .map_err(|e| Failure::Usage(format!("reading {what}: {e}")))
    };
    let body = match (token, file, id) {
        (Some(t), _, _) if t == "-" => {
            let mut text = String::new();
            let r = std::io::stdin().read_to_string(&mut text).map(|_| text);
            serde_json::json!({ "token": read("standard input", r)? })
        }
        (Some(t), _, _) => serde_json::json!({ "token": t }),
        (None, Some(f), _) => {
            serde_json::json!({ "token": read(&f.display().to_string(), std::fs::read_to_string(&f))? })
        }
        (None, None, Some(id)) => serde_json::json!({ "id": id }),
        (None, None, None) => return Err(Failure::Usage("give a token, --file or --id".into())),
    };
    let done = client.post("/tokens/revocations", &body).await?;
    println!("revoked token {}", done["revoked"].as_str().unwrap_or(""));
    Ok(())
}

fn print_keys(listed: &serde_json::Value) {
    println!("{:<14} {:>6}  {:<8} CREATED", "KIND", "SERIAL", "SIGNS");
    for k in listed["items"].as_array().into_iter().flatten() {
        println!(
            "{:<14} {:>6}  {:<8} {}",
            k["kind"].as_str().unwrap_or(""),
            k["serial"],
            if k["signs"] == true { "yes" } else { "verifies" },
            k["created"].as_str().unwrap_or("")
        );
    }
}

fn fail(failure: Failure) -> ExitCode {
    eprintln!("Error: {}", failure.message());
    ExitCode::from(failure.exit_code())
}

pub(crate) fn parse_kind(text: &str) -> Result<Kind, Failure> {
    Kind::from_cli(text).ok_or_else(|| {
        let known: Vec<String> = Kind::ALL
            .iter()
            .map(|k| format!("{} ({})", k.name(), k.plural()))
            .collect();
        Failure::Usage(format!(
            "unknown kind {text:?}; known kinds: {}",
            known.join(", ")
        ))
    })
}

/// The members table: id, Raft address, voter or learner, and who leads.
fn print_members(status: &serde_json::Value) {
    let leader = status["leader"].as_u64();
    println!("{:<6} {:<28} {:<8} ROLE", "ID", "ADDRESS", "VOTER");
    for m in status["members"].as_array().into_iter().flatten() {
        let id = m["id"].as_u64().unwrap_or_default();
        println!(
            "{:<6} {:<28} {:<8} {}",
            id,
            m["address"].as_str().unwrap_or_default(),
            if m["voter"] == true { "yes" } else { "no" },
            if Some(id) == leader { "leader" } else { "" }
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
