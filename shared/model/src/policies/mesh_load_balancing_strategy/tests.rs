use crate::{Format, Spec, parse_one};

const HEAD: &str = "type: MeshLoadBalancingStrategy\nname: x\nmesh: default\nspec:\n";

fn errors(spec: &str) -> Vec<String> {
    crate::testing::errors(&format!("{HEAD}{spec}"))
}

#[test]
fn kuma_example_parses() {
    let spec = "  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: MeshService
        name: backend
      default:
        localityAwareness:
          localZone:
            affinityTags:
              - key: kubernetes.io/hostname
                weight: 90
              - key: topology.kubernetes.io/zone
                weight: 10
          crossZone:
            failover:
              - from:
                  zones: [us-1, us-2]
                to:
                  type: Only
                  zones: [us-1, us-2]
              - to:
                  type: Any
            failoverThreshold:
              percentage: 70
        loadBalancer:
          type: RingHash
          ringHash:
            hashFunction: MurmurHash2
            minRingSize: 64
            maxRingSize: 1024
            hashPolicies:
              - type: Cookie
                cookie: {name: session, ttl: 1h, path: /}
        hashPolicies:
          - type: Header
            terminal: true
            header: {name: x-user}
          - type: Connection
            connection: {sourceIP: true}
    - targetRef:
        kind: MeshService
        name: web
      default:
        loadBalancer:
          type: LeastRequest
          leastRequest: {choiceCount: 3, activeRequestBias: \"1.5\"}
";
    let sub = parse_one(&format!("{HEAD}{spec}"), Format::Yaml).unwrap();
    let Spec::MeshLoadBalancingStrategy(s) = &sub.resource.spec else {
        panic!()
    };
    assert_eq!(s.to.as_ref().unwrap().len(), 2);
}

#[test]
fn invalid_examples_name_their_fields() {
    let to = "  to:\n    - targetRef: {kind: Mesh}\n      default:\n";
    let errs = errors(&format!(
        "{to}        localityAwareness:\n          crossZone:\n            failover:\n              - to: {{type: Only}}\n              - to: {{type: Any, zones: [a]}}\n"
    ));
    assert_eq!(
        errs,
        vec![
            "spec.to[0].default.localityAwareness.crossZone.failover[0].to.zones: must not be empty when type is Only",
            "spec.to[0].default.localityAwareness.crossZone.failover[1].to.zones: must be empty when type is Any",
        ]
    );
    let errs = errors(&format!(
        "{to}        loadBalancer: {{type: Random, maglev: {{tableSize: 0}}}}\n"
    ));
    assert_eq!(
        errs,
        vec![
            "spec.to[0].default.loadBalancer.maglev: must not be set for type Random",
            "spec.to[0].default.loadBalancer.maglev.tableSize: must be between 1 and 5000011",
        ]
    );
    let errs = errors(&format!("{to}        hashPolicies:\n          - type: Header\n"));
    assert_eq!(
        errs,
        vec!["spec.to[0].default.hashPolicies[0].header: must be set for type Header"]
    );
    let errs = errors(&format!(
        "{to}        localityAwareness:\n          localZone:\n            affinityTags: [{{key: a, weight: 1}}, {{key: b}}]\n"
    ));
    assert_eq!(
        errs,
        vec![
            "spec.to[0].default.localityAwareness.localZone.affinityTags: either every affinity tag has a weight or none does"
        ]
    );
    let errs = errors(
        "  to:\n    - targetRef: {kind: MeshHTTPRoute, name: r}\n      default:\n        loadBalancer: {type: Random}\n",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("spec.to[0].targetRef.kind: MeshHTTPRoute is not allowed here"));
    // An empty `to` is valid, as in Kuma: it configures nothing.
    assert!(crate::parse_one(&format!("{HEAD}  to: []\n"), crate::Format::Yaml).is_ok());
    let errs = errors(&format!(
        "{to}        localityAwareness:\n          crossZone:\n            failoverThreshold: {{percentage: 120}}\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with(
            "spec.to[0].default.localityAwareness.crossZone.failoverThreshold.percentage: must be between 0 and 100"
        ), "{errs:?}");
}
