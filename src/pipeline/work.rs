//! What the lanes do with an event: the CRM connection's actions, or the
//! softphone's registry entry and `load` callbacks.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;

use super::lane::Work;
use super::outcome::HandleError;
use crate::config::Settings;
use crate::contract::{Event, Loaded};
use crate::crm::{Connections, Crm, CrmError, CrmEvent};
use crate::softphones::command::{CommandPublisher, Recipient};
use crate::softphones::load;
use crate::softphones::registry::Registry;
use crate::telemetry::metric;

/// A CRM connection's lane: the adapter's call, timed.
pub(super) struct CrmWork {
    crm: Arc<dyn Crm>,
    /// Call latency by result: ok, unavailable, transient, permanent.
    latency: [metrics::Histogram; 4],
}

impl CrmWork {
    pub(super) fn new(connection: &str, crm: Arc<dyn Crm>) -> Self {
        let latency = ["ok", "unavailable", "transient", "permanent"].map(|result| {
            metrics::histogram!(metric::CRM_DURATION, "crm" => connection.to_owned(), "result" => result)
        });
        Self { crm, latency }
    }
}

impl Work for CrmWork {
    fn handle<'a>(
        &'a self,
        event: &'a CrmEvent,
        _routed_to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.crm.handle(event).await;
            let index = match &result {
                Ok(()) => 0,
                Err(CrmError::Unavailable { .. }) => 1,
                Err(CrmError::Transient { .. }) => 2,
                Err(CrmError::Permanent { .. }) => 3,
            };
            self.latency[index].record(started.elapsed().as_secs_f64());
            Ok(result?)
        })
    }
}

/// The softphone lane: the registry the command API authorises against, and
/// the callbacks that answer `loaded`. No CRM call stands in its way but the
/// partner's picklist, which the adapter bounds.
pub(super) struct SoftphoneWork {
    settings: Arc<Settings>,
    connections: Connections,
    registry: Registry,
    commands: CommandPublisher,
}

impl SoftphoneWork {
    pub(super) fn new(
        settings: Arc<Settings>,
        connections: Connections,
        js: async_nats::jetstream::Context,
    ) -> Self {
        Self {
            registry: Registry::new(js.clone(), &settings.registry),
            commands: CommandPublisher::new(js),
            settings,
            connections,
        }
    }
}

impl Work for SoftphoneWork {
    fn handle<'a>(
        &'a self,
        event: &'a CrmEvent,
        routed_to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            match &event.event {
                Event::Loaded(loaded) => {
                    let vouched = event.vouched.as_ref();
                    // The registry first: the command API may authorise this softphone at once.
                    self.registry
                        .loaded(loaded, vouched, event.published)
                        .await?;
                    // Answered as its partner's: the one the server vouches
                    // for (the body names no other), else the one it names.
                    let loaded = &Loaded {
                        partner_id: event.partner().cloned(),
                        ..loaded.clone()
                    };
                    // The connection the intake routed the event to (copies
                    // made before it said so: decided as it would).
                    let crm = match routed_to {
                        Some(connection) => self.connections.get(connection),
                        None => self
                            .connections
                            .for_partner(&self.settings, loaded.partner_id.as_ref()),
                    };
                    let from_crm = match crm {
                        Some(crm) => crm.dispositions(loaded.partner_id.as_ref()).await,
                        None => None,
                    };
                    let to = Recipient::bound(
                        self.settings.callout.is_some(),
                        &loaded.softphone_id,
                        loaded.partner_id.as_ref(),
                    );
                    for callback in load::callbacks_from(&self.settings, loaded, from_crm) {
                        let message_id = format!("{}:{}", event.id, callback.type_name());
                        let ack = self.commands.publish(to, &callback, &message_id).await?;
                        tracing::debug!(
                            callback = callback.type_name(),
                            seq = ack.sequence,
                            duplicate = ack.duplicate,
                            "Callback published."
                        );
                    }
                }
                Event::AgentStatusChanged(changed) => {
                    self.registry
                        .status_changed(changed, event.vouched.as_ref(), event.published)
                        .await?;
                }
                // The intake routes nothing else here.
                _ => {}
            }
            Ok(())
        })
    }
}
