//! Plugins for real: components built from C, Python and JavaScript sources by `just plugins`
//! (plugins/build.sh), loaded in real wasmtime, wired into real sandboxes.

mod common;

use common::*;
use orchestrator::plugin::policy::{decide_dns, decide_flow, DecisionCache};
use orchestrator::plugin::{FlowAction, Protocol, Registry, SandboxInfo};
use orchestrator::spec::{PluginGrants, PluginSpec};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where `just plugins` put the components.
fn component(name: &str) -> PathBuf {
    let dir = std::env::var_os("ORCHESTRATOR_TEST_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: build the test plugins with `just plugins` (tests/setup.sh test does)", path.display());
    path
}

fn plugin_spec(name: &str, config: &[(&str, &str)]) -> PluginSpec {
    PluginSpec {
        component: component(name).to_string_lossy().into_owned(),
        config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        memory: None,
        // Interpreter components in a debug build, with the suite running beside them, can
        // take longer than the 1 s default on a first call.
        timeout_ms: Some(TEST_TIMEOUT_MS),
        grants: PluginGrants::default(),
        interval_secs: None,
    }
}

const TEST_TIMEOUT_MS: u64 = 10_000;
/// The same, for Plugin resources in YAML.
const TEST_LIMITS: &str = "  limits: { timeout: 10s }\n";

fn sandbox(name: &str, labels: &[(&str, &str)]) -> SandboxInfo {
    SandboxInfo {
        name: name.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        image: "dir:/rootfs".into(),
        isolation: "namespace".into(),
    }
}

fn registry() -> Registry {
    Registry::new(Some(plugin_cache()))
}

const POLICY_CONFIG: &[(&str, &str)] = &[("ports", "80,443"), ("allow-domains", "example.com,example.org"), ("cache-seconds", "30")];

/// The same rule, written in C, Python and JavaScript, decides the same way.
#[test]
fn policy_decisions_match_the_rule_in_c_python_and_js() {
    let reg = registry();
    let public: IpAddr = "93.184.216.34".parse().unwrap();
    let plain = sandbox("web", &[]);
    let open = sandbox("builder", &[("egress", "open")]);
    // (sandbox, ip, port, domain, expected: Ok(()) allow / Err(reason fragment))
    let flows: Vec<(&SandboxInfo, IpAddr, u16, Option<&str>, Result<(), &str>)> = vec![
        (&plain, "10.1.2.3".parse().unwrap(), 443, Some("example.com"), Err("private address")),
        (&plain, "169.254.169.254".parse().unwrap(), 80, None, Err("private address")),
        (&plain, "::1".parse().unwrap(), 443, None, Err("private address")),
        (&plain, "::ffff:192.168.1.1".parse().unwrap(), 443, None, Err("private address")),
        (&plain, "fd00::1".parse().unwrap(), 443, None, Err("private address")),
        (&plain, public, 443, Some("example.com"), Ok(())),
        (&plain, public, 443, Some("www.example.org"), Ok(())),
        (&plain, public, 22, Some("example.com"), Err("port 22 not allowed")),
        (&plain, public, 443, Some("notexample.com"), Err("domain notexample.com not allowed")),
        (&plain, public, 443, None, Err("no domain known")),
        (&open, public, 443, Some("anything.test"), Ok(())),
        (&open, "10.0.0.1".parse().unwrap(), 443, Some("anything.test"), Err("private address")),
    ];
    for lang in ["c", "py", "js"] {
        let plugin = reg.get(&format!("egress-{lang}"), &plugin_spec(&format!("egress-guard-{lang}"), POLICY_CONFIG)).unwrap();
        assert_eq!(plugin.kinds(), vec![orchestrator::plugin::Kind::NetworkPolicy], "{lang}");
        let plugins = [plugin];
        for (sb, ip, port, domain, expected) in &flows {
            let cache = DecisionCache::default();
            let d = decide_flow(&plugins, &cache, sb, Protocol::Tcp, *ip, *port, *domain);
            match (expected, &d.action) {
                (Ok(()), FlowAction::Allow) => {}
                (Err(fragment), FlowAction::Deny(reason)) => assert!(reason.contains(fragment), "{lang}: {ip}:{port} {domain:?}: reason {reason:?}, expected {fragment:?}"),
                _ => panic!("{lang}: {} {ip}:{port} {domain:?}: got {:?}, expected {expected:?}", sb.name, d.action),
            }
            assert_eq!(cache.len(), 1, "{lang}: the decision is cached for 30 s");
            assert!(decide_flow(&plugins, &cache, sb, Protocol::Tcp, *ip, *port, *domain).cached);
        }
        let cache = DecisionCache::default();
        assert_eq!(decide_dns(&plugins, &cache, &plain, "api.example.com", "A"), Ok(()), "{lang}");
        let denied = decide_dns(&plugins, &cache, &plain, "evil.test", "A").unwrap_err();
        assert!(denied.1.contains("evil.test"), "{lang}: {denied:?}");
    }
}

