//! Injected Pods and their Services, as real object JSON fed through kube-runtime stores (the
//! way the controllers see them), become the Dataplanes Kuma would make, with readiness
//! flips and deletes.

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use meridian_model::Spec;
use meridian_zone_cp::kubernetes::convert::{SERVICELESS_PORT, dataplane, dataplane_name};
use serde_json::{Value, json};

fn pod(ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "reg-server-7d4b9c6f5-x2k9p", "namespace": "mesh-for-devs", "uid": "p-1",
            "resourceVersion": "4711",
            "labels": {"app": "reg-server", "version": "v2", "pod-template-hash": "7d4b9c6f5", "kuma.io/mesh": "default"},
            "annotations": {
                "kuma.io/sidecar-injected": "true", "kuma.io/transparent-proxying": "enabled",
                "kuma.io/transparent-proxying-inbound-port": "15006",
                "kuma.io/transparent-proxying-outbound-port": "15001",
                "kuma.io/transparent-proxying-ip-family-mode": "ipv4",
                "kuma.io/envoy-admin-port": "9901"
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reg-server-7d4b9c6f5", "uid": "rs-1", "controller": true}]
        },
        "spec": {"containers": [
            {"name": "app", "image": "reg:1", "ports": [{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9000}, {"name": "grpc", "containerPort": 7070}]}
        ]},
        "status": {
            "phase": "Running", "podIP": "10.244.1.7",
            "containerStatuses": [
                {"name": "app", "ready": ready, "restartCount": 0, "image": "reg:1", "imageID": "", "started": true},
            ],
            "initContainerStatuses": [
                {"name": "kuma-init", "ready": false, "restartCount": 0, "image": "dp", "imageID": "", "state": {"terminated": {"exitCode": 0}}},
                {"name": "kuma-sidecar", "ready": true, "restartCount": 0, "image": "dp", "imageID": "", "started": true}
            ]
        }
    })
}

fn service_objects() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "reg-server", "namespace": "mesh-for-devs", "annotations": {"9000.service.kuma.io/protocol": "http"}},
        "spec": {"selector": {"app": "reg-server"}, "clusterIP": "10.96.0.12", "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http"},
            {"name": "admin", "port": 9000, "targetPort": 9000},
            {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"}
        ]}}),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "everything", "namespace": "mesh-for-devs"},
            "spec": {"ports": [{"port": 1, "targetPort": 1}]}}),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "reg-server-headless", "namespace": "mesh-for-devs"},
            "spec": {"selector": {"app": "reg-server"}, "clusterIP": "None", "ports": [{"port": 7070, "targetPort": "grpc", "appProtocol": "grpc"}, {"port": 8080, "targetPort": 8080}]}}),
    ]
}

struct World {
    pods: reflector::Store<Pod>,
    pod_writer: reflector::store::Writer<Pod>,
    services: reflector::Store<Service>,
}

impl World {
    fn new() -> World {
        let (pods, pod_writer) = reflector::store::<Pod>();
        let (services, mut service_writer) = reflector::store::<Service>();
        for s in service_objects() {
            service_writer.apply_watcher_event(&Event::Apply(serde_json::from_value(s).expect("a service")));
        }
        World {
            pods,
            pod_writer,
            services,
        }
    }

    fn apply(&mut self, pod: Value) {
        self.pod_writer
            .apply_watcher_event(&Event::Apply(serde_json::from_value(pod).expect("a pod")));
    }

    fn delete(&mut self, pod: Value) {
        self.pod_writer
            .apply_watcher_event(&Event::Delete(serde_json::from_value(pod).expect("a pod")));
    }

    /// Every pod's Dataplane, as the controller would write them.
    fn dataplanes(&self) -> Vec<meridian_model::Resource> {
        let services: Vec<Service> = self.services.state().iter().map(|s| (**s).clone()).collect();
        self.pods
            .state()
            .iter()
            .filter_map(|p| dataplane(p, &services, "default", Some("zone-1")).expect("converts"))
            .collect()
    }
}

fn inbounds(dp: &meridian_model::Resource) -> Vec<meridian_model::policies::dataplane::Inbound> {
    let Spec::Dataplane(spec) = &dp.spec else {
        panic!("not a Dataplane")
    };
    spec.networking.inbound.clone().unwrap_or_default()
}

