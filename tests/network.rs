//! A sandbox's network as its user sees it: names resolve through the gateway, the public test
//! internet answers, private, host and metadata addresses are refused at once with an event
//! naming what refused them, DNS blocks and rebinding protection hold, rules come before the
//! preset, UDP and ping go through, and abuse stays bounded.
//!
//! Every test builds its own internet (tests/common/testnet.rs) and runs the orchestrator in
//! a namespace whose only link leads there: no packet can leave this machine.

mod common;
#[path = "common/testnet.rs"]
mod testnet;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use testnet::*;

/// The network probe, compiled once (`cc -static`: the busybox image has no libc).
fn netprobe() -> PathBuf {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/network/netprobe.c");
            let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/netprobe");
            let st = Command::new("cc").args(["-static", "-O2", "-o"]).arg(&out).arg(&src).status().expect("running cc");
            assert!(st.success(), "building {} failed", src.display());
            out
        })
        .clone()
}

/// The busybox rootfs plus the probe, as a `dir:` image of this test.
fn probe_image(env: &Env) -> PathBuf {
    let root = env.dir.path().join("netprobe-rootfs");
    let st = Command::new("cp").arg("-a").arg(rootfs()).arg(&root).status().unwrap();
    assert!(st.success());
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    std::fs::copy(netprobe(), root.join("usr/local/bin/netprobe")).unwrap();
    root
}

fn env_in(net: &TestNet) -> Env {
    let mut env = Env::new();
    env.netns = Some(net.orch_ns());
    env.extra_env.push(("ORCHESTRATOR_DNS_UPSTREAM".into(), format!("{DNS}:53")));
    env
}

/// Applies a sleeping sandbox with `network` (YAML lines under `spec:`, indented two spaces).
fn sandbox(env: &Env, name: &str, network: &str) {
    let yaml = sandbox_yaml(name, &format!("  command: [sleep, '3600']\n{network}"));
    let path = env.file(&format!("{name}.yaml"), &yaml);
    env.ok(&["apply", "-f", path.to_str().unwrap()]);
}

/// The same, from `image` (a directory).
fn sandbox_from(env: &Env, name: &str, image: &Path, extra: &str) {
    let yaml = format!("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  image: dir:{}\n  isolation: namespace\n  command: [sleep, '3600']\n{extra}", image.display());
    let path = env.file(&format!("{name}.yaml"), &yaml);
    env.ok(&["apply", "-f", path.to_str().unwrap()]);
}