/// `plugin check` names the kinds and the capabilities; `plugin eval` answers with the exit code.
#[test]
fn plugin_check_and_eval_from_the_command_line() {
    let env = Env::new();
    let c = component("egress-guard-c");
    let out = env.ok(&["plugin", "check", c.to_str().unwrap()]);
    assert!(out.contains("implements: network-policy"), "{out}");
    assert!(out.contains("orchestrator:plugin/host@0.1.1"), "{out}");
    // Built against the WIT as released at 0.1.0 (tests/plugins/wit-0.1.0): still usable here.
    let old = env.ok(&["plugin", "check", component("test-metrics-py").to_str().unwrap()]);
    assert!(old.contains("implements: metrics-sink") && old.contains("orchestrator:plugin/host@0.1.0"), "{old}");
    let v2 = env.ok(&["plugin", "check", component("test-metrics-v2-py").to_str().unwrap()]);
    assert!(v2.contains("implements: metrics-sink"), "{v2}");
    let hostile = env.ok(&["plugin", "check", component("hostile-c").to_str().unwrap()]);
    assert!(hostile.contains("network-policy, rootfs-patch, secret-provider, metrics-sink"), "{hostile}");
    let py = env.ok(&["plugin", "check", component("test-secrets-py").to_str().unwrap()]);
    assert!(py.contains("wasi:filesystem/preopens") && py.contains("spec.grants.readOnlyDirs"), "{py}");
    let wrong = env.run(&["plugin", "check", component("wrong-world-c").to_str().unwrap()]);
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("implements none of the orchestrator's plugin worlds"), "{err}");
    let not_wasm = env.file("not.wasm", "hello");
    let out = env.run(&["plugin", "check", not_wasm.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not WebAssembly"), "{out:?}");

    let yaml = format!(
        "apiVersion: orchestrator/v1\nkind: Plugin\nmetadata: {{ name: guard }}\nspec:\n  component: {}\n  config: {{ ports: '443', allow-domains: example.com }}\n",
        c.display()
    );
    let f = env.file("guard.yaml", &yaml);
    let applied = env.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(applied.contains("plugin/guard loaded (network-policy)"), "{applied}");
    let allow = env.run(&["plugin", "eval", "guard", "--connect", "93.184.216.34:443", "--domain", "example.com"]);
    assert_eq!(allow.status.code(), Some(0), "{allow:?}");
    assert!(String::from_utf8_lossy(&allow.stdout).starts_with("allow tcp example.com"), "{allow:?}");
    let deny = env.run(&["plugin", "eval", "guard", "--connect", "10.0.0.1:443"]);
    assert_eq!(deny.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&deny.stdout).contains("private address"), "{deny:?}");
    let dns = env.run(&["plugin", "eval", "guard", "--dns", "evil.test"]);
    assert_eq!(dns.status.code(), Some(1));
    let listed = env.ok(&["plugin", "ls"]);
    assert!(listed.contains("guard") && listed.contains("network-policy"), "{listed}");
}

