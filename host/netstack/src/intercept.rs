//! The seam where a TCP flow leaves the plain splice for an interceptor (TLS termination and
//! secret substitution live behind it, in the shim).
//!
//! Invariants:
//! - An interceptor never opens a connection of its own: it is handed the host connection the
//!   policy allowed and the stack made, already connected. Whatever it does, it can reach only
//!   what the sandbox's policy let through.
//! - It is offered a flow once, after the flow's first guest bytes were looked at for a TLS
//!   server name and the policy allowed that name, and only flows with a server name (an
//!   interceptor needs one to present a certificate for). Published-port connections into the
//!   guest are never offered.
//! - The guest's bytes are not consumed by the look: the interceptor's stream receives them from
//!   the first byte of the ClientHello on.
//! - An interceptor that fails to take a flow it wanted resets it: a flow meant to be inspected
//!   is never spliced uninspected.

use std::net::SocketAddr;

/// A flow offered to the interceptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedFlow {
    /// Where the guest connected (the gateway's address for the `host` group).
    pub destination: SocketAddr,
    /// The TLS server name of the guest's ClientHello.
    pub server_name: String,
    /// Every name the flow is known by: the server name first, then the names the sandbox
    /// resolved to this address.
    pub names: Vec<String>,
    /// The names the sandbox's DNS resolved to this address (the server name is among them
    /// only if it was resolved too): what secret substitution checks the destination against.
    pub resolved: Vec<String>,
    /// A policy plugin answered `intercept-tls` for it.
    pub requested_by_policy: bool,
}

/// Takes over TCP flows it wants. Runs on the stack's thread: both calls must return quickly
/// (hand the work to a thread of your own).
pub trait FlowInterceptor: Send {
    /// Whether to take this flow; false leaves it spliced untouched.
    fn wants(&mut self, flow: &OfferedFlow) -> bool;

    /// Takes the flow. `upstream` is the connected host socket, non-blocking (switching it
    /// to blocking is the interceptor's to do, once the flow is its own). The returned
    /// stream stands in for it from now on: the guest's bytes are written to it, and what is
    /// read from it goes to the guest; closing it closes the guest's connection. An error resets
    /// the guest's connection.
    fn take(&mut self, flow: OfferedFlow, upstream: std::net::TcpStream) -> std::io::Result<std::os::unix::net::UnixStream>;

    /// Whether a new UDP flow to `destination` (known by `names`) is QUIC to a host this
    /// interceptor would take over TCP; such a flow is refused, so the client falls back to TCP
    /// where it can be inspected.
    fn blocks_quic(&mut self, destination: SocketAddr, names: &[String]) -> bool {
        let _ = (destination, names);
        false
    }
}
