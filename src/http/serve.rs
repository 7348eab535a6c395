//! Serving one listener: accepting connections within `http.max_connections`,
//! TLS, HTTP/1.1 under the header, idle and stall deadlines, and a stop that
//! closes what is not being answered at once and waits at most the drain for
//! the rest.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;

use super::connection::{Connection, ConnectionMark, Exchange, Timeouts, Tracked};
use super::table::{Admitted, Table};
use crate::http::{HttpSettings, HttpTls};

/// The largest request head (request line and headers) read; a larger one is
/// answered 431 and its connection closed, so a header flood costs at most
/// this much memory per connection.
pub(super) const MAX_HEAD: usize = 64 * 1024;

/// Open files the process needs besides its HTTP connections (NATS, CRM
/// clients, logs), when checking the open-file limit.
const OTHER_FILES: u64 = 256;

/// How often a listener checks whether many connections closed, and how
/// many make it give freed memory back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(2);
const TRIM_AFTER: usize = 256;

/// How one listener treats its connections (from `[http]`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub timeouts: Timeouts,
    pub max_connections: usize,
    /// How long requests being answered may take to finish once shutdown is
    /// asked for (`http.request_timeout`: no request takes longer anyway).
    pub drain: Duration,
}

impl Limits {
    pub(super) fn new(settings: &HttpSettings) -> Self {
        Self {
            timeouts: Timeouts {
                header_read: settings.header_read_timeout,
                idle: settings.idle_timeout,
            },
            max_connections: settings.max_connections,
            drain: settings.request_timeout,
        }
    }
}

/// Serves `router` on `listener` (named `name` in metrics) until `shutdown`,
/// then closes every connection that is not being answered, lets the others
/// finish their request within `limits.drain`, and returns.
pub(super) async fn serve(
    listener: TcpListener,
    name: &'static str,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let table = Table::new(name, limits.max_connections);
    let mut http = http1::Builder::new();
    // Our own deadlines (see `Connection::expired`) replace hyper's header
    // timer, which would also end kept-alive connections after `header_read`.
    http.header_read_timeout(None).max_header_size(MAX_HEAD);
    let tasks = TaskTracker::new();
    let mut trim = tokio::time::interval(TRIM_EVERY);
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = trim.tick() => {
                if table.closed_since() >= TRIM_AFTER {
                    give_back_memory();
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                pause_after(e, &shutdown).await;
                continue;
            }
        };
        // Refused: dropping the stream closes it at once.
        let Some(admitted) = table.admit() else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let served = Served {
            router: router.clone(),
            http: http.clone(),
            limits,
            shutdown: shutdown.clone(),
        };
        tasks.spawn(served.connection(tcp, tls.clone(), admitted));
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// After a failed accept: a client that left before it was accepted costs
/// nothing; anything else (out of file descriptors, of memory) is the
/// process's trouble, and accepting again at once would only spin.
async fn pause_after(error: std::io::Error, shutdown: &CancellationToken) {
    use std::io::ErrorKind::*;
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %error, "Cannot accept an HTTP connection; pausing 100 ms.");
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
}

/// What every connection of a listener shares.
struct Served {
    router: Router,
    http: http1::Builder,
    limits: Limits,
    shutdown: CancellationToken,
}

impl Served {
    async fn connection(self, tcp: TcpStream, tls: Option<TlsAcceptor>, admitted: Admitted) {
        let connection = Arc::clone(admitted.connection());
        let Some(tls) = tls else {
            return self.exchange(tcp, &admitted).await;
        };
        // The handshake counts towards the first request head's deadline.
        let handshake = tokio::select! {
            handshake = tls.accept(tcp) => handshake,
            expiry = connection.expired(self.limits.timeouts) => {
                if let Some(reason) = expiry.reason() {
                    admitted.table().dropped(reason);
                }
                return;
            }
            _ = connection.shed() => return,
            _ = self.shutdown.cancelled() => return,
        };
        match handshake {
            Ok(stream) => self.exchange(stream, &admitted).await,
            Err(e) => tracing::debug!(error = %e, "TLS handshake failed."),
        }
    }

