//! The open control connections, oldest first, each with a way to close it.
//! The cap evicts the oldest connection when a new one arrives (so a flood
//! of idle clients cannot lock out `status`), and so does running out of
//! descriptors.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::debug;

#[derive(Default)]
pub struct Registry {
    open: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next_id: AtomicU64,
}

/// A connection's place in the [`Registry`]; dropping it frees the place.
pub struct Slot {
    id: u64,
    /// Notified when the connection must close to make room.
    pub evicted: Arc<Notify>,
    registry: Arc<Registry>,
}

impl Registry {
    /// Registers a new connection, evicting the oldest ones beyond `max`.
    pub fn admit(registry: &Arc<Registry>, max: usize) -> Slot {
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = Arc::new(Notify::new());
        let mut open = registry.open.lock().expect("registry lock");
        while open.len() >= max.max(1) {
            let (old, notify) = open.pop_front().expect("len >= max >= 1");
            debug!(
                connection = old,
                "connection cap reached: closing the oldest connection"
            );
            notify.notify_one();
        }
        open.push_back((id, evicted.clone()));
        Slot {
            id,
            evicted,
            registry: registry.clone(),
        }
    }

    /// Closes the oldest connection (the process ran out of descriptors).
    /// Returns whether there was one.
    pub fn evict_oldest(&self) -> bool {
        let oldest = self.open.lock().expect("registry lock").pop_front();
        match oldest {
            Some((_, notify)) => {
                notify.notify_one();
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.open.lock().expect("registry lock").len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock().expect("registry lock");
        open.retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_connection_is_evicted_first() {
        let registry = Arc::new(Registry::default());
        let first = Registry::admit(&registry, 2);
        let second = Registry::admit(&registry, 2);
        assert_eq!(registry.len(), 2);
        let third = Registry::admit(&registry, 2);
        assert_eq!(registry.len(), 2);
        // The first was told to close; the second was not.
        tokio::time::timeout(std::time::Duration::from_secs(1), first.evicted.notified())
            .await
            .expect("the oldest is evicted");
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_millis(50),
                second.evicted.notified()
            )
            .await
            .is_err()
        );
        drop(second);
        assert_eq!(registry.len(), 1);
        assert!(registry.evict_oldest());
        tokio::time::timeout(std::time::Duration::from_secs(1), third.evicted.notified())
            .await
            .expect("evict_oldest closes the remaining one");
        assert!(!registry.evict_oldest());
    }
}
