//! docker-volume-libsecret: HashiCorp Vault secrets as read-only files in Docker containers.
//!
//! The module map (ARCHITECTURE.md walks through it):
//! - [`app`]: the driver's `run(listener, shutdown)` and a mount unit's run, wiring everything below.
//! - [`plugin`]: Docker's volume plugin protocol (a transport-free core) and its HTTP server edge.
//! - [`volumes`]: volume records, options and mount counts (a core, no I/O of its own).
//! - [`mount`]: where a volume's filesystem is served: in this process or in a transient systemd unit.
//! - [`fs`]: the secret filesystem (a kernel-free core), its FUSE adapter and its audit log.
//! - [`source`]: where secrets come from: the source trait, the cache, routing by rule, the file backend, Vault.
//! - [`lease`]: dynamic secrets: leases issued per container, renewed, re-issued, revoked, and their journal.
//! - [`access`]: the access rules, decided for every path read.
//! - [`names`]: Vault paths, views (`name@N`, `name#field`) and escaping.
//! - [`config`]: the layered configuration and the command line.
//! - [`status`]: each mount's health and the driver's status, and the root-only control socket that answers it.
//! - [`metrics`]: Prometheus counters of this process (and of the mount units, in the driver) and their listener.
//! - [`sys`]: process hardening, logging and ownership checks of root-only files.
#![forbid(unsafe_code)]

pub mod access;
pub mod app;
pub mod config;
pub mod fs;
pub mod lease;
pub mod metrics;
pub mod mount;
pub mod names;
pub mod plugin;
pub mod source;
pub mod status;
pub mod sys;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
pub mod volumes;
