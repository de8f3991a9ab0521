//! Crypto-shredding of personal data in events.
//!
//! Personal fields are stored sealed: encrypted (AES-256-GCM) with a data key of
//! their subject (a customer), kept in the `privacy_keys` table, outside the log.
//! Deleting the key ([`KeyVault::forget`]) erases the fields everywhere at once: the
//! events stay as they are, so their hash chain still verifies, but nothing can read
//! those fields again and every reader shows them as [`ERASED`].
//!
//! In an event's JSON the sealed fields of an object are replaced by one marker,
//! leaving the object's other fields readable:
//!
//! ```json
//! {"country": "DE",
//!  "$pii": {"subject": "<customer id>", "key_id": "<uuid>",
//!           "fields": ["name", "line1", "email"],
//!           "nonce": "<base64>", "ct": "<base64 of the sealed {field: value} object>"}}
//! ```
//!
//! The nonce is derived from the key and the plaintext (a synthetic IV), so sealing
//! the same fields twice gives the same bytes: a retried command is still the same
//! command to the store's idempotency check. The cost is that two equal sealed
//! objects of one subject are recognisable as equal.
//!
//! This module knows nothing of commerce: which fields of which event type are
//! personal is the writer's [`PersonalFields`] table. [`PrivateStore`] wraps a store
//! to seal on append and open on read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use deadpool_postgres::Pool;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::postgres::{batches, db_error, migrate, Migration};
use crate::types::{
    AppendRequest, AppendResult, Direction, LogFilter, NewEvent, RecordedEvent, StoreError,
};
use crate::EventStore;

/// What a sealed field reads as once its subject's key is gone.
pub const ERASED: &str = "[erased]";
/// The key of the marker object that holds an object's sealed fields.
pub const SEALED_MARKER: &str = "$pii";
/// How long a process trusts a key (or its absence) it read, in seconds: after a
/// forget in another process, this process stops opening the subject's fields
/// within this time. The forgetting process drops its copy at once.
pub const KEY_CACHE_TTL_SECS: u64 = 30;
/// Most subjects whose keys a process keeps in memory; past it the cache starts over.
pub const KEY_CACHE_MAX_SUBJECTS: usize = 100_000;
/// Longest subject accepted.
pub const SUBJECT_MAX_BYTES: usize = 200;

/// The privacy component's schema (component `privacy`).
pub const PRIVACY_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "privacy_keys",
    sql: include_str!("../migrations/privacy/0001_privacy_keys.sql"),
}];

/// Personal fields of one event type: the fields of the object at the JSON pointer
/// `object` ("" for the event's data itself), sealed for the subject whose id is the
/// string at the pointer `subject`.
#[derive(Debug, Clone, Copy)]
pub struct PersonalFields {
    pub event_type: &'static str,
    pub object: &'static str,
    pub fields: &'static [&'static str],
    pub subject: &'static str,
}

#[derive(Clone, Copy)]
struct DataKey {
    id: Uuid,
    key: [u8; 32],
}

struct Cached {
    key: Option<DataKey>,
    read_at: Instant,
}

/// Most new keys one statement creates.
const CREATE_BATCH_MAX: usize = 1_024;
/// Most statements creating keys at once.
const CREATES_IN_FLIGHT: usize = 2;
/// Most key creations waiting for a statement.
const CREATE_QUEUE_MAX: usize = 65_536;

/// Creates the keys of the subjects that have none, for a `text[]` of distinct
/// subjects with a `uuid[]` of key ids and a `bytea[]` of keys, and returns the keys
/// it created. A subject that has a key (another writer won) does not come back; its
/// key is read with [`READ_KEYS_SQL`]. The server plans this plain insert in about a
/// third of the time of one statement that also reads the existing keys (about 0.04
/// against 0.13 ms, on every execution), and a subject sent here rarely has a key:
/// the cache and the read before sealing found none.
const CREATE_KEYS_SQL: &str = "\
    INSERT INTO privacy_keys (subject, key_id, data_key) \
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::bytea[]) \
    ON CONFLICT (subject) DO NOTHING \
    RETURNING subject, key_id, data_key";

