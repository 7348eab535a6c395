//! The `log` CRM: writes each CRM action as one JSON line, so the bridge runs
//! with no CRM at all.

use std::io::Write;
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::{Crm, CrmError, CrmEvent};
use crate::contract::EventKind;

/// Writes `{"crm":"log","action":"<what a CRM would do>", ...the event document...}`
/// lines to a writer.
pub struct LogCrm {
    out: Mutex<Box<dyn Write + Send>>,
}

impl LogCrm {
    pub fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()))
    }

    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }

    fn write(&self, event: &CrmEvent) -> std::io::Result<()> {
        let document = event.to_json();
        let mut line =
            format!(r#"{{"crm":"log","action":"{}","#, action(event.kind())).into_bytes();
        // The document is a non-empty JSON object: splice its fields in after ours.
        line.extend_from_slice(&document[1..]);
        line.push(b'\n');
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        out.write_all(&line)?;
        out.flush()
    }
}

/// The CRM action the event stands for.
fn action(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Loaded => "softphone_loaded",
        EventKind::CallIncoming => "lookup_caller",
        EventKind::CallAccepted | EventKind::CallOutboundInitiated => "open_call_activity",
        EventKind::CallRejected => "log_missed_call",
        EventKind::CallEnded => "complete_call_activity",
        EventKind::CallNotesSubmitted => "update_call_notes",
        EventKind::AgentStatusChanged => "sync_presence",
    }
}

impl Crm for LogCrm {
    fn name(&self) -> &str {
        "log"
    }

    fn handle<'a>(&'a self, event: &'a CrmEvent) -> BoxFuture<'a, Result<(), CrmError>> {
        // A failed write (a closed pipe, a full disk) is an outage, not the event's fault.
        let result = self.write(event).map_err(|e| CrmError::Unavailable {
            reason: format!("cannot write the CRM log line: {e}"),
            retry_after: None,
        });
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::contract::Event;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn writes_one_json_line_per_action() {
        let sink = Sink::default();
        let crm = LogCrm::new(Box::new(sink.clone()));
        let body = r#"{"softphoneId":"d6afeaa7-39be-4935-981f-2670215fd887","x":1}"#;
        let event = CrmEvent {
            id: "e-1".into(),
            event: Event::decode(EventKind::AgentStatusChanged, body.as_bytes()).unwrap(),
            raw: bytes::Bytes::copy_from_slice(body.as_bytes()),
            published: time::OffsetDateTime::UNIX_EPOCH,
            sequence: 9,
            vouched: None,
        };
        crm.handle(&event).await.unwrap();
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(out.ends_with('\n') && out.lines().count() == 1);
        let line: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(line["crm"], "log");
        assert_eq!(line["action"], "sync_presence");
        assert_eq!(line["event"], "agent.status_changed");
        assert_eq!(line["sequence"], 9);
        assert_eq!(line["publishedAt"], "1970-01-01T00:00:00Z");
        assert_eq!(line["data"]["x"], 1);
    }
}
