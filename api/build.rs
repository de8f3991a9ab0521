//! Generates the EventStoreDB-compatible gRPC server (`api/src/esdb/`) from the protos
//! in `api/proto/esdb/`. `protox` compiles them in Rust, so no `protoc` is needed.

use std::error::Error;

const PROTO_DIR: &str = "proto/esdb";
const PROTOS: [&str; 5] = [
    "proto/esdb/shared.proto",
    "proto/esdb/code.proto",
    "proto/esdb/status.proto",
    "proto/esdb/streams.proto",
    "proto/esdb/serverfeatures.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, [PROTO_DIR])?;
    tonic_build::configure()
        // The client serves the tests that send what the official clients never do
        // (a malformed append, an expected revision left out).
        .build_client(true)
        .build_server(true)
        // The protocol's own Empty carries nothing: unit, as google.protobuf.Empty is.
        .extern_path(".event_store.client.Empty", "()")
        .bytes([
            ".event_store.client.StreamIdentifier.stream_name",
            ".event_store.client.streams.AppendReq.ProposedMessage.data",
            ".event_store.client.streams.AppendReq.ProposedMessage.custom_metadata",
            ".event_store.client.streams.BatchAppendReq.ProposedMessage.data",
            ".event_store.client.streams.BatchAppendReq.ProposedMessage.custom_metadata",
            ".event_store.client.streams.ReadResp.ReadEvent.RecordedEvent.data",
            ".event_store.client.streams.ReadResp.ReadEvent.RecordedEvent.custom_metadata",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