/// The keys of a `text[]` of subjects; no row for a subject without one.
const READ_KEYS_SQL: &str =
    "SELECT subject, key_id, data_key FROM privacy_keys WHERE subject = ANY($1)";

/// A subject's key, to create if it has none.
struct KeyCreation {
    subject: String,
    reply: oneshot::Sender<Result<DataKey, StoreError>>,
}

/// The subjects' data keys, read from `privacy_keys` and cached for
/// [`KEY_CACHE_TTL_SECS`]. Cloning is cheap and clones share the cache.
///
/// New keys are created together: every new customer's first order seals their
/// address, and in a rush thousands a second would each be a transaction, and a
/// flush of the server's log, of their own. A task per vault takes the creations
/// waiting in its queue and sends one statement for them ([`CREATE_KEYS_SQL`]).
#[derive(Clone)]
pub struct KeyVault {
    keys: Arc<Keys>,
    creations: mpsc::Sender<KeyCreation>,
}

/// The key table and this process's copy of what it read of it.
struct Keys {
    pool: Pool,
    cache: Mutex<HashMap<String, Cached>>,
}

impl KeyVault {
    /// The vault on `pool`'s database, creating `privacy_keys` if needed.
    pub async fn connect(pool: Pool) -> Result<Self, StoreError> {
        let mut client = pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        migrate(&mut client, "privacy", PRIVACY_MIGRATIONS).await?;
        Ok(KeyVault::new(pool))
    }

    /// The vault on a database whose `privacy_keys` table exists already (see
    /// [`KeyVault::connect`]), with a cache of its own. Runs on the current tokio
    /// runtime.
    pub fn new(pool: Pool) -> Self {
        let keys = Arc::new(Keys {
            pool,
            cache: Mutex::default(),
        });
        let (creations, queue) = mpsc::channel(CREATE_QUEUE_MAX);
        let creator = keys.clone();
        tokio::spawn(batches::serve(
            queue,
            CREATES_IN_FLIGHT,
            CREATE_BATCH_MAX,
            move |batch| {
                let keys = creator.clone();
                async move { keys.create(batch).await }
            },
        ));
        KeyVault { keys, creations }
    }

