//! The HTTP server: the command API for CRMs (bearer tokens, problem+json
//! errors), health, readiness, metrics and the OpenAPI document.

mod auth;
mod connection;
mod ops;
mod problem;
mod routes;
mod serve;
pub(crate) mod settings;
mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

pub(crate) use self::auth::Tokens;
pub use self::auth::hash_token;
pub use self::ops::OPENAPI;
pub(crate) use self::ops::Readiness;
pub(crate) use self::problem::Problem;
pub use self::settings::{HttpSettings, HttpTls, TokenSettings};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::dispatch::Dispatcher;
use crate::telemetry::metric;
use problem::ApiError;

/// Where a CRM posts a command.
pub(crate) const COMMANDS_PATH: &str = "/v1/softphones/{softphoneId}/commands";
/// What the registry knows of a softphone.
pub(crate) const SOFTPHONE_PATH: &str = "/v1/softphones/{softphoneId}";
pub const OPENAPI_PATH: &str = "/openapi.yaml";
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";
pub(crate) const METRICS_PATH: &str = "/metrics";

/// Every route as (method, path); the OpenAPI test compares it with the document.
pub const ROUTES: [(&str, &str); 6] = [
    ("POST", COMMANDS_PATH),
    ("GET", SOFTPHONE_PATH),
    ("GET", OPENAPI_PATH),
    ("GET", HEALTHZ_PATH),
    ("GET", READYZ_PATH),
    ("GET", METRICS_PATH),
];

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

pub struct Inner {
    pub dispatcher: Dispatcher,
    pub tokens: Tokens,
    pub readiness: Readiness,
    pub body_limit: usize,
    pub request_timeout: Duration,
    /// Bounds the command API's concurrent requests (`http.max_in_flight`).
    pub in_flight: tokio::sync::Semaphore,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub(crate) fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }
}

/// The command routes (absent without tokens: off, not open) and the OpenAPI document.
pub(crate) fn api_router(state: AppState) -> Router {
    finish(api_routes(&state), state)
}

/// Health, readiness and metrics.
pub(crate) fn ops_router(state: AppState) -> Router {
    finish(ops_routes(), state)
}

/// Everything on one listener.
pub(crate) fn router(state: AppState) -> Router {
    finish(api_routes(&state).merge(ops_routes()), state)
}

fn api_routes(state: &AppState) -> Router<AppState> {
    let router = Router::new().route(OPENAPI_PATH, get(ops::openapi));
    if state.tokens.is_empty() {
        return router;
    }
    // The last layer runs first: the token is checked before a permit is
    // taken or a byte of the body read, so unauthenticated callers, however
    // slow, hold nothing.
    let commands = Router::new()
        .route(COMMANDS_PATH, post(routes::post_command))
        .route(SOFTPHONE_PATH, get(routes::get_softphone))
        .route_layer(middleware::from_fn_with_state(state.clone(), shed))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            routes::authenticate,
        ));
    router.merge(commands)
}

fn ops_routes() -> Router<AppState> {
    Router::new()
        .route(HEALTHZ_PATH, get(ops::healthz))
        .route(READYZ_PATH, get(ops::readyz))
        .route(METRICS_PATH, get(ops::metrics))
}

fn finish(router: Router<AppState>, state: AppState) -> Router {
    router
        .route_layer(middleware::from_fn(count))
        .fallback(no_route)
        // The body limit is the command route's own (routes::read_body, the
        // one body any route reads): no second limit here.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .with_state(state)
}

/// Counts each answered request by route template (never the raw path, whose
/// ids would make the series unbounded), method and status.
async fn count(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::counter!(metric::HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status.to_string())
        .increment(1);
    metrics::histogram!(metric::HTTP_DURATION, "route" => route.clone(), "method" => method)
        .record(elapsed.as_secs_f64());
    tracing::debug!(%route, method, status, elapsed_ms = elapsed.as_millis() as u64, "HTTP request answered.");
    response
}

/// Answers 408 (problem+json) when a request, body included, takes too long.
async fn deadline(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(state.request_timeout).into_response(),
    }
}

