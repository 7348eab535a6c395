//! The NATS micro service (`nats micro ls` shows it), shared by every replica
//! through one queue group, with two endpoints:
//! - `command` on `softphone.api.command`: the same [`Dispatcher`] as the HTTP
//!   route, and the same answers;
//! - `load` on `softphone.load`: the callbacks a loading softphone gets;
//! - with `[callout]` (deploy/tenancy.md), the same two on partners'
//!   subjects, where the partners' and the CRMs' accounts import them:
//!   `partner-command` on `softphone.p.*.api.command` (a CRM commands only
//!   softphones bound to the partner in the subject) and `partner-load` on
//!   `softphone.p.*.load` (for that partner only, and only for the softphone
//!   the server vouches sent it), and `partner-event` on
//!   `softphone.p.*.vouch.>`, the door of partners' `loaded` and
//!   `agent.status_changed` ([`door`]).
//!
//! Each replica's stats (`nats micro stats softphone-bridge`, and what
//! `softphone-bridge status` gathers) carry its [`ReplicaView`] as the
//! `command` endpoint's `data`: its CRM lanes' gates and Salesforce API usage.
//!
//! Error replies are service errors (`Nats-Service-Error`, `-Code`), so
//! `nats micro stats` counts them; their problem document travels in the
//! [`PROBLEM_HEADER`] header, since a service error has an empty body.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::service::{Request, ServiceExt, endpoint::Endpoint, error};
use futures::StreamExt;
use std::borrow::Cow;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::contract::tenant::{self, PARTNER_COMMAND_REQUESTS, PARTNER_LOAD_REQUESTS};
use crate::contract::{
    API_COMMAND_SUBJECT, Guid, INBOX_PREFIX, LOAD_QUEUE_GROUP, LOAD_REQUEST_SUBJECT,
};
use crate::crm::Connections;
use crate::dispatch::{Accepted, Command, DispatchError, Dispatcher, Scope, Via};
use crate::http::Problem;
use crate::http::Readiness;
use crate::pipeline::{GateView, Gates};
use crate::softphones::door::{self, PARTNER_DOORS};
use crate::softphones::load::{self, LoadReply, PartnerLoadError};

/// Requests handled at once by one replica, per endpoint.
const MAX_IN_FLIGHT: usize = 256;

/// The service's name in `nats micro ls`.
pub(crate) const SERVICE_NAME: &str = "softphone-bridge";

/// The header of an error reply that carries its problem document (JSON).
pub(crate) const PROBLEM_HEADER: &str = "Softphone-Problem";

/// The endpoint whose stats carry the replica's [`ReplicaView`] as `data`.
pub(crate) const VIEW_ENDPOINT: &str = "command";

/// What one replica shows of itself in its service stats.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ReplicaView {
    /// Its pool (`worker.consumer`), which tells apart the replicas of
    /// several pools on one NATS.
    pub pool: String,
    /// Each running CRM lane's gate, by connection.
    pub lanes: BTreeMap<String, GateView>,
    /// Salesforce API usage as last reported to this replica, by connection.
    pub api_usage: BTreeMap<String, ApiUsage>,
}

/// An org's daily API usage from its `Sforce-Limit-Info`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct ApiUsage {
    pub used: u64,
    pub limit: u64,
}

impl ReplicaView {
    fn now(pool: &str, gates: &Gates, connections: &Connections) -> Self {
        Self {
            pool: pool.to_owned(),
            lanes: gates.views(),
            api_usage: connections
                .iter()
                .filter_map(|(name, crm)| {
                    let (used, limit) = crm.api_usage()?;
                    Some((name.to_owned(), ApiUsage { used, limit }))
                })
                .collect(),
        }
    }
}

/// What the `load` endpoint needs.
pub(crate) struct Load {
    pub settings: Arc<Settings>,
    pub connections: Connections,
}

/// The service's endpoint `name` on `subject`.
async fn endpoint(
    service: &async_nats::service::Service,
    name: &str,
    subject: &str,
) -> anyhow::Result<async_nats::service::endpoint::Endpoint> {
    service
        .endpoint_builder()
        .name(name)
        .add(subject.to_owned())
        .await
        .map_err(|e| anyhow::anyhow!("cannot add the {subject} endpoint: {e}"))
}

