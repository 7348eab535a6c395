//! An event whose headers the client cannot read (NATS takes them from any
//! publisher) is dead-lettered and deleted from `SOFTPHONE_EVENTS`, and the
//! events around it flow.

use std::collections::BTreeSet;

use serde_json::Value;
use softphone_bridge::contract::{DLQ_STREAM, EVENTS_STREAM, EventKind, dlq_header};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::helpers::*;

/// A header name with a space: NATS stores it, async-nats refuses it.
const BAD_HEADERS: &str = "NATS/1.0\r\nBad Name: x\r\n\r\n";

/// Publishes `body` with raw `headers` over the NATS protocol, as any client
/// may; returns the sequence `SOFTPHONE_EVENTS` stored it at.
async fn publish_raw(nats_url: &str, subject: &str, headers: &str, body: &str) -> u64 {
    let address = nats_url.strip_prefix("nats://").expect("a nats:// URL");
    let (read, mut write) = TcpStream::connect(address)
        .await
        .expect("NATS accepts a TCP connection")
        .into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    read.read_line(&mut line).await.expect("NATS greets");
    assert!(line.starts_with("INFO "), "{line}");
    let total = headers.len() + body.len();
    let commands = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true}}\r\n\
         SUB raw.ack 1\r\n\
         HPUB {subject} raw.ack {} {total}\r\n{headers}{body}\r\n\
         PING\r\n",
        headers.len()
    );
    write
        .write_all(commands.as_bytes())
        .await
        .expect("NATS takes the publish");
    // The stream's ack arrives on `raw.ack`, before or after the PONG.
    let (mut ponged, mut sequence) = (false, None);
    let read_all = async {
        while !ponged || sequence.is_none() {
            line.clear();
            read.read_line(&mut line).await.expect("NATS answers");
            let op = line.trim_end();
            if op == "PONG" {
                ponged = true;
            } else if op == "PING" {
                write.write_all(b"PONG\r\n").await.unwrap();
            } else if let Some(size) = op.strip_prefix("MSG raw.ack 1 ") {
                let mut ack = vec![0; size.parse::<usize>().unwrap() + 2];
                read.read_exact(&mut ack).await.expect("the ack's payload");
                let ack: Value = serde_json::from_slice(&ack[..ack.len() - 2]).unwrap();
                assert_eq!(ack["stream"], EVENTS_STREAM, "{ack}");
                sequence = Some(ack["seq"].as_u64().expect("a stored sequence"));
            } else {
                panic!("unexpected answer from NATS: {op}");
            }
        }
    };
    tokio::time::timeout(PATIENCE, read_all)
        .await
        .expect("NATS stores the raw publish in time");
    sequence.unwrap()
}

/// Whether the stream still holds `sequence` (read raw: the message-get API
/// of async-nats parses the headers).
async fn stream_holds(client: &async_nats::Client, sequence: u64) -> bool {
    let answer = client
        .request(
            format!("$JS.API.STREAM.MSG.GET.{EVENTS_STREAM}"),
            format!(r#"{{"seq":{sequence}}}"#).into(),
        )
        .await
        .expect("the stream answers");
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    match answer.get("error") {
        Some(error) => {
            assert_eq!(error["err_code"], 10037, "{answer}");
            false
        }
        None => true,
    }
}

/// A valid `call.ended` body, and its conversation.
fn ended() -> (String, String) {
    let conversation = conversation();
    let body = call_body(
        &conversation,
        r#""duration":12.5,"disposition":"Booked","callType":"inbound""#,
    );
    (conversation, body)
}

/// Waits for the CRM to receive an event of each conversation.
async fn crm_receives(crm: &FakeCrm, conversations: &[String]) {
    let mut waiting: BTreeSet<&str> = conversations.iter().map(String::as_str).collect();
    while !waiting.is_empty() {
        let request = crm.next_request().await;
        let doc: Value = serde_json::from_slice(&request.body).unwrap();
        waiting.remove(doc["conversationId"].as_str().unwrap_or_default());
    }
}

/// The bad event is dead-lettered once, with its body and the reason, and
/// gone from the stream; the others reached the CRM; nothing is left over.
async fn set_aside_once(
    app: &App,
    crm: &FakeCrm,
    sequence: u64,
    (conversation, body): &(String, String),
) {
    let dead = app.dead_letters().await.next().await;
    let reason = header(&dead, dlq_header::REASON);
    assert!(reason.contains("unreadable NATS headers"), "{reason}");
    assert!(reason.contains("\"Bad Name\""), "{reason}");
    assert_eq!(&dead.payload[..], body.as_bytes());
    assert_eq!(
        header(&dead, dlq_header::SUBJECT),
        EventKind::CallEnded.subject()
    );
    assert_eq!(header(&dead, dlq_header::SEQUENCE), sequence.to_string());
    assert_eq!(
        header(&dead, dlq_header::EVENT_ID),
        format!("seq:{sequence}")
    );
    assert!(
        header(&dead, dlq_header::DETAIL).contains(r"Bad Name: x\r\n"),
        "the raw header block, printable"
    );

    app.settled().await;
    assert!(
        !stream_holds(&app.client, sequence).await,
        "the bad event is gone from {EVENTS_STREAM}"
    );
    assert_eq!(stream_messages(&app.js, EVENTS_STREAM).await, 5);
    assert_eq!(
        stream_messages(&app.js, DLQ_STREAM).await,
        1,
        "dead-lettered once"
    );
    for request in crm.drain().await {
        assert!(
            !String::from_utf8_lossy(&request.body).contains(conversation.as_str()),
            "the bad event never reached the CRM"
        );
    }
}

#[tokio::test]
async fn an_unreadable_event_in_the_intakes_first_batch_is_set_aside() {
    let crm = FakeCrm::start().await;
    let nats = start_nats().await;
    let settings = settings(&nats.url, &webhook_crm(&crm.url()));
    // Everything waits in the stream before the app starts: the bad event
    // and the good ones behind it come in the intake's first batch.
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    softphone_bridge::broker::provision::apply(&js, &settings)
        .await
        .unwrap();
    let bad = ended();
    let sequence = publish_raw(
        &nats.url,
        EventKind::CallEnded.subject(),
        BAD_HEADERS,
        &bad.1,
    )
    .await;
    let mut conversations = Vec::new();
    for _ in 0..5 {
        let (conversation, body) = ended();
        publish(&js, EventKind::CallEnded, &body, None).await;
        conversations.push(conversation);
    }

    let app = App::builder(nats).with(settings).spawn().await;
    crm_receives(&crm, &conversations).await;
    set_aside_once(&app, &crm, sequence, &bad).await;
    app.stop().await;
}

#[tokio::test]
async fn an_unreadable_event_published_while_running_is_set_aside() {
    let crm = FakeCrm::start().await;
    let nats = start_nats().await;
    let url = nats.url.clone();
    let app = App::builder(nats).webhook(&crm).spawn().await;
    let bad = ended();
    let sequence = publish_raw(&url, EventKind::CallEnded.subject(), BAD_HEADERS, &bad.1).await;
    let mut conversations = Vec::new();
    for _ in 0..5 {
        let (conversation, body) = ended();
        app.publish(EventKind::CallEnded, &body, None).await;
        conversations.push(conversation);
    }

    crm_receives(&crm, &conversations).await;
    set_aside_once(&app, &crm, sequence, &bad).await;
    app.stop().await;
}
