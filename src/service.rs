//! The command path as a NATS micro service (`nats micro ls` shows it): a
//! request on `softphone.api.command` goes through the same [`Dispatcher`] as
//! the HTTP route and gets the same answer.

use async_nats::HeaderMap;
use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE, ServiceExt};
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::contract::{API_COMMAND_SUBJECT, LOAD_QUEUE_GROUP};
use crate::dispatch::{DispatchError, Dispatcher, Scope, Via};
use crate::http::ops::Readiness;
use crate::http::problem::Problem;

/// Requests handled at once by one replica.
const MAX_IN_FLIGHT: usize = 256;

/// The service's name in `nats micro ls`.
pub const SERVICE_NAME: &str = "softphone-bridge";

/// Serves `softphone.api.command` (in a queue group shared by every replica)
/// until `shutdown`.
pub async fn serve(
    client: async_nats::Client,
    dispatcher: Dispatcher,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service = client
        .service_builder()
        .description("Commands from CRMs to softphones, validated against the softphone contract.")
        .queue_group(LOAD_QUEUE_GROUP)
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the NATS service: {e}"))?;
    let mut requests = service
        .endpoint_builder()
        .name("command")
        .add(API_COMMAND_SUBJECT)
        .await
        .map_err(|e| anyhow::anyhow!("cannot add the {API_COMMAND_SUBJECT} endpoint: {e}"))?;
    // Ready once the server has the subscription, not merely the client.
    while let Err(e) = client.flush().await {
        tracing::debug!(error = %e, "Command service not subscribed yet; retrying.");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
        }
    }
    readiness.set_serving(true);
    tracing::info!(
        subject = API_COMMAND_SUBJECT,
        "Serving NATS command requests."
    );
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let tracker = TaskTracker::new();
    loop {
        // At most MAX_IN_FLIGHT requests at once; the rest wait in the subscription.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let request = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = requests.next() => match next {
                Some(request) => request,
                None => break,
            },
        };
        // One task per request: a slow publish ack must not hold up the others.
        let dispatcher = dispatcher.clone();
        tracker.spawn(async move {
            let (headers, body) = match handle(&dispatcher, &request.message.payload).await {
                Ok(accepted) => (HeaderMap::new(), serde_json::to_vec(&accepted)),
                Err(e) => {
                    let mut headers = HeaderMap::new();
                    headers.insert(NATS_SERVICE_ERROR, e.title());
                    headers.insert(NATS_SERVICE_ERROR_CODE, e.status().to_string().as_str());
                    (headers, serde_json::to_vec(&Problem::from(&e)))
                }
            };
            let body = body.expect("replies serialize").into();
            if let Err(e) = request.respond_with_headers(Ok(body), headers).await {
                tracing::warn!(error = %e, "Cannot answer a command request.");
            }
            drop(permit);
        });
    }
    // Answer what was accepted before the connection drains.
    tracker.close();
    tracker.wait().await;
    if let Err(e) = service.stop().await {
        tracing::warn!(error = %e, "Cannot stop the NATS service cleanly.");
    }
    Ok(())
}

/// `{"softphoneId": ..., "type": ..., "payload": ...}`, optionally with
/// `"idempotencyKey"`: the HTTP route's path, header and body in one document.
async fn handle(
    dispatcher: &Dispatcher,
    body: &[u8],
) -> Result<crate::dispatch::Accepted, DispatchError> {
    let mut request: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| DispatchError::MalformedJson(e.to_string()))?;
    let softphone = match request.remove("softphoneId") {
        Some(Value::String(id)) => id,
        Some(_) => return Err(contract("softphoneId", "expected a string")),
        None => return Err(contract("softphoneId", "missing field `softphoneId`")),
    };
    let key = match request.remove("idempotencyKey") {
        Some(Value::String(key)) => Some(key),
        Some(_) => return Err(contract("idempotencyKey", "expected a string")),
        None => None,
    };
    let command = serde_json::to_vec(&request).expect("a JSON map serializes");
    // NATS authenticated the caller and its permissions admit this subject.
    dispatcher
        .dispatch(Scope::All, &softphone, &command, key.as_deref(), Via::Nats)
        .await
}

fn contract(field: &str, reason: &str) -> DispatchError {
    DispatchError::Contract {
        field: field.into(),
        reason: reason.into(),
    }
}
