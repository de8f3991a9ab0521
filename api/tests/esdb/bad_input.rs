//! Bad input gets the protocol's error and writes nothing: what the official client can
//! send (an empty or malformed stream name, an oversized event), and what only a raw
//! gRPC client sends (no expected revision, messages out of order, data that does not
//! match its content type).

use std::collections::HashMap;

use api::esdb::codec::{uuid_to_proto, UuidFormat};
use api::esdb::proto::streams::streams_client::StreamsClient;
use api::esdb::proto::streams::{append_req, AppendReq};
use api::esdb::proto::StreamIdentifier;
use base64::Engine;
use bytes::Bytes;
use esdb::{AppendToStreamOptions, Error, EventData};
use serde_json::json;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::support::{json_event, spawn, EsdbApp, ADMIN};

fn assert_invalid(error: &Error) {
    assert!(
        matches!(
            error,
            Error::Grpc {
                code: tonic::Code::InvalidArgument,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_empty_or_malformed_stream_name_and_an_oversized_event_are_refused() {
    let app = spawn().await;
    let client = app.admin();
    let head = app.head().await;
    for stream in ["", "integration with spaces"] {
        let error = client
            .append_to_stream(
                stream,
                &AppendToStreamOptions::default(),
                json_event("X", json!({})),
            )
            .await
            .expect_err("a bad stream name");
        assert_invalid(&error);
    }
    let oversized = EventData::binary("Big", Bytes::from(vec![7u8; 800 << 10]));
    let error = client
        .append_to_stream(
            "integration-big",
            &AppendToStreamOptions::default(),
            oversized,
        )
        .await
        .expect_err("too big");
    assert_invalid(&error);
    assert_eq!(app.head().await, head, "nothing written");
}

async fn raw_client(app: &EsdbApp) -> StreamsClient<Channel> {
    StreamsClient::connect(format!("http://127.0.0.1:{}", app.port))
        .await
        .expect("a raw connection")
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", ADMIN.0, ADMIN.1));
    request.metadata_mut().insert(
        "authorization",
        format!("Basic {credentials}").parse().expect("a header"),
    );
    request
}

fn options(expected: Option<append_req::options::ExpectedStreamRevision>) -> AppendReq {
    AppendReq {
        content: Some(append_req::Content::Options(append_req::Options {
            stream_identifier: Some(StreamIdentifier {
                stream_name: Bytes::from_static(b"integration-raw"),
            }),
            expected_stream_revision: expected,
        })),
    }
}

fn event(content_type: &str, data: &'static [u8], with_type: bool) -> AppendReq {
    let mut metadata = HashMap::from([("content-type".to_owned(), content_type.to_owned())]);
    if with_type {
        metadata.insert("type".to_owned(), "Raw".to_owned());
    }
    AppendReq {
        content: Some(append_req::Content::ProposedMessage(
            append_req::ProposedMessage {
                id: Some(uuid_to_proto(Uuid::new_v4(), UuidFormat::Structured)),
                metadata,
                custom_metadata: Bytes::new(),
                data: Bytes::from_static(data),
            },
        )),
    }
}

#[tokio::test]
async fn malformed_appends_get_invalid_argument_and_write_nothing() {
    use append_req::options::ExpectedStreamRevision;
    let app = spawn().await;
    let mut raw = raw_client(&app).await;
    let head = app.head().await;
    let any = || Some(ExpectedStreamRevision::Any(()));
    let cases: Vec<(&str, Vec<AppendReq>)> = vec![
        (
            "no expected revision",
            vec![options(None), event("application/json", b"{}", true)],
        ),
        (
            "events before options",
            vec![event("application/json", b"{}", true), options(any())],
        ),
        ("options twice", vec![options(any()), options(any())]),
        ("no events", vec![options(any())]),
        (
            "no event type",
            vec![options(any()), event("application/json", b"{}", false)],
        ),
        (
            "JSON that is not JSON",
            vec![options(any()), event("application/json", b"{nope", true)],
        ),
    ];
    for (case, messages) in cases {
        let status = raw
            .append(authorized(futures::stream::iter(messages)))
            .await
            .expect_err(case);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{case}: {status:?}"
        );
    }
    assert_eq!(app.head().await, head, "nothing written");

    // The same client and stream are fine when the messages are.
    let written = raw
        .append(authorized(futures::stream::iter(vec![
            options(any()),
            event("application/octet-stream", b"\x00\x01", true),
        ])))
        .await
        .expect("a well-formed append");
    assert!(written.into_inner().result.is_some());
}