    /// HTTP on an open (and, with TLS, shaken hands) connection until it ends,
    /// outlives its stage, is shed, or shutdown closes it.
    async fn exchange<IO>(self, io: IO, admitted: &Admitted)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let connection = admitted.connection();
        let service = {
            let connection = Arc::clone(connection);
            let router = self.router;
            hyper::service::service_fn(move |request| {
                answer(router.clone(), Arc::clone(&connection), request)
            })
        };
        let io = super::connection::Watched::new(io, Arc::clone(connection));
        let http = self.http.serve_connection(TokioIo::new(io), service);
        tokio::pin!(http);
        tokio::select! {
            ended = http.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "HTTP connection ended with an error.");
                }
                return;
            }
            expiry = connection.expired(self.limits.timeouts) => {
                if let Some(reason) = expiry.reason() {
                    admitted.table().dropped(reason);
                }
                return;
            }
            _ = connection.shed() => return,
            _ = self.shutdown.cancelled() => {}
        }
        // Shutdown: idle and half-sent connections close at once; a request
        // being answered finishes (no keep-alive after it) within the drain.
        if !connection.busy() {
            return;
        }
        http.as_mut().graceful_shutdown();
        if tokio::time::timeout(self.limits.drain, http).await.is_err() {
            tracing::warn!(
                drain_ms = self.limits.drain.as_millis() as u64,
                "An HTTP request did not finish within the drain; its connection is closed."
            );
        }
    }
}

/// Hands one request to the router, marking its connection busy until the
/// response is written. The synchronous part runs when hyper dispatches it.
fn answer(
    mut router: Router,
    connection: Arc<Connection>,
    request: hyper::Request<Incoming>,
) -> impl Future<Output = Result<Response, Infallible>> {
    let exchange = Exchange::begin(&connection);
    let mut request: Request = request.map(Body::new);
    request
        .extensions_mut()
        .insert(ConnectionMark::new(connection));
    async move {
        // A Router is always ready.
        let response = router.call(request).await?;
        exchange.answered();
        Ok(response.map(|body| Body::new(Tracked::new(body, exchange))))
    }
}

/// The TLS acceptor of `http.tls`: the certificate chain and key from PEM
/// files, HTTP/1.1 by ALPN.
pub(super) fn acceptor(tls: &HttpTls) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    crate::tls::install_provider();
    let load = || -> anyhow::Result<rustls::ServerConfig> {
        let chain = CertificateDer::pem_file_iter(&tls.cert_file)?
            .collect::<Result<Vec<_>, _>>()
            .context("not a PEM certificate chain")?;
        anyhow::ensure!(!chain.is_empty(), "no certificate in the file");
        let key = PrivateKeyDer::from_pem_file(&tls.key_file).context("not a PEM private key")?;
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    };
    let config = load().with_context(|| {
        format!(
            "http.tls: cannot load certificate {} and key {}",
            tls.cert_file.display(),
            tls.key_file.display()
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime
/// does, so that `http.max_connections`, not a default of 1024, decides how
/// many clients are served; warns when even the hard limit is below what the
/// caps of `listeners` listeners need.
pub(super) fn raise_open_files(listeners: usize, max_connections: usize) {
    let needed = (listeners * max_connections) as u64 + OTHER_FILES;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    if limit.rlim_cur < needed {
        tracing::warn!(
            open_files = limit.rlim_cur,
            needed,
            "The open-file limit is below what http.max_connections needs: past it, accepting connections and calling CRMs fail."
        );
    }
}

/// Gives the allocator's free memory back to the system. glibc keeps what a
/// flood of connections freed (their buffers are spread over every worker
/// thread's arena), so without this the resident memory stays at its peak.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own arenas; 0 keeps no pad.
        unsafe { libc::malloc_trim(0) };
    }
}