/// Serves both endpoints until `shutdown`.
pub(crate) async fn serve(
    client: async_nats::Client,
    dispatcher: Dispatcher,
    load: Load,
    gates: Gates,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let view = {
        let pool = load.settings.worker.consumer.clone();
        let connections = load.connections.clone();
        move |endpoint: String, _: async_nats::service::endpoint::Stats| {
            if endpoint != VIEW_ENDPOINT {
                return Value::Null;
            }
            serde_json::to_value(ReplicaView::now(&pool, &gates, &connections))
                .expect("a view serializes")
        }
    };
    let service = client
        .service_builder()
        .description("Commands from CRMs to softphones, validated against the softphone contract; load callbacks for softphones.")
        .queue_group(LOAD_QUEUE_GROUP)
        .stats_handler(view)
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the NATS service: {e}"))?;
    let commands = endpoint(&service, VIEW_ENDPOINT, API_COMMAND_SUBJECT).await?;
    let loads = endpoint(&service, "load", LOAD_REQUEST_SUBJECT).await?;
    // Partners' subjects, where their accounts' imports arrive.
    let tenancy = load.settings.callout.is_some();
    let mut partner_endpoints = Vec::new();
    if tenancy {
        for (name, subject) in [
            ("partner-command", PARTNER_COMMAND_REQUESTS),
            ("partner-load", PARTNER_LOAD_REQUESTS),
            ("partner-event", PARTNER_DOORS),
        ] {
            partner_endpoints.push(endpoint(&service, name, subject).await?);
        }
    }
    let mut partner_endpoints = partner_endpoints.into_iter();
    let (partner_commands, partner_loads, partner_events) = (
        partner_endpoints.next(),
        partner_endpoints.next(),
        partner_endpoints.next(),
    );
    // Ready once the server has the subscriptions, not merely the client.
    while let Err(e) = client.flush().await {
        tracing::debug!(error = %e, "NATS service not subscribed yet; retrying.");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
        }
    }
    readiness.set_serving(true);
    tracing::info!(
        command = API_COMMAND_SUBJECT,
        load = LOAD_REQUEST_SUBJECT,
        partners = tenancy,
        "Serving NATS requests."
    );
    let tracker = TaskTracker::new();
    let load = Arc::new(load);
    let command_handler = {
        let dispatcher = dispatcher.clone();
        move |request: Request, partner: Option<Guid>| {
            let dispatcher = dispatcher.clone();
            async move {
                let scope = partner.as_ref().map(std::slice::from_ref);
                let reply = command(&dispatcher, scope, &request.message.payload).await;
                answer(request, reply.map_err(|e| Problem::from(&e)), "command").await;
            }
        }
    };
    let partner_load_handler = {
        let load = Arc::clone(&load);
        move |request: Request, partner: Option<Guid>| {
            let load = Arc::clone(&load);
            async move {
                let partner = partner.expect("a partner's route");
                let reply = partner_load(&load, &partner, &request.message).await;
                answer(request, reply, "load").await;
            }
        }
    };
    let door_handler = {
        let client = client.clone();
        move |request: Request, partner: Option<Guid>| {
            let client = client.clone();
            async move {
                let partner = partner.expect("a partner's route");
                let answer = door::pass(&client, &partner, &request.message).await;
                if let Err(e) = request.respond(Ok(answer)).await {
                    tracing::warn!(endpoint = "partner-event", error = %e, "Cannot answer a NATS request.");
                }
            }
        }
    };
    tokio::join!(
        maybe(partner_events, |endpoint| each(
            endpoint,
            Route::Door,
            &tracker,
            &shutdown,
            door_handler,
        )),
        each(
            commands,
            Route::Own(API_COMMAND_SUBJECT),
            &tracker,
            &shutdown,
            command_handler.clone(),
        ),
        maybe(partner_commands, |endpoint| each(
            endpoint,
            Route::Partner("api.command"),
            &tracker,
            &shutdown,
            command_handler,
        )),
        maybe(partner_loads, |endpoint| each(
            endpoint,
            Route::Partner("load"),
            &tracker,
            &shutdown,
            partner_load_handler,
        )),
        each(
            loads,
            Route::Own(LOAD_REQUEST_SUBJECT),
            &tracker,
            &shutdown,
            move |request, _| {
                let load = Arc::clone(&load);
                async move {
                    let reply = LoadReply::for_request_with_crm(
                        &load.settings,
                        &load.connections,
                        &request.message.payload,
                    )
                    .await;
                    let reply = match reply {
                        LoadReply::Error { error } => {
                            tracing::warn!(reason = %error, "Refused a load request.");
                            Err(Problem::new(
                                400,
                                "invalid-load",
                                "Invalid load request",
                                error,
                            ))
                        }
                        callbacks => Ok(callbacks),
                    };
                    answer(request, reply, "load").await;
                }
            }
        ),
    );
    // Answer what was accepted before the connection drains.
    tracker.close();
    tracker.wait().await;
    if let Err(e) = service.stop().await {
        tracing::warn!(error = %e, "Cannot stop the NATS service cleanly.");
    }
    Ok(())
}

