//! `softphone-bridge health`: asks a running replica's ops listener whether it
//! is ready, for container health checks (an image built `FROM scratch` has no
//! curl or wget).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};
use url::Url;

use crate::config::HttpSettings;
use crate::http::READYZ_PATH;

/// A probe that takes longer than this counts as a failure.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Longest part of a failing answer's body that is printed.
const MAX_BODY: usize = 1024;

/// GETs `url`, by default `/readyz` on this process's own ops listener
/// (`http.ops_listen`, else `http.listen`) over loopback. Ok on a 2xx answer;
/// an error (exit code 1) with the status and the readiness report otherwise.
pub(crate) async fn check(settings: &HttpSettings, url: Option<Url>) -> anyhow::Result<()> {
    let own = url.is_none();
    let url = match url {
        Some(url) => url,
        None => own_url(settings)?,
    };
    crate::tls::install_provider();
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        // Our own listener, reached over loopback: its certificate names the
        // public host (and may come from a private CA), which 127.0.0.1 is not.
        .tls_danger_accept_invalid_certs(own && settings.tls.is_some())
        .build()
        .context("cannot build the HTTP client")?;
    // What is printed of the URL (--url may carry credentials).
    let shown = crate::config::redacted_url(url.as_str());
    let response = client
        .get(url)
        .send()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| format!("no answer from {shown}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "{shown} answered {status}: {}",
            crate::text::truncate(body.trim(), MAX_BODY)
        );
    }
    println!("{shown}: {status}");
    Ok(())
}

/// `/readyz` on the ops listener (or the API listener serving it), with an
/// unspecified address (`0.0.0.0`, `[::]`) replaced by loopback.
fn own_url(settings: &HttpSettings) -> anyhow::Result<Url> {
    let Some(listen) = settings.ops_listen.as_ref().or(settings.listen.as_ref()) else {
        bail!("no HTTP listener is configured (http.ops_listen or http.listen); pass --url");
    };
    let authority = match listen.parse::<SocketAddr>() {
        Ok(mut addr) if addr.ip().is_unspecified() => {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
            addr.to_string()
        }
        _ => listen.clone(),
    };
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    Url::parse(&format!("{scheme}://{authority}{READYZ_PATH}"))
        .with_context(|| format!("cannot make a URL of the listen address {listen:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_for(listen: Option<&str>, ops_listen: Option<&str>) -> anyhow::Result<String> {
        let settings = HttpSettings {
            listen: listen.map(Into::into),
            ops_listen: ops_listen.map(Into::into),
            ..HttpSettings::default()
        };
        own_url(&settings).map(String::from)
    }

    #[test]
    fn the_ops_listener_is_probed_over_loopback() {
        assert_eq!(
            url_for(Some("0.0.0.0:8080"), Some("0.0.0.0:9090")).unwrap(),
            "http://127.0.0.1:9090/readyz"
        );
        assert_eq!(
            url_for(Some("[::]:8080"), None).unwrap(),
            "http://[::1]:8080/readyz"
        );
        assert_eq!(
            url_for(None, Some("ops.internal:9090")).unwrap(),
            "http://ops.internal:9090/readyz"
        );
        assert!(url_for(None, None).is_err());
    }
}
