//! The container kit: the `health` subcommand behind the image's health
//! check, the image built offline FROM scratch, and the cluster's scripts and
//! Compose file (the cluster itself and deploy/chaos.sh are too long for CI).

use std::path::Path;
use std::process::Output;

use crate::helpers::*;

/// Runs the real binary without blocking the runtime the app under test runs on.
async fn bridge(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_softphone-bridge"));
    cmd.args(args)
        .env_remove("SOFTPHONE_BRIDGE_CONFIG")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn health_exits_0_while_the_replica_is_ready_and_1_once_it_is_not() {
    let nats = start_nats_pinned().await;
    let app = App::builder(nats).http().spawn().await;
    let readyz = app.ops_url("/readyz");

    let ok = bridge(&["health", "--url", &readyz], &[]).await;
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("200"), "{}", text(&ok.stdout));
    // Without --url: /readyz on the configured ops listener, an unspecified
    // address probed over loopback.
    let own = format!("0.0.0.0:{}", app.ops().port());
    let derived = bridge(
        &["health"],
        &[
            ("SOFTPHONE_BRIDGE_HTTP__LISTEN", "0.0.0.0:8080"),
            ("SOFTPHONE_BRIDGE_HTTP__OPS_LISTEN", &own),
        ],
    )
    .await;
    assert!(derived.status.success(), "{}", text(&derived.stderr));
    assert!(
        text(&derived.stdout).contains(&format!("http://127.0.0.1:{}/readyz", app.ops().port())),
        "{}",
        text(&derived.stdout)
    );

    app.stop_nats_until_unready().await;
    let down = bridge(&["health", "--url", &readyz], &[]).await;
    assert_eq!(down.status.code(), Some(1), "{}", text(&down.stderr));
    let why = text(&down.stderr);
    assert!(why.contains("503") && why.contains("nats"), "{why}");

    let nothing = bridge(&["health"], &[]).await;
    assert_eq!(nothing.status.code(), Some(1));
    assert!(
        text(&nothing.stderr).contains("http.ops_listen or http.listen"),
        "{}",
        text(&nothing.stderr)
    );
}

/// deploy/image.sh's mechanism (deploy/offline-image.sh) around the binary
/// under test: the image runs it as the non-root user with no base image,
/// and its health check command reaches a ready replica.
#[tokio::test]
async fn the_image_built_offline_runs_the_binary_as_nonroot() {
    // The container reaches the app in this process at the host's address on
    // Docker's default bridge (host-gateway): the app listens there.
    let gateway = tokio::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "docker0"])
        .output()
        .await
        .expect("ip runs");
    // "5: docker0    inet 172.17.0.1/16 brd ..."
    let gateway = text(&gateway.stdout)
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next().map(String::from))
        .expect("docker0 has an IPv4 address");
    let nats = start_nats().await;
    let app = App::builder(nats)
        .http()
        .settings(move |s| s.http.listen = Some(format!("{gateway}:0")))
        .spawn()
        .await;
    let tag = "softphone-bridge:test-offline";
    let build = tokio::process::Command::new("bash")
        .current_dir(repo())
        .args([
            "-c",
            r#"source deploy/offline-image.sh && build_offline_image "$1" deploy/bridge/Dockerfile "$2:/usr/local/bin/softphone-bridge""#,
            "build",
            tag,
            env!("CARGO_BIN_EXE_softphone-bridge"),
        ])
        .output()
        .await
        .expect("bash runs");
    assert!(build.status.success(), "{}", text(&build.stderr));

    let inspect = tokio::process::Command::new("docker")
        .args([
            "image",
            "inspect",
            "-f",
            "{{.Config.User}} {{json .Config.Healthcheck.Test}}",
            tag,
        ])
        .output()
        .await
        .expect("docker runs");
    assert_eq!(
        text(&inspect.stdout).trim(),
        r#"65532:65532 ["CMD","/usr/local/bin/softphone-bridge","health"]"#
    );
    let readyz = format!("http://host.docker.internal:{}/readyz", app.ops().port());
    let run = tokio::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--add-host",
            "host.docker.internal:host-gateway",
            tag,
            "health",
            "--url",
            &readyz,
        ])
        .output()
        .await
        .expect("docker runs");
    assert!(
        run.status.success(),
        "{}{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    assert!(text(&run.stdout).contains("200"), "{}", text(&run.stdout));
}

#[tokio::test]
async fn the_cluster_scripts_and_compose_file_are_valid() {
    for script in [
        "cluster.sh",
        "chaos.sh",
        "image.sh",
        "offline-image.sh",
        "nats-image.sh",
    ] {
        let check = tokio::process::Command::new("bash")
            .arg("-n")
            .arg(repo().join("deploy").join(script))
            .output()
            .await
            .expect("bash runs");
        assert!(check.status.success(), "{script}: {}", text(&check.stderr));
    }
    let parse = tokio::process::Command::new("python3")
        .current_dir(repo().join("deploy/cluster"))
        .args([
            "-c",
            "import ast, sys\nfor p in sys.argv[1:]: ast.parse(open(p).read(), p)",
            "crm.py",
            "publish.py",
            "report.py",
        ])
        .output()
        .await
        .expect("python3 runs");
    assert!(parse.status.success(), "{}", text(&parse.stderr));
    // `config` resolves the file as Compose will run it: anchors, merges,
    // depends_on conditions, and the files it mounts.
    let config = tokio::process::Command::new("bash")
        .current_dir(repo())
        .args(["deploy/cluster.sh", "compose", "config", "--services"])
        .output()
        .await
        .expect("bash runs");
    assert!(config.status.success(), "{}", text(&config.stderr));
    let mut services: Vec<String> = text(&config.stdout).lines().map(String::from).collect();
    services.sort();
    assert_eq!(
        services,
        [
            "bridge1",
            "bridge2",
            "bridge3",
            "nats1",
            "nats2",
            "nats3",
            "prometheus",
            "provision"
        ]
    );

    let bridge_config =
        std::fs::read_to_string(repo().join("deploy/cluster/softphone-bridge.toml")).unwrap();
    let settings = softphone_bridge::config::Settings::from_toml(&bridge_config)
        .expect("the cluster's bridge configuration is valid");
    assert_eq!(settings.streams.replicas, 3);
    assert!(!settings.streams.provision_on_start);
    assert!(settings.http.ops_listen.is_some() && settings.http.listen.is_some());
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains("bash deploy/cluster.sh up") && readme.contains("bash deploy/chaos.sh")
    );
}
