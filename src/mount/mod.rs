//! Where a volume's filesystem is served: in this process ([`in_process`]) or in a transient systemd unit
//! ([`systemd`]), which borrows its Vault tokens from the driver's token [`broker`].

pub mod broker;
pub mod in_process;
pub mod mountpoint;
pub mod systemd;
