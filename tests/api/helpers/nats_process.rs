//! The static nats-server binary (deploy/nats-env.sh installs it into
//! target/) as a process of its own, on a configuration file: for what a
//! container cannot easily give, such as reloading a changed file.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{PATIENCE, eventually, init_logs};

/// The binary deploy/nats-env.sh's `ensure_nats_binary` puts in target/.
pub fn nats_binary() -> PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    if let Some(path) = std::env::var_os("SOFTPHONE_NATS_BIN") {
        return path.into();
    }
    let env = std::fs::read_to_string(format!("{root}/deploy/nats-env.sh")).unwrap();
    let version = env
        .lines()
        .find_map(|l| l.strip_prefix("NATS_VERSION=\"${NATS_VERSION:-"))
        .and_then(|rest| rest.split('}').next())
        .expect("deploy/nats-env.sh names the NATS version");
    let path = PathBuf::from(format!("{root}/target/nats-{version}/nats-server"));
    assert!(
        path.is_file(),
        "{} is missing: run `source deploy/nats-env.sh && ensure_nats_binary` (deploy/test.sh does)",
        path.display()
    );
    path
}

/// A nats-server process on a configuration file; killed when dropped.
pub struct NatsProcess {
    child: tokio::process::Child,
    conf: PathBuf,
    log: Arc<Mutex<String>>,
    pub dir: tempfile::TempDir,
}

impl NatsProcess {
    /// Starts the server on `conf` and waits until it is ready.
    pub async fn start(conf: &str) -> NatsProcess {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, conf).unwrap();
        let mut child = tokio::process::Command::new(nats_binary())
            .arg("-c")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts");
        let pipe = child.stderr.take().expect("stderr is piped");
        let log: Arc<Mutex<String>> = Arc::default();
        tokio::spawn({
            let log = Arc::clone(&log);
            async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if std::env::var_os("TEST_LOG").is_some() {
                        eprintln!("nats-server: {line}");
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let server = NatsProcess {
            child,
            conf: path,
            log,
            dir,
        };
        server.logged("Server is ready").await;
        server
    }

    /// Writes `conf` over the file and has the server reload it (SIGHUP,
    /// what `nats-server --signal reload` sends); waits until it has.
    pub async fn reload(&self, conf: &str) {
        let before = self
            .log
            .lock()
            .unwrap()
            .matches("Reloaded server configuration")
            .count();
        std::fs::write(&self.conf, conf).unwrap();
        let pid = self.child.id().expect("running") as libc::pid_t;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        eventually("the server to reload its configuration", || async {
            let log = self.log.lock().unwrap();
            assert!(!log.contains("Failed to reload"), "{log}");
            (log.matches("Reloaded server configuration").count() > before).then_some(())
        })
        .await;
    }

    /// Waits until the server has logged a line containing `needle`.
    pub async fn logged(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if self.log.lock().unwrap().contains(needle) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not log {needle:?}:\n{}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}
