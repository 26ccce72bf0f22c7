//! The deploy/ units run the real binaries with real flags: each unit's `ExecStart` must parse
//! with that binary's own CLI, and the control planes must trust no host.

use clap::Parser;

/// The arguments of a deploy unit's `ExecStart`, as the binary sees them.
fn exec_start(unit: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(unit);
    let text = std::fs::read_to_string(&path).expect("unit file");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn global_cp_unit() {
    use meridian_global_cp::args::{Cli, Command};
    let cli = Cli::try_parse_from(exec_start("meridian-global-cp.service")).expect("flags parse");
    let Command::Run(run) = cli.command else {
        panic!("not run")
    };
    assert!(!run.trust_localhost, "deployed control planes trust no host");
    assert!(run.sync_tls_cert.is_some(), "zones sync over TLS");
}

#[test]
fn zone_cp_unit() {
    use meridian_zone_cp::args::{Cli, Command};
    let cli = Cli::try_parse_from(exec_start("meridian-zone-cp.service")).expect("flags parse");
    let Command::Run(run) = cli.command else {
        panic!("not run")
    };
    assert!(!run.trust_localhost, "deployed control planes trust no host");
    assert_eq!(run.peers.map(|p| p.0.len()), Some(3), "a three-node zone");
    assert!(
        run.raft_tls_cert.is_some() && run.raft_tls_key.is_some() && run.raft_tls_ca.is_some(),
        "the nodes speak Raft over mutual TLS"
    );
    assert!(run.zone_token_file.is_some() && run.global_ca_file.is_some());
}

#[test]
fn meridian_dp_unit() {
    use meridian_dp::{Cli, Command};
    let cli = Cli::try_parse_from(exec_start("meridian-dp.service")).expect("flags parse");
    let Command::Run(run) = cli.command else {
        panic!("not run")
    };
    assert!(
        run.dataplane_token_file.is_some(),
        "deployed sidecars show their token"
    );
    assert_eq!(run.cp_addresses.len(), 3);
}
