//! Runs a stack over a TUN device in an existing network namespace, for trying the link by
//! hand: `cargo run -p netstack --example link -- /run/netns/NAME [allow-all|public-only]`
//! (as root; configure the namespace's eth0 as 10.0.2.15/24 via 10.0.2.2, fd00:6f72:6368::15/64).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ns = args.get(1).expect("usage: link NETNS [PRESET]");
    let preset = netstack::Preset::parse(args.get(2).map(String::as_str).unwrap_or("public-only")).expect("preset");
    let fd = netstack::tun::create_in(std::path::Path::new(ns), "eth0").expect("creating the TUN");
    let upstreams = netstack::dns::upstreams(std::env::var("ORCHESTRATOR_DNS_UPSTREAM").ok().as_deref(), &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()).expect("upstreams");
    let mut host = netstack::policy::Rule { action: Some(netstack::policy::Action::Allow), group: Some(netstack::addr::Group::Host), ..Default::default() };
    host.ports = vec![(1, 65535)];
    let policy = netstack::NetworkPolicy { preset, rules: vec![host], ..Default::default() };
    let (tx, rx) = std::sync::mpsc::channel();
    let cfg = netstack::StackConfig { dns_upstreams: upstreams, ..Default::default() };
    let h = netstack::spawn(cfg, fd, netstack::Wiring::new(policy, tx)).expect("starting the stack");
    println!("ready");
    for ev in rx {
        println!("{ev:?} {:?}", h.stats());
    }
}
