//! The gRPC services: `event_store.client.streams.Streams` and
//! `event_store.client.server_features.ServerFeatures`, translating the protocol's
//! messages for [`append`](super::append) and [`read`](super::read).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use eventstore::{Direction, EventStore};
use futures::Stream;
use prost::Message;
use tokio::sync::{mpsc, watch, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use super::append::{self, AppendOutcome, Expected};
use super::auth::{Principal, Users};
use super::codec::{self, Proposed, UuidFormat};
use super::errors;
use super::filter::EventFilter;
use super::proto::event_store::client::server_features::server_features_server::ServerFeatures;
use super::proto::event_store::client::server_features::{SupportedMethod, SupportedMethods};
use super::proto::event_store::client::{AllStreamPosition, WrongExpectedVersion as SharedWev};
use super::proto::google::rpc;
use super::proto::streams::streams_server::Streams;
use super::proto::streams::*;
use super::read::{self, AllStart, Mode, StreamStart, StreamView};

/// Replies buffered per Read call before the reading task waits for the client.
pub const READ_REPLY_BUFFER: usize = 256;
/// BatchAppend: batches of one call being appended at once.
pub const BATCH_APPEND_MAX_IN_FLIGHT: usize = 64;
/// BatchAppend: batches of one call still receiving chunks (not `is_final` yet).
pub const BATCH_APPEND_MAX_OPEN: usize = 1_024;
/// The server version reported to clients, which pick their calls by it.
pub const REPORTED_SERVER_VERSION: &str = "24.10.0";

type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn channel_stream<T: Send + 'static>(rx: mpsc::Receiver<Result<T, Status>>) -> ReplyStream<T> {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// The Streams service on the engine's log.
#[derive(Clone)]
pub struct StreamsService {
    store: Arc<dyn EventStore>,
    users: Arc<Users>,
    /// Turns true when the server stops: subscriptions and batch-append calls, which
    /// never end by themselves, end then.
    stopping: watch::Receiver<bool>,
}

impl StreamsService {
    pub fn new(
        store: Arc<dyn EventStore>,
        users: Arc<Users>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        StreamsService {
            store,
            users,
            stopping,
        }
    }

    fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        self.users.authenticate(request.metadata())
    }
}

fn stream_of(identifier: Option<&super::proto::StreamIdentifier>) -> Result<String, Status> {
    append::stream_name(identifier.map(|i| i.stream_name.as_ref()))
}

fn proposed(
    id: Option<super::proto::ProtoUuid>,
    metadata: &HashMap<String, String>,
    data: bytes::Bytes,
    custom_metadata: bytes::Bytes,
) -> Result<Proposed, Status> {
    Proposed::parse(id, metadata, data, custom_metadata).map_err(errors::invalid_argument)
}

fn append_expected(
    option: Option<append_req::options::ExpectedStreamRevision>,
) -> Result<Expected, Status> {
    use append_req::options::ExpectedStreamRevision as E;
    match option {
        Some(E::Revision(r)) => Ok(Expected::Revision(r)),
        Some(E::NoStream(())) => Ok(Expected::NoStream),
        Some(E::Any(())) => Ok(Expected::Any),
        Some(E::StreamExists(())) => Ok(Expected::StreamExists),
        None => Err(errors::invalid_argument("no expected stream revision")),
    }
}

fn append_reply(outcome: AppendOutcome) -> AppendResp {
    use append_resp::wrong_expected_version::{CurrentRevisionOption, ExpectedRevisionOption};
    let result = match outcome {
        AppendOutcome::Success {
            current_revision,
            position,
        } => append_resp::Result::Success(append_resp::Success {
            current_revision_option: Some(
                append_resp::success::CurrentRevisionOption::CurrentRevision(current_revision),
            ),
            position_option: Some(append_resp::success::PositionOption::Position(
                append_resp::Position {
                    commit_position: position,
                    prepare_position: position,
                },
            )),
        }),
        AppendOutcome::WrongExpectedVersion { current, expected } => {
            append_resp::Result::WrongExpectedVersion(append_resp::WrongExpectedVersion {
                current_revision_option: Some(match current {
                    Some(r) => CurrentRevisionOption::CurrentRevision(r),
                    None => CurrentRevisionOption::CurrentNoStream(()),
                }),
                expected_revision_option: Some(match expected {
                    Expected::Revision(r) => ExpectedRevisionOption::ExpectedRevision(r),
                    Expected::Any => ExpectedRevisionOption::ExpectedAny(()),
                    Expected::StreamExists => ExpectedRevisionOption::ExpectedStreamExists(()),
                    Expected::NoStream => ExpectedRevisionOption::ExpectedNoStream(()),
                }),
                ..Default::default()
            })
        }
    };
    AppendResp {
        result: Some(result),
    }
}

