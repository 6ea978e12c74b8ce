//! docker-volume-libsecret: HashiCorp Vault secrets as read-only files in Docker containers.
//!
//! Cores (kernel-free, tested with fakes): [`names`], [`secret`], [`cache`], [`filesystem`], [`volumes`],
//! [`plugin`], [`config`], [`limits`]. Thin edges: [`server`] (HTTP over the plugin socket), [`fuse`], [`vault`],
//! [`file_source`], [`mounter`], [`state`], [`broker`] (the token broker's socket), [`root_only`] (the ownership and
//! mode checks of secret and credential files).
#![forbid(unsafe_code)]

pub mod access;
pub mod audit;
pub mod broker;
pub mod cache;
pub mod cli;
pub mod config;
pub mod file_source;
pub mod filesystem;
pub mod fuse;
pub mod hardening;
pub mod limits;
pub mod logging;
pub mod mounter;
pub mod names;
pub mod plugin;
pub mod root_only;
pub mod secret;
pub mod server;
pub mod state;
pub mod systemd;
#[doc(hidden)]
pub mod testing;
pub mod vault;
pub mod volumes;
