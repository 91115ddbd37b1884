//! The control endpoint as the daemon sees it: binding it, opening it to
//! `producer_group`, noticing it deleted, and who connected.
//!
//! The interface is this file; each operating system implements it in a
//! file of its own (`unix.rs`: a Unix domain socket; `windows.rs`: a named
//! pipe with a DACL). The client's side is
//! `outboxd::endpoint`.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as os;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as os;

pub use os::{Bound, bind, identity, open_to_group, peer};
