//! The integration tests: one test binary (one link, one process table scan
//! helper), one module per area. Every test spawns the real binaries on a
//! home of its own and stops everything it started, also when it fails.
//!
//! Time: tests wait for conditions, never for fixed sleeps. Every limit is a
//! named multiple of one base (10 s) in `common.rs`, scaled by
//! `OUTBOXD_TEST_TIME_FACTOR` (a positive number, default 1; say 4 on a slow
//! or loaded machine). Limits only catch hangs: a larger factor never makes a
//! failing test pass.
//!
//! PostgreSQL: `initdb` runs once per test binary, into a template made by a
//! real first start; `Home::with_cluster()` copies it, and the daemon adopts
//! the copy as any existing cluster. Tests of the first start itself
//! (initdb, its status lines, root handing a new home over, other owners)
//! use `Home::new()`, which starts empty.
//!
//! The soak test is ignored by default: `cargo test --test it soak --
//! --ignored` (`OUTBOXD_SOAK_SECS`, default 60, sets its length).
//!
//! Unix only (signals, /proc, accounts, systemd); Windows has its own suite
//! in `tests/windows`.
#![cfg(unix)]

mod bounds;
mod common;
mod components;
mod consumer;
mod counts;
mod faults;
mod findings_daemon;
mod findings_spool;
mod lifecycle;
mod newcomer;
mod operations;
mod outbox;
mod postgres;
mod security;
mod service;
mod socket;
mod upgrade;
mod usability;