#[test]
fn an_injected_pod_becomes_a_dataplane_with_kumas_tags() {
    let mut world = World::new();
    world.apply(pod(true));
    let dps = world.dataplanes();
    assert_eq!(dps.len(), 1);
    let dp = &dps[0];
    assert_eq!(dp.name, "reg-server-7d4b9c6f5-x2k9p-mesh-for-devs");
    let inbounds = inbounds(dp);
    let services: Vec<&str> = inbounds
        .iter()
        .map(|i| i.tags["kuma.io/service"].as_str())
        .collect();
    assert_eq!(
        services,
        [
            "reg-server_mesh-for-devs_svc_80",
            "reg-server_mesh-for-devs_svc_9000",
            "reg-server-headless_mesh-for-devs_svc_7070"
        ],
        "the selector-less Service, the UDP port and a second Service on 8080 are not inbounds"
    );
    let http = &inbounds[0];
    assert_eq!(
        http.port, 8080,
        "the named targetPort resolves to the container's port"
    );
    for (k, v) in [
        ("app", "reg-server"),
        ("version", "v2"),
        ("k8s.kuma.io/namespace", "mesh-for-devs"),
        ("k8s.kuma.io/service-name", "reg-server"),
        ("k8s.kuma.io/service-port", "80"),
        ("kuma.io/zone", "zone-1"),
        ("kuma.io/protocol", "http"),
    ] {
        assert_eq!(
            http.tags.get(k).map(String::as_str),
            Some(v),
            "{k} in {:?}",
            http.tags
        );
    }
    assert!(
        !http.tags.contains_key("kuma.io/mesh"),
        "labels under kuma.io/ are not tags"
    );
    assert_eq!(
        inbounds[1].tags["kuma.io/protocol"], "http",
        "from the <port>.service.kuma.io/protocol annotation"
    );
    assert_eq!(inbounds[2].tags["kuma.io/protocol"], "grpc");
    assert_eq!(
        inbounds[2].tags["kuma.io/instance"], "reg-server-7d4b9c6f5-x2k9p",
        "a headless Service's instance"
    );
    let Spec::Dataplane(spec) = &dp.spec else {
        unreachable!()
    };
    let tp = spec
        .networking
        .transparent_proxying
        .as_ref()
        .expect("transparent proxying");
    assert_eq!(
        (tp.redirect_port_inbound, tp.redirect_port_outbound),
        (Some(15006), Some(15001))
    );
    assert_eq!(spec.networking.address, "10.244.1.7");
}

#[test]
fn readiness_follows_the_containers_and_a_deleted_pod_loses_its_dataplane() {
    let mut world = World::new();
    world.apply(pod(false));
    let ready = |w: &World| {
        inbounds(&w.dataplanes()[0])
            .iter()
            .all(|i| i.health.as_ref().is_none_or(|h| h.ready))
    };
    assert!(!ready(&world), "the app container is not ready");
    world.apply(pod(true));
    assert!(ready(&world), "ready once it is");
    let mut sidecar_down = pod(true);
    sidecar_down["status"]["initContainerStatuses"][1]["ready"] = json!(false);
    world.apply(sidecar_down);
    assert!(!ready(&world), "not ready while the sidecar is not");
    let mut terminating = pod(true);
    terminating["metadata"]["deletionTimestamp"] = json!("2026-12-03T10:00:00Z");
    world.apply(terminating);
    assert!(!ready(&world), "a pod being deleted is taken out of rotation");
    let mut finished = pod(true);
    finished["status"]["phase"] = json!("Succeeded");
    world.apply(finished);
    assert!(world.dataplanes().is_empty(), "a finished pod has no Dataplane");
    world.apply(pod(true));
    world.delete(pod(true));
    assert!(
        world.dataplanes().is_empty(),
        "a deleted pod's Dataplane goes with it"
    );
}

#[test]
fn a_pod_no_service_selects_is_named_after_its_deployment() {
    let mut world = World::new();
    let mut lonely = pod(true);
    lonely["metadata"]["labels"]["app"] = json!("worker");
    world.apply(lonely);
    let dps = world.dataplanes();
    let inbound = &inbounds(&dps[0])[0];
    assert_eq!(inbound.port, SERVICELESS_PORT as u32);
    assert_eq!(inbound.tags["kuma.io/service"], "reg-server_mesh-for-devs_svc");
    let mut plain = pod(true);
    plain["metadata"]["annotations"] = json!({});
    world.apply(plain);
    assert!(
        world.dataplanes().is_empty(),
        "a pod without a sidecar has no Dataplane"
    );
}

#[test]
fn long_names_stay_dns_labels() {
    let name = dataplane_name(&"a".repeat(60), "mesh-for-devs");
    assert!(
        name.len() <= 63 && meridian_model::validate::dns1123_label(&name).is_ok(),
        "{name}"
    );
    assert_ne!(name, dataplane_name(&"a".repeat(61), "mesh-for-devs"));
}
