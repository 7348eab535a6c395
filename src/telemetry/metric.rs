//! Prometheus metrics: the series' names and the process-wide recorder whose
//! text `/metrics` serves.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Deliveries settled, by `type` (e.g. `call.ended`), `stage` (`intake`: routed;
/// `lane`: handled) and `outcome` (ack, retry, dead_letter, give_back).
pub const EVENTS: &str = "softphone_bridge_events_total";
/// Events being handled right now by this replica.
pub const IN_FLIGHT: &str = "softphone_bridge_events_in_flight";
/// Attempts after an event's first: a redelivery, or a retry in process, by `type`.
pub(crate) const REDELIVERIES: &str = "softphone_bridge_redeliveries_total";
/// Events copied to the dead-letter queue, by `type`.
pub(crate) const DEAD_LETTERED: &str = "softphone_bridge_dead_lettered_total";
/// CRM call latency, by `crm` (the connection) and `result` (ok, unavailable, transient, permanent).
pub(crate) const CRM_DURATION: &str = "softphone_bridge_crm_request_duration_seconds";
/// Events not yet delivered, by `consumer` (the intake and every lane).
pub const CONSUMER_PENDING: &str = "softphone_bridge_consumer_pending";
/// Events delivered and not yet acknowledged, by `consumer`.
pub const CONSUMER_ACK_PENDING: &str = "softphone_bridge_consumer_ack_pending";
/// Events a lane holds in this replica while its CRM connection is in trouble, by `lane`.
pub const LANE_HELD: &str = "softphone_bridge_lane_held";
/// 1 while a lane is paused in this replica, by `lane` (the connection).
pub const LANE_PAUSED: &str = "softphone_bridge_lane_paused";
/// Times a lane paused, by `lane`.
pub(crate) const LANE_PAUSES: &str = "softphone_bridge_lane_pauses_total";
/// Commands published to softphones, by `type`, `via` (http, nats) and `duplicate`.
pub(crate) const COMMANDS: &str = "softphone_bridge_commands_published_total";
/// HTTP requests answered, by `route`, `method` and `status`.
pub(crate) const HTTP_REQUESTS: &str = "softphone_bridge_http_requests_total";
/// HTTP request latency, by `route` and `method`.
pub(crate) const HTTP_DURATION: &str = "softphone_bridge_http_request_duration_seconds";
/// HTTP connections open now, by `listener` (`api`: `http.listen`, `ops`:
/// `http.ops_listen`).
pub(crate) const HTTP_CONNECTIONS: &str = "softphone_bridge_http_connections";
/// HTTP connections the server closed to protect itself, by `listener` and
/// `reason`: `shed` (closed to make room for a new one: open, not
/// authenticated, not being answered), `refused` (new, with every open one
/// authenticated or being answered), `header_timeout` (its request head did
/// not arrive within `http.header_read_timeout`), `stalled` (its client read
/// nothing of a response for `http.idle_timeout`). Only a drop creates the
/// series, so it is not in [`ALL`].
pub(crate) const HTTP_CONNECTIONS_DROPPED: &str = "softphone_bridge_http_connections_dropped_total";
/// How old an event was when its lane acked it (now minus its publish time in
/// `SOFTPHONE_EVENTS`), by `lane` and `type`: whether screen pops and call
/// logs are on time.
pub(crate) const EVENT_AGE: &str = "softphone_bridge_event_age_seconds";
/// 1 while this replica is ready (what `/readyz` says), 0 otherwise;
/// refreshed by every `/readyz` and every scrape.
pub const READY: &str = "softphone_bridge_ready";
/// Always 1, by `version`: which build each replica runs.
pub(crate) const BUILD_INFO: &str = "softphone_bridge_build_info";

/// Softphone events refused because they name another partner than the one
/// the softphone is bound to (dead-lettered with reason `partner conflict`),
/// by `type` (`loaded`, `agent.status_changed`). Only a conflict creates the
/// series, so it is not in [`ALL`].
pub(crate) const PARTNER_CONFLICTS: &str = "softphone_bridge_partner_conflicts_total";

/// Events whose body names another partner than the account they were
/// published from (dead-lettered with reason `partner mismatch`), by `type`.
/// Only a mismatch creates the series, so it is not in [`ALL`].
pub(crate) const PARTNER_MISMATCHES: &str = "softphone_bridge_partner_mismatches_total";

/// A partner's `loaded` or `agent.status_changed` about another softphone
/// than the login the server vouches sent it (dead-lettered with reason
/// `softphone mismatch`), by `type`. Only a mismatch creates the series.
pub(crate) const SOFTPHONE_MISMATCHES: &str = "softphone_bridge_softphone_mismatches_total";

/// Logins the auth callout answered, by `outcome` (`accepted`, `refused`)
/// and `reason` (an accepted login's role, `softphone` or `crm`; a refusal's
/// reason, e.g. `expired`, `signature`, `unknown_partner`: a bounded set, see
/// deploy/tenancy.md). Only replicas serving the callout count it, so it is
/// not in [`ALL`].
pub(crate) const LOGINS: &str = "softphone_bridge_logins_total";

