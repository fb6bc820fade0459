//! Hook points in a sandbox's life where plugins (WebAssembly components) will act: before
//! start on the writable layer (rootfs patches), at create (secret resolution), per new network
//! flow (policy decisions) and periodically (metrics). This release runs no hooks; the list
//! below names the points so the plugin work has one place to attach to.

/// Where in a sandbox's life a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// After the writable layer exists, before the sandbox's init starts.
    RootfsPatch,
    /// While creating the sandbox, before anything runs inside.
    SecretResolve,
    /// For every new network flow and DNS query.
    NetworkPolicy,
    /// Every metrics interval.
    MetricsSink,
}