    /// The subject's key, created if it has none (a forgotten subject that comes
    /// back gets a new key; what was sealed under the old one stays erased).
    async fn key_for_sealing(&self, subject: &str) -> Result<DataKey, StoreError> {
        if let Some(Some(key)) = self.keys.cached(subject) {
            return Ok(key);
        }
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("the key vault has stopped".into());
        self.creations
            .send(KeyCreation {
                subject: subject.to_owned(),
                reply,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Reads the keys of the subjects not cached, in one query.
    async fn prefetch<'a>(
        &self,
        subjects: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), StoreError> {
        let mut missing: Vec<&str> = subjects
            .into_iter()
            .filter(|s| self.keys.cached(s).is_none())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let client = self.keys.client().await?;
        let found: HashMap<String, DataKey> =
            read_keys(&client, &missing).await?.into_iter().collect();
        for subject in missing {
            self.keys.remember(subject, found.get(subject).copied());
        }
        Ok(())
    }

    /// Destroys the subject's key: every field sealed for it reads as [`ERASED`] from
    /// now on (in other processes within [`KEY_CACHE_TTL_SECS`]). Returns whether
    /// there was a key.
    pub async fn forget(&self, subject: &str) -> Result<bool, StoreError> {
        let client = self.keys.client().await?;
        let deleted = client
            .execute("DELETE FROM privacy_keys WHERE subject = $1", &[&subject])
            .await
            .map_err(db_error)?;
        self.keys.remember(subject, None);
        Ok(deleted > 0)
    }

    /// Seals the personal fields of `event` that `table` names, in place.
    pub async fn seal(
        &self,
        table: &[PersonalFields],
        event: &mut NewEvent,
    ) -> Result<(), StoreError> {
        for rule in table.iter().filter(|r| r.event_type == event.event_type) {
            let data = event.data.value_mut();
            let subject = match data.pointer(rule.subject) {
                Some(Value::String(s)) if !s.is_empty() && s.len() <= SUBJECT_MAX_BYTES => {
                    s.clone()
                }
                _ => {
                    return Err(StoreError::invalid(
                        "data",
                        format!(
                            "{} carries personal data but no subject at {}",
                            event.event_type, rule.subject
                        ),
                    ))
                }
            };
            let Some(Value::Object(object)) = data.pointer_mut(rule.object) else {
                continue;
            };
            if object.contains_key(SEALED_MARKER) {
                continue;
            }
            let mut sealed = Map::new();
            for field in rule.fields {
                match object.remove(*field) {
                    Some(Value::Null) => {
                        object.insert((*field).to_owned(), Value::Null);
                    }
                    Some(value) => {
                        sealed.insert((*field).to_owned(), value);
                    }
                    None => {}
                }
            }
            if sealed.is_empty() {
                continue;
            }
            let key = self.key_for_sealing(&subject).await?;
            object.insert(
                SEALED_MARKER.to_owned(),
                seal_fields(&key, &subject, sealed)?,
            );
        }
        Ok(())
    }

    /// Opens every sealed object in `values`, in place: the sealed fields come back,
    /// or read as [`ERASED`] when their key is gone. Returns how many were erased.
    pub async fn open_all<'a>(
        &self,
        values: impl IntoIterator<Item = &'a mut Value>,
    ) -> Result<usize, StoreError> {
        let mut sealed: Vec<&'a mut Value> =
            values.into_iter().filter(|v| contains_marker(v)).collect();
        if sealed.is_empty() {
            return Ok(0);
        }
        let mut subjects = Vec::new();
        for value in &sealed {
            collect_subjects(value, &mut subjects);
        }
        self.prefetch(subjects.iter().map(String::as_str)).await?;
        let mut erased = 0;
        for value in &mut sealed {
            erased += self.open_cached(value);
        }
        Ok(erased)
    }

    /// Opens the sealed objects of one value.
    pub async fn open(&self, value: &mut Value) -> Result<usize, StoreError> {
        self.open_all(std::iter::once(value)).await
    }

    fn open_cached(&self, value: &mut Value) -> usize {
        match value {
            Value::Object(map) => {
                let mut erased = 0;
                if let Some(marker) = map.remove(SEALED_MARKER) {
                    let key = marker
                        .get("subject")
                        .and_then(Value::as_str)
                        .and_then(|s| self.keys.cached(s).flatten());
                    match open_fields(key, &marker) {
                        Some(fields) => map.extend(fields),
                        None => {
                            for field in marker_fields(&marker) {
                                map.insert(field.to_owned(), Value::String(ERASED.to_owned()));
                            }
                            erased += 1;
                        }
                    }
                }
                for child in map.values_mut() {
                    erased += self.open_cached(child);
                }
                erased
            }
            Value::Array(items) => items.iter_mut().map(|i| self.open_cached(i)).sum(),
            _ => 0,
        }
    }
}

impl Keys {
    fn cache(&self) -> MutexGuard<'_, HashMap<String, Cached>> {
        // Each holder does one map operation, so a panic cannot leave it half-done.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached(&self, subject: &str) -> Option<Option<DataKey>> {
        let ttl = Duration::from_secs(KEY_CACHE_TTL_SECS);
        self.cache()
            .get(subject)
            .filter(|c| c.read_at.elapsed() < ttl)
            .map(|c| c.key)
    }

