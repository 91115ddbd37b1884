//! A PostgreSQL server the upgrade runs for a while: on one cluster, with
//! one major's binaries, reachable only through a socket in a private
//! directory (no TCP), stopped (fast shutdown) when dropped. It dies with
//! outboxctl (Linux: the parent-death signal), and a server left by a
//! `kill -9` on another system is stopped by the next start or upgrade.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outboxd::pgconn::Target;

use crate::daemon::CtlError;

/// How long a server may take to accept connections or to stop.
const LIMIT: Duration = Duration::from_secs(120);

pub struct Server {
    child: Child,
    /// The socket directory, and the password file libpq tools read.
    dir: tempfile::TempDir,
    data: PathBuf,
    major: u32,
    password: String,
}

impl Server {
    /// Starts `bin/postgres` on `data` and waits until it accepts a
    /// connection. Its log goes to `log`.
    pub fn start(
        bin: &Path,
        major: u32,
        data: &Path,
        password: &str,
        log: &Path,
        scratch: &str,
    ) -> Result<Server, CtlError> {
        let dir = scratch_dir(scratch)?;
        let pass = dir.path().join("pgpass");
        std::fs::write(&pass, format!("*:*:*:{}:{password}\n", "postgres"))
            .map_err(|e| CtlError::Failed(format!("could not write {}: {e}", pass.display())))?;
        set_owner_only(&pass)?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| CtlError::Failed(format!("could not open {}: {e}", log.display())))?;
        let mut command = Command::new(bin.join("postgres"));
        command
            .arg("-D")
            .arg(data)
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=", "-c", "port=5432"])
            .args(["-c", "unix_socket_permissions=0700", "-c", "jit=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        crate::os::die_with_parent(&mut command);
        let child = command.spawn().map_err(|e| {
            CtlError::Failed(format!(
                "could not run {}: {e}",
                bin.join("postgres").display()
            ))
        })?;
        let mut server = Server {
            child,
            dir,
            data: data.to_path_buf(),
            major,
            password: password.to_string(),
        };
        server.wait_ready(log)?;
        Ok(server)
    }

    fn wait_ready(&mut self, log: &Path) -> Result<(), CtlError> {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(CtlError::Failed(format!(
                    "PostgreSQL {} on {} exited during start-up ({status}); see {}",
                    self.major,
                    self.data.display(),
                    log.display()
                )));
            }
            let target = self.target("postgres");
            if crate::runtime::block_on(async { Ok(target.connect(None).await.is_ok()) })? {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CtlError::Failed(format!(
                    "PostgreSQL {} on {} did not accept connections within {} s; see {}",
                    self.major,
                    self.data.display(),
                    LIMIT.as_secs(),
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How to connect to database `dbname` as the superuser.
    pub fn target(&self, dbname: &str) -> Target {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.dir.path())
            .port(5432)
            .user("postgres")
            .password(self.password.as_str())
            .dbname(dbname)
            .application_name("outboxctl upgrade")
            .connect_timeout(Duration::from_secs(10));
        Target::plain(config)
    }

    /// Arguments that point a libpq tool (pg_dumpall, psql) at this server,
    /// and the environment that gives it the password (a file, never a
    /// command line).
    pub fn tool(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", "5432", "-U", "postgres"])
            .env("PGPASSFILE", self.dir.path().join("pgpass"))
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS");
        command
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(mut self) -> Result<(), CtlError> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<(), CtlError> {
        if self.child.try_wait().ok().flatten().is_some() {
            return Ok(());
        }
        crate::os::interrupt(self.child.id());
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(CtlError::Failed(format!(
            "PostgreSQL {} on {} did not stop within {} s and was killed",
            self.major,
            self.data.display(),
            LIMIT.as_secs()
        )))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

/// A private temporary directory (0700) named with `prefix` (see
/// `outboxd::pgupgrade::scratch_prefix`): the recovery after a kill
/// removes it.
pub fn scratch_dir(prefix: &str) -> Result<tempfile::TempDir, CtlError> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(|e| CtlError::Failed(format!("could not make a temporary directory: {e}")))
}

fn set_owner_only(path: &Path) -> Result<(), CtlError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| CtlError::Failed(format!("could not restrict {}: {e}", path.display())))
}
