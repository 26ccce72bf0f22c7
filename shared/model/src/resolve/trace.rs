//! Which MeshTrace a proxy gets. MeshTrace has a single conf (`default`), so the policies
//! selecting a proxy merge in precedence order, as Kuma's single-item policies do. The older
//! mesh-wide form (`backends[]` with `conf`) does not merge: when the policy of highest
//! precedence is of that form, its backends are the answer.

use serde::Serialize;

use super::{Merge, Policy, ProxyView, Resolved, Source, Targeted, precedence, selects};
use crate::Kind;
use crate::policies::mesh_trace::{LegacyTraceBackend, MeshTraceConf, MeshTraceSpec};
use crate::targetref::TargetRef;

/// The tracing a proxy gets, in the form its winning policy was written in.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TraceConf {
    Default(MeshTraceConf),
    Backends(Vec<LegacyTraceBackend>),
}

impl Targeted for MeshTraceSpec {
    const KIND: Kind = Kind::MeshTrace;
    fn target_ref(&self) -> Option<&TargetRef> {
        self.target_ref.as_ref()
    }
}

/// The tracing for `proxy`, or `None` when no MeshTrace selects it.
pub fn select(traces: &[Policy<MeshTraceSpec>], proxy: &ProxyView<'_>) -> Option<Resolved<TraceConf>> {
    let mesh = TargetRef::mesh();
    let mut applicable: Vec<_> = traces
        .iter()
        .filter_map(|p| {
            let top = p.spec.target_ref().unwrap_or(&mesh);
            selects(top, proxy).then(|| (precedence(p, top, None, 0), p))
        })
        .collect();
    applicable.sort_by(|a, b| a.0.cmp(&b.0));
    let (_, winner) = applicable.last()?;
    let source = |p: &Policy<MeshTraceSpec>| Source {
        kind: Kind::MeshTrace,
        name: p.name.clone(),
    };
    if winner.spec.default.is_none() {
        return Some(Resolved {
            conf: TraceConf::Backends(winner.spec.backends.clone().unwrap_or_default()),
            origin: vec![source(winner)],
        });
    }
    let mut conf: Option<MeshTraceConf> = None;
    let mut origin = Vec::new();
    for (_, p) in &applicable {
        if p.spec.default.is_some() {
            conf.merge(&p.spec.default);
            origin.push(source(p));
        }
    }
    Some(Resolved {
        conf: TraceConf::Default(conf?),
        origin,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::policies::dataplane::DataplaneSpec;
    use crate::{Format, Spec, parse_one};

    fn traces(yaml: &[&str]) -> Vec<Policy<MeshTraceSpec>> {
        yaml.iter()
            .map(|doc| {
                let r = parse_one(doc, Format::Yaml).expect("valid").resource;
                match &r.spec {
                    Spec::MeshTrace(s) => Policy::new(&r, s),
                    _ => panic!("not a MeshTrace"),
                }
            })
            .collect()
    }

    fn chosen(yaml: &[&str]) -> Option<Resolved<TraceConf>> {
        let dp: DataplaneSpec = serde_json::from_value(serde_json::json!({
            "networking": {"address": "127.0.0.1", "inbound": [{"port": 1, "tags": {"kuma.io/service": "web"}}]}
        }))
        .expect("dataplane");
        let labels = BTreeMap::new();
        let view = ProxyView {
            name: "web-1",
            labels: &labels,
            dataplane: &dp,
        };
        select(&traces(yaml), &view)
    }

    const MESH: &str = "type: MeshTrace\nname: mesh-wide\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends:\n    - type: OpenTelemetry\n      openTelemetry: {endpoint: 'otel:4317'}\n    sampling: {overall: 10}\n";
    const WEB: &str = "type: MeshTrace\nname: web\nspec:\n  targetRef: {kind: MeshService, name: web}\n  default:\n    sampling: {overall: 100, client: 50}\n";
    const LEGACY: &str = "type: MeshTrace\nname: legacy\nspec:\n  backends:\n  - name: z\n    type: zipkin\n    conf: {url: 'http://zipkin:9411/api/v2/spans'}\n";

    #[test]
    fn defaults_merge_the_more_specific_last() {
        let r = chosen(&[WEB, MESH]).expect("a trace");
        let TraceConf::Default(conf) = r.conf else {
            panic!("the targetRef form")
        };
        assert_eq!(conf.backends.map(|b| b.len()), Some(1));
        let sampling = conf.sampling.expect("sampling");
        assert_eq!(sampling.overall.map(|p| p.value()), Some(100.0));
        assert_eq!(sampling.client.map(|p| p.value()), Some(50.0));
        let names: Vec<_> = r.origin.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["mesh-wide", "web"]);
    }

    #[test]
    fn the_older_form_is_taken_whole_when_it_wins() {
        let r = chosen(&[LEGACY]).expect("a trace");
        assert!(matches!(r.conf, TraceConf::Backends(b) if b.len() == 1));
        // A more specific targetRef form wins over it.
        assert!(matches!(
            chosen(&[LEGACY, WEB]).expect("a trace").conf,
            TraceConf::Default(_)
        ));
        assert_eq!(chosen(&[]), None);
    }
}
