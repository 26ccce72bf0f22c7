//! The DNS server of a transparently proxied workload (127.0.0.1:15053, where iptables send
//! its queries): `<service>.mesh` answered from the records the zone control plane pushed to
//! Envoy, everything else forwarded to the host's resolvers.
//!
//! ```text
//!   app ─query─> :53 ─iptables─> 127.0.0.1:15053 ─┬─ NAME.mesh: A from the records (NXDOMAIN if unknown)
//!                                                   └─ else: relayed to /etc/resolv.conf's servers
//!   records: polled from Envoy's admin (the `_meridian:dns` listener's metadata), each second
//! ```
//!
//! Queries are bounded: one question, at most 512 bytes over UDP (a DNS message's classic
//! limit; larger ones are EDNS, which forwarding passes through), 64 KiB over TCP, two
//! seconds per upstream, and at most [`MAX_IN_FLIGHT`] forwarded at once.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

/// The suffix the mesh answers for.
const DOMAIN: &str = "mesh.";
/// What an answer may be cached for (Kuma's).
const TTL: u32 = 60;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_IN_FLIGHT: usize = 256;
/// The listener the records come on, and where in its metadata.
const DNS_LISTENER: &str = "_meridian:dns";
const DNS_METADATA: &str = "meridian.dns";

/// `NAME.mesh.` (lowercase, fully qualified) to its virtual IP.
pub type Records = BTreeMap<String, Ipv4Addr>;

/// The records in the `_meridian:dns` listener's metadata: `NAME IP` lines.
pub fn parse_records(text: &str) -> Records {
    text.lines()
        .filter_map(|line| {
            let (name, ip) = line.split_once(' ')?;
            let mut name = name.trim().to_ascii_lowercase();
            if !name.ends_with('.') {
                name.push('.');
            }
            Some((name, ip.trim().parse().ok()?))
        })
        .collect()
}

/// The records Envoy has now, from its admin's config dump; `None` when Envoy does not
/// answer or has no such listener yet.
async fn fetch_records(http: &reqwest::Client, admin_port: u16) -> Option<Records> {
    let url = format!(
        "http://127.0.0.1:{admin_port}/config_dump?resource=dynamic_listeners&name_regex=^{DNS_LISTENER}$"
    );
    let dump: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
    dump["configs"].as_array()?.iter().find_map(|c| {
        let listener = &c["active_state"]["listener"];
        (listener["name"] == DNS_LISTENER)
            .then(|| listener["metadata"]["filter_metadata"][DNS_METADATA]["records"].as_str())
            .flatten()
            .map(parse_records)
    })
}

/// Keeps `records` in step with Envoy's, polling its admin.
pub async fn follow_records(admin_port: u16, records: watch::Sender<Arc<Records>>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    loop {
        if let Some(now) = fetch_records(&http, admin_port).await {
            records.send_if_modified(|current| {
                let changed = **current != now;
                if changed {
                    debug!(records = now.len(), "mesh DNS records changed");
                    *current = Arc::new(now);
                }
                changed
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The host's resolvers, from resolv.conf (port 53); 127.0.0.1 when it names none, as libc.
pub fn upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    let listed: Vec<SocketAddr> = resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if listed.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], 53))]
    } else {
        listed
    }
}

/// What to do with a query.
#[derive(Debug, PartialEq)]
enum Answer {
    /// Answered here: the response's bytes.
    Local(Vec<u8>),
    /// Not a mesh name: relay it.
    Forward,
    /// Not a query we can read: dropped.
    Drop,
}

fn answer(query: &[u8], records: &Records) -> Answer {
    let Ok(request) = Message::from_vec(query) else {
        return Answer::Drop;
    };
    if request.metadata.message_type != MessageType::Query || request.queries.len() != 1 {
        return Answer::Drop;
    }
    let question = &request.queries[0];
    let name = question.name().to_lowercase().to_ascii();
    let name = if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    };
    if !(name == DOMAIN || name.ends_with(&format!(".{DOMAIN}"))) {
        return Answer::Forward;
    }
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    match records.get(&name) {
        Some(ip) => {
            if matches!(question.query_type(), RecordType::A | RecordType::ANY) {
                response.add_answer(Record::from_rdata(question.name().clone(), TTL, RData::A(A(*ip))));
            }
            // AAAA and the rest: the name exists, with no such record (NOERROR, no answer).
        }
        None => response.metadata.response_code = ResponseCode::NXDomain,
    }
    match response.to_vec() {
        Ok(bytes) => Answer::Local(bytes),
        Err(_) => Answer::Drop,
    }
}

