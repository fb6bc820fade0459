//! The host's side of a lying agent (a microVM guest is root in its own kernel, and the shim
//! forwards its responses verbatim): a real client (`ShimClient`, what the CLI uses) over a real
//! Unix socket whose peer answers the handshake, then sends the fuzzer's bytes and hangs up.
//! Invariants: no panic; every call returns (the peer's end is an error, never a hang); what a
//! call collects (a file, a listing, a process's output) is never more than the peer sent.
#![no_main]

use guest_agent::protocol::{encode, ExecRequest, Frame, Response, PROTOCOL_VERSION};
use libfuzzer_sys::fuzz_target;
use orchestrator::client::ShimClient;
use std::io::Write;
use std::os::unix::net::UnixStream;

fuzz_target!(|data: &[u8]| {
    // libFuzzer's main is not Rust's: a write to a closed socket must be EPIPE, not SIGPIPE.
    static IGNORE_SIGPIPE: std::sync::Once = std::sync::Once::new();
    // SAFETY: setting a signal's disposition to "ignore".
    IGNORE_SIGPIPE.call_once(|| unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    });
    let Some((&op, rest)) = data.split_first() else { return };
    let (client_end, mut agent_end) = UnixStream::pair().expect("a socket pair");
    let hello = encode(&Frame { id: 1, body: Response::Hello { version: PROTOCOL_VERSION, agent: "fuzz".into() } }).expect("encoding");
    let sent = rest.to_vec();
    let peer = std::thread::spawn(move || {
        let _ = agent_end.write_all(&hello);
        let _ = agent_end.write_all(&sent);
        let _ = agent_end.shutdown(std::net::Shutdown::Write);
        // Keep the socket until the client is done, reading what it sends.
        let _ = std::io::copy(&mut agent_end, &mut std::io::sink());
    });
    let bound = rest.len();
    if let Ok(mut c) = ShimClient::over(client_end) {
        match op % 8 {
            0 => {
                if let Ok(body) = c.read_file("/etc/hostname") {
                    assert!(body.len() <= bound);
                }
            }
            1 => {
                if let Ok(entries) = c.list_dir("/") {
                    assert!(entries.len() <= bound);
                }
            }
            2 => {
                let _ = c.stat("/");
            }
            3 => {
                if let Ok((_, out, err)) = c.exec(ExecRequest { argv: vec!["true".into()], ..Default::default() }) {
                    assert!(out.len() + err.len() <= bound);
                }
            }
            4 => {
                let _ = c.status();
            }
            5 => {
                if let Ok(id) = c.attach() {
                    while let Ok(f) = c.recv() {
                        let _ = (id, f);
                    }
                }
            }
            6 => {
                let _ = c.write_file("/tmp/x", &[1; 70_000], Some(0o600));
            }
            _ => {
                let _ = c.mkdir("/tmp/d", true);
                let _ = c.rename("/tmp/d", "/tmp/e");
                let _ = c.remove("/tmp/e", true);
            }
        }
    }
    peer.join().expect("the peer thread");
});
