//! The contract's fields a CRM may map to columns of its call record: which
//! ones each event carries.

use crate::contract::{Event, PhoneNumber, RecordingStatus};

/// Contract fields that a connection may map (`task_fields`, `columns`).
pub const MAPPABLE_FIELDS: [&str; 10] = [
    "language",
    "ivrExitPath",
    "channelName",
    "reservationStartDate",
    "specialEvent",
    "escalationType",
    "recordingStatus",
    "partnerId",
    "callerANI",
    "dialledTo",
];

/// The mappable fields `event` carries, with their values (empty or absent
/// values left out, so they never clear a column).
pub(crate) fn mappable(event: &Event) -> Vec<(&'static str, &str)> {
    let mut fields: Vec<(&'static str, Option<&str>)> =
        vec![("partnerId", event.partner_id().map(|p| p.as_str()))];
    match event {
        Event::CallIncoming(e) => {
            fields.push(("language", Some(&e.language)));
            fields.push(("callerANI", e.caller_ani.as_ref().map(PhoneNumber::as_str)));
        }
        Event::CallAccepted(e) => {
            fields.extend([
                ("language", Some(e.language.as_str())),
                ("callerANI", e.caller_ani.as_ref().map(PhoneNumber::as_str)),
                ("ivrExitPath", e.ivr_exit_path.as_deref()),
                ("channelName", e.channel_name.as_deref()),
                ("reservationStartDate", e.reservation_start_date.as_deref()),
                ("specialEvent", e.special_event.as_deref()),
                ("escalationType", e.escalation_type.as_deref()),
                (
                    "recordingStatus",
                    e.recording_status.map(|r| match r {
                        RecordingStatus::On => "ON",
                        RecordingStatus::Off => "OFF",
                    }),
                ),
            ]);
        }
        Event::CallOutboundInitiated(e) => {
            fields.push(("dialledTo", Some(e.dialled_to.as_str())));
        }
        _ => {}
    }
    fields
        .into_iter()
        .filter_map(|(field, value)| Some((field, value.filter(|v| !v.trim().is_empty())?)))
        .collect()
}