fn delete_expected(
    option: Option<delete_req::options::ExpectedStreamRevision>,
) -> Result<Expected, Status> {
    use delete_req::options::ExpectedStreamRevision as E;
    match option {
        Some(E::Revision(r)) => Ok(Expected::Revision(r)),
        Some(E::NoStream(())) => Ok(Expected::NoStream),
        Some(E::Any(())) => Ok(Expected::Any),
        Some(E::StreamExists(())) => Ok(Expected::StreamExists),
        None => Err(errors::invalid_argument("no expected stream revision")),
    }
}

fn tombstone_expected(
    option: Option<tombstone_req::options::ExpectedStreamRevision>,
) -> Result<Expected, Status> {
    use tombstone_req::options::ExpectedStreamRevision as E;
    match option {
        Some(E::Revision(r)) => Ok(Expected::Revision(r)),
        Some(E::NoStream(())) => Ok(Expected::NoStream),
        Some(E::Any(())) => Ok(Expected::Any),
        Some(E::StreamExists(())) => Ok(Expected::StreamExists),
        None => Err(errors::invalid_argument("no expected stream revision")),
    }
}

fn batch_expected(
    option: Option<batch_append_req::options::ExpectedStreamPosition>,
) -> Result<Expected, Status> {
    use batch_append_req::options::ExpectedStreamPosition as E;
    match option {
        Some(E::StreamPosition(r)) => Ok(Expected::Revision(r)),
        Some(E::NoStream(())) => Ok(Expected::NoStream),
        Some(E::Any(())) => Ok(Expected::Any),
        Some(E::StreamExists(())) => Ok(Expected::StreamExists),
        None => Err(errors::invalid_argument("no expected stream position")),
    }
}

#[tonic::async_trait]
impl Streams for StreamsService {
    type ReadStream = ReplyStream<ReadResp>;

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        use read_req::options::{all_options::AllOption, stream_options::RevisionOption};
        use read_req::options::{CountOption, FilterOption, ReadDirection, StreamOption};