/// Runs `serve` on `endpoint` when there is one.
async fn maybe<F, Fut>(endpoint: Option<Endpoint>, serve: F)
where
    F: FnOnce(Endpoint) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(endpoint) = endpoint {
        serve(endpoint).await;
    }
}

/// Where an endpoint's requests come from.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// A client of the bridge's own account, on this contract subject, with
    /// its inbox as the reply subject.
    Own(&'static str),
    /// A partner's or a CRM's account through a service import, on
    /// `softphone.p.<partnerId>.` then this, with the reply subject the
    /// server made for the import ([`tenant::is_service_import_reply`]).
    Partner(&'static str),
    /// A partner's account through a service import, on its door
    /// (`softphone.p.<partnerId>.vouch.…`), as for `Partner`.
    Door,
}

/// Hands each request of `endpoint` to a task of its own (a slow publish ack
/// or CRM picklist must not hold up the others), at most [`MAX_IN_FLIGHT`] at
/// once; the rest wait in the subscription. Requests not [`addressed`] as
/// `route` says are dropped; the handler gets the partner of a partner's one.
async fn each<F, Fut>(
    mut endpoint: Endpoint,
    route: Route,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    handle: F,
) where
    F: Fn(Request, Option<Guid>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let request = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = endpoint.next() => match next {
                Some(request) => request,
                None => break,
            },
        };
        let Some(partner) = addressed(&request, route) else {
            continue;
        };
        let work = handle(request, partner);
        tracker.spawn(async move {
            work.await;
            drop(permit);
        });
    }
}

/// Whether a request came as `route` says: `Some` with its partner (`None`
/// on the bridge's own subjects). The bridge's own subject wants its answer
/// in an inbox ([`INBOX_PREFIX`]); a partner's subject in exactly the reply
/// subject a service import makes, nothing broader. Anything else is
/// dropped: a JetStream message steered onto the endpoint by the reply
/// subject of a pull request (it keeps its own subject), or a reply subject
/// that would have the bridge publish its answer, with its own rights, onto
/// a stream or the JetStream API (`softphone.cmd.<id>`,
/// `$JS.API.STREAM.PURGE.<stream>`).
fn addressed(request: &Request, route: Route) -> Option<Option<Guid>> {
    let message = &request.message;
    let reply = message.reply.as_ref().map(|reply| reply.as_str());
    let partner = match route {
        Route::Own(subject) => (message.subject.as_str() == subject
            && reply.is_some_and(|r| r.starts_with(INBOX_PREFIX)))
        .then_some(None),
        Route::Partner(rest) => tenant::partner_request(message.subject.as_str(), rest)
            .filter(|_| reply.is_some_and(tenant::is_service_import_reply))
            .map(Some),
        Route::Door => tenant::split_partner(message.subject.as_str())
            .filter(|(_, rest)| rest.starts_with(door::DOOR_TOKEN))
            .filter(|_| reply.is_some_and(tenant::is_service_import_reply))
            .map(|(partner, _)| Some(partner)),
    };
    if partner.is_none() {
        tracing::warn!(
            endpoint = ?route,
            subject = %message.subject,
            reply,
            "Dropped a request that is not for this endpoint or wants its answer elsewhere than its requester."
        );
    }
    partner
}

