//! DNS at the gateway: the sandbox's resolver. Queries are parsed (hickory-proto), refused
//! names get NXDOMAIN at once, the rest are relayed to the upstream servers; their answers are
//! checked for rebinding, feed the pin set, and go back to the sandbox.
//!
//! Invariants:
//! - A query is hostile input: one question, class IN, opcode QUERY, at most `MAX_QUERY`
//!   bytes; anything else gets FORMERR (or is dropped when it cannot even be parsed).
//! - At most `MAX_PENDING` queries are in flight per sandbox; beyond that the sandbox gets
//!   SERVFAIL rather than host memory.
//! - An upstream answer is accepted only from the server it was sent to, with the id and the
//!   question it was sent with; it reaches the sandbox with the sandbox's own id.
//! - Under `public-only`, an answer holding a non-public address that no rule allows becomes
//!   NXDOMAIN (DNS rebinding), and nothing of it is pinned.

use crate::policy::{normalize_name, FlowPolicy, NetworkPolicy};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RData};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub const MAX_QUERY: usize = 4096;
pub const MAX_PENDING: usize = 512;
/// An upstream that has not answered by then is asked again (the next one, if any), once.
const RETRY_AFTER: Duration = Duration::from_millis(1500);
const GIVE_UP_AFTER: Duration = Duration::from_secs(5);

/// Who asked: a UDP endpoint of the guest, or a TCP connection to the gateway's port 53 (its
/// flow slot and the connection's serial, so an answer never reaches a later connection that
/// took over the slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    Udp { guest: SocketAddr, gateway: SocketAddr },
    Tcp { flow: usize, serial: u64 },
}

/// What became of a query.
#[derive(Debug)]
pub enum QueryOutcome {
    /// Answer the sandbox with these bytes now.
    Reply(Vec<u8>),
    /// Send these bytes to that upstream; the answer comes back through `answer`.
    Forward { upstream: SocketAddr, bytes: Vec<u8> },
    /// Not DNS at all: nothing to answer.
    Drop,
}

/// A refusal worth an event: the name, and what refused it.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub name: String,
    pub decided_by: String,
    pub reason: String,
}

struct Pending {
    asker: Asker,
    id: u16,
    name: String,
    query: Vec<u8>,
    sent: Instant,
    upstream: usize,
    retried: bool,
}

pub struct Resolver {
    upstreams: Vec<SocketAddr>,
    pending: HashMap<u16, Pending>,
    rng: u64,
}

/// What an answer from upstream became.
pub struct Answer {
    pub asker: Asker,
    pub bytes: Vec<u8>,
    pub nxdomain: bool,
    pub refusal: Option<Refusal>,
    /// Addresses to pin to names.
    pub pins: Vec<(IpAddr, String, Duration)>,
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into `b`.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    u64::from_ne_bytes(b) | 1
}

