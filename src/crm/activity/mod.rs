//! What every CRM that logs a call as one activity record shares (the
//! `salesforce` and `dynamics` adapters): the per-org batch window
//! (batch.rs), the agent's last word (word.rs), the call memory the replicas
//! share (memory.rs), one batch's flush from grouping to answers (calls.rs),
//! and the caller lookup's number forms and cache (lookup.rs) and a batch's
//! callers (callers.rs). An adapter
//! adds its API client and what each event writes, and implements
//! [`Org`]: its reads and its batch write.

mod batch;
mod callers;
mod calls;
pub(crate) mod fields;
mod lookup;
mod memory;
pub(crate) mod settings;
mod word;

pub(crate) use callers::{Callers, several};
pub(crate) use calls::{Calls, Group, Org, Written, knew, request_failure};
pub(crate) use fields::MAPPABLE_FIELDS;
pub(crate) use fields::mappable;
pub(crate) use lookup::{Cache, Match, holds, national_form, shared as shared_cache};
pub use memory::bucket_config;
pub(crate) use memory::{Facts, Memory, org_key};
pub use settings::{BatchSettings, CallMemorySettings};
pub(crate) use word::{AgentFields, Words, Write, format_at};
#[cfg(test)]
pub(crate) use word::{CUT_MARKER, parse_at};