/// A rootfs-patch plugin (JavaScript) and declarative patches land in the writable layer: the
/// files are there inside, the image is untouched, and a restart does not apply them twice.
#[test]
fn rootfs_patches_from_a_plugin_and_the_spec_are_inside_the_sandbox() {
    let env = Env::new();
    let yaml = format!(
        "apiVersion: orchestrator/v1\nkind: Plugin\nmetadata: {{ name: patcher }}\nspec:\n  component: {}\n  config: {{ greeting: hi-from-config }}\n{TEST_LIMITS}---\n{}",
        component("test-patch-js").display(),
        sandbox_yaml(
            "patched",
            "  command: [sleep, '100000']\n  patches:\n    - { op: write, path: /etc/app.conf, content: \"mode=spec\\n\", mode: '0640' }\n    - { op: mkdir, path: /data/cache }\n  hooks: { rootfsPatch: [patcher] }\n"
        )
    );
    let f = env.file("patched.yaml", &yaml);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let (code, out, err) = env.sh("patched", "cat /opt/patched/hello.txt; readlink /opt/patched/link; stat -c %a /opt/patched/hello.txt; grep -c patched.internal /etc/hosts; test -e /etc/motd || echo no-motd; cat /etc/app.conf; stat -c %a /etc/app.conf; test -d /data/cache && echo dir");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello from patched\nhi-from-config\nhello.txt\n600\n1\nno-motd\nmode=spec\n640\ndir\n");
    assert!(!rootfs().join("opt/patched").exists(), "the image must not change");
    assert!(rootfs().join("etc/motd").exists(), "the image must not change");
    env.ok(&["stop", "patched"]);
    env.ok(&["start", "patched"]);
    let (_, out, _) = env.sh("patched", "grep -c patched.internal /etc/hosts");
    assert_eq!(out.trim(), "1", "patches apply once per writable layer");
}

/// A failing or escaping rootfs-patch plugin refuses the sandbox with the plugin's message.
#[test]
fn a_failing_or_escaping_patch_plugin_refuses_the_sandbox() {
    let env = Env::new();
    for (name, config, expected) in [
        ("refused", "{ fail: 'true' }", "patcher refused: fail=true"),
        ("escaping", "{ escape: 'true' }", "leaves the root filesystem"),
    ] {
        let yaml = format!(
            "apiVersion: orchestrator/v1\nkind: Plugin\nmetadata: {{ name: p-{name} }}\nspec:\n  component: {}\n  config: {config}\n{TEST_LIMITS}---\n{}",
            component("test-patch-js").display(),
            sandbox_yaml(name, &format!("  command: [sleep, '100000']\n  hooks: {{ rootfsPatch: [p-{name}] }}\n"))
        );
        let f = env.file(&format!("{name}.yaml"), &yaml);
        let out = env.run(&["apply", "-f", f.to_str().unwrap()]);
        assert!(!out.status.success());
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(expected), "{name}: {text}");
        assert_eq!(env.status(name), "Failed");
        let describe = env.ok(&["describe", name]);
        assert!(describe.contains(expected), "{describe}");
    }
}

