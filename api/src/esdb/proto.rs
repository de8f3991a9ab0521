//! The code generated from `api/proto/esdb/` (see `api/build.rs`). Modules follow the
//! protobuf packages, because the generated code refers across them by `super::`.

#![allow(clippy::all, clippy::pedantic)] // generated code, not ours to restyle

pub mod event_store {
    pub mod client {
        tonic::include_proto!("event_store.client");

        pub mod streams {
            tonic::include_proto!("event_store.client.streams");
        }

        pub mod server_features {
            tonic::include_proto!("event_store.client.server_features");
        }
    }
}

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub use event_store::client::{streams, StreamIdentifier, Uuid as ProtoUuid};