        self.principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| errors::invalid_argument("a read without options"))?;
        let direction = match ReadDirection::try_from(options.read_direction) {
            Ok(ReadDirection::Forwards) => Direction::Forward,
            Ok(ReadDirection::Backwards) => Direction::Backward,
            Err(_) => return Err(errors::invalid_argument("unknown read direction")),
        };
        let mode = match options.count_option {
            Some(CountOption::Count(count)) => Mode::Read { direction, count },
            Some(CountOption::Subscription(_)) => {
                if direction == Direction::Backward {
                    return Err(errors::invalid_argument("subscriptions read forwards"));
                }
                Mode::Subscribe
            }
            None => return Err(errors::invalid_argument("a read without a count")),
        };
        let format = match options.uuid_option.and_then(|o| o.content) {
            Some(read_req::options::uuid_option::Content::Structured(())) => UuidFormat::Structured,
            _ => UuidFormat::String,
        };
        let filter = match options.filter_option {
            Some(FilterOption::Filter(filter)) => {
                Some(EventFilter::parse(&filter).map_err(errors::invalid_argument)?)
            }
            Some(FilterOption::NoFilter(())) | None => None,
        };
        let (replies, rx) = mpsc::channel(READ_REPLY_BUFFER);
        let store = self.store.clone();
        match options.stream_option {
            Some(StreamOption::Stream(stream_options)) => {
                if filter.is_some() {
                    return Err(errors::invalid_argument("filters apply to $all only"));
                }
                let stream = stream_of(stream_options.stream_identifier.as_ref())?;
                let start = match stream_options.revision_option {
                    Some(RevisionOption::Revision(r)) => StreamStart::Revision(r),
                    Some(RevisionOption::Start(())) => StreamStart::Start,
                    Some(RevisionOption::End(())) => StreamStart::End,
                    None => return Err(errors::invalid_argument("a stream read without a start")),
                };
                let view = StreamView::load(&store, &stream).await?;
                tokio::spawn(read::stream(
                    store,
                    stream,
                    view,
                    start,
                    mode,
                    format,
                    replies,
                    self.stopping.clone(),
                ));
            }
            Some(StreamOption::All(all_options)) => {
                let start = match all_options.all_option {
                    Some(AllOption::Position(p)) => AllStart::Position(p.commit_position),
                    Some(AllOption::Start(())) => AllStart::Start,
                    Some(AllOption::End(())) => AllStart::End,
                    None => return Err(errors::invalid_argument("an $all read without a start")),
                };
                tokio::spawn(read::all(
                    store,
                    start,
                    mode,
                    filter,
                    format,
                    replies,
                    self.stopping.clone(),
                ));
            }
            None => return Err(errors::invalid_argument("a read names a stream or $all")),
        }
        Ok(Response::new(channel_stream(rx)))
    }

    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        let principal = self.principal(&request)?;
        let mut messages = request.into_inner();
        let options = match messages.message().await? {
            Some(AppendReq {
                content: Some(append_req::Content::Options(options)),
            }) => options,
            _ => {
                return Err(errors::invalid_argument(
                    "an append starts with its options",
                ))
            }
        };
        let stream = stream_of(options.stream_identifier.as_ref())?;
        let expected = append_expected(options.expected_stream_revision)?;
        let mut events = Vec::new();
        let mut total_bytes = 0usize;
        while let Some(message) = messages.message().await? {
            let Some(append_req::Content::ProposedMessage(m)) = message.content else {
                return Err(errors::invalid_argument(
                    "an append sends its options once, then events",
                ));
            };
            let event = proposed(m.id, &m.metadata, m.data, m.custom_metadata)?;
            total_bytes += event.size_bytes();
            if total_bytes > append::APPEND_MAX_BYTES
                || events.len() >= eventstore::APPEND_MAX_EVENTS
            {
                return Err(errors::maximum_append_size_exceeded(
                    append::APPEND_MAX_BYTES,
                ));
            }
            events.push(event);
        }
        if events.is_empty() {
            return Err(errors::invalid_argument("an append without events"));
        }
        let outcome = append::append(&self.store, &principal, &stream, expected, events).await?;
        Ok(Response::new(append_reply(outcome)))
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        let principal = self.principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| errors::invalid_argument("a delete without options"))?;
        let stream = stream_of(options.stream_identifier.as_ref())?;
        let expected = delete_expected(options.expected_stream_revision)?;
        let position = append::delete(&self.store, &principal, &stream, expected).await?;
        Ok(Response::new(DeleteResp {
            position_option: Some(match position {
                Some(p) => delete_resp::PositionOption::Position(delete_resp::Position {
                    commit_position: p,
                    prepare_position: p,
                }),
                None => delete_resp::PositionOption::NoPosition(()),
            }),
        }))
    }

    async fn tombstone(
        &self,
        request: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        let principal = self.principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| errors::invalid_argument("a tombstone without options"))?;
        let stream = stream_of(options.stream_identifier.as_ref())?;
        let expected = tombstone_expected(options.expected_stream_revision)?;
        let p = append::tombstone(&self.store, &principal, &stream, expected).await?;
        Ok(Response::new(TombstoneResp {
            position_option: Some(tombstone_resp::PositionOption::Position(
                tombstone_resp::Position {
                    commit_position: p,
                    prepare_position: p,
                },
            )),
        }))
    }

    type BatchAppendStream = ReplyStream<BatchAppendResp>;

    async fn batch_append(
        &self,
        request: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        let principal = Arc::new(self.principal(&request)?);
        let mut messages = request.into_inner();
        let (replies, rx) = mpsc::channel(READ_REPLY_BUFFER);
        let store = self.store.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let in_flight = Arc::new(Semaphore::new(BATCH_APPEND_MAX_IN_FLIGHT));
            let mut open: HashMap<Vec<u8>, OpenBatch> = HashMap::new();
            loop {
                let next = tokio::select! {
                    next = messages.message() => next,
                    () = read::stopped(&mut stopping) => {
                        let _ = replies
                            .send(Err(Status::unavailable("the server is shutting down")))
                            .await;
                        break;
                    }
                };
                let message = match next {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = replies.send(Err(status)).await;
                        break;
                    }
                };
                let key = message
                    .correlation_id
                    .as_ref()
                    .map(|id| id.encode_to_vec())
                    .unwrap_or_default();
                let batch = match open.remove(&key) {
                    Some(mut batch) => {
                        batch.messages.extend(message.proposed_messages);
                        batch
                    }
                    None => {
                        if open.len() >= BATCH_APPEND_MAX_OPEN {
                            let _ = replies
                                .send(Err(Status::resource_exhausted(
                                    "too many unfinished batches in one BatchAppend call",
                                )))
                                .await;
                            break;
                        }
                        OpenBatch {
                            correlation_id: message.correlation_id,
                            options: message.options,
                            messages: message.proposed_messages,
                        }
                    }
                };
                if !message.is_final {
                    open.insert(key, batch);
                    continue;
                }
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let store = store.clone();
                let principal = principal.clone();
                let replies = replies.clone();
                tokio::spawn(async move {
                    let reply = batch_reply(&store, &principal, batch).await;
                    let _ = replies.send(Ok(reply)).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(channel_stream(rx)))
    }
}

struct OpenBatch {
    correlation_id: Option<super::proto::ProtoUuid>,
    options: Option<batch_append_req::Options>,
    messages: Vec<batch_append_req::ProposedMessage>,
}

fn rpc_status(status: &Status) -> rpc::Status {
    rpc::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: None,
    }
}

