//! The pin set: which names this sandbox resolved to which addresses, learnt from the DNS
//! answers the gateway relayed. Domain rules and blocks match a flow through it, and the
//! plugins' `flow.domain` is its most recent name.
//!
//! Invariants: bounded (`MAX_ADDRESSES` addresses, `MAX_NAMES` names each, oldest dropped);
//! a pin outlives its record's TTL by a floor (`MIN_PIN`), since programs keep using an address
//! longer than the TTL says, and never lives beyond `MAX_PIN`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const MAX_ADDRESSES: usize = 16_384;
pub const MAX_NAMES: usize = 8;
const MIN_PIN: Duration = Duration::from_secs(300);
const MAX_PIN: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
pub struct Pins {
    by_ip: HashMap<IpAddr, Vec<(String, Instant)>>,
}

impl Pins {
    pub fn insert(&mut self, ip: IpAddr, name: &str, ttl: Duration, now: Instant) {
        let ip = crate::addr::canonical(ip);
        if self.by_ip.len() >= MAX_ADDRESSES && !self.by_ip.contains_key(&ip) {
            self.by_ip.retain(|_, names| {
                names.retain(|(_, until)| *until > now);
                !names.is_empty()
            });
            if self.by_ip.len() >= MAX_ADDRESSES {
                // Still full of live pins: forget the ones closest to expiry.
                let mut all: Vec<(IpAddr, Instant)> = self.by_ip.iter().map(|(ip, n)| (*ip, n.iter().map(|x| x.1).max().unwrap_or(now))).collect();
                all.sort_by_key(|x| x.1);
                for (ip, _) in all.into_iter().take(MAX_ADDRESSES / 8) {
                    self.by_ip.remove(&ip);
                }
            }
        }
        let until = now + ttl.clamp(MIN_PIN, MAX_PIN);
        let names = self.by_ip.entry(ip).or_default();
        names.retain(|(n, _)| n != name);
        names.insert(0, (name.to_string(), until));
        names.truncate(MAX_NAMES);
    }

    /// Live names for `ip`, most recent first.
    pub fn names(&self, ip: IpAddr, now: Instant) -> Vec<String> {
        self.by_ip
            .get(&crate::addr::canonical(ip))
            .map(|names| names.iter().filter(|(_, until)| *until > now).map(|(n, _)| n.clone()).collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_most_recent_first_bounded_and_expire() {
        let mut p = Pins::default();
        let now = Instant::now();
        let ip: IpAddr = "203.0.113.10".parse().unwrap();
        for i in 0..20 {
            p.insert(ip, &format!("n{i}.example"), Duration::from_secs(60), now);
        }
        let names = p.names(ip, now);
        assert_eq!(names.len(), MAX_NAMES);
        assert_eq!(names[0], "n19.example");
        assert!(p.names(ip, now + MIN_PIN + Duration::from_secs(1)).is_empty());
        assert_eq!(p.names("::ffff:203.0.113.10".parse().unwrap(), now)[0], "n19.example");
    }

    #[test]
    fn the_set_stays_bounded_under_a_flood_of_answers() {
        let mut p = Pins::default();
        let now = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 5000) {
            p.insert(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), "x.example", Duration::from_secs(60), now);
        }
        assert!(p.len() <= MAX_ADDRESSES);
    }
}
