//! Developer tools, built only with the `dev-tools` cargo feature (on by default, off in the
//! shipped gateway image): the camera [`sim`]ulator, the [`demo`] and the [`bench`]marks.
//! Nothing outside this module depends on it; it uses the rest of the crate like a user would.

pub mod bench;
pub mod demo;
#[cfg(feature = "vision")]
pub mod demo_faces;
pub mod sim;