impl Resolver {
    pub fn new(upstreams: Vec<SocketAddr>) -> Resolver {
        Resolver { upstreams, pending: HashMap::new(), rng: seed() }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    fn next_id(&mut self) -> u16 {
        loop {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let id = (self.rng >> 24) as u16;
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    /// Handles one query from the sandbox. `refused` is filled when the policy refused it.
    pub fn query(&mut self, bytes: &[u8], asker: Asker, policy: &NetworkPolicy, plugins: &mut dyn FlowPolicy, now: Instant, refused: &mut Option<Refusal>) -> QueryOutcome {
        if bytes.len() > MAX_QUERY || bytes.len() < 12 {
            return QueryOutcome::Drop;
        }
        let Ok(msg) = Message::from_vec(bytes) else {
            return formerr(bytes);
        };
        if msg.message_type() != MessageType::Query {
            return QueryOutcome::Drop;
        }
        if msg.op_code() != OpCode::Query || msg.queries().len() != 1 || msg.queries()[0].query_class() != DNSClass::IN {
            return reply(&msg, ResponseCode::FormErr);
        }
        let q = &msg.queries()[0];
        let name = normalize_name(&q.name().to_ascii());
        let rtype = q.query_type();
        if let Some(block) = policy.blocked_name(&name) {
            *refused = Some(Refusal { name, decided_by: block, reason: "the name is blocked".into() });
            return reply(&msg, ResponseCode::NXDomain);
        }
        if policy.preset == crate::policy::Preset::None {
            return reply(&msg, ResponseCode::Refused);
        }
        if !plugins.is_empty() {
            if let Err((plugin, reason)) = plugins.decide_dns(&name, &rtype.to_string()) {
                *refused = Some(Refusal { name, decided_by: format!("plugin {plugin}"), reason });
                return reply(&msg, ResponseCode::NXDomain);
            }
        }
        if self.upstreams.is_empty() || self.pending.len() >= MAX_PENDING {
            return reply(&msg, ResponseCode::ServFail);
        }
        let id = self.next_id();
        let mut forwarded = bytes.to_vec();
        forwarded[..2].copy_from_slice(&id.to_be_bytes());
        let upstream = 0;
        self.pending.insert(id, Pending { asker, id: msg.id(), name, query: forwarded.clone(), sent: now, upstream, retried: false });
        QueryOutcome::Forward { upstream: self.upstreams[upstream], bytes: forwarded }
    }

    /// Queries to send again (to the next upstream) and askers to fail, at `now`.
    pub fn expire(&mut self, now: Instant) -> (Vec<(SocketAddr, Vec<u8>)>, Vec<(Asker, Vec<u8>)>) {
        let mut resend = Vec::new();
        let mut failed = Vec::new();
        let n = self.upstreams.len().max(1);
        self.pending.retain(|_, p| {
            let age = now.saturating_duration_since(p.sent);
            if age >= GIVE_UP_AFTER {
                if let Ok(msg) = Message::from_vec(&p.query) {
                    if let QueryOutcome::Reply(mut bytes) = reply(&msg, ResponseCode::ServFail) {
                        bytes[..2].copy_from_slice(&p.id.to_be_bytes());
                        failed.push((p.asker, bytes));
                    }
                }
                return false;
            }
            if age >= RETRY_AFTER && !p.retried {
                p.retried = true;
                p.upstream = (p.upstream + 1) % n;
                if let Some(u) = self.upstreams.get(p.upstream) {
                    resend.push((*u, p.query.clone()));
                }
            }
            true
        });
        (resend, failed)
    }

    /// When the next retry or give-up is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| if p.retried { p.sent + GIVE_UP_AFTER } else { p.sent + RETRY_AFTER }).min()
    }

    /// An answer arrived from `from`.
    pub fn answer(&mut self, bytes: &[u8], from: SocketAddr, policy: &NetworkPolicy, host: &[IpAddr]) -> Option<Answer> {
        if bytes.len() < 12 {
            return None;
        }
        let id = u16::from_be_bytes([bytes[0], bytes[1]]);
        let p = self.pending.get(&id)?;
        if self.upstreams.get(p.upstream) != Some(&from) && !(p.retried && self.upstreams.contains(&from)) {
            return None;
        }
        let msg = Message::from_vec(bytes).ok()?;
        let asked = Message::from_vec(&p.query).ok()?;
        if msg.message_type() != MessageType::Response || msg.queries() != asked.queries() {
            return None;
        }
        let p = self.pending.remove(&id)?;
        let mut pins = Vec::new();
        for record in msg.answers() {
            let ip = match record.data() {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            if !policy.answer_allowed(ip, &p.name, host) {
                let refusal = Refusal {
                    name: p.name.clone(),
                    decided_by: format!("preset {}", policy.preset.as_str()),
                    reason: format!("the answer holds {ip}, a {} address (DNS rebinding)", crate::addr::classify(ip, host).as_str()),
                };
                let QueryOutcome::Reply(mut out) = reply(&asked, ResponseCode::NXDomain) else { return None };
                out[..2].copy_from_slice(&p.id.to_be_bytes());
                return Some(Answer { asker: p.asker, bytes: out, nxdomain: true, refusal: Some(refusal), pins: Vec::new() });
            }
            let ttl = Duration::from_secs(u64::from(record.ttl()));
            pins.push((ip, p.name.clone(), ttl));
            let owner = normalize_name(&record.name().to_ascii());
            if owner != p.name {
                pins.push((ip, owner, ttl));
            }
        }
        let mut out = bytes.to_vec();
        out[..2].copy_from_slice(&p.id.to_be_bytes());
        Some(Answer { asker: p.asker, bytes: out, nxdomain: msg.response_code() == ResponseCode::NXDomain, refusal: None, pins })
    }
}

fn reply(query: &Message, code: ResponseCode) -> QueryOutcome {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    for q in query.queries() {
        m.add_query(q.clone());
    }
    match m.to_vec() {
        Ok(b) => QueryOutcome::Reply(b),
        Err(_) => QueryOutcome::Drop,
    }
}

/// FORMERR for a query that does not parse: just its id and the response bit.
/// A REFUSED answer to the query in `bytes` (nothing is asked upstream).
pub fn refuse(bytes: &[u8]) -> QueryOutcome {
    if bytes.len() < 12 || bytes.len() > MAX_QUERY {
        return QueryOutcome::Drop;
    }
    match Message::from_vec(bytes) {
        Ok(msg) if msg.message_type() == MessageType::Query => reply(&msg, ResponseCode::Refused),
        Ok(_) => QueryOutcome::Drop,
        Err(_) => formerr(bytes),
    }
}

fn formerr(bytes: &[u8]) -> QueryOutcome {
    if bytes[2] & 0x80 != 0 {
        return QueryOutcome::Drop;
    }
    let mut out = vec![0u8; 12];
    out[..2].copy_from_slice(&bytes[..2]);
    out[2] = 0x80 | (bytes[2] & 0x01);
    out[3] = 0x80 | 1;
    QueryOutcome::Reply(out)
}

/// Upstream servers: `ORCHESTRATOR_DNS_UPSTREAM=IP:PORT,...` (read by the caller and passed
/// as `explicit`), else the nameservers of the host's /etc/resolv.conf on port 53.
pub fn upstreams(explicit: Option<&str>, resolv_conf: &str) -> Result<Vec<SocketAddr>, String> {
    if let Some(list) = explicit.filter(|s| !s.trim().is_empty()) {
        return list
            .split(',')
            .map(|s| {
                let s = s.trim();
                s.parse::<SocketAddr>().or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53))).map_err(|_| format!("ORCHESTRATOR_DNS_UPSTREAM: {s:?} is not IP:PORT"))
            })
            .collect();
    }
    Ok(resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next().and_then(|ip| ip.parse::<IpAddr>().ok()))
        .map(|ip| SocketAddr::new(ip, 53))
        .take(3)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NoPlugins;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{rdata, Name, Record, RecordType};

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0x1234).set_recursion_desired(true).add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn answer_for(q: &[u8], ips: &[&str]) -> Vec<u8> {
        let asked = Message::from_vec(q).unwrap();
        let mut m = Message::new();
        m.set_id(asked.id()).set_message_type(MessageType::Response).add_query(asked.queries()[0].clone());
        for ip in ips {
            let name = asked.queries()[0].name().clone();
            let data = match ip.parse::<IpAddr>().unwrap() {
                IpAddr::V4(a) => RData::A(rdata::A(a)),
                IpAddr::V6(a) => RData::AAAA(rdata::AAAA(a)),
            };
            m.add_answer(Record::from_rdata(name, 60, data));
        }
        m.to_vec().unwrap()
    }

    const UP: &str = "192.0.2.53:53";
    fn asker() -> Asker {
        Asker::Udp { guest: "10.0.2.15:5000".parse().unwrap(), gateway: "10.0.2.2:53".parse().unwrap() }
    }

    #[test]
    fn a_blocked_name_gets_nxdomain_without_asking_upstream() {
        let mut r = Resolver::new(vec![UP.parse().unwrap()]);
        let p = NetworkPolicy { block_domains: vec!["evil.example".into()], ..Default::default() };
        let mut refused = None;
        let out = r.query(&query("Evil.Example.", RecordType::A), asker(), &p, &mut NoPlugins, Instant::now(), &mut refused);
        let QueryOutcome::Reply(bytes) = out else { panic!("{out:?}") };
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!((m.id(), m.response_code()), (0x1234, ResponseCode::NXDomain));
        assert_eq!(refused.unwrap().decided_by, "blockDomains evil.example");
    }

    #[test]
    fn answers_come_back_with_the_sandbox_id_and_pin_their_addresses() {
        let mut r = Resolver::new(vec![UP.parse().unwrap()]);
        let p = NetworkPolicy::default();
        let QueryOutcome::Forward { upstream, bytes } = r.query(&query("www.example", RecordType::A), asker(), &p, &mut NoPlugins, Instant::now(), &mut None) else { panic!() };
        let reply = answer_for(&bytes, &["203.0.113.10"]);
        // From elsewhere, or with another question: ignored.
        assert!(r.answer(&reply, "192.0.2.99:53".parse().unwrap(), &p, &[]).is_none());
        let a = r.answer(&reply, upstream, &p, &[]).unwrap();
        assert_eq!(Message::from_vec(&a.bytes).unwrap().id(), 0x1234);
        assert_eq!(a.pins[0].1, "www.example");
        assert!(r.answer(&reply, upstream, &p, &[]).is_none(), "an answer is taken once");
    }

    #[test]
    fn a_private_answer_under_public_only_is_nxdomain() {
        let mut r = Resolver::new(vec![UP.parse().unwrap()]);
        let p = NetworkPolicy::default();
        let QueryOutcome::Forward { upstream, bytes } = r.query(&query("rebind.example", RecordType::A), asker(), &p, &mut NoPlugins, Instant::now(), &mut None) else { panic!() };
        let a = r.answer(&answer_for(&bytes, &["203.0.113.1", "10.1.2.3"]), upstream, &p, &[]).unwrap();
        assert!(a.nxdomain && a.pins.is_empty());
        assert!(a.refusal.unwrap().reason.contains("rebinding"));
    }

    #[test]
    fn garbage_is_dropped_or_formerr_and_the_pending_set_is_bounded() {
        let mut r = Resolver::new(vec![UP.parse().unwrap()]);
        let p = NetworkPolicy::default();
        assert!(matches!(r.query(b"short", asker(), &p, &mut NoPlugins, Instant::now(), &mut None), QueryOutcome::Drop));
        let out = r.query(&[0x12, 0x34, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 1], asker(), &p, &mut NoPlugins, Instant::now(), &mut None);
        let QueryOutcome::Reply(b) = out else { panic!("{out:?}") };
        assert_eq!(&b[..2], &[0x12, 0x34]);
        for i in 0..MAX_PENDING + 10 {
            let out = r.query(&query(&format!("n{i}.example"), RecordType::A), asker(), &p, &mut NoPlugins, Instant::now(), &mut None);
            if i >= MAX_PENDING {
                let QueryOutcome::Reply(b) = out else { panic!() };
                assert_eq!(Message::from_vec(&b).unwrap().response_code(), ResponseCode::ServFail);
            }
        }
        let (resend, failed) = r.expire(Instant::now() + Duration::from_secs(6));
        assert!(resend.is_empty());
        assert_eq!(failed.len(), MAX_PENDING);
    }

    #[test]
    fn upstreams_come_from_the_variable_or_resolv_conf() {
        assert_eq!(upstreams(Some("192.0.2.53:5353, 192.0.2.54"), "").unwrap(), vec!["192.0.2.53:5353".parse().unwrap(), "192.0.2.54:53".parse().unwrap()]);
        assert!(upstreams(Some("nope"), "").is_err());
        assert_eq!(upstreams(None, "# x\nnameserver 127.0.0.53\nsearch lan\nnameserver fe80::1%eth0\n").unwrap().len(), 2);
    }
}
