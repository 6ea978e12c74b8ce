//! The process's dealings with the host: hardening, logging, and ownership checks of root-only files.

pub mod hardening;
pub mod logging;
pub mod private_socket;
pub mod root_only;