fn proc_status(pid: i32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// `wget` from inside: (exit code, body, stderr, how long it took).
fn fetch(env: &Env, name: &str, url: &str) -> (i32, String, String, Duration) {
    let started = Instant::now();
    let (code, out, err) = env.sh(name, &format!("wget -q -O - {url}"));
    (code, out.trim().to_string(), err, started.elapsed())
}

fn assert_refused_at_once(env: &Env, name: &str, url: &str) {
    let (code, out, err, took) = fetch(env, name, url);
    assert_ne!(code, 0, "{url} was reached: {out}");
    assert!(err.contains("refused"), "{url}: expected a refused connection, got {err:?}");
    assert!(took < Duration::from_secs(3), "{url}: refusing took {took:?} (a drop, not a RST?)");
}

fn describe(env: &Env, name: &str) -> String {
    env.ok(&["describe", name])
}

#[test]
fn public_only_reaches_the_internet_by_name_and_refuses_private_host_and_metadata_at_once() {
    let net = TestNet::new("pub");
    let env = env_in(&net);
    sandbox(&env, "web", "");
    let (code, body, err, _) = fetch(&env, "web", "http://web.test/");
    assert_eq!((code, body.as_str()), (0, "web"), "GET by name failed: {err}");
    let (code, body, _, _) = fetch(&env, "web", &format!("http://{WEB2}/"));
    assert_eq!((code, body.as_str()), (0, "other"), "GET by address failed");
    let served = net.http_requests.load(std::sync::atomic::Ordering::SeqCst);
    for addr in [PRIVATE, METADATA, HOST_OWN, "10.0.2.2", "127.0.0.2"] {
        assert_refused_at_once(&env, "web", &format!("http://{addr}/"));
    }
    assert_eq!(net.http_requests.load(std::sync::atomic::Ordering::SeqCst), served, "a refused address was served");
    // IPv6 too, with the address usable at once (no duplicate address detection to wait out).
    let (code, body, err, _) = fetch(&env, "web", &format!("http://[{WEB6}]/"));
    assert_eq!((code, body.as_str()), (0, "web6"), "GET over IPv6: {err}");
    let (_, v6, _) = env.sh("web", "ip -6 addr show dev eth0; cat /proc/sys/net/ipv4/ping_group_range");
    assert!(v6.contains("fd00:6f72:6368::15/64") && !v6.contains("tentative"), "{v6}");
    assert!(v6.contains("2147483647"), "unprivileged ping is open inside: {v6}");
    // The sandbox sees its link as the agent configured it.
    let (_, routes, _) = env.sh("web", "ip route; cat /etc/resolv.conf");
    assert!(routes.contains("default via 10.0.2.2 dev eth0"), "{routes}");
    assert!(routes.contains("nameserver 10.0.2.2"), "{routes}");
    let events = describe(&env, "web");
    for needle in [format!("tcp to {PRIVATE}:80 denied by preset public-only: {PRIVATE} is a private address"), format!("{METADATA}:80 denied by preset public-only: {METADATA} is a metadata address"), format!("{HOST_OWN}:80 denied by preset public-only")] {
        assert!(events.contains(&needle), "describe lacks {needle:?}:\n{events}");
    }
    let json = env.ok(&["events", "web", "-o", "json"]);
    assert!(json.contains("NetworkDenied"), "{json}");
    // The counters: `get -o json` and `describe` show them.
    env.wait_for("the network counters", Duration::from_secs(5), || network_stats(&env, "web")["flowsDenied"].as_u64().unwrap_or(0) >= 4);
    let stats = network_stats(&env, "web");
    assert!(stats["flowsAllowed"].as_u64().unwrap() >= 2 && stats["dnsQueries"].as_u64().unwrap() >= 1 && stats["rxBytes"].as_u64().unwrap() > 0, "{stats}");
    assert!(describe(&env, "web").contains("Flows:"), "describe shows the counters");
}

#[test]
fn dns_blocks_rebinding_and_domain_rules_decide_on_the_names_the_sandbox_resolved() {
    let net = TestNet::new("dns");
    let env = env_in(&net);
    sandbox(
        &env,
        "names",
        "  network:\n    blockDomains: [ evil.example ]\n    blockDomainSuffixes: [ .tracking.example ]\n    rules:\n      - { action: deny, host: other.test }\n",
    );
    let (code, out, _) = env.sh("names", "nslookup web.test");
    assert!(code == 0 && out.contains(WEB), "web.test did not resolve: {out}");
    for name in ["evil.example", "a.tracking.example", "rebind.test"] {
        let (code, out, err) = env.sh("names", &format!("nslookup {name}"));
        assert!(code != 0 && (out + &err).contains("NXDOMAIN"), "{name} was not NXDOMAIN");
    }
    let queries = net.dns_queries.load(std::sync::atomic::Ordering::SeqCst);
    let _ = env.sh("names", "nslookup evil.example");
    assert_eq!(net.dns_queries.load(std::sync::atomic::Ordering::SeqCst), queries, "a blocked name reached the upstream");
    // The deny rule sees the name: by name, and by the address the sandbox resolved it to.
    assert_refused_at_once(&env, "names", "http://other.test/");
    assert_refused_at_once(&env, "names", &format!("http://{WEB2}/"));
    let (code, body, _, _) = fetch(&env, "names", "http://web.test/");
    assert_eq!((code, body.as_str()), (0, "web"));
    let events = describe(&env, "names");
    for needle in ["evil.example refused by blockDomains evil.example", "rebind.test refused by preset public-only", "DNS rebinding", "other.test (203.0.113.11:80) denied by rule 1 (deny host other.test)"] {
        assert!(events.contains(needle), "describe lacks {needle:?}:\n{events}");
    }
}

#[test]
fn rules_open_the_host_none_has_only_loopback_and_allow_all_reaches_private_addresses() {
    let net = TestNet::new("rules");
    net.host_http(8080, "host-service");
    net.host_http(8081, "closed-service");
    let env = env_in(&net);
    sandbox(&env, "hostrule", "  network:\n    rules:\n      - { action: allow, group: host, ports: [8080] }\n");
    sandbox(&env, "offline", "  network: { policy: none }\n");
    sandbox(&env, "open", "  network: { policy: allow-all }\n");
    let (code, body, err, _) = fetch(&env, "hostrule", "http://10.0.2.2:8080/");
    assert_eq!((code, body.as_str()), (0, "host-service"), "{err}");
    assert_refused_at_once(&env, "hostrule", "http://10.0.2.2:8081/");
    let (_, links, _) = env.sh("offline", "ls /sys/class/net");
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), vec!["lo"], "policy none: {links}");
    let (code, _, err, _) = fetch(&env, "offline", &format!("http://{WEB}/"));
    assert_ne!(code, 0, "policy none reached the internet: {err}");
    let (code, body, err, _) = fetch(&env, "open", &format!("http://{PRIVATE}/"));
    assert_eq!((code, body.as_str()), (0, "private"), "allow-all: {err}");
}

