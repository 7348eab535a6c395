//! The real `softphone-bridge` binary, as replicas are run.

use async_nats::jetstream;
use softphone_bridge::config::Settings;
use softphone_bridge::pipeline;

use super::*;

/// A `softphone-bridge run` process of the real binary, configured by a TOML
/// file (worker and CRM) and environment variables (the NATS URL).
pub struct Bridge {
    child: tokio::process::Child,
    /// Standard error so far, read as it comes: a pipe nobody reads fills up
    /// and stalls the process on its next log line.
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    reader: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Bridge {
    pub fn start(nats_url: &str, config_toml: &str) -> Bridge {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bridge.toml");
        std::fs::write(&file, config_toml).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_softphone-bridge"))
            .arg("run")
            .arg("--config")
            .arg(&file)
            .env("SOFTPHONE_BRIDGE_NATS__URL", nats_url)
            .env("RUST_LOG", "softphone_bridge=debug,info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the softphone-bridge binary starts");
        let pipe = child.stderr.take().expect("stderr is piped");
        let stderr: std::sync::Arc<std::sync::Mutex<String>> = std::sync::Arc::default();
        let reader = tokio::spawn({
            let stderr = std::sync::Arc::clone(&stderr);
            async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut text = stderr.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        Bridge {
            child,
            stderr,
            reader,
            _dir: dir,
        }
    }

    /// Waits until the process has logged a line containing `needle`.
    pub async fn logged(&self, needle: &str) {
        self.logged_line(&[needle]).await;
    }

    /// Waits until the process has logged one line containing every needle.
    pub async fn logged_line(&self, needles: &[&str]) {
        eventually(&format!("the bridge to log {needles:?}"), || async {
            self.has_logged_line(needles).then_some(())
        })
        .await;
    }

    /// Whether the process has logged, so far, one line containing every needle.
    pub fn has_logged_line(&self, needles: &[&str]) -> bool {
        let stderr = self.stderr.lock().unwrap();
        stderr
            .lines()
            .any(|line| needles.iter().all(|needle| line.contains(needle)))
    }

    /// Whether the process has logged a line containing `needle` so far.
    pub fn has_logged(&self, needle: &str) -> bool {
        self.stderr.lock().unwrap().contains(needle)
    }

    /// The process id, to read its `/proc` entries.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// The settings file the process was started with.
    pub fn config_file(&self) -> std::path::PathBuf {
        self._dir.path().join("bridge.toml")
    }

    /// Sends SIGHUP: read the settings file again.
    pub fn hangup(&self) {
        let pid = self.child.id().expect("still running") as libc::pid_t;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }

    /// Sends SIGTERM, as an orchestrator would.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("still running") as libc::pid_t;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGKILL: a crash, with no chance to give anything back.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("the bridge can be killed");
    }

    /// Waits for the process to exit; returns its status and standard error.
    pub async fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the bridge exits in time")
            .expect("the bridge can be waited for");
        self.reader.await.expect("the stderr reader ends");
        let stderr = std::mem::take(&mut *self.stderr.lock().unwrap());
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("{stderr}");
        }
        (status, stderr)
    }
}

/// The defaults the replicas' pipeline consumers are named by, with the
/// tests' lanes ([`small_lanes`]), as [`bridge_config`] sets them.
pub fn defaults() -> Settings {
    let mut settings = Settings::from_toml("").unwrap();
    small_lanes(&mut settings);
    settings
}

/// A JetStream context on `nats` with the defaults' streams, consumers and
/// buckets provisioned, as replicas with `provision_on_start` would find them.
pub async fn provisioned(nats: &Nats) -> jetstream::Context {
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = jetstream::new(client);
    softphone_bridge::broker::provision::apply(&js, &defaults())
        .await
        .unwrap();
    js
}

/// A config file for a `Bridge` posting to `crm_url`, with extra TOML appended
/// (keys of a `[lanes]` table in it join the tests' lanes).
pub fn bridge_config(crm_url: &str, extra: &str) -> String {
    let (lanes, extra) = match extra.split_once("[lanes]\n") {
        Some((before, after)) => {
            let end = after.find("\n[").map_or(after.len(), |at| at + 1);
            (
                after[..end].to_owned(),
                format!("{before}{}", &after[end..]),
            )
        }
        None => (String::new(), extra.to_owned()),
    };
    format!(
        r#"
[worker]
concurrency = 4
ack_wait = "5s"
max_deliveries = 3
backoff = ["200ms"]
shutdown_deadline = "10s"

[lanes]
partitions = {partitions}
lease = "{lease}s"
{lanes}

[crm]
kind = "webhook"
url = "{crm_url}"
secret = "{WEBHOOK_SECRET}"
timeout = "10s"
{extra}
"#,
        partitions = TEST_PARTITIONS,
        lease = TEST_LEASE.as_secs(),
    )
}

/// Waits until `count` replicas are members of the pool and every unit of
/// the pipeline (the intake, each lane partition) is owned by the one
/// rendezvous hashing names among them, and pulled: that many replicas are
/// consuming, each its share.
pub async fn replicas_pulling(js: &jetstream::Context, settings: &Settings, count: usize) {
    let members = js
        .get_key_value(&settings.lanes.members_bucket)
        .await
        .expect("the members bucket exists");
    let owners = js
        .get_key_value(&settings.lanes.owners_bucket)
        .await
        .expect("the owners bucket exists");
    // A dead replica's units move after the lease, and their new owner may
    // wait out the ack wait before it pulls.
    let patience = PATIENCE + settings.lanes.lease + settings.worker.ack_wait;
    eventually_within(patience, &format!("{count} replicas to pull"), || async {
        let live = live_members(&members, settings).await;
        if live.len() != count {
            return None;
        }
        for consumer in pipeline::consumers(settings) {
            let owner = owners.get(&consumer.name).await.ok()??;
            if pipeline::target(&live, &consumer.name) != Some(std::str::from_utf8(&owner).ok()?) {
                return None;
            }
            let stream = js.get_stream(consumer.stream).await.ok()?;
            let info = stream.consumer_info(&consumer.name).await.ok()?;
            if info.num_waiting == 0 {
                return None;
            }
        }
        Some(())
    })
    .await
}

/// The replicas of the pool whose membership lives.
pub async fn live_members(
    members: &async_nats::jetstream::kv::Store,
    settings: &Settings,
) -> std::collections::BTreeSet<String> {
    use futures::StreamExt;
    let prefix = format!("{}.", settings.worker.consumer);
    let mut live = std::collections::BTreeSet::new();
    if let Ok(mut keys) = members.keys().await {
        while let Some(Ok(key)) = keys.next().await {
            if let Some(replica) = key.strip_prefix(&prefix) {
                live.insert(replica.to_owned());
            }
        }
    }
    live
}

/// Which replica owns each unit, by consumer name.
pub async fn owners(
    js: &jetstream::Context,
    settings: &Settings,
) -> std::collections::BTreeMap<String, String> {
    let owners = js
        .get_key_value(&settings.lanes.owners_bucket)
        .await
        .expect("the owners bucket exists");
    let mut found = std::collections::BTreeMap::new();
    for consumer in pipeline::consumers(settings) {
        if let Ok(Some(owner)) = owners.get(&consumer.name).await {
            found.insert(consumer.name, String::from_utf8_lossy(&owner).into_owned());
        }
    }
    found
}