/// Refuses at once, with 503, what would exceed `http.max_in_flight`: memory
/// stays bounded and the caller can retry elsewhere.
async fn shed(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_permit) = state.in_flight.try_acquire() else {
        return ApiError::Busy.into_response();
    };
    next.run(request).await
}

async fn no_route(request: Request) -> Response {
    let method = method_label(request.method());
    metrics::counter!(metric::HTTP_REQUESTS, "route" => "unmatched", "method" => method, "status" => "404")
        .increment(1);
    metrics::histogram!(metric::HTTP_DURATION, "route" => "unmatched", "method" => method)
        .record(0.0);
    ApiError::NoRoute(format!("{method} {}", request.uri().path())).into_response()
}

/// A method as a metric label: the standard ones, anything else `other` (a
/// client chooses the method string, and each one would be a new series).
pub(crate) fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// The bound listeners, before serving (tests read the ports in between).
pub(crate) struct HttpServer {
    /// The command API (`http.listen`), with the ops routes unless `ops` is bound.
    api: Option<TcpListener>,
    /// The ops routes alone (`http.ops_listen`).
    ops: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
    limits: serve::Limits,
}

impl HttpServer {
    /// Binds `http.listen` and `http.ops_listen`, whichever are set; `None`
    /// when neither is.
    pub(crate) async fn bind(settings: &HttpSettings) -> anyhow::Result<Option<Self>> {
        if settings.listen.is_none() && settings.ops_listen.is_none() {
            return Ok(None);
        }
        let api = listen("http.listen", settings.listen.as_deref()).await?;
        let ops = listen("http.ops_listen", settings.ops_listen.as_deref()).await?;
        let tls = settings.tls.as_ref().map(serve::acceptor).transpose()?;
        let listeners = usize::from(api.is_some()) + usize::from(ops.is_some());
        serve::raise_open_files(listeners, settings.max_connections);
        Ok(Some(Self {
            api,
            ops,
            tls,
            limits: serve::Limits::new(settings),
        }))
    }

    /// The command API's address, when `http.listen` is set.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(address)
    }

    /// Where health, readiness and metrics are served: `http.ops_listen`'s
    /// address, else the API's.
    pub(crate) fn ops_addr(&self) -> SocketAddr {
        self.ops
            .as_ref()
            .or(self.api.as_ref())
            .map(address)
            .expect("bound with at least one listener")
    }

    /// Serves until `shutdown`; then closes the connections not being
    /// answered at once and gives requests being answered up to
    /// `http.request_timeout` to finish.
    pub(crate) async fn serve(
        self,
        state: AppState,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        if self.api.is_some() && state.tokens.is_empty() {
            tracing::warn!("No http.tokens configured: the command routes are off.");
        }
        let addr = self.local_addr();
        let ops_addr = self.ops_addr();
        let listeners = match (self.api, self.ops) {
            (Some(api), Some(ops)) => vec![
                (api, "api", api_router(state.clone())),
                (ops, "ops", ops_router(state)),
            ],
            (Some(api), None) => vec![(api, "api", router(state))],
            (None, Some(ops)) => vec![(ops, "ops", ops_router(state))],
            (None, None) => unreachable!("bound with at least one listener"),
        };
        tracing::info!(api = ?addr, ops = %ops_addr, tls = self.tls.is_some(), "Serving HTTP.");
        let served = listeners.into_iter().map(|(listener, name, router)| {
            serve::serve(
                listener,
                name,
                router,
                self.tls.clone(),
                self.limits,
                shutdown.clone(),
            )
        });
        futures::future::join_all(served).await;
        tracing::info!("HTTP server stopped.");
        Ok(())
    }
}

/// A listener on `addr` if it is set; `key` names the setting in errors.
async fn listen(key: &str, addr: Option<&str>) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key}: cannot listen on {addr}"))?;
    Ok(Some(listener))
}

fn address(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_label(&axum::http::Method::POST), "POST");
        let made_up = axum::http::Method::from_bytes(b"X-RANDOM-12345").unwrap();
        assert_eq!(method_label(&made_up), "other");
    }
}
