//! The orchestrator host: CLI, resource model, state store, reconciler, watcher, shims and
//! runtimes. The binary in main.rs is a thin dispatcher over this library.

pub mod cgroup;
pub mod cli;
pub mod client;
pub mod hooks;
pub mod image;
pub mod microvm;
pub mod net_counters;
pub mod paths;
pub mod plugin;
pub mod reconcile;
pub mod runtime;
pub mod shim;
pub mod spec;
pub mod store;
pub mod view;