/// A `load` from a partner's account ([`load::partner_loaded`]).
async fn partner_load(
    load: &Load,
    partner: &Guid,
    message: &async_nats::Message,
) -> Result<LoadReply, Problem> {
    match load::partner_loaded(partner, &message.payload, message.headers.as_ref()) {
        Ok(loaded) => Ok(LoadReply::for_loaded(&load.settings, &load.connections, loaded).await),
        Err(e) => {
            tracing::warn!(partner = %partner, reason = %e, "Refused a partner's load request.");
            Err(match e {
                PartnerLoadError::Invalid(detail) => {
                    Problem::new(400, "invalid-load", "Invalid load request", detail)
                }
                PartnerLoadError::Forbidden(detail) => {
                    Problem::new(403, "forbidden", "Forbidden", detail)
                }
            })
        }
    }
}

/// Replies with `reply`'s JSON, or with a service error carrying the problem.
async fn answer<T: serde::Serialize>(request: Request, reply: Result<T, Problem>, endpoint: &str) {
    let sent = match reply {
        Ok(body) => {
            let body = serde_json::to_vec(&body).expect("replies serialize");
            request.respond(Ok(body.into())).await
        }
        Err(problem) => {
            let mut headers = HeaderMap::new();
            let document = serde_json::to_string(&problem).expect("problems serialize");
            headers.insert(PROBLEM_HEADER, document.as_str());
            let error = error::Error {
                status: problem.title.clone(),
                code: usize::from(problem.status),
            };
            request.respond_with_headers(Err(error), headers).await
        }
    };
    if let Err(e) = sent {
        tracing::warn!(endpoint, error = %e, "Cannot answer a NATS request.");
    }
}

/// `{"softphoneId": ..., "type": ..., "payload": ...}`, optionally with
/// `"idempotencyKey"` and `"partnerId"`: the HTTP route's path, header,
/// query and body in one document, read once (its payload left as text for
/// the contract's decoding). `partners`: the partner of the subject it came
/// on, whose softphones alone it may command; `None` on the bridge's own
/// subject.
async fn command(
    dispatcher: &Dispatcher,
    partners: Option<&[Guid]>,
    body: &[u8],
) -> Result<Accepted, DispatchError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Request<'a> {
        #[serde(borrow)]
        softphone_id: Cow<'a, str>,
        #[serde(borrow, default)]
        idempotency_key: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        partner_id: Option<Cow<'a, str>>,
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow)]
        payload: &'a RawValue,
    }
    let request: Request = serde_json::from_slice(body).map_err(|e| refused(body, e))?;
    // NATS authenticated the caller and its permissions admit this subject:
    // on a partner's, the partner's softphones only.
    let scope = partners.map_or(Scope::All, Scope::Partners);
    dispatcher
        .dispatch(
            scope,
            &request.softphone_id,
            request.partner_id.as_deref(),
            Command::Parts {
                kind: &request.kind,
                payload: request.payload.get().as_bytes(),
            },
            request.idempotency_key.as_deref(),
            Via::Nats,
        )
        .await
}

/// Why a request is not one: the field at fault, as the contract names it.
fn refused(body: &[u8], error: serde_json::Error) -> DispatchError {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return DispatchError::MalformedJson(error.to_string());
    };
    for field in ["softphoneId", "idempotencyKey", "partnerId", "type"] {
        match request.get(field) {
            Some(Value::String(_)) => {}
            Some(_) => return contract(field, "expected a string"),
            None if matches!(field, "softphoneId" | "type") => {
                return contract(field, &format!("missing field `{field}`"));
            }
            None => {}
        }
    }
    if !request.contains_key("payload") {
        return contract("payload", "missing field `payload`");
    }
    DispatchError::MalformedJson(error.to_string())
}

fn contract(field: &str, reason: &str) -> DispatchError {
    DispatchError::Contract {
        field: field.into(),
        reason: reason.into(),
    }
}