#[test]
fn udp_and_ping_go_through_where_the_policy_allows_them() {
    let net = TestNet::new("udp");
    let env = env_in(&net);
    let image = probe_image(&env);
    sandbox_from(&env, "dgram", &image, "");
    let (_, out, err) = env.sh("dgram", &format!("netprobe udp {WEB} 7 hello-udp"));
    assert_eq!(out.trim(), "reply hello-udp", "UDP echo: {err}");
    let started = Instant::now();
    let (_, out, _) = env.sh("dgram", &format!("netprobe udp {PRIVATE} 7 hello"));
    assert!(out.contains("No route to host") && started.elapsed() < Duration::from_secs(2), "a denied datagram fails at once: {out}");
    let (code, out, _) = env.sh("dgram", &format!("ping -c 2 -W 2 {WEB}"));
    assert_eq!(code, 0, "ping {WEB}: {out}");
    assert!(out.contains("2 packets received"), "{out}");
    let (code, out, _) = env.sh("dgram", &format!("ping -c 1 -W 2 {PRIVATE}"));
    assert_ne!(code, 0, "ping of a private address answered: {out}");
    let events = describe(&env, "dgram");
    assert!(events.contains(&format!("udp to {PRIVATE}:7 denied by preset public-only")), "{events}");
    assert!(events.contains(&format!("icmp to {PRIVATE}:0 denied by preset public-only")), "{events}");
}