async fn batch_reply(
    store: &Arc<dyn EventStore>,
    principal: &Principal,
    batch: OpenBatch,
) -> BatchAppendResp {
    let mut reply = BatchAppendResp {
        correlation_id: batch.correlation_id,
        result: None,
        stream_identifier: None,
        expected_stream_position: None,
    };
    let result = async {
        let options = batch
            .options
            .ok_or_else(|| errors::invalid_argument("a batch without options"))?;
        let stream = stream_of(options.stream_identifier.as_ref())?;
        reply.stream_identifier = Some(codec::stream_identifier(&stream));
        let expected = batch_expected(options.expected_stream_position)?;
        reply.expected_stream_position = Some(match expected {
            Expected::Revision(r) => batch_append_resp::ExpectedStreamPosition::StreamPosition(r),
            Expected::NoStream => batch_append_resp::ExpectedStreamPosition::NoStream(()),
            Expected::Any => batch_append_resp::ExpectedStreamPosition::Any(()),
            Expected::StreamExists => batch_append_resp::ExpectedStreamPosition::StreamExists(()),
        });
        let events = batch
            .messages
            .into_iter()
            .map(|m| proposed(m.id, &m.metadata, m.data, m.custom_metadata))
            .collect::<Result<Vec<_>, _>>()?;
        if events.is_empty() {
            return Err(errors::invalid_argument("a batch without events"));
        }
        append::append(store, principal, &stream, expected, events).await
    }
    .await;
    reply.result = Some(match result {
        Ok(AppendOutcome::Success {
            current_revision,
            position,
        }) => batch_append_resp::Result::Success(batch_append_resp::Success {
            current_revision_option: Some(
                batch_append_resp::success::CurrentRevisionOption::CurrentRevision(
                    current_revision,
                ),
            ),
            position_option: Some(batch_append_resp::success::PositionOption::Position(
                AllStreamPosition {
                    commit_position: position,
                    prepare_position: position,
                },
            )),
        }),
        Ok(AppendOutcome::WrongExpectedVersion { current, expected }) => {
            let details = wrong_expected_version_details(current, expected);
            batch_append_resp::Result::Error(rpc::Status {
                code: rpc::Code::FailedPrecondition as i32,
                message: format!(
                    "WrongExpectedVersion: expected {}, actual {}",
                    expected.describe(),
                    append::describe_current(current)
                ),
                details: Some(details),
            })
        }
        Err(status) => batch_append_resp::Result::Error(rpc_status(&status)),
    });
    reply
}

fn wrong_expected_version_details(
    current: append::CurrentRevision,
    expected: Expected,
) -> prost_types::Any {
    use super::proto::event_store::client::wrong_expected_version::{
        CurrentStreamRevisionOption, ExpectedStreamPositionOption,
    };
    let message = SharedWev {
        current_stream_revision_option: Some(match current {
            Some(r) => CurrentStreamRevisionOption::CurrentStreamRevision(r),
            None => CurrentStreamRevisionOption::CurrentNoStream(()),
        }),
        expected_stream_position_option: Some(match expected {
            Expected::Revision(r) => ExpectedStreamPositionOption::ExpectedStreamPosition(r),
            Expected::Any => ExpectedStreamPositionOption::ExpectedAny(()),
            Expected::StreamExists => ExpectedStreamPositionOption::ExpectedStreamExists(()),
            Expected::NoStream => ExpectedStreamPositionOption::ExpectedNoStream(()),
        }),
    };
    prost_types::Any {
        type_url: "type.googleapis.com/event_store.client.WrongExpectedVersion".into(),
        value: message.encode_to_vec(),
    }
}

/// What this endpoint serves, so clients pick the calls it has.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerFeaturesService;

#[tonic::async_trait]
impl ServerFeatures for ServerFeaturesService {
    async fn get_supported_methods(
        &self,
        _request: Request<()>,
    ) -> Result<Response<SupportedMethods>, Status> {
        const STREAMS: &str = "event_store.client.streams.streams";
        const FEATURES: &str = "event_store.client.server_features.serverfeatures";
        let method = |service: &str, name: &str, features: &[&str]| SupportedMethod {
            method_name: name.into(),
            service_name: service.into(),
            features: features.iter().map(|f| (*f).to_owned()).collect(),
        };
        Ok(Response::new(SupportedMethods {
            methods: vec![
                method(STREAMS, "read", &["position", "events"]),
                method(STREAMS, "append", &[]),
                method(STREAMS, "batchappend", &[]),
                method(STREAMS, "delete", &[]),
                method(STREAMS, "tombstone", &[]),
                method(FEATURES, "getsupportedmethods", &[]),
            ],
            event_store_server_version: REPORTED_SERVER_VERSION.into(),
        }))
    }
}
