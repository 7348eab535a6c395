//! The `log` CRM: writes each CRM action as one JSON line, so the bridge runs
//! with no CRM at all.

use std::io::Write;
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::{Crm, CrmError, CrmEvent};

/// Writes `{"crm":"log", ...the event document...}` lines to a writer.
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
        let mut line = event.to_json();
        line.push(b'\n');
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        out.write_all(&line)?;
        out.flush()
    }
}

impl Crm for LogCrm {
    fn name(&self) -> &str {
        "log"
    }

    fn handle<'a>(&'a self, event: &'a CrmEvent) -> BoxFuture<'a, Result<(), CrmError>> {
        // A failed write (a closed pipe, a full disk) is retried like a CRM outage.
        let result = self.write(event).map_err(|e| CrmError::Transient {
            reason: format!("cannot write the CRM log line: {e}"),
            retry_after: None,
        });
        Box::pin(std::future::ready(result))
    }
}
