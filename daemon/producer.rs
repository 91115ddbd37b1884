//! The spool connection that the control socket's ops use (`enqueue` from
//! tools in other languages, `flush`, `dead_letters`): opened on first use,
//! used off the runtime, one request at a time.

use std::sync::{Arc, Mutex};

use outboxd::error::Result;
use outboxd::paths::Paths;
use outboxd::spool::{Options, Spool};

/// The spool file's identity ([`Spool::file_identity`]).
type FileIdentity = Option<(u64, u64)>;

#[derive(Clone)]
pub struct Producer {
    paths: Paths,
    spool: Arc<Mutex<Option<Spool>>>,
    /// The device and inode of the first spool file opened: the one the
    /// drain opened at start, unless it was replaced before.
    first: Arc<Mutex<Option<FileIdentity>>>,
}

impl Producer {
    pub fn new(paths: &Paths) -> Producer {
        Producer {
            paths: paths.clone(),
            spool: Arc::new(Mutex::new(None)),
            first: Arc::new(Mutex::new(None)),
        }
    }

    /// Whether the spool at the home's path is still the first file this
    /// connection opened (not moved or replaced since): what `flush` needs
    /// before it trusts the drain's cursor.
    pub async fn is_first_file(&self) -> Result<bool> {
        let first = self.first.clone();
        self.run(move |spool| {
            let first = *first.lock().unwrap_or_else(|e| e.into_inner());
            Ok(spool.is_at_path()? && first == Some(spool.file_identity()))
        })
        .await
    }

    /// Runs `job` with the spool on a blocking thread.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Spool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut slot = this.spool.lock().unwrap_or_else(|e| e.into_inner());
            // A spool moved or replaced under the daemon is not written to:
            // the file now at the path is opened (it must exist; the daemon
            // never makes a new one after its start).
            if let Some(spool) = slot.as_ref()
                && !spool.is_at_path()?
            {
                *slot = None;
            }
            if slot.is_none() {
                let spool = Spool::open_in_daemon(&this.paths, Options::default(), false)?;
                this.first
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(spool.file_identity());
                *slot = Some(spool);
            }
            job(slot.as_mut().expect("opened above"))
        })
        .await
        .expect("spool jobs do not panic")
    }
}
