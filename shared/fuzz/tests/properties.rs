//! Every fuzz target in the normal test run: proptest feeds each mutated seeds and plain
//! random bytes (`PROPTEST_CASES` sets how many; `cargo xtask fuzz` runs far more).

use meridian_fuzz::{Edit, mutate, targets};
use proptest::prelude::*;

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        (any::<u8>(), any::<u32>(), any::<u32>()).prop_map(|(kind, at, value)| Edit { kind, at, value }),
        0..24,
    )
}

fn check(name: &str, seed: usize, edits: &[Edit], random: &[u8]) {
    let target = targets().into_iter().find(|t| t.name == name).expect("target");
    let seeds = (target.seeds)();
    let input = mutate(&seeds[seed % seeds.len()], edits);
    (target.run)(&input);
    (target.run)(random);
}

macro_rules! target_properties {
    ($($test:ident => $name:literal),+ $(,)?) => {
        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
            $(
                #[test]
                fn $test(seed in any::<usize>(), edits in edits(), random in prop::collection::vec(any::<u8>(), 0..512)) {
                    check($name, seed, &edits, &random);
                }
            )+
        }
    };
}

target_properties! {
    resources_in_yaml => "resource-yaml",
    resources_in_json => "resource-json",
    yaml_text => "yaml-text",
    sync_messages => "sync-message",
    raft_payloads => "raft-payload",
    tokens => "token",
    node_ids => "node-id",
}

#[test]
fn every_target_has_a_property_test_and_its_seeds_pass() {
    for target in targets() {
        for seed in (target.seeds)() {
            (target.run)(&seed);
        }
    }
    assert_eq!(
        targets().len(),
        7,
        "a new target needs its line in target_properties!"
    );
}
