//! What the bridge keeps and sends for softphones besides their events:
//! - [`registry`]: softphone (with `[callout]`, per partner) -> partner,
//!   presence, last seen (JetStream KV), which the command path authorises
//!   against;
//! - `heartbeat`: `softphone.heartbeat.<id>`, a softphone's last sign of life;
//! - `load`: the callbacks a loading softphone gets, and the `softphone.load` reply;
//! - `door`: with `[callout]`, partners' `loaded` and `agent.status_changed`
//!   stored with the login the server vouches sent them;
//! - `command`: publishing callbacks to `softphone.cmd.<id>`.

pub(crate) mod command;
pub(crate) mod door;
pub(crate) mod heartbeat;
pub(crate) mod load;
pub mod registry;
