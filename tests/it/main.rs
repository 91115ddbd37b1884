//! The integration tests: one test binary (one link, one process table scan
//! helper), one module per area. Every test spawns the real binaries on a
//! home of its own and stops everything it started, also when it fails.

mod bounds;
mod common;
mod components;
mod faults;
mod findings_daemon;
mod findings_spool;
mod lifecycle;
mod operations;
mod outbox;
mod postgres;
mod security;
mod service;
mod socket;
mod usability;