/// A secret provider (Python, reading a granted read-only directory) resolves the value; the
/// sandbox sees only a placeholder, and the value is nowhere on disk or in any output.
#[test]
fn secret_values_never_reach_the_store_the_logs_or_the_sandbox() {
    let env = Env::new();
    const VALUE: &str = "sk-live-9f8e7d6c5b4a-SECRET";
    let secrets = env.dir.path().join("vault");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("openai"), format!("{VALUE}\n")).unwrap();
    let yaml = format!(
        "apiVersion: orchestrator/v1\nkind: Plugin\nmetadata: {{ name: vault }}\nspec:\n  component: {}\n  grants: {{ readOnlyDirs: ['{}:/secrets'] }}\n{TEST_LIMITS}---\n{}",
        component("test-secrets-py").display(),
        secrets.display(),
        sandbox_yaml("agent", "  command: [sh, -c, 'echo started with $API_KEY; exec sleep 100000']\n  secrets: [ { env: API_KEY, provider: vault, key: openai, allowHosts: [api.example.com] } ]\n")
    );
    let f = env.file("agent.yaml", &yaml);
    let out = env.cmd(&["apply", "-f", f.to_str().unwrap()]).env("ORCHESTRATOR_LOG", "debug").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut seen = String::new();
    seen.push_str(&String::from_utf8_lossy(&out.stdout));
    seen.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(seen.contains("resolving openai for agent"), "the provider ran and logged: {seen}");
    let (code, placeholder, _) = env.sh("agent", "printf %s \"$API_KEY\"");
    assert_eq!(code, 0);
    assert!(placeholder.starts_with("ORCHESTRATOR_SECRET_"), "{placeholder}");
    // Nowhere inside the sandbox: not its environment, not a file.
    // (-xdev: the sandbox's own root filesystem, not /proc, /sys or /dev.)
    let (_, found, _) = env.sh("agent", &format!("find / -xdev -type f -exec grep -l '{VALUE}' {{}} + 2>/dev/null; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c '{VALUE}'"));
    assert_eq!(found.trim(), "0", "the value leaked into the sandbox: {found}");
    for args in [vec!["describe", "agent"], vec!["get", "agent", "-o", "yaml"], vec!["logs", "agent"]] {
        seen.push_str(&env.ok(&args));
    }
    assert!(seen.contains("started with ORCHESTRATOR_SECRET_"), "{seen}");
    assert!(!seen.contains(VALUE), "the value appeared in CLI output");
    // Nowhere in the data directory: database, WAL, configs, logs, state.
    let grep = std::process::Command::new("grep").args(["-rl", VALUE]).arg(env.data_dir()).output().unwrap();
    assert!(grep.stdout.is_empty(), "found in {}", String::from_utf8_lossy(&grep.stdout));
    // Not in the shim's command line or environment.
    let shim = env.shim_pid("agent");
    for file in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{shim}/{file}")).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(VALUE));
    }

    // A key the provider does not have refuses the sandbox.
    let f = env.file("agent2.yaml", &sandbox_yaml("agent2", "  secrets: [ { env: API_KEY, provider: vault, key: missing } ]\n"));
    let out = env.run(&["apply", "-f", f.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("sandbox/agent2 failed") && String::from_utf8_lossy(&out.stdout).contains("no secret named missing"), "{out:?}");
    assert_eq!(env.status("agent2"), "Failed");
}

