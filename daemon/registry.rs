//! The control connections: the open ones, oldest first, each with its
//! class and uid and a way to close it; their limits (`Limits`, which a
//! reload changes live); and the process's open-file limit they stay under.
//!
//! *Invariant: a producer can never close the owner's (or root's)
//! connections.* The cap (`max_connections`) keeps a reserved share (a
//! quarter, at least one) for the owner: producers (and refused peers, for
//! the moment they are open) together hold at most the rest, each uid at
//! most half of that. A producer past its uid's share or the producers'
//! share closes the oldest connection of its own uid, then the oldest
//! producer's; never an owner's (when only owners are left, the producer
//! is turned away). An owner past the cap closes the oldest producer
//! first, then the oldest owner. Running out of descriptors closes the
//! oldest producer first too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use outboxd::config::Config;
use tokio::sync::Notify;
use tracing::debug;

/// Who holds a connection, for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The daemon's account or root.
    Owner,
    /// A producer, or a peer that is about to be refused.
    Producer { uid: u32 },
}

struct Entry {
    id: u64,
    class: Class,
    evicted: Arc<Notify>,
}

#[derive(Default)]
pub struct Registry {
    open: Mutex<VecDeque<Entry>>,
    next_id: AtomicU64,
}

/// A connection's place in the [`Registry`]; dropping it frees the place.
pub struct Slot {
    id: u64,
    /// Notified when the connection must close to make room.
    pub evicted: Arc<Notify>,
    registry: Arc<Registry>,
}

/// The owner's reserved share of `max` connections.
pub fn owner_reserve(max: usize) -> usize {
    (max / 4).max(1)
}

/// The most connections producers hold together.
pub fn producers_cap(max: usize) -> usize {
    max.saturating_sub(owner_reserve(max)).max(1)
}

/// The most connections one producer uid holds.
pub fn per_uid_cap(max: usize) -> usize {
    (producers_cap(max) / 2).max(1)
}

impl Registry {
    /// Registers a new connection of `class` under the cap `max`, evicting
    /// what the rules above say; `None` when a producer finds only owners'
    /// connections to evict (it must close at once).
    pub fn admit(registry: &Arc<Registry>, max: usize, class: Class) -> Option<Slot> {
        let max = max.max(1);
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = Arc::new(Notify::new());
        let mut open = registry.open.lock().unwrap_or_else(PoisonError::into_inner);
        let is_producer = |e: &Entry| matches!(e.class, Class::Producer { .. });
        match class {
            Class::Producer { uid } => {
                let same_uid = |e: &Entry| e.class == Class::Producer { uid };
                while open.iter().filter(|e| same_uid(e)).count() >= per_uid_cap(max) {
                    evict_first(&mut open, same_uid, "this uid's share");
                }
                while open.iter().filter(|e| is_producer(e)).count() >= producers_cap(max) {
                    evict_first(&mut open, is_producer, "the producers' share");
                }
                if open.len() >= max && !evict_first(&mut open, is_producer, "the cap") {
                    debug!(
                        uid,
                        "connection cap reached by the owner's connections: turning a producer away"
                    );
                    return None;
                }
            }
            Class::Owner => {
                while open.len() >= max {
                    if !evict_first(&mut open, is_producer, "the cap") {
                        evict_first(&mut open, |_| true, "the cap");
                    }
                }
            }
        }
        open.push_back(Entry {
            id,
            class,
            evicted: evicted.clone(),
        });
        Some(Slot {
            id,
            evicted,
            registry: registry.clone(),
        })
    }

    /// Closes the oldest producer's connection, else the oldest connection
    /// (the process ran out of descriptors). Returns whether there was one.
    pub fn evict_oldest(&self) -> bool {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        evict_first(
            &mut open,
            |e| matches!(e.class, Class::Producer { .. }),
            "out of descriptors",
        ) || evict_first(&mut open, |_| true, "out of descriptors")
    }

    pub fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Closes the oldest connection matching `which`; whether there was one.
fn evict_first(open: &mut VecDeque<Entry>, which: impl Fn(&Entry) -> bool, why: &str) -> bool {
    let Some(index) = open.iter().position(which) else {
        return false;
    };
    let entry = open.remove(index).expect("a found index");
    debug!(connection = entry.id, class = ?entry.class, reason = why, "closing the oldest connection to make room");
    entry.evicted.notify_one();
    true
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .registry
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.retain(|e| e.id != self.id);
    }
}

/// The connection limits, which a configuration reload changes live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The limits of `config`, with the connection cap kept under the
    /// process's open-file limit.
    pub fn of(config: &Config, open_files: usize) -> Limits {
        Limits {
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections.min(max_connections_for(open_files)),
        }
    }
}

/// Descriptors kept back from the connection cap for everything else (the
/// spool, PostgreSQL connections, logs, the listener).
const RESERVED_FDS: usize = 64;

/// The most control connections `open_files` descriptors allow.
pub fn max_connections_for(open_files: usize) -> usize {
    open_files.saturating_sub(RESERVED_FDS).max(1)
}

static OPEN_FILES: OnceLock<usize> = OnceLock::new();

/// The soft limit on open files, as raised at start.
pub fn open_files_limit() -> usize {
    *OPEN_FILES.get_or_init(crate::os::raise_open_files_limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn told(slot: &Slot) -> bool {
        tokio::time::timeout(Duration::from_millis(50), slot.evicted.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn the_oldest_connection_is_evicted_first() {
        let registry = Arc::new(Registry::default());
        let first = Registry::admit(&registry, 2, Class::Owner).unwrap();
        let second = Registry::admit(&registry, 2, Class::Owner).unwrap();
        assert_eq!(registry.len(), 2);
        let third = Registry::admit(&registry, 2, Class::Owner).unwrap();
        assert_eq!(registry.len(), 2);
        // The first was told to close; the second was not.
        assert!(told(&first).await);
        assert!(!told(&second).await);
        drop(second);
        assert_eq!(registry.len(), 1);
        assert!(registry.evict_oldest());
        assert!(told(&third).await);
        assert!(!registry.evict_oldest());
    }

    #[tokio::test]
    async fn producers_never_evict_the_owner() {
        let registry = Arc::new(Registry::default());
        let max = 8; // reserve 2, producers 6, per uid 3
        let owner = Registry::admit(&registry, max, Class::Owner).unwrap();
        let mut churn = Vec::new();
        for _ in 0..100 {
            churn.push(Registry::admit(&registry, max, Class::Producer { uid: 1000 }).unwrap());
        }
        assert!(!told(&owner).await, "a producer evicted the owner");
        assert!(registry.len() <= 1 + per_uid_cap(max));
        // Another producer uid has room of its own.
        let other = Registry::admit(&registry, max, Class::Producer { uid: 1001 }).unwrap();
        assert!(!told(&other).await);
        // Owners fill the cap: a producer is turned away, owners evict
        // producers first.
        let owners: Vec<Slot> = (0..max)
            .map(|_| Registry::admit(&registry, max, Class::Owner).unwrap())
            .collect();
        assert!(told(&other).await);
        assert!(Registry::admit(&registry, max, Class::Producer { uid: 1002 }).is_none());
        drop(owners);
    }
}
