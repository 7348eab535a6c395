//! Health, readiness through a NATS outage, metrics after traffic, and the
//! OpenAPI document against the routes actually served.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use softphone_bridge::contract::EventKind;
use softphone_bridge::http::{OPENAPI_PATH, ROUTES};
use softphone_bridge::telemetry::metric;
use wiremock::ResponseTemplate;

use crate::helpers::*;

#[tokio::test]
async fn readyz_follows_nats_down_and_back_up() {
    let nats = start_nats_pinned().await;
    let app = App::builder(nats).http().spawn().await;
    app.load("agent-1", Some(PARTNER)).await;
    let health = app.http.get(app.ops_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    app.stop_nats_until_unready().await;
    let report = app.readyz_report().await;
    assert_eq!(report["ready"], false);
    assert!(
        report["checks"]["nats"]
            .as_str()
            .unwrap()
            .contains("not connected"),
        "{report}"
    );
    // Alive all the same, and commands are refused with 503, not hung.
    assert_eq!(
        app.http
            .get(app.ops_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let response = app.command("agent-1", &start_call(), TOKEN, None).await;
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["title"], "NATS unavailable");

    app.nats.container.start().await.expect("NATS starts again");
    app.ready().await;
    let report = app.readyz_report().await;
    assert_eq!(
        report,
        json!({"ready": true, "checks": {"nats": "ok", "intake": "ok", "streams": "ok", "registry": "ok", "idempotency": "ok", "consumer": "ok", "service": "ok"}})
    );
    // The registry survived (file storage) and commands flow again.
    eventually("a command to be accepted again", || async {
        (app.command("agent-1", &start_call(), TOKEN, None)
            .await
            .status()
            == StatusCode::ACCEPTED)
            .then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn metrics_show_every_documented_series_after_traffic() {
    let crm = FakeCrm::start().await;
    // One call the CRM keeps failing while others pass: its failure is its
    // own, so there is a redelivery.
    let failing = conversation();
    crm.refuse(&failing, ResponseTemplate::new(503));
    let nats = start_nats().await;
    let mut settings = http_settings(&nats.url);
    settings.crm = softphone_bridge::config::Settings::from_toml(&format!(
        "[crm]\n{}",
        webhook_crm(&crm.url())
    ))
    .unwrap()
    .crm;
    settings.http.ops_listen = Some("127.0.0.1:0".into());
    let app = App::builder(nats).with(settings).spawn().await;
    assert_ne!(
        app.addr(),
        app.ops(),
        "health and metrics on their own address"
    );

    app.load("agent-1", Some(PARTNER)).await;
    let mut letters = app.dead_letters().await;
    app.publish(EventKind::CallAccepted, &call_body(&failing, ""), None)
        .await;
    let others = app.steady_traffic();
    letters.next().await;
    others.abort();
    // A contract violation: dead-lettered at once.
    app.publish(EventKind::CallEnded, r#"{"partnerId":"nope"}"#, None)
        .await;
    app.settled().await;
    assert_eq!(
        app.command("agent-1", &start_call(), TOKEN, None)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        app.command("agent-1", &start_call(), "wrong", None)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    let response = app.http.get(app.ops_url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for series in metric::ALL {
        assert!(
            text.contains(&format!("# TYPE {series}")),
            "{series} missing from:\n{text}"
        );
    }
    // At least: other tests in the same process (plain `cargo test`) share the recorder.
    for sample in [
        r#"softphone_bridge_events_total{type="call.accepted",stage="lane",outcome="retry"}"#,
        r#"softphone_bridge_events_total{type="call.accepted",stage="lane",outcome="dead_letter"}"#,
        r#"softphone_bridge_events_total{type="loaded",stage="intake",outcome="ack"}"#,
        r#"softphone_bridge_events_total{type="loaded",stage="lane",outcome="ack"}"#,
        r#"softphone_bridge_events_total{type="call.ended",stage="intake",outcome="dead_letter"}"#,
        r#"softphone_bridge_dead_lettered_total{type="call.ended"}"#,
        r#"softphone_bridge_redeliveries_total{type="call.accepted"}"#,
        r#"softphone_bridge_crm_request_duration_seconds_bucket{crm="crm",result="unavailable",le="+Inf"}"#,
        r#"softphone_bridge_crm_request_duration_seconds_count{crm="crm",result="ok"}"#,
        r#"softphone_bridge_commands_published_total{type="start_call",via="http",duplicate="false"}"#,
        r#"softphone_bridge_http_requests_total{route="/v1/softphones/{softphoneId}/commands",method="POST",status="202"}"#,
        r#"softphone_bridge_http_requests_total{route="/v1/softphones/{softphoneId}/commands",method="POST",status="401"}"#,
    ] {
        let value =
            sample_value(&text, sample).unwrap_or_else(|| panic!("{sample} missing from:\n{text}"));
        assert!(value >= 1.0, "{sample} = {value}");
    }
    for gauge in [
        format!(
            r#"{}{{consumer="softphone-bridge-intake"}}"#,
            metric::CONSUMER_PENDING
        ),
        format!(
            r#"{}{{consumer="softphone-bridge-crm-crm-0"}}"#,
            metric::CONSUMER_ACK_PENDING
        ),
        format!(r#"{}{{lane="crm"}}"#, metric::LANE_PAUSED),
        format!(r#"{}{{lane="crm"}}"#, metric::LANE_HELD),
        metric::IN_FLIGHT.to_owned(),
    ] {
        assert!(
            sample_value(&text, &gauge).is_some(),
            "{gauge} missing from:\n{text}"
        );
    }
    // Health and metrics are not on the API address.
    assert_eq!(
        app.http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    app.stop().await;
}

/// (METHOD, path) pairs of the OpenAPI document.
fn documented() -> BTreeSet<(String, String)> {
    let doc: serde_norway::Value = serde_norway::from_str(softphone_bridge::http::OPENAPI)
        .expect("the OpenAPI document is YAML");
    assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
    let paths = doc["paths"].as_mapping().expect("paths");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        for (method, _) in item.as_mapping().expect("path item") {
            let method = method.as_str().unwrap();
            if [
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&method)
            {
                out.insert((method.to_uppercase(), path.as_str().unwrap().to_owned()));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented(),
        routes,
        "src/http/openapi.yaml and http::ROUTES differ"
    );

    // Every documented operation is served (not the fallback), and other
    // methods on its path are refused with 405.
    let nats = start_nats().await;
    let app = App::builder(nats).http().spawn().await;
    let served = app.http.get(app.url(OPENAPI_PATH)).send().await.unwrap();
    assert_eq!(served.headers()["content-type"], "application/yaml");
    assert_eq!(
        served.text().await.unwrap(),
        softphone_bridge::http::OPENAPI
    );
    for (method, path) in &routes {
        let url = app.url(&path.replace("{softphoneId}", "agent-1"));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = app
            .http
            .request(method.clone(), &url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("urn:softphone-bridge:problem:no-route"),
            "{method} {path} is documented but not served"
        );
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        for other in [
            reqwest::Method::GET,
            reqwest::Method::POST,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
        ] {
            if !routes.contains(&(other.to_string(), path.clone())) {
                let response = app
                    .http
                    .request(other.clone(), &url)
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    response.status(),
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{other} {path} is served but not documented"
                );
            }
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_worker_only_replica_serves_its_probes_and_metrics_on_ops_listen_alone() {
    let nats = start_nats().await;
    let crm = FakeCrm::start().await;
    let ops = format!("http://127.0.0.1:{}", free_port());
    let config = bridge_config(
        &crm.url(),
        &format!(
            "[http]\nops_listen = \"{}\"\n",
            ops.trim_start_matches("http://")
        ),
    );
    let bridge = Bridge::start(&nats.url, &config);
    let http = reqwest::Client::new();
    let status = |path: &'static str| {
        let request = http.get(format!("{ops}{path}"));
        async move { request.send().await.ok().map(|r| r.status()) }
    };
    eventually("the replica to be ready", || async {
        (status("/readyz").await? == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(status("/healthz").await, Some(StatusCode::OK));
    let metrics = http
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("# TYPE {}", metric::READY)),
        "{metrics}"
    );
    // No command API: neither its routes nor its document.
    for path in ["/v1/softphones/agent-1", "/openapi.yaml"] {
        assert_eq!(
            http.get(format!("{ops}{path}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    bridge.logged("Serving HTTP.").await;
    bridge.terminate();
    let (exit, stderr) = bridge.wait().await;
    assert!(exit.success(), "{stderr}");
    assert!(stderr.contains("api=None"), "{stderr}");
    assert!(
        !stderr.contains("No http.tokens configured"),
        "no API, no warning about its tokens: {stderr}"
    );
}

/// Each replica's probes read only the consumers it works: with three
/// replicas, each scrape shows its own units' gauges, and every unit is
/// shown by its owner.
#[tokio::test]
async fn each_replica_reports_only_the_consumers_it_works() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm = FakeCrm::start().await;
    let settings = defaults();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let replicas: Vec<Bridge> = ports
        .iter()
        .map(|port| {
            let extra = format!("[http]\nops_listen = \"127.0.0.1:{port}\"\n");
            Bridge::start(&nats.url, &bridge_config(&crm.url(), &extra))
        })
        .collect();
    replicas_pulling(&js, &settings, 3).await;
    let owners = owners(&js, &settings).await;
    let http = reqwest::Client::new();
    let mut shown = BTreeSet::new();
    for (bridge, port) in replicas.iter().zip(&ports) {
        let text = eventually("the replica's metrics", || async {
            let response = http
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
                .ok()?;
            response.text().await.ok()
        })
        .await;
        let prefix = format!("{}{{consumer=\"", metric::CONSUMER_PENDING);
        let reported: BTreeSet<String> = text
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix)?.split_once('"'))
            .map(|(consumer, _)| consumer.to_owned())
            .collect();
        let works: BTreeSet<String> = owners
            .iter()
            .filter(|(_, owner)| bridge.has_logged(owner))
            .map(|(consumer, _)| consumer.clone())
            .collect();
        assert_eq!(reported, works, "a replica reads only its own units");
        shown.extend(reported);
    }
    assert_eq!(
        shown.len(),
        softphone_bridge::pipeline::consumers(&settings).len(),
        "every unit is shown by its owner"
    );
    for bridge in &replicas {
        bridge.terminate();
    }
    for bridge in replicas {
        assert!(bridge.wait().await.0.success());
    }
}
