//! MeshTimeout on outbounds: the cluster's connect timeout, the upstream idle timeout (HTTP)
//! or the TCP proxy's, and the route's request and stream-idle timeouts. Kuma's defaults
//! apply where no policy sets a value.

use std::time::Duration;

use meridian_model::Kind;
use meridian_model::resolve::outbound;

use super::{Generated, PolicyPlugin, ProxyInput};
use crate::xds::translate::{duration, route_actions};

/// Timeouts that apply when no MeshTimeout says otherwise (Kuma's defaults).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Plugin;

impl PolicyPlugin for Plugin {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::MeshTimeout]
    }

    fn apply(&self, input: &ProxyInput<'_>, generated: &mut Generated) {
        for o in &mut generated.outbounds {
            let conf = outbound(&input.ctx.policies.timeouts, &input.view, &o.service).map(|r| r.conf);
            let conf = conf.as_ref();
            let connect = conf
                .and_then(|t| t.connection_timeout.as_ref())
                .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.as_duration());
            o.cluster.connect_timeout = Some(duration(connect));
            let idle = conf
                .and_then(|t| t.idle_timeout.as_ref())
                .map(|d| d.as_duration());
            if let Some(tcp) = &mut o.tcp {
                tcp.idle_timeout = idle.map(duration);
            }
            if let Some(idle) = idle {
                crate::xds::translate::set_upstream_idle(&mut o.cluster, idle);
            }
            let http = conf.and_then(|t| t.http.as_ref());
            for action in o.route.iter_mut().flat_map(route_actions) {
                let request = http
                    .and_then(|h| h.request_timeout.as_ref())
                    .map_or(DEFAULT_REQUEST_TIMEOUT, |d| d.as_duration());
                action.timeout = Some(duration(request));
                action.idle_timeout = http
                    .and_then(|h| h.stream_idle_timeout.as_ref())
                    .map(|d| duration(d.as_duration()));
            }
        }
    }
}
