//! The process-wide rustls crypto provider.
//!
//! Two providers are compiled in (async-nats enables ring, reqwest and the
//! HTTP server aws-lc-rs), so rustls cannot pick one by itself and would panic
//! on the first TLS handshake. Every TLS user calls [`install_provider`] first.

/// Installs aws-lc-rs as the process's provider, once; later calls do nothing.
pub fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first: that one serves.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}
