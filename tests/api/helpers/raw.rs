//! Clients driven by hand (HTTP/1.1 as text, connections that stall) and
//! what a process holds, read from `/proc`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::PATIENCE;

/// An HTTP/1.1 connection driven by hand, kept alive between requests.
pub struct Raw(pub BufReader<TcpStream>);

impl Raw {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Raw> {
        let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(addr)).await??;
        Ok(Raw(BufReader::new(stream)))
    }

    /// Sends `text`, reads the answer (status, body); `None` if the
    /// connection closed or said nothing in time.
    pub async fn request(&mut self, text: &str) -> Option<(u16, String)> {
        self.0.get_mut().write_all(text.as_bytes()).await.ok()?;
        tokio::time::timeout(PATIENCE, self.answer()).await.ok()?
    }

    pub async fn answer(&mut self) -> Option<(u16, String)> {
        let mut status = None;
        let mut length = 0;
        loop {
            let mut line = String::new();
            if self.0.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if status.is_none() {
                status = line.split(' ').nth(1)?.parse().ok();
            } else if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().ok()?;
            }
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body).await.ok()?;
        Some((status?, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Opens `count` connections that each send only `sent`; each watcher
/// returns how long after its bytes the server closed it (never answering),
/// or `None` while it stays open (up to [`PATIENCE`]). `closed` counts them.
pub async fn flood(
    addr: SocketAddr,
    count: usize,
    sent: &'static [u8],
    closed: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Option<Duration>>> {
    let opened = futures::stream::iter(0..count)
        .map(|_| async move {
            let mut stream = TcpStream::connect(addr).await.expect("loopback connects");
            stream.write_all(sent).await.expect("the bytes are sent");
            (stream, Instant::now())
        })
        .buffer_unordered(64);
    opened
        .map(|(stream, sent)| tokio::spawn(closed_after(stream, sent, Arc::clone(&closed))))
        .collect()
        .await
}

/// How long after `sent` the server closed `stream` without answering;
/// `None` if it is still open after [`PATIENCE`].
async fn closed_after(
    mut stream: TcpStream,
    sent: Instant,
    closed: Arc<AtomicUsize>,
) -> Option<Duration> {
    let mut answer = Vec::new();
    // A reset (the server closed with our bytes unread) is a close too.
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .ok()?;
    assert!(answer.is_empty(), "a half-sent request gets no answer");
    closed.fetch_add(1, Ordering::Relaxed);
    Some(sent.elapsed())
}

/// The process's open file descriptors.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// The process's resident memory, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The highest open fds and RSS seen, sampled every 20 ms until stopped.
pub struct Peaks {
    fds: Arc<AtomicUsize>,
    rss: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Peaks {
    pub fn watch(pid: u32) -> Peaks {
        let fds = Arc::new(AtomicUsize::new(0));
        let rss = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (fds, rss) = (Arc::clone(&fds), Arc::clone(&rss));
            async move {
                loop {
                    fds.fetch_max(open_fds(pid), Ordering::Relaxed);
                    rss.fetch_max(rss_kib(pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Peaks { fds, rss, task }
    }

    pub fn stop(self) -> (usize, u64) {
        self.task.abort();
        (
            self.fds.load(Ordering::Relaxed),
            self.rss.load(Ordering::Relaxed),
        )
    }
}

/// The value of the sample `series` (name and labels, as rendered) in
/// Prometheus text.
pub fn sample_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}
