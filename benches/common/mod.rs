//! What the benchmarks share: a NATS server with JetStream in a container.

use testcontainers::core::{ContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// A fresh NATS container (the image deploy/nats-image.sh makes) and its URL.
/// The store is in memory-backed files: what is measured is the bridge and
/// NATS, not the container's storage driver.
pub async fn start_nats() -> (ContainerAsync<GenericImage>, String) {
    let image = std::env::var("SOFTPHONE_NATS_IMAGE")
        .unwrap_or_else(|_| "softphone-bridge/nats:2.12.8".into());
    let (name, tag) = image.rsplit_once(':').expect("image:tag");
    let container = GenericImage::new(name, tag)
        .with_exposed_port(ContainerPort::Tcp(4222))
        .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
        .with_cmd(["--jetstream", "--store_dir", "/data"])
        .with_mount(Mount::tmpfs_mount("/data"))
        .start()
        .await
        .expect("NATS starts (run deploy/nats-image.sh)");
    let port = container.get_host_port_ipv4(4222).await.unwrap();
    (container, format!("nats://127.0.0.1:{port}"))
}