/// Salesforce API calls used today, per org connection (`crm`), from `Sforce-Limit-Info`.
/// Only Salesforce connections report it, so it is not in [`ALL`].
pub(crate) const SALESFORCE_API_USED: &str = "softphone_bridge_salesforce_api_used";
/// The org's daily API call limit, per connection (`crm`).
pub(crate) const SALESFORCE_API_LIMIT: &str = "softphone_bridge_salesforce_api_limit";

/// How a `salesforce` or `dynamics` connection knew a call's record before
/// writing, per connection (`crm`) and `outcome`: `remembered` (the call
/// memory knew it), `read` (the record was read: a call the memory did not
/// know), `conflict` (another replica claimed first: decided again),
/// `rewritten` (a later word written again after this write). Only those
/// connections count it, so it is not in [`ALL`].
pub(crate) const CALL_KNOWLEDGE: &str = "softphone_bridge_call_knowledge_total";

/// Every documented series (the metrics test checks that each one shows up).
pub const ALL: [&str; 17] = [
    EVENTS,
    IN_FLIGHT,
    REDELIVERIES,
    DEAD_LETTERED,
    CRM_DURATION,
    CONSUMER_PENDING,
    CONSUMER_ACK_PENDING,
    LANE_HELD,
    LANE_PAUSED,
    LANE_PAUSES,
    COMMANDS,
    HTTP_REQUESTS,
    HTTP_DURATION,
    HTTP_CONNECTIONS,
    EVENT_AGE,
    BUILD_INFO,
    READY,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first call. Several applications in
/// one process (tests) share it.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(CRM_DURATION.into()),
                &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )
            .expect("bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full(HTTP_DURATION.into()),
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )
            .expect("bucket list is not empty")
            // From "on time" (a screen pop within a second) to "hours behind"
            // (a lane held through a CRM outage).
            .set_buckets_for_metric(
                Matcher::Full(EVENT_AGE.into()),
                &[
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                    14400.0,
                ],
            )
            .expect("bucket list is not empty")
            .install_recorder()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "Another metrics recorder is installed; /metrics shows only what this one records.");
                PrometheusBuilder::new().build_recorder().handle()
            });
        describe();
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

fn describe() {
    describe_counter!(
        EVENTS,
        "Deliveries settled, by event type, stage (intake, lane) and outcome."
    );
    describe_gauge!(IN_FLIGHT, "Events being handled right now by this replica.");
    describe_counter!(REDELIVERIES, "Deliveries after the first, by event type.");
    describe_counter!(
        DEAD_LETTERED,
        "Events copied to the dead-letter queue, by event type."
    );
    describe_histogram!(
        CRM_DURATION,
        Unit::Seconds,
        "CRM call latency, by connection and result."
    );
    describe_gauge!(
        CONSUMER_PENDING,
        "Events not yet delivered, by consumer (intake and lanes)."
    );
    describe_gauge!(
        LANE_HELD,
        "Events a lane holds in this replica while its CRM connection is in trouble."
    );
    describe_gauge!(
        LANE_PAUSED,
        "1 while a lane is paused in this replica (its CRM connection in trouble)."
    );
    describe_counter!(LANE_PAUSES, "Times a lane paused, by lane.");
    describe_gauge!(
        CONSUMER_ACK_PENDING,
        "Events delivered and not yet acknowledged."
    );
    describe_counter!(
        COMMANDS,
        "Commands published to softphones, by type, entry point and duplicate."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route, method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by route and method."
    );
    describe_gauge!(HTTP_CONNECTIONS, "HTTP connections open now, by listener.");
    describe_counter!(
        HTTP_CONNECTIONS_DROPPED,
        "HTTP connections closed by the server to protect itself, by listener and reason."
    );
    describe_histogram!(
        EVENT_AGE,
        Unit::Seconds,
        "Event age when its lane acked it (now minus publish time), by lane and event type."
    );
    describe_gauge!(
        READY,
        "1 while this replica is ready (as /readyz says), else 0."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1, by version: the build this replica runs."
    );
    describe_counter!(
        PARTNER_CONFLICTS,
        "Softphone events refused for naming another partner than the softphone's bound one, by event type."
    );
    describe_counter!(
        PARTNER_MISMATCHES,
        "Events refused for naming another partner than the account they were published from, by event type."
    );
    describe_counter!(
        SOFTPHONE_MISMATCHES,
        "Partners' loaded and status changes refused for being about another softphone than the login that sent them, by event type."
    );
    describe_counter!(
        LOGINS,
        "Logins the auth callout answered, by outcome and reason (the role, or why refused)."
    );
    describe_gauge!(
        SALESFORCE_API_USED,
        "Salesforce API calls used today (Sforce-Limit-Info), by connection."
    );
    describe_gauge!(
        SALESFORCE_API_LIMIT,
        "Salesforce daily API call limit (Sforce-Limit-Info), by connection."
    );
}
