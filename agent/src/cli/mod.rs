//! Command-line layers over the library (clap types live here, not in the library's own types):
//! [`face`] is `camgate face detect|embed|compare`, [`gallery`] is `camgate gallery ...`, [`tx`] is
//! `camgate tx ...` (a client of the daemon's local API). `main.rs` wires them in.

#[cfg(feature = "vision")]
pub mod face;
#[cfg(feature = "vision")]
pub mod gallery;
pub mod tx;
