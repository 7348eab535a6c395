//! Lane partitions: which share of a lane an event belongs to.
//!
//! Every lane (a CRM connection's, and the softphone lane) is split into
//! `lanes.partitions` partitions; the intake writes an event's partition into
//! its lane subject (`softphone.lane.crm.<connection>.<p>.<event>`), and each
//! partition is worked by one replica at a time, in stream order. The
//! partition is a stable hash of the event's **order key**: its
//! `conversationId`; else (for the softphone lane always) the softphone
//! instance (`loaded.softphoneId`, `status_changed.instanceId`); else the
//! event id. The hash is FNV-1a 64 of the key's bytes, modulo the number of
//! partitions (see subjects.md), so any client can compute it too.

use super::Event;

/// The key that orders an event among others: events with the same key go
/// one at a time, in stream order, to their lane's CRM (or registry).
pub fn order_key<'a>(event: &'a Event, event_id: &'a str) -> &'a str {
    if let Some(conversation) = event.conversation_id() {
        return conversation.as_str();
    }
    softphone_key(event, event_id)
}

/// The softphone lane's order key: the softphone instance, else the event id.
pub fn softphone_key<'a>(event: &'a Event, event_id: &'a str) -> &'a str {
    match event {
        Event::Loaded(loaded) => loaded.softphone_id.as_str(),
        Event::AgentStatusChanged(changed) => changed
            .instance_id
            .as_ref()
            .map_or(event_id, |instance| instance.as_str()),
        _ => event_id,
    }
}

/// FNV-1a, 64 bits: offset basis 0xcbf29ce484222325, prime 0x100000001b3.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The partition of `key` among `partitions` (at least 1).
pub fn partition_of(key: &str, partitions: u16) -> u16 {
    (fnv1a64(key.as_bytes()) % u64::from(partitions.max(1))) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_conversation_keeps_its_partition_and_partitions_spread() {
        // The example of subjects.md.
        let key = "57053e21-0440-4689-a27a-513d7dceebde";
        assert_eq!(fnv1a64(key.as_bytes()), 0xda72_de4c_853f_2479);
        assert_eq!(partition_of(key, 4), 1);
        assert_eq!(partition_of(key, 1), 0);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[partition_of(&format!("57053e21-0440-4689-a27a-{i:012x}"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn the_order_key_is_the_conversation_then_the_softphone_then_the_event() {
        let call = Event::decode(
            super::super::EventKind::CallEnded,
            br#"{"partnerId":"215fd887-39be-4935-981f-2670d6afeaa7","conversationId":"57053e21-0440-4689-a27a-513d7dceebde"}"#,
        )
        .unwrap();
        assert_eq!(
            order_key(&call, "e1"),
            "57053e21-0440-4689-a27a-513d7dceebde"
        );
        let loaded = Event::decode(
            super::super::EventKind::Loaded,
            br#"{"softphoneId":"agent-7"}"#,
        )
        .unwrap();
        assert_eq!(order_key(&loaded, "e2"), "agent-7");
        let status = Event::decode(
            super::super::EventKind::AgentStatusChanged,
            br#"{"softphoneId":"9b2f3c4d-1e2f-4a5b-8c9d-0e1f2a3b4c5d"}"#,
        )
        .unwrap();
        assert_eq!(order_key(&status, "e3"), "e3");
    }
}