/// Under `serve`, a metrics sink (Python) receives samples of the sandboxes that name it; a
/// failing sink is logged and the sandbox keeps running. A sink built for 0.1.0 gets the 0.1.0
/// samples; a 0.1.1 sink (`metrics-sink-v2`) gets the sandbox's network counters too.
#[test]
fn metrics_sinks_receive_samples_and_fail_open() {
    let mut env = Env::new();
    // The sandbox asks only for a blocked name, answered by its shim; should anything reach the
    // upstream, it is a closed port on loopback.
    env.extra_env.push(("ORCHESTRATOR_DNS_UPSTREAM".into(), "127.0.0.1:9".into()));
    let config = env.dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let plugin = |name: &str, extra: &str| {
        format!("apiVersion: orchestrator/v1\nkind: Plugin\nmetadata: {{ name: {name} }}\nspec:\n  component: {}\n  interval: 1s\n{TEST_LIMITS}{extra}", component("test-metrics-py").display())
    };
    std::fs::write(config.join("sink.yaml"), plugin("sink", "")).unwrap();
    std::fs::write(config.join("broken.yaml"), plugin("broken-sink", "  config: { fail: 'true' }\n")).unwrap();
    let v2 = format!("apiVersion: orchestrator/v1\nkind: Plugin\nmetadata: {{ name: sink-v2 }}\nspec:\n  component: {}\n  interval: 1s\n{TEST_LIMITS}", component("test-metrics-v2-py").display());
    std::fs::write(config.join("v2.yaml"), v2).unwrap();
    std::fs::write(
        config.join("sb.yaml"),
        sandbox_yaml(
            "measured",
            "  memory: 64Mi\n  cpus: 0.2\n  network: { blockDomains: [evil.example] }\n  command: [sh, -c, 'nslookup evil.example 10.0.2.2 >/dev/null 2>&1; while :; do :; done']\n  hooks: { metricsSinks: [sink, broken-sink, sink-v2] }\n",
        ),
    )
    .unwrap();
    let log = env.dir.path().join("serve.log");
    let serve = env
        .cmd(&["serve", "--config", config.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed however the test ends, so a failed assertion leaves no `serve` behind.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _serve = KillOnDrop(serve);
    let sample_line = |text: &str| {
        text.lines()
            .filter(|l| l.contains("sample sandbox=measured"))
            .filter_map(|l| l.split("cpu_us=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
            .collect::<Vec<_>>()
    };
    env.wait_for("two batches of samples", Duration::from_secs(120), || sample_line(&std::fs::read_to_string(&log).unwrap_or_default()).len() >= 2);
    let text = std::fs::read_to_string(&log).unwrap();
    let cpu = sample_line(&text);
    assert!(cpu[1] > cpu[0], "CPU time grows in a busy sandbox: {cpu:?}");
    assert!(text.contains("memory=") && text.contains("pids="), "{text}");
    assert!(text.contains("metrics sink failed") && text.contains("sink unavailable"), "{text}");
    assert_eq!(env.status("measured"), "Running");
    assert!(!text.lines().any(|l| l.contains("sample sandbox=measured") && l.contains("broken-sink")), "{text}");
    // The 0.1.1 sink: isolation, memory peak, and the DNS traffic its shim counted (at least
    // the A query, refused with NXDOMAIN).
    let v2_net = |text: &str| {
        text.lines()
            .filter(|l| l.contains("sample-v2 sandbox=measured isolation=namespace") && !l.contains("peak=-"))
            .filter_map(|l| l.split("net=").nth(1)?.split_whitespace().next().map(str::to_string))
            .filter_map(|n| n.split('/').map(|v| v.parse::<u64>().ok()).collect::<Option<Vec<u64>>>())
            .next_back()
    };
    env.wait_for("network counters at the 0.1.1 sink", Duration::from_secs(60), || {
        v2_net(&std::fs::read_to_string(&log).unwrap_or_default()).is_some_and(|n| n[2] >= 1 && n[3] >= 1)
    });
    let net = v2_net(&std::fs::read_to_string(&log).unwrap()).unwrap();
    assert!(net[0] > 0 && net[1] > 0, "rx and tx bytes of the DNS exchange: {net:?}");
    // The 0.1.0 sink's lines carry no network counters: it was built before they existed.
    assert!(!text.lines().any(|l| l.contains("sample sandbox=measured") && l.contains("net=")), "{text}");
    // Fixing the Plugin resource under serve reloads it: the same sink now receives samples.
    std::fs::write(config.join("broken.yaml"), plugin("broken-sink", "")).unwrap();
    env.wait_for("samples at the repaired sink", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).unwrap_or_default().lines().any(|l| l.contains("sample sandbox=measured") && l.contains("broken-sink"))
    });
}

/// Hostile plugins: each failure is clear, fails the way its kind promises, and the host goes
/// on serving other calls.
#[test]
fn hostile_plugins_fail_as_specified_and_the_host_keeps_serving() {
    let reg = registry();
    let sb = sandbox("victim", &[]);
    let public: IpAddr = "93.184.216.34".parse().unwrap();
    let hostile = |mode: &str, memory: Option<u64>, timeout_ms: Option<u64>| {
        let mut spec = plugin_spec("hostile-c", &[("mode", mode)]);
        spec.memory = memory;
        spec.timeout_ms = timeout_ms;
        reg.get(&format!("hostile-{mode}"), &spec).unwrap()
    };
    let healthy = reg.get("healthy", &plugin_spec("egress-guard-c", POLICY_CONFIG)).unwrap();
    let check_healthy = || {
        let d = decide_flow(&[healthy.clone()], &DecisionCache::default(), &sb, Protocol::Tcp, public, 443, Some("example.com"));
        assert_eq!(d.action, FlowAction::Allow, "the host keeps serving other plugins");
    };
    let deny_reason = |plugin: &Arc<orchestrator::plugin::LoadedPlugin>| match decide_flow(&[plugin.clone()], &DecisionCache::default(), &sb, Protocol::Tcp, public, 443, None).action {
        FlowAction::Deny(r) => r,
        other => panic!("expected a deny, got {other:?}"),
    };

    let trap = hostile("trap", None, None);
    let reason = deny_reason(&trap);
    assert!(reason.contains("trapped") && reason.contains("hostile-trap"), "{reason}");
    assert_eq!(trap.pooled(), 0, "a trapped store is never reused");
    check_healthy();

    let looping = hostile("loop", None, Some(100));
    let started = Instant::now();
    let reason = deny_reason(&looping);
    assert!(reason.contains("timed out after 100 ms"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(2), "the deadline ended the loop: {:?}", started.elapsed());
    check_healthy();

    let bomb = hostile("membomb", Some(32 << 20), Some(5000));
    let reason = deny_reason(&bomb);
    assert!(reason.contains("exceeded its memory limit of 33554432 bytes"), "{reason}");
    check_healthy();

    let huge = hostile("huge", None, None);
    let reason = deny_reason(&huge);
    assert!(reason.len() < 2048, "a 10 MiB reason is cut: {} bytes", reason.len());

    // Fail closed for secrets, with the reason.
    let err = trap.resolve_secret(&sb, "k").unwrap_err().to_string();
    assert!(err.contains("trapped"), "{err}");
    // Patches that leave the root are refused even from a plugin that "succeeds".
    let err = hostile("escape", None, None).patch(&sb, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("leaves the root filesystem"), "{err}");
    // A metrics sink that traps is an error for the caller to log, nothing more.
    assert!(trap.receive(&[]).is_err());
    // A plugin asked for a kind it does not implement.
    let err = healthy.resolve_secret(&sb, "k").unwrap_err().to_string();
    assert!(err.contains("does not implement secret-provider (it implements: network-policy)"), "{err}");

    // A wrong-world component does not load, with the reason.
    let err = reg.get("wrong", &plugin_spec("wrong-world-c", &[])).err().expect("must not load").to_string();
    assert!(err.contains("exports none of the orchestrator's interfaces"), "{err}");
    check_healthy();
}

/// A sandbox naming a broken or missing plugin is refused; the Plugin's own apply reports it.
#[test]
fn a_sandbox_naming_a_wrong_world_or_missing_plugin_is_refused() {
    let env = Env::new();
    let yaml = format!(
        "apiVersion: orchestrator/v1\nkind: Plugin\nmetadata: {{ name: wrong }}\nspec:\n  component: {}\n---\n{}",
        component("wrong-world-c").display(),
        sandbox_yaml("guarded", "  hooks: { rootfsPatch: [wrong] }\n  network: { plugins: [nope] }\n")
    );
    let f = env.file("wrong.yaml", &yaml);
    let out = env.run(&["apply", "-f", f.to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success());
    assert!(text.contains("plugin/wrong failed") && text.contains("exports none of the orchestrator's interfaces"), "{text}");
    assert!(text.contains("spec.hooks.rootfsPatch"), "{text}");
}

/// Compiled code is cached by content: a second load (a new process, here a new registry)
/// deserialises instead of compiling; a changed component file is reloaded.
#[test]
fn compiled_components_are_cached_and_changes_reload() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let file = dir.path().join("policy.wasm");
    std::fs::copy(component("egress-guard-c"), &file).unwrap();
    let spec = PluginSpec { component: file.to_string_lossy().into_owned(), ..plugin_spec("egress-guard-c", POLICY_CONFIG) };
    let cold = Registry::new(Some(cache.clone())).get("p", &spec).unwrap();
    assert!(!cold.load.cached);
    let reg = Registry::new(Some(cache.clone()));
    let warm = reg.get("p", &spec).unwrap();
    assert!(warm.load.cached, "the second load comes from the cache");
    let sb = sandbox("s", &[]);
    let private: IpAddr = "10.0.0.1".parse().unwrap();
    assert!(matches!(warm.decide_flow(&sb, Protocol::Tcp, private, 443, None).unwrap().action, FlowAction::Deny(_)));
    // Replace the component (atomically, as a deploy would) with one that allows everything.
    let tmp = dir.path().join("policy.wasm.new");
    std::fs::copy(component("hostile-c"), &tmp).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let reloaded = reg.get("p", &PluginSpec { config: [("mode".to_string(), "ok".to_string())].into(), ..spec.clone() }).unwrap();
    assert_ne!(reloaded.digest, warm.digest);
    assert_eq!(reloaded.decide_flow(&sb, Protocol::Tcp, private, 443, None).unwrap().action, FlowAction::Allow);
    // The old plugin still answers for calls that hold it.
    assert!(matches!(warm.decide_flow(&sb, Protocol::Tcp, private, 443, None).unwrap().action, FlowAction::Deny(_)));
}

/// A tiny HTTP/1.1 server on a real socket: `GET /secrets/openai` answers `VALUE\n`, anything
/// else 404. Returns its port and a counter of connections it accepted.
fn secret_server(value: &'static str) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let (status, body) = if request_line.starts_with("GET /secrets/openai ") { ("200 OK", format!("{value}\n")) } else { ("404 Not Found", "no such secret\n".to_string()) };
            let mut stream = stream;
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    (port, hits)
}

/// Outgoing HTTP (wasi:http) from a Python secret provider reaches only the hosts its Plugin
/// resource grants; a refused request never opens a connection.
#[test]
fn http_grants_let_a_provider_reach_only_its_hosts() {
    const VALUE: &str = "token-from-http-7c1e";
    let (port, hits) = secret_server(VALUE);
    let reg = registry();
    let sb = sandbox("agent", &[]);
    let authority = format!("127.0.0.1:{port}");
    let spec_with = |grants: Vec<String>| {
        let mut spec = plugin_spec("test-http-secrets-py", &[("authority", &authority)]);
        spec.grants.http_hosts = grants;
        spec
    };
    let granted = reg.get("http-granted", &spec_with(vec![authority.clone()])).unwrap();
    assert_eq!(granted.resolve_secret(&sb, "openai").unwrap(), VALUE);
    let missing = granted.resolve_secret(&sb, "nope").unwrap_err().to_string();
    assert!(missing.contains("404"), "{missing}");
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(before, 2);
    for (name, grants) in [("http-none", vec![]), ("http-other-port", vec!["127.0.0.1:1".to_string()]), ("http-other-host", vec!["vault.internal".to_string()])] {
        let plugin = reg.get(name, &spec_with(grants)).unwrap();
        let err = plugin.resolve_secret(&sb, "openai").unwrap_err().to_string();
        assert!(err.to_ascii_lowercase().contains("denied"), "{name}: {err}");
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), before, "a refused request never connects");
}
