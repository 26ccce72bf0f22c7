//! Transparent proxying, in network namespaces this test makes: the iptables rules of
//! `meridian-dp install transparent-proxy`, and apps calling `<service>.mesh` through their
//! sidecars without declaring an outbound.

use meridian_testing::netns::{self, NetNs};

/// Skips (with the reason printed) where namespaces cannot be made.
macro_rules! need_netns {
    () => {
        if let Some(why) = netns::unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn dp() -> std::path::PathBuf {
    meridian_e2e::bin("meridian-dp").expect("meridian-dp")
}

/// Every table's rules, comments and counters aside.
fn rules(ns: &NetNs) -> String {
    let mut all = String::new();
    for save in ["iptables-save", "ip6tables-save"] {
        for table in ["nat", "filter"] {
            let text = ns.run(save, &["-t", table]).expect("save");
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                all.push_str(line);
                all.push('\n');
            }
        }
    }
    all
}

#[test]
fn install_is_idempotent_and_uninstall_restores_the_rules_exactly() {
    need_netns!();
    let ns = NetNs::new("rules").expect("netns");
    // Rules of the host's own that must survive.
    ns.run(
        "iptables",
        &["-t", "nat", "-A", "OUTPUT", "-d", "10.9.9.9", "-j", "RETURN"],
    )
    .expect("nat rule");
    ns.run(
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
    )
    .expect("filter rule");
    ns.run("ip6tables", &["-t", "nat", "-N", "HOST_CHAIN"])
        .expect("v6 chain");
    let before = rules(&ns);

    let install = |extra: &[&str]| {
        let out = ns
            .command(dp())
            .args(["install", "transparent-proxy", "--exclude-inbound-ports", "22"])
            .args(extra)
            .output()
            .expect("install");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    install(&["--exclude-outbound-ips", "10.0.0.0/8,fd00::/8"]);
    let installed = rules(&ns);
    for rule in [
        "-A PREROUTING -p tcp -j MERIDIAN_INBOUND",
        "-A MERIDIAN_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        "-A MERIDIAN_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A MERIDIAN_OUTBOUND -m owner --uid-owner 5678 -j RETURN",
        "-A MERIDIAN_OUTBOUND -d 10.0.0.0/8 -j RETURN",
        "-A MERIDIAN_OUTBOUND -d fd00::/8 -j RETURN",
        "-A MERIDIAN_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A MERIDIAN_DNS -p udp -j REDIRECT --to-ports 15053",
        "-A OUTPUT -d 10.9.9.9/32 -j RETURN",
    ] {
        assert!(installed.contains(rule), "{rule} missing from\n{installed}");
    }
    install(&["--exclude-outbound-ips", "10.0.0.0/8,fd00::/8"]);
    assert_eq!(rules(&ns), installed, "installing again changes nothing");
    // Installing with other flags replaces ours, not adds to them.
    install(&[]);
    let replaced = rules(&ns);
    assert!(!replaced.contains("10.0.0.0/8"), "{replaced}");
    assert_eq!(
        replaced.matches("-j MERIDIAN_INBOUND\n").count(),
        2,
        "one jump per family"
    );

    let out = ns
        .command(dp())
        .args(["uninstall", "transparent-proxy"])
        .output()
        .expect("uninstall");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        rules(&ns),
        before,
        "uninstall leaves the rules exactly as they were"
    );
    // And again: nothing to do, nothing changes.
    let out = ns
        .command(dp())
        .args(["uninstall", "transparent-proxy"])
        .output()
        .expect("uninstall");
    assert!(out.status.success());
    assert_eq!(rules(&ns), before);
}