/// Relays a query to each upstream in turn until one answers.
async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(socket) = UdpSocket::bind(bind).await else {
            continue;
        };
        if socket.send_to(query, upstream).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        match tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) if from == *upstream => {
                buf.truncate(n);
                return Some(buf);
            }
            _ => debug!(%upstream, "upstream resolver did not answer"),
        }
    }
    None
}

/// Serves DNS on `addr` (UDP and TCP) until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    records: watch::Receiver<Arc<Records>>,
    upstreams: Vec<SocketAddr>,
) -> std::io::Result<()> {
    let udp = Arc::new(UdpSocket::bind(addr).await?);
    let tcp = TcpListener::bind(addr).await?;
    info!(%addr, upstreams = ?upstreams, "mesh DNS serving");
    let upstreams: Arc<[SocketAddr]> = upstreams.into();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let tcp_task = {
        let (records, upstreams, slots) = (records.clone(), upstreams.clone(), slots.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = tcp.accept().await else {
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let (records, upstreams) = (records.clone(), upstreams.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = tokio::time::timeout(UPSTREAM_TIMEOUT * 3, async {
                        let len = stream.read_u16().await? as usize;
                        let mut query = vec![0u8; len];
                        stream.read_exact(&mut query).await?;
                        let local = answer(&query, &records.borrow());
                        let reply = match local {
                            Answer::Local(bytes) => Some(bytes),
                            Answer::Forward => None,
                            Answer::Drop => return Ok::<_, std::io::Error>(()),
                        };
                        let reply = match reply {
                            Some(r) => Some(r),
                            None => forward(&query, &upstreams).await,
                        };
                        if let Some(reply) = reply {
                            stream.write_u16(reply.len() as u16).await?;
                            stream.write_all(&reply).await?;
                        }
                        Ok(())
                    })
                    .await;
                });
            }
        })
    };
    let _tcp = AbortOnDrop(tcp_task);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match udp.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                warn!(error = %e, "mesh DNS: receiving failed");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let local = answer(&query, &records.borrow());
        match local {
            Answer::Local(reply) => {
                let _ = udp.send_to(&reply, from).await;
            }
            Answer::Drop => {}
            Answer::Forward => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let (udp, upstreams) = (udp.clone(), upstreams.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(reply) = forward(&query, &upstreams).await {
                        let _ = udp.send_to(&reply, from).await;
                    }
                });
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    use super::*;

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
        m.to_vec().expect("encode")
    }

    fn records() -> Records {
        parse_records("reg-server.mesh 240.0.0.7\nDemo.mesh 240.0.0.9\nbad line\nx.mesh not-an-ip")
    }

    #[test]
    fn mesh_names_are_answered_here_and_the_rest_forwarded() {
        let r = records();
        assert_eq!(r.len(), 2);
        let Answer::Local(bytes) = answer(&query("Reg-Server.mesh.", RecordType::A), &r) else {
            panic!("not answered")
        };
        let m = Message::from_vec(&bytes).expect("decode");
        assert_eq!(m.metadata.id, 7);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(240, 0, 0, 7))));

        let Answer::Local(bytes) = answer(&query("demo.mesh", RecordType::AAAA), &r) else {
            panic!("not answered")
        };
        let m = Message::from_vec(&bytes).expect("decode");
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );

        let Answer::Local(bytes) = answer(&query("nope.mesh.", RecordType::A), &r) else {
            panic!("not answered")
        };
        let m = Message::from_vec(&bytes).expect("decode");
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

        assert_eq!(answer(&query("example.com.", RecordType::A), &r), Answer::Forward);
        assert_eq!(answer(&query("notmesh.", RecordType::A), &r), Answer::Forward);
        assert_eq!(answer(b"\x00\x01garbage", &r), Answer::Drop);
    }

    #[test]
    fn upstreams_come_from_resolv_conf() {
        assert_eq!(
            upstreams("# c\nnameserver 10.0.0.2\nsearch x\nnameserver fe80::1%eth0\n"),
            vec![
                SocketAddr::from(([10, 0, 0, 2], 53)),
                "[fe80::1]:53".parse().expect("addr")
            ]
        );
        assert_eq!(upstreams(""), vec![SocketAddr::from(([127, 0, 0, 1], 53))]);
    }
}
