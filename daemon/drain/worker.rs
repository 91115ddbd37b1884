//! The spool's own threads. SQLite runs only off the async runtime: the
//! drain hands a thread closures (read a batch and encode it, statistics,
//! checkpoints; on a second thread, delete what PostgreSQL committed) and
//! awaits their results. One thread, one connection: its jobs run in order.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use outboxd::error::Result;
use outboxd::paths::Paths;
use outboxd::spool::{Durability, Options, Spool};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut Spool) + Send>;

/// A handle on the spool thread; the thread ends when the last handle is
/// dropped.
#[derive(Clone)]
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    path: PathBuf,
}

impl Worker {
    /// Opens the spool on a new thread. The daemon's own writes (deletes)
    /// use `synchronous=NORMAL`: a delete lost to a power failure only
    /// brings back rows the cursor in PostgreSQL already covers.
    pub async fn open(paths: &Paths, name: &str) -> Result<(Worker, uuid::Uuid)> {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let (opened_tx, opened) = oneshot::channel();
        let path = paths.spool.clone();
        let paths = paths.clone();
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let options = Options {
                    durability: Durability::Normal,
                    ..Options::default()
                };
                let mut spool = match Spool::open_in_daemon(&paths, options, true) {
                    Ok(spool) => {
                        let _ = opened_tx.send(Ok(spool.source_id()));
                        spool
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                for job in receiver {
                    debug_panic("spool");
                    job(&mut spool);
                }
            })
            .map_err(|source| outboxd::Error::Io {
                op: "start the spool thread for",
                path: path.clone(),
                source,
            })?;
        let source_id = opened.await.map_err(|_| gone(&path))??;
        Ok((Worker { jobs, path }, source_id))
    }

    /// Runs `job` on the spool thread and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Spool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move |spool: &mut Spool| {
                let _ = reply.send(job(spool));
            }))
            .map_err(|_| gone(&self.path))?;
        result.await.map_err(|_| gone(&self.path))?
    }
}

fn gone(path: &Path) -> outboxd::Error {
    outboxd::Error::Io {
        op: "use the spool thread for",
        path: path.to_path_buf(),
        source: std::io::Error::other("the spool thread has ended"),
    }
}

/// A fault point for the tests, in debug builds only: panics when
/// `OUTBOXD_DEBUG_PANIC` names `place`, as a bug there would.
fn debug_panic(place: &str) {
    if cfg!(debug_assertions) && std::env::var_os("OUTBOXD_DEBUG_PANIC").is_some_and(|p| p == place)
    {
        panic!("OUTBOXD_DEBUG_PANIC={place}: a deliberate panic for the tests");
    }
}