#[test]
fn connection_floods_and_syn_floods_stay_within_the_flow_bound_and_other_flows_keep_working() {
    let net = TestNet::new("flood");
    let env = env_in(&net);
    let image = probe_image(&env);
    sandbox_from(&env, "flood", &image, "  limits: { nofile: 4096 }\n  network: { maxConnections: 64 }\n");
    let shim = env.shim_pid("flood");
    let (fds_before, rss_before) = (fd_count(shim), proc_status(shim, "VmRSS:"));
    let mut peak_fds = 0;
    let mut total_connected = 0;
    let mut total_refused = 0;
    for round in 0..5 {
        // 2000 connections at once, held open 3 s; the shim's fds are sampled meanwhile.
        let child = env.cmd(&["exec", "flood", "--", "netprobe", "hold", WEB, "80", "2000", "3"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            peak_fds = peak_fds.max(fd_count(shim));
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        let nums: Vec<usize> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        assert_eq!(nums.len(), 4, "round {round}: {line}");
        assert!(nums[0] <= 64, "round {round}: more flows than maxConnections: {line}");
        let (_, link, _) = env.sh("flood", "cd /sys/class/net/eth0/statistics && grep . tx_dropped rx_dropped tx_packets rx_packets");
        assert_eq!(nums[3], 0, "round {round}: connections left hanging (dropped, not refused): {line}\n{link}");
        total_connected += nums[0];
        total_refused += nums[1];
    }
    assert!(total_connected >= 5 * 32, "the bound was not the limit: {total_connected} connected");
    assert!(total_refused >= 5 * 1900, "refusals: {total_refused}");
    assert!(peak_fds <= fds_before + 64 + 8, "the shim held {peak_fds} fds (from {fds_before}) for 64 flows");
    let (_, out, _) = env.sh("flood", "netprobe synflood 10.0.2.15 203.0.113.10 80 20000");
    assert_eq!(out.trim(), "sent 20000", "{out}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(fd_count(shim) <= fds_before + 64 + 8, "after the SYN flood the shim holds {} fds", fd_count(shim));
    let rss_after = proc_status(shim, "VmRSS:");
    assert!(rss_after < rss_before + 96 * 1024, "the shim's memory grew from {rss_before} to {rss_after} KiB");
    // The sandbox's network still works, once the flood's flows are gone.
    env.wait_for("the flood's flows to drain", Duration::from_secs(30), || fetch(&env, "flood", "http://web.test/").1 == "web");
    let events: Vec<serde_json::Value> = serde_json::from_str(&env.ok(&["events", "flood", "-o", "json", "--limit", "1000"])).unwrap();
    assert!(events.len() < 200, "denial events are rate-limited: {} recorded", events.len());
    assert!(events.iter().any(|e| e["message"].as_str().unwrap_or("").contains("network.maxConnections")), "the bound is named in an event");
}

struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main_pid(env: &Env, name: &str) -> Option<u64> {
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(env.instance_dir(name).join("state.json")).ok()?).ok()?;
    state["main_pid"].as_u64()
}

#[test]
fn a_rule_added_under_serve_blocks_the_next_connection_and_closes_open_ones_without_a_restart() {
    let net = TestNet::new("live");
    let env = env_in(&net);
    let cfg = env.dir.path().join("config");
    std::fs::create_dir_all(&cfg).unwrap();
    let yaml = |network: &str| sandbox_yaml("live", &format!("  command: [sleep, '3600']\n{network}"));
    std::fs::write(cfg.join("live.yaml"), yaml("")).unwrap();
    let child = env.cmd(&["serve", "--config", cfg.to_str().unwrap(), "--resync", "1"]).stderr(std::process::Stdio::null()).stdout(std::process::Stdio::null()).spawn().unwrap();
    let _serve = Serve(child);
    env.wait_for("the sandbox to run", Duration::from_secs(30), || env.get().iter().any(|o| o["name"] == "live" && o["status"] == "Running") && main_pid(&env, "live").is_some());
    let (pid, shim) = (main_pid(&env, "live"), env.shim_pid("live"));
    assert_eq!(fetch(&env, "live", "http://web.test/").1, "web");
    // A connection held open across the change (the server waits for a request).
    let held = env.cmd(&["exec", "live", "--", "sh", "-c", &format!("mkfifo /tmp/in; sleep 30 > /tmp/in 2>/dev/null & nc {WEB} 80 < /tmp/in; echo closed")]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(cfg.join("live.yaml"), yaml(&format!("  network:\n    rules:\n      - {{ action: deny, cidr: {WEB}/32 }}\n"))).unwrap();
    env.wait_for("the new rule to refuse connections", Duration::from_secs(20), || {
        let (code, _, err, _) = fetch(&env, "live", "http://web.test/");
        code != 0 && err.contains("refused")
    });
    let started = Instant::now();
    let out = held.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("closed") && started.elapsed() < Duration::from_secs(10), "the open connection was not closed by the new rule");
    assert_eq!((main_pid(&env, "live"), env.shim_pid("live")), (pid, shim), "the sandbox was restarted");
    assert_eq!(fetch(&env, "live", &format!("http://{WEB2}/")).1, "other", "other destinations still work");
    let events = describe(&env, "live");
    assert!(events.contains("NetworkUpdated"), "{events}");
    assert!(events.contains(&format!("rule 1 (deny cidr {WEB}/32)")), "{events}");
    // Applied once: the resyncs after it (every second here) find nothing to change.
    std::thread::sleep(Duration::from_secs(3));
    let events = env.ok(&["events", "live", "--limit", "100"]);
    assert_eq!(events.matches("NetworkUpdated").count(), 1, "the change is recorded as applied:\n{events}");
}

/// Where `just plugins` put the components (tests/setup.sh test builds them).
fn component(name: &str) -> PathBuf {
    let dir = std::env::var_os("ORCHESTRATOR_TEST_PLUGINS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: build the test plugins with `just plugins` (tests/setup.sh test does)", path.display());
    path
}

fn network_stats(env: &Env, name: &str) -> serde_json::Value {
    env.sandbox(name)["network"].clone()
}

#[test]
fn policy_plugins_in_c_python_and_js_decide_real_flows_and_a_trapping_plugin_denies() {
    let net = TestNet::new("plug");
    let env = env_in(&net);
    let mut docs = Vec::new();
    for lang in ["c", "py", "js"] {
        docs.push(format!(
            "apiVersion: orchestrator/v1\nkind: Plugin\nmetadata: {{ name: guard-{lang} }}\nspec:\n  component: {}\n  config: {{ ports: '80', allow-domains: web.test, cache-seconds: '60' }}\n  limits: {{ timeout: 10s }}\n",
            component(&format!("egress-guard-{lang}")).display()
        ));
        docs.push(sandbox_yaml(&format!("pl-{lang}"), &format!("  command: [sleep, '3600']\n  network: {{ plugins: [guard-{lang}] }}\n")));
    }
    docs.push(format!("apiVersion: orchestrator/v1\nkind: Plugin\nmetadata: {{ name: trapper }}\nspec:\n  component: {}\n  config: {{ mode: trap }}\n", component("hostile-c").display()));
    docs.push(sandbox_yaml("pl-trap", "  command: [sleep, '3600']\n  network: { plugins: [trapper] }\n"));
    let f = env.file("plugins.yaml", &docs.join("---\n"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    for lang in ["c", "py", "js"] {
        let name = format!("pl-{lang}");
        for round in 0..2 {
            let (code, body, err, _) = fetch(&env, &name, "http://web.test/");
            assert_eq!((code, body.as_str()), (0, "web"), "{lang} round {round}: {err}");
        }
        assert_refused_at_once(&env, &name, "http://web.test:8080/");
        assert_refused_at_once(&env, &name, &format!("http://{WEB2}/"));
        let (code, out, err) = env.sh(&name, "nslookup other.test");
        assert!(code != 0 && (out + &err).contains("NXDOMAIN"), "{lang}: other.test resolved");
        let events = describe(&env, &name);
        for needle in [
            format!("web.test (203.0.113.10:8080) denied by plugin guard-{lang}: port 8080 not allowed"),
            format!("tcp to {WEB2}:80 denied by plugin guard-{lang}"),
            format!("other.test refused by plugin guard-{lang}: domain other.test not allowed"),
        ] {
            assert!(events.contains(&needle), "{lang}: describe lacks {needle:?}:\n{events}");
        }
        env.wait_for("the network counters", Duration::from_secs(5), || network_stats(&env, &name)["pluginCacheHits"].as_u64().unwrap_or(0) >= 1);
    }
    // A plugin that traps denies: policy fails closed.
    let (code, _, err) = env.sh("pl-trap", &format!("wget -q -O - http://{WEB}/"));
    assert!(code != 0 && err.contains("refused"), "a trapping plugin let a flow through: {err}");
    let events = describe(&env, "pl-trap");
    assert!(events.contains("denied by plugin trapper") && events.contains("trapped"), "{events}");
}

/// An HTTP GET from the orchestrator's namespace (where published ports listen).
fn get_from_host(net: &TestNet, port: u16) -> std::io::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(&net.orch_ns(), move || {
        let r = (|| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        let _ = tx.send(r);
    });
    rx.recv().unwrap()
}

#[test]
fn a_published_port_serves_a_guest_server_and_a_taken_port_refuses_the_sandbox() {
    let net = TestNet::new("ports");
    let env = env_in(&net);
    let yaml = sandbox_yaml("served", "  command: [sh, -c, 'mkdir -p /www && echo guest-page > /www/index.html && exec httpd -f -p 80 -h /www']\n  ports: [ { host: 18080, guest: 80 } ]\n");
    let f = env.file("served.yaml", &yaml);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let mut page = String::new();
    env.wait_for("the published port to answer", Duration::from_secs(10), || {
        page = get_from_host(&net, 18080).unwrap_or_default();
        page.contains("guest-page")
    });
    assert!(page.starts_with("HTTP/1.1 200") || page.starts_with("HTTP/1.0 200"), "{page}");
    // Many clients at once, each served.
    let pages: Vec<String> = (0..20).map(|_| get_from_host(&net, 18080).unwrap_or_default()).collect();
    assert!(pages.iter().all(|p| p.contains("guest-page")), "{pages:?}");

    // A host port already in use refuses the sandbox, naming the field, and leaves nothing.
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(&net.orch_ns(), move || {
        let holder = std::net::TcpListener::bind("127.0.0.1:18081").unwrap();
        tx.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(60));
        drop(holder);
    });
    rx.recv().unwrap();
    let yaml = sandbox_yaml("clash", "  command: [sleep, '3600']\n  ports: [ { host: 18081, guest: 80 } ]\n");
    let f = env.file("clash.yaml", &yaml);
    let out = env.run(&["apply", "-f", f.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a taken port was accepted: {text}");
    assert!(text.contains("spec.ports[0]: cannot listen on 127.0.0.1:18081") && text.contains("in use"), "{text}");
    let instance = env.sandbox("clash")["instance"].as_str().unwrap_or("").to_string();
    assert!(!instance.is_empty());
    assert_eq!(leftovers(&instance), Vec::<String>::new(), "a refused sandbox left things behind");

    // `run -p` publishes the same way.
    let mut child = env
        .cmd(&["run", "--rm", "-p", "18082:80", &format!("dir:{}", rootfs().display()), "--", "sh", "-c", "mkdir -p /w && echo run-page > /w/index.html && exec httpd -f -p 80 -h /w"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    env.wait_for("run -p to answer", Duration::from_secs(15), || get_from_host(&net, 18082).unwrap_or_default().contains("run-page"));
    let _ = child.kill();
    let _ = child.wait();
}

/// The escape suite's network probes: what a root process inside tries first against the
/// network boundary, each an assertion. (Here rather than in tests/security.rs because every
/// network probe must run inside a test-made internet.)
#[test]
fn escape_probes_host_loopback_host_addresses_spoofed_sources_and_other_sandboxes() {
    let net = TestNet::new("esc");
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Host services: one on the loopback the gateway would reach, one on every host address.
    serve_http(&net.orch_ns(), "127.0.0.1:18200".parse().unwrap(), "host-loopback", seen.clone());
    serve_http(&net.orch_ns(), "0.0.0.0:18201".parse().unwrap(), "host-any", seen.clone());
    let env = env_in(&net);
    let image = probe_image(&env);
    sandbox_from(&env, "prober", &image, "");
    let published = sandbox_yaml("neighbour", "  command: [sh, -c, 'mkdir -p /w && echo neighbour > /w/index.html && exec httpd -f -p 80 -h /w']\n  ports: [ { host: 18202, guest: 80 } ]\n");
    let f = env.file("neighbour.yaml", &published);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    env.wait_for("the neighbour's port", Duration::from_secs(10), || get_from_host(&net, 18202).unwrap_or_default().contains("neighbour"));
    let probes = [
        ("the host's loopback through the gateway", "http://10.0.2.2:18200/"),
        ("the host's own address", &format!("http://{HOST_OWN}:18201/") as &str),
        ("the gateway's IPv6 address", "http://[fd00:6f72:6368::2]:18200/"),
        ("another sandbox's published port", "http://10.0.2.2:18202/"),
        ("the cloud metadata service", &format!("http://{METADATA}/latest/meta-data/") as &str),
    ];
    for (what, url) in probes {
        let (code, out, err, took) = fetch(&env, "prober", url);
        assert!(code != 0 && took < Duration::from_secs(3), "reaching {what} ({url}) was not refused at once: {out} {err}");
    }
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0, "a host service was reached from inside");
    // Spoofed sources: a raw socket's SYNs from an address that is not the sandbox's own open
    // nothing (the stack drops them before any decision).
    let before = net.http_requests.load(std::sync::atomic::Ordering::SeqCst);
    let (_, out, _) = env.sh("prober", &format!("netprobe synflood 10.9.9.9 {WEB} 80 500"));
    assert_eq!(out.trim(), "sent 500");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(net.http_requests.load(std::sync::atomic::Ordering::SeqCst), before);
    let allowed = network_stats(&env, "prober")["flowsAllowed"].as_u64().unwrap_or(0);
    let (_, out, _) = env.sh("prober", &format!("netprobe synflood 10.9.9.9 {WEB} 80 100"));
    assert_eq!(out.trim(), "sent 100");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(network_stats(&env, "prober")["flowsAllowed"].as_u64().unwrap_or(0), allowed, "spoofed SYNs opened flows");
    // DNS over TCP at the gateway is filtered like UDP.
    let (_, out, _) = env.sh("prober", "netprobe dnstcp 10.0.2.2 web.test");
    assert_eq!(out.trim(), format!("rcode 0 {WEB}"), "DNS over TCP");
    let (_, out, _) = env.sh("prober", "netprobe dnstcp 10.0.2.2 rebind.test");
    assert_eq!(out.trim(), "rcode 3", "a rebinding answer over TCP is NXDOMAIN");
}
