//! The whole bridge: a fresh NATS per run, its events published before the
//! clock starts, one connection or fifty, one replica or three.

use super::*;

/// A fresh NATS server in a container, with a client of the bench's own.
pub(super) struct Nats {
    pub(super) container: ContainerAsync<GenericImage>,
    pub(super) url: String,
    pub(super) js: jetstream::Context,
    /// The server's process id as this machine sees it.
    pub(super) pid: Option<i64>,
    /// The docker-proxy processes that forward its client port.
    pub(super) proxies: Vec<i64>,
}

impl Nats {
    pub(super) async fn start() -> Self {
        let (container, url) = common::start_nats().await;
        let port = container.get_host_port_ipv4(4222).await.unwrap();
        let client = async_nats::connect(&url).await.unwrap();
        let pid = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}", container.id()])
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
            .filter(|pid: &i64| *pid > 0 && other_process_cpu(*pid).is_some());
        Self {
            container,
            url,
            js: jetstream::new(client),
            pid,
            proxies: docker_proxies(port),
        }
    }

    pub(super) async fn stop(self) {
        drop(self.js);
        let _ = self.container.rm().await;
    }

    /// Publishes `events` events of `partner`, alternately `call_accepted`
    /// and `call_ended`, each acked by JetStream.
    pub(super) async fn publish(&self, events: usize, partner: &str) {
        let started = Instant::now();
        let mut acks = Vec::with_capacity(1000);
        for i in 0..events {
            let kind = if i % 2 == 0 {
                EventKind::CallAccepted
            } else {
                EventKind::CallEnded
            };
            acks.push(
                self.js
                    .publish(kind.subject(), body(kind, partner, i).into())
                    .await
                    .unwrap(),
            );
            if acks.len() == 1000 {
                for ack in acks.drain(..) {
                    ack.await.unwrap();
                }
            }
        }
        for ack in acks.drain(..) {
            ack.await.unwrap();
        }
        let published = started.elapsed();
        println!(
            "  published {events} events in {:>7.1?} = {:>7.0} events/s (JetStream acked)",
            published,
            events as f64 / published.as_secs_f64()
        );
    }

    /// Whether every consumer has nothing pending and nothing unacknowledged,
    /// and their redeliveries; all asked at once.
    pub(super) async fn drained(&self, consumers: &[(&'static str, String)]) -> (bool, usize) {
        let infos = futures::future::join_all(consumers.iter().map(|(stream, name)| async move {
            let stream = self.js.get_stream_no_info(*stream).await.unwrap();
            stream.consumer_info(name).await.unwrap()
        }))
        .await;
        let clean = infos
            .iter()
            .all(|info| info.num_pending == 0 && info.num_ack_pending == 0);
        (clean, infos.iter().map(|info| info.num_redelivered).sum())
    }

    /// Polls until `consumers` are drained (once `ready` says the work is
    /// done) or the measurement stalls. The time it took, when the first
    /// request arrived, whether it completed, the redeliveries.
    pub(super) async fn wait_drained(
        &self,
        consumers: &[(&'static str, String)],
        started: Instant,
        mut progress: impl FnMut() -> (bool, bool),
    ) -> (Duration, Option<Duration>, bool, usize) {
        let mut first = None;
        loop {
            let (begun, done) = progress();
            if begun && first.is_none() {
                first = Some(started.elapsed());
            }
            if done {
                let (clean, redelivered) = self.drained(consumers).await;
                if clean {
                    return (started.elapsed(), first, true, redelivered);
                }
            }
            if started.elapsed() > STALL_AFTER {
                let (_, redelivered) = self.drained(consumers).await;
                for (stream, name) in consumers {
                    let info = self
                        .js
                        .get_stream_no_info(*stream)
                        .await
                        .unwrap()
                        .consumer_info(name)
                        .await
                        .unwrap();
                    println!(
                        "  stalled: {name}: {} pending, {} unacknowledged, {} redelivered, ack floor {}",
                        info.num_pending,
                        info.num_ack_pending,
                        info.num_redelivered,
                        info.ack_floor.stream_sequence
                    );
                }
                return (started.elapsed(), first, false, redelivered);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// The bridge's settings: `[crm]` and `extra` more connections, all webhooks
/// to `hook`, and a partner per connection (partner 0 on the last one).
pub(super) fn bridge_settings(nats: &str, hook: &str, prefix: &str, extra: usize) -> Settings {
    let webhook = common::webhook_toml(hook);
    let mut toml = format!(
        "[nats]\nurl = \"{nats}\"\n{}[crm]\n{webhook}",
        common::worker_toml(prefix)
    );
    for c in 0..extra {
        toml += &format!("[crms.c{c}]\n{webhook}");
    }
    let partners = extra.max(1);
    for p in 0..partners {
        toml += &format!(
            "[partners.\"{}\"]\nbusiness_segment_id = \"4f3c1a52-8d1e-4a57-9f0e-{p:012x}\"\nchannel_origin_id = \"9b2e7d44-6c3f-4e21-8a5b-{p:012x}\"\n",
            partner(p)
        );
        if extra > 0 {
            toml += &format!("crm = \"c{p}\"\n");
        }
    }
    Settings::from_toml(&toml).unwrap()
}

/// The whole bridge as `replicas` replicas (in this process), from a fresh
/// NATS holding every event already.
pub(super) async fn bridge(
    webhook: &Webhook,
    events: usize,
    extra: usize,
    replicas: usize,
) -> Measured {
    let nats = Nats::start().await;
    let connections = extra.max(1);
    let prefix = format!("bench-{connections}");
    let settings = bridge_settings(&nats.url, &webhook.url, &prefix, extra);
    let lane = settings.connection_for(Some(&Guid::try_from(partner(0)).unwrap()));
    println!(
        "  {} CRM connection(s) configured, every event for one partner, on lane {lane}",
        settings.connections().count()
    );
    provision::apply(&nats.js, &settings).await.unwrap();
    nats.publish(events, &partner(0)).await;
    let consumers: Vec<(&'static str, String)> = pipeline::consumers(&settings)
        .into_iter()
        .map(|c| (c.stream, c.name))
        .collect();
    let before = webhook.requests();
    let cpu = Cpu::now(webhook, Some(&nats));
    let started = Instant::now();
    let mut apps = Vec::new();
    for _ in 0..replicas {
        apps.push(Application::build(settings.clone()).await.unwrap());
    }
    let built = started.elapsed();
    let shutdown = CancellationToken::new();
    let running: Vec<_> = apps
        .into_iter()
        .map(|app| tokio::spawn(app.run_until(shutdown.clone())))
        .collect();
    let (took, first_request, complete, redelivered) = nats
        .wait_drained(&consumers, started, || {
            let handled = webhook.requests() - before;
            (handled > 0, handled >= events as u64)
        })
        .await;
    let cpu = Cpu::now(webhook, Some(&nats)).since(cpu);
    let requests = webhook.requests() - before;
    shutdown.cancel();
    for running in running {
        running.await.unwrap().unwrap();
    }
    let measured = Measured {
        name: format!(
            "bridge, {connections} conn{}",
            match replicas {
                1 => String::new(),
                n => format!(", {n} repl."),
            }
        ),
        events,
        took,
        cpu,
        first_request,
        built: Some(built),
        requests: Some(requests),
        redelivered: Some(redelivered),
        complete,
        peak_rss_kib: peak_rss_kib(),
    };
    nats.stop().await;
    measured
}