    fn remember(&self, subject: &str, key: Option<DataKey>) {
        let mut cache = self.cache();
        if cache.len() >= KEY_CACHE_MAX_SUBJECTS {
            cache.clear();
        }
        cache.insert(
            subject.to_owned(),
            Cached {
                key,
                read_at: Instant::now(),
            },
        );
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Creates (or reads, where another writer won) the keys of a batch of
    /// [`KeyCreation`]s, and answers each.
    async fn create(&self, batch: Vec<KeyCreation>) {
        let mut subjects: Vec<&str> = batch.iter().map(|c| c.subject.as_str()).collect();
        subjects.sort_unstable();
        subjects.dedup();
        let mut keys = HashMap::with_capacity(subjects.len());
        let mut failure = None;
        // A subject left out had a key when inserting and none when reading it (it
        // was forgotten in between): the next try creates one (unless that happens
        // again, hence more than two tries).
        for _ in 0..3 {
            let missing: Vec<&str> = subjects
                .iter()
                .copied()
                .filter(|s| !keys.contains_key(*s))
                .collect();
            if missing.is_empty() {
                break;
            }
            match self.insert(&missing).await {
                Ok(created) => keys.extend(created),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        for (subject, key) in &keys {
            self.remember(subject, Some(*key));
        }
        for creation in batch {
            let result = match keys.get(creation.subject.as_str()) {
                Some(key) => Ok(*key),
                None => Err(failure.clone().unwrap_or_else(|| {
                    StoreError::Unavailable(format!(
                        "no key could be created for subject {}",
                        creation.subject
                    ))
                })),
            };
            let _ = creation.reply.send(result);
        }
    }

    async fn insert(&self, subjects: &[&str]) -> Result<Vec<(String, DataKey)>, StoreError> {
        let key_ids: Vec<Uuid> = subjects.iter().map(|_| Uuid::new_v4()).collect();
        let fresh: Vec<Vec<u8>> = subjects
            .iter()
            .map(|_| rand::random::<[u8; 32]>().to_vec())
            .collect();
        let client = self.client().await?;
        let statement = client
            .prepare_cached(CREATE_KEYS_SQL)
            .await
            .map_err(db_error)?;
        let rows = client
            .query(&statement, &[&subjects, &key_ids, &fresh])
            .await
            .map_err(db_error)?;
        let mut keys = key_rows(&rows)?;
        if keys.len() < subjects.len() {
            // Keyed by another writer: read theirs. One whose key was forgotten
            // again in between is left out, and asked for again.
            let created: std::collections::HashSet<&str> =
                keys.iter().map(|(s, _)| s.as_str()).collect();
            let existing: Vec<&str> = subjects
                .iter()
                .copied()
                .filter(|s| !created.contains(s))
                .collect();
            keys.extend(read_keys(&client, &existing).await?);
        }
        Ok(keys)
    }
}

/// The keys `subjects` have ([`READ_KEYS_SQL`]); a subject without one is left out.
async fn read_keys(
    client: &deadpool_postgres::Object,
    subjects: &[&str],
) -> Result<Vec<(String, DataKey)>, StoreError> {
    let statement = client
        .prepare_cached(READ_KEYS_SQL)
        .await
        .map_err(db_error)?;
    let rows = client
        .query(&statement, &[&subjects])
        .await
        .map_err(db_error)?;
    key_rows(&rows)
}

/// Rows of `subject, key_id, data_key`.
fn key_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<(String, DataKey)>, StoreError> {
    rows.iter()
        .map(|row| Ok((row.get(0), data_key(row.get(1), row.get(2))?)))
        .collect()
}

fn data_key(id: Uuid, key: Vec<u8>) -> Result<DataKey, StoreError> {
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| StoreError::Corrupt("a data key is not 32 bytes".into()))?;
    Ok(DataKey { id, key })
}

/// The additional data each ciphertext is bound to: its subject, key and field names,
/// so a sealed object cannot be moved to another subject or relabelled unnoticed.
fn associated_data(subject: &str, key_id: &Uuid, fields: &[&str]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    aad.extend_from_slice(subject.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key_id.as_bytes());
    for field in fields {
        aad.push(0);
        aad.extend_from_slice(field.as_bytes());
    }
    aad
}

fn seal_fields(
    key: &DataKey,
    subject: &str,
    sealed: Map<String, Value>,
) -> Result<Value, StoreError> {
    let names: Vec<String> = sealed.keys().cloned().collect();
    let plaintext = serde_json::to_vec(&Value::Object(sealed))
        .map_err(|e| StoreError::invalid("data", e.to_string()))?;
    // Synthetic IV: the same plaintext under the same key gives the same nonce.
    let mut nonce_source = Sha256::new();
    nonce_source.update(b"commerce sealed-field nonce\0");
    nonce_source.update(key.key);
    nonce_source.update(&plaintext);
    let digest = nonce_source.finalize();
    let nonce = Nonce::from_slice(&digest[..12]);
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let aad = associated_data(subject, &key.id, &name_refs);
    let cipher = Aes256Gcm::new_from_slice(&key.key)
        .map_err(|e| StoreError::Corrupt(format!("data key: {e}")))?;
    let ct = cipher
        .encrypt(
            nonce,
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .map_err(|e| StoreError::Corrupt(format!("sealing: {e}")))?;
    Ok(serde_json::json!({
        "subject": subject,
        "key_id": key.id,
        "fields": names,
        "nonce": BASE64.encode(nonce),
        "ct": BASE64.encode(ct),
    }))
}

fn marker_fields(marker: &Value) -> impl Iterator<Item = &str> {
    marker
        .get("fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// The sealed fields, or `None` if they cannot be read (no key, another key, or a
/// ciphertext that does not authenticate).
fn open_fields(key: Option<DataKey>, marker: &Value) -> Option<Map<String, Value>> {
    let key = key?;
    let key_id: Uuid = marker.get("key_id")?.as_str()?.parse().ok()?;
    if key_id != key.id {
        return None;
    }
    let subject = marker.get("subject")?.as_str()?;
    let names: Vec<&str> = marker_fields(marker).collect();
    let nonce = BASE64.decode(marker.get("nonce")?.as_str()?).ok()?;
    let ct = BASE64.decode(marker.get("ct")?.as_str()?).ok()?;
    if nonce.len() != 12 {
        return None;
    }
    let cipher = Aes256Gcm::new_from_slice(&key.key).ok()?;
    let plaintext = cipher
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &ct,
                aad: &associated_data(subject, &key_id, &names),
            },
        )
        .ok()?;
    match serde_json::from_slice(&plaintext).ok()? {
        Value::Object(fields) => Some(fields),
        _ => None,
    }
}

/// Whether the value holds a sealed object anywhere.
pub fn contains_marker(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.contains_key(SEALED_MARKER) || map.values().any(contains_marker),
        Value::Array(items) => items.iter().any(contains_marker),
        _ => false,
    }
}

/// Whether JSON text may hold a sealed object (a cheap test before parsing it).
pub fn text_may_contain_marker(json: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"$pii\"";
    json.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

fn collect_subjects(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(subject) = map
                .get(SEALED_MARKER)
                .and_then(|m| m.get("subject"))
                .and_then(Value::as_str)
            {
                out.push(subject.to_owned());
            }
            for child in map.values() {
                collect_subjects(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_subjects(i, out)),
        _ => {}
    }
}

/// A store that seals personal fields on append and opens them on read, over
/// another store. Appends and reads keep the inner store's contract; the hash chain
/// covers the sealed form, which is what the log holds.
pub struct PrivateStore {
    inner: Arc<dyn EventStore>,
    vault: KeyVault,
    table: &'static [PersonalFields],
}

impl PrivateStore {
    pub fn new(
        inner: Arc<dyn EventStore>,
        vault: KeyVault,
        table: &'static [PersonalFields],
    ) -> Self {
        PrivateStore {
            inner,
            vault,
            table,
        }
    }

    pub fn vault(&self) -> &KeyVault {
        &self.vault
    }

    async fn seal_request(&self, request: &mut AppendRequest) -> Result<(), StoreError> {
        for event in &mut request.events {
            self.vault.seal(self.table, event).await?;
        }
        Ok(())
    }

    async fn opened(
        &self,
        mut events: Vec<RecordedEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.vault
            .open_all(events.iter_mut().map(|e| &mut e.data))
            .await?;
        Ok(events)
    }
}

#[async_trait]
impl EventStore for PrivateStore {
    async fn append(&self, mut request: AppendRequest) -> Result<AppendResult, StoreError> {
        self.seal_request(&mut request).await?;
        self.inner.append(request).await
    }

    async fn append_batch(
        &self,
        mut requests: Vec<AppendRequest>,
    ) -> Vec<Result<AppendResult, StoreError>> {
        // A request that cannot be sealed fails alone; the others go as one batch.
        let mut failed: Vec<Option<StoreError>> = Vec::with_capacity(requests.len());
        for request in &mut requests {
            failed.push(self.seal_request(request).await.err());
        }
        let sealed: Vec<AppendRequest> = requests
            .into_iter()
            .zip(&failed)
            .filter(|(_, f)| f.is_none())
            .map(|(r, _)| r)
            .collect();
        let mut results = self.inner.append_batch(sealed).await.into_iter();
        failed
            .into_iter()
            .map(|f| match f {
                Some(error) => Err(error),
                None => results.next().unwrap_or_else(|| {
                    Err(StoreError::Corrupt(
                        "the store answered fewer appends".into(),
                    ))
                }),
            })
            .collect()
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self
            .inner
            .read_stream(stream_id, from_version, direction, limit)
            .await?;
        self.opened(events).await
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
        category: Option<&str>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_all(after, limit, category).await?;
        self.opened(events).await
    }

    async fn read_all_matching(
        &self,
        after: u64,
        limit: usize,
        filter: &LogFilter<'_>,
        window: u64,
    ) -> Result<(Vec<RecordedEvent>, u64), StoreError> {
        let (events, looked) = self
            .inner
            .read_all_matching(after, limit, filter, window)
            .await?;
        Ok((self.opened(events).await?, looked))
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        self.inner.stream_version(stream_id).await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.inner.head().await
    }

    async fn wait_for_head(&self, known: u64, timeout: Duration) -> Result<u64, StoreError> {
        self.inner.wait_for_head(known, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> DataKey {
        DataKey {
            id: Uuid::from_u128(7),
            key: [9u8; 32],
        }
    }

    #[test]
    fn sealing_is_deterministic_and_opens_with_its_key_only() {
        let fields = json!({"name": "Ada", "email": "ada@example.com"});
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        let a = seal_fields(&key(), "c1", fields.clone()).expect("sealed");
        let b = seal_fields(&key(), "c1", fields.clone()).expect("sealed");
        assert_eq!(a, b);
        assert!(!a.to_string().contains("ada@example.com"));
        assert_eq!(open_fields(Some(key()), &a), Some(fields));
        let other = DataKey {
            id: Uuid::from_u128(7),
            key: [1u8; 32],
        };
        assert_eq!(open_fields(Some(other), &a), None);
        let mut moved = a.clone();
        moved["subject"] = json!("c2");
        assert_eq!(open_fields(Some(key()), &moved), None);
    }

    #[test]
    fn markers_are_found_in_text_and_values() {
        assert!(text_may_contain_marker(br#"{"a":{"$pii":{}}}"#));
        assert!(!text_may_contain_marker(br#"{"a":"pii"}"#));
        assert!(contains_marker(&json!({"a": [{"$pii": {}}]})));
        assert!(!contains_marker(&json!({"a": [{"pii": {}}]})));
    }
}
