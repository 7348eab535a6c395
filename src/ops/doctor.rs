//! `softphone-bridge doctor`: checks a configuration end to end, one line per
//! check (✓ or ✗ and the reason), and fails if any check does: NATS with the
//! configured credentials and JetStream, the streams, consumers and buckets
//! (the [`provision`](crate::broker::provision) plan: up to date, or what differs),
//! then each CRM connection ([`crate::crm::Crm::check`]). Never prints a secret.

use std::io::Write as _;

use crate::broker::provision::Plan;
use crate::broker::{self, FirstConnect};
use crate::config::{Settings, redacted_url};
use crate::crm::Connections;

/// Prints each check's line as it ends; counts the failures.
#[derive(Default)]
struct Checks {
    failed: usize,
}

impl Checks {
    fn report(&mut self, what: &str, result: Result<String, String>) {
        let line = match result {
            Ok(detail) => format!("✓ {what}: {detail}"),
            Err(reason) => {
                self.failed += 1;
                format!("✗ {what}: {reason}")
            }
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").ok();
        out.flush().ok();
    }
}

pub(crate) async fn execute(settings: &Settings) -> anyhow::Result<()> {
    let mut checks = Checks::default();
    let nats = format!("NATS at {}", redacted_url(&settings.nats.url));
    match broker::connect(&settings.nats, FirstConnect::FailFast).await {
        Err(e) => {
            checks.report(&nats, Err(format!("{e:#}")));
            checks.report(
                "streams and consumers",
                Err("not checked: NATS is unreachable".into()),
            );
        }
        Ok(client) => {
            let js = broker::jetstream(client.clone(), &settings.nats);
            let jetstream = match js.query_account().await {
                Ok(_) => Ok(format!(
                    "connected (server {}), JetStream enabled",
                    client.server_info().version
                )),
                Err(e) => Err(format!("connected, but JetStream does not answer: {e}")),
            };
            let reachable = jetstream.is_ok();
            checks.report(&nats, jetstream);
            if reachable {
                checks.report("streams and consumers", plan(&js, settings).await);
            }
            client.drain().await.ok();
        }
    }
    match Connections::build(settings, None) {
        Err(e) => checks.report("CRM connections", Err(format!("{e:#}"))),
        Ok(connections) => {
            for (name, crm) in connections.iter() {
                checks.report(&format!("crm {name} ({})", crm.name()), crm.check().await);
            }
        }
    }
    if checks.failed > 0 {
        anyhow::bail!("{} check(s) failed", checks.failed);
    }
    Ok(())
}

/// Up to date, or each step provisioning would take.
async fn plan(js: &async_nats::jetstream::Context, settings: &Settings) -> Result<String, String> {
    let plan = Plan::compute(js, settings)
        .await
        .map_err(|e| format!("{e:#}"))?;
    if plan.up_to_date() {
        return Ok(format!(
            "up to date ({} streams, consumers and buckets)",
            plan.steps.len()
        ));
    }
    let changes: Vec<String> = plan.changes().map(|step| step.line(false)).collect();
    Err(format!(
        "{} (`softphone-bridge provision` does it)",
        changes.join("; ")
    ))
}
