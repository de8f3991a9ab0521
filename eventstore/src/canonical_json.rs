//! Canonical JSON written straight from a `Serialize` value, without building a
//! `serde_json::Value` first.
//!
//! The log stores an event's data in canonical form ([`crate::hash::canonical_json`]:
//! compact, object keys sorted by their bytes, numbers as serde_json prints them,
//! zero floats as `0.0`). Building a `Value` tree only to print it costs a map, a
//! key string and a node per field, most of a command's encoding time; this writer
//! prints the value as it is serialized instead. An object's entries are written in
//! the order they come, their byte ranges noted on a stack shared by all open
//! objects; when the object closes, entries out of order are moved into key order
//! (nested objects are already final then, so only the top level of each object is
//! rearranged). The output is byte for byte what `canonical_json(&to_value(x))`
//! gives; where that would be unclear (a repeated key, a map key that is not a
//! string or an integer, a 128-bit number beyond 64 bits) the writer refuses, and
//! the caller takes the `Value` route.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use serde::ser::{self, Serialize};
use serde_json::Value;

use crate::hash::{canonical_json, write_string};

/// JSON text in the log's canonical form.
#[derive(Clone, PartialEq, Eq)]
pub struct CanonicalJson {
    bytes: Vec<u8>,
    /// Whether some string or key holds a NUL character, which PostgreSQL's `json`
    /// cannot store.
    has_nul: bool,
}

impl fmt::Debug for CanonicalJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.bytes))
    }
}

/// The writer cannot be sure to match `canonical_json(&to_value(..))` for this value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Unsupported(msg.to_string())
    }
}

impl CanonicalJson {
    /// The canonical JSON of `value`'s serialization.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self, Unsupported> {
        Self::write(value, false)
    }

    /// The canonical JSON of an enum variant's content, without the variant's name:
    /// for an externally tagged `{"Variant": content}` that is `content`, and a unit
    /// variant is its name as a string. This is how the log stores a domain event
    /// (the name goes to the event's type). A value that is not an enum variant is
    /// refused.
    pub fn of_variant<T: Serialize + ?Sized>(value: &T) -> Result<Self, Unsupported> {
        Self::write(value, true)
    }

    fn write<T: Serialize + ?Sized>(value: &T, variant_content: bool) -> Result<Self, Unsupported> {
        // The working buffers are kept per thread: once grown, writing an event
        // allocates only its text.
        let (mut entries, mut scratch, mut text) = BUFFERS.with_borrow_mut(std::mem::take);
        entries.clear();
        let mut writer = Writer {
            out: Vec::with_capacity(256),
            has_nul: false,
            variant_content,
            entries,
            scratch,
            text,
        };
        let written = value.serialize(&mut writer);
        (entries, scratch, text) = (writer.entries, writer.scratch, writer.text);
        entries.clear();
        BUFFERS.with_borrow_mut(|buffers| *buffers = (entries, scratch, text));
        written?;
        Ok(CanonicalJson {
            bytes: writer.out,
            has_nul: writer.has_nul,
        })
    }

    /// The canonical form of a JSON value.
    pub fn from_value(value: &Value) -> Self {
        CanonicalJson {
            bytes: canonical_json(value),
            has_nul: !crate::prepare::json_strings_are_storable(value),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Whether some string or key holds a NUL character.
    pub fn has_nul(&self) -> bool {
        self.has_nul
    }

    /// The JSON value the text holds.
    pub fn to_value(&self) -> Value {
        // The text was written by this module or by `canonical_json`: it parses.
        serde_json::from_slice(&self.bytes).expect("canonical JSON parses")
    }
}

thread_local! {
    /// [`Writer`]'s entry stack, sorting buffer and formatting buffer, between uses.
    static BUFFERS: std::cell::RefCell<(Vec<Entry>, Vec<u8>, String)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), String::new())) };
}

/// One entry of an open object: its key and where its `"key":value` text lies in
/// the output.
struct Entry {
    key: Cow<'static, str>,
    start: usize,
    end: usize,
}

struct Writer {
    out: Vec<u8>,
    has_nul: bool,
    /// The next value is the top-level enum whose content alone is written.
    variant_content: bool,
    /// The entries of every open object, innermost last.
    entries: Vec<Entry>,
    /// Where an object's entries are put in order before being copied back.
    scratch: Vec<u8>,
    /// Where a `Display` value is formatted before being written as a string.
    text: String,
}

impl Writer {
    fn string(&mut self, s: &str) {
        self.has_nul |= s.contains('\0');
        write_string(s, &mut self.out);
    }

    /// Refuses a top-level value that is not an enum variant when only a variant's
    /// content was asked for.
    fn plain_value(&mut self) -> Result<(), Unsupported> {
        if self.variant_content {
            return Err(Unsupported("not an enum variant".into()));
        }
        Ok(())
    }

    /// Whether this call is the top-level variant whose content alone is written.
    fn take_variant_content(&mut self) -> bool {
        std::mem::take(&mut self.variant_content)
    }

    fn open_object(&mut self) -> Object<'_> {
        self.out.push(b'{');
        let base = self.entries.len();
        let start = self.out.len();
        Object {
            base,
            start,
            close: b"}",
            key: None,
            writer: self,
        }
    }

    /// `{"variant":` then an object whose end also closes the wrapper.
    fn open_wrapped_object(&mut self, variant: &'static str) -> Object<'_> {
        self.out.push(b'{');
        self.string(variant);
        self.out.push(b':');
        let mut object = self.open_object();
        object.close = b"}}";
        object
    }
}

macro_rules! integers {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method(self, v: $ty) -> Result<(), Unsupported> {
            self.plain_value()?;
            // Decimal, as serde_json prints an integer; writing to a Vec cannot fail.
            let _ = write!(self.out, "{v}");
            Ok(())
        }
    )*};
}

impl<'a> ser::Serializer for &'a mut Writer {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.plain_value()?;
        self.out
            .extend_from_slice(if v { b"true" as &[u8] } else { b"false" });
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), Unsupported> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Unsupported> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Unsupported> {
        self.serialize_i64(v.into())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        self.serialize_u64(v.into())
    }

    integers!(serialize_i64: i64, serialize_u64: u64);

    fn serialize_i128(self, v: i128) -> Result<(), Unsupported> {
        match (i64::try_from(v), u64::try_from(v)) {
            (Ok(v), _) => self.serialize_i64(v),
            (_, Ok(v)) => self.serialize_u64(v),
            _ => Err(Unsupported("a number beyond 64 bits".into())),
        }
    }

    fn serialize_u128(self, v: u128) -> Result<(), Unsupported> {
        match u64::try_from(v) {
            Ok(v) => self.serialize_u64(v),
            Err(_) => Err(Unsupported("a number beyond 64 bits".into())),
        }
    }

    fn serialize_f32(self, v: f32) -> Result<(), Unsupported> {
        // As serde_json's value serializer does: the f32 widened to f64.
        self.serialize_f64(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), Unsupported> {
        self.plain_value()?;
        if !v.is_finite() {
            // A `Value` has no such number: it holds null.
            self.out.extend_from_slice(b"null");
        } else if v == 0.0 {
            // Negative zero as zero, as `canonical_json` writes it.
            self.out.extend_from_slice(b"0.0");
        } else {
            // serde_json prints a finite float the way its `Number` displays it.
            serde_json::to_writer(&mut self.out, &v).map_err(|e| Unsupported(e.to_string()))?;
        }
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Unsupported> {
        self.serialize_str(v.encode_utf8(&mut [0u8; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        self.plain_value()?;
        self.string(v);
        Ok(())
    }

    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Result<(), Unsupported> {
        // Times and other `Display` values, formatted into a buffer kept for them
        // rather than a fresh string each.
        self.plain_value()?;
        let mut text = std::mem::take(&mut self.text);
        text.clear();
        fmt::Write::write_fmt(&mut text, format_args!("{value}"))
            .map_err(|e| Unsupported(e.to_string()))?;
        self.string(&text);
        self.text = text;
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Unsupported> {
        // A `Value` holds bytes as an array of numbers.
        use ser::SerializeSeq;
        let mut seq = self.serialize_seq(Some(v.len()))?;
        for byte in v {
            seq.serialize_element(byte)?;
        }
        seq.end()
    }

    fn serialize_none(self) -> Result<(), Unsupported> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Unsupported> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Unsupported> {
        self.plain_value()?;
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Unsupported> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Unsupported> {
        // The variant's name as a string, at the top level too: the content of a
        // unit variant is its name.
        self.variant_content = false;
        self.string(variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        if self.take_variant_content() {
            return value.serialize(self);
        }
        // `{"variant":value}`: one key, in order by itself.
        self.out.push(b'{');
        self.string(variant);
        self.out.push(b':');
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Seq<'a>, Unsupported> {
        self.plain_value()?;
        self.out.push(b'[');
        Ok(Seq {
            writer: self,
            first: true,
            close: b"]",
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Seq<'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Seq<'a>, Unsupported> {
        if self.take_variant_content() {
            return self.serialize_seq(Some(len));
        }
        self.out.push(b'{');
        self.string(variant);
        self.out.extend_from_slice(b":[");
        Ok(Seq {
            writer: self,
            first: true,
            close: b"]}",
        })
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a>, Unsupported> {
        self.plain_value()?;
        Ok(self.open_object())
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Object<'a>, Unsupported> {
        self.plain_value()?;
        Ok(self.open_object())
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Object<'a>, Unsupported> {
        if self.take_variant_content() {
            return Ok(self.open_object());
        }
        Ok(self.open_wrapped_object(variant))
    }
}

struct Seq<'a> {
    writer: &'a mut Writer,
    first: bool,
    close: &'static [u8],
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        if !std::mem::take(&mut self.first) {
            self.writer.out.push(b',');
        }
        value.serialize(&mut *self.writer)
    }

    fn finish(self) -> Result<(), Unsupported> {
        self.writer.out.extend_from_slice(self.close);
        Ok(())
    }
}

/// serde's four sequence shapes are written alike: one impl each, from one body.
macro_rules! sequence_shapes {
    ($($shape:ident::$method:ident),*) => {$(
        impl ser::$shape for Seq<'_> {
            type Ok = ();
            type Error = Unsupported;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
                self.element(value)
            }
            fn end(self) -> Result<(), Unsupported> {
                self.finish()
            }
        }
    )*};
}

sequence_shapes!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// An open object. Its entries are noted on the writer's stack from `base` on; its
/// text starts at `start` (just after the `{`).
struct Object<'a> {
    writer: &'a mut Writer,
    base: usize,
    start: usize,
    close: &'static [u8],
    /// A map key given on its own, waiting for its value.
    key: Option<String>,
}

impl Object<'_> {
    fn entry<T: Serialize + ?Sized>(
        &mut self,
        key: Cow<'static, str>,
        value: &T,
    ) -> Result<(), Unsupported> {
        let w = &mut *self.writer;
        if w.entries.len() > self.base {
            w.out.push(b',');
        }
        let start = w.out.len();
        w.string(&key);
        w.out.push(b':');
        value.serialize(&mut *w)?;
        let end = w.out.len();
        w.entries.push(Entry { key, start, end });
        Ok(())
    }

    fn finish(self) -> Result<(), Unsupported> {
        let w = self.writer;
        let entries = &mut w.entries[self.base..];
        let ordered = entries
            .windows(2)
            .all(|pair| pair[0].key.as_bytes() < pair[1].key.as_bytes());
        if !ordered {
            entries.sort_unstable_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
            if entries.windows(2).any(|pair| pair[0].key == pair[1].key) {
                // A `Value` keeps one entry of a repeated key; which one depends on
                // the serializer, so leave it to that route.
                return Err(Unsupported("a repeated object key".into()));
            }
            w.scratch.clear();
            for (i, entry) in entries.iter().enumerate() {
                if i > 0 {
                    w.scratch.push(b',');
                }
                w.scratch.extend_from_slice(&w.out[entry.start..entry.end]);
            }
            w.out.truncate(self.start);
            w.out.extend_from_slice(&w.scratch);
        }
        w.entries.truncate(self.base);
        w.out.extend_from_slice(self.close);
        Ok(())
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unsupported> {
        self.key = Some(key.serialize(KeyText)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Unsupported("a map value without its key".into()))?;
        self.entry(Cow::Owned(key), value)
    }

    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), Unsupported> {
        let key = key.serialize(KeyText)?;
        self.entry(Cow::Owned(key), value)
    }

    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

/// A struct's fields and a struct variant's are written alike.
macro_rules! struct_shapes {
    ($($shape:ident),*) => {$(
        impl ser::$shape for Object<'_> {
            type Ok = ();
            type Error = Unsupported;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Unsupported> {
                self.entry(Cow::Borrowed(key), value)
            }
            fn end(self) -> Result<(), Unsupported> {
                self.finish()
            }
        }
    )*};
}

struct_shapes!(SerializeStruct, SerializeStructVariant);

/// A map key as the text a `Value`'s object would hold: strings, and integers as
/// their decimal text. Other keys are refused.
struct KeyText;

impl KeyText {
    fn refuse(what: &str) -> Unsupported {
        Unsupported(format!("{what} as a map key"))
    }
}

macro_rules! integer_keys {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method(self, v: $ty) -> Result<String, Unsupported> {
            Ok(v.to_string())
        }
    )*};
}

macro_rules! refused_keys {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method(self, _v: $ty) -> Result<String, Unsupported> {
            Err(KeyText::refuse(stringify!($ty)))
        }
    )*};
}

impl ser::Serializer for KeyText {
    type Ok = String;
    type Error = Unsupported;
    type SerializeSeq = ser::Impossible<String, Unsupported>;
    type SerializeTuple = ser::Impossible<String, Unsupported>;
    type SerializeTupleStruct = ser::Impossible<String, Unsupported>;
    type SerializeTupleVariant = ser::Impossible<String, Unsupported>;
    type SerializeMap = ser::Impossible<String, Unsupported>;
    type SerializeStruct = ser::Impossible<String, Unsupported>;
    type SerializeStructVariant = ser::Impossible<String, Unsupported>;

    integer_keys!(
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64
    );
    refused_keys!(
        serialize_bool: bool, serialize_f32: f32, serialize_f64: f64,
        serialize_i128: i128, serialize_u128: u128, serialize_bytes: &[u8]
    );

    fn serialize_char(self, v: char) -> Result<String, Unsupported> {
        Ok(v.to_string())
    }
    fn serialize_str(self, v: &str) -> Result<String, Unsupported> {
        Ok(v.to_owned())
    }
    fn serialize_none(self) -> Result<String, Unsupported> {
        Err(KeyText::refuse("none"))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<String, Unsupported> {
        Err(KeyText::refuse("an option"))
    }
    fn serialize_unit(self) -> Result<String, Unsupported> {
        Err(KeyText::refuse("unit"))
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, Unsupported> {
        Err(KeyText::refuse("a unit struct"))
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String, Unsupported> {
        Ok(variant.to_owned())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String, Unsupported> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<String, Unsupported> {
        Err(KeyText::refuse("an enum variant with content"))
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        Err(KeyText::refuse("a sequence"))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Unsupported> {
        Err(KeyText::refuse("a tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        Err(KeyText::refuse("a tuple struct"))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        Err(KeyText::refuse("a tuple variant"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(KeyText::refuse("a map"))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Unsupported> {
        Err(KeyText::refuse("a struct"))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        Err(KeyText::refuse("a struct variant"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;
    use serde::Serialize;
    use serde_json::json;

    use super::*;
    use crate::canonical_text::tests::json_values;

    /// The `Value` route: serialize to a value, then write it.
    fn through_value<T: Serialize>(value: &T) -> String {
        let value = serde_json::to_value(value).expect("serializes to a value");
        String::from_utf8(canonical_json(&value)).expect("utf8")
    }

    fn straight<T: Serialize>(value: &T) -> String {
        let text = CanonicalJson::of(value).expect("written straight");
        String::from_utf8(text.into_bytes()).expect("utf8")
    }

    /// What the log stores for a domain event: the externally tagged value's content.
    fn content_through_value<T: Serialize>(value: &T) -> String {
        match serde_json::to_value(value).expect("serializes to a value") {
            Value::Object(map) if map.len() == 1 => {
                let content = map.into_iter().next().map(|(_, v)| v).unwrap_or_default();
                String::from_utf8(canonical_json(&content)).expect("utf8")
            }
            other => String::from_utf8(canonical_json(&other)).expect("utf8"),
        }
    }

    fn content_straight<T: Serialize>(value: &T) -> String {
        let text = CanonicalJson::of_variant(value).expect("written straight");
        String::from_utf8(text.into_bytes()).expect("utf8")
    }

    #[derive(Serialize)]
    struct Address {
        zip: String,
        city: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        line2: Option<String>,
        line1: String,
    }

    #[derive(Serialize)]
    enum Kind {
        Plain,
        Wrapped(u32),
        Pair(i8, String),
        Shaped { z: bool, a: Option<u8> },
    }

    #[derive(Serialize)]
    struct Flat {
        b: u8,
        #[serde(flatten)]
        rest: BTreeMap<String, u8>,
    }

    #[derive(Serialize)]
    enum Event {
        Started {
            when: chrono::DateTime<chrono::Utc>,
            id: uuid::Uuid,
            address: Box<Address>,
            kinds: Vec<Kind>,
            by_number: HashMap<u32, String>,
            by_name: BTreeMap<String, i64>,
            ratio: f64,
            small: f32,
            nothing: Option<String>,
            bytes: serde_bytes_like::Bytes,
            initial: char,
            unit: (),
            wide: i128,
        },
        Noted(String),
        Moved(u8, u8),
        Ended,
    }

    /// `&[u8]` serialized as bytes (serde's `Vec<u8>` is a sequence).
    mod serde_bytes_like {
        pub struct Bytes(pub Vec<u8>);
        impl serde::Serialize for Bytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
    }

    fn started() -> Event {
        Event::Started {
            when: chrono::DateTime::from_timestamp(1_700_000_000, 123_456_000).expect("valid"),
            id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00ab),
            address: Box::new(Address {
                zip: "10115".into(),
                city: "Berlin \"Mitte\"\n\u{e9}\u{1F600}".into(),
                line2: None,
                line1: "1 Load Street".into(),
            }),
            kinds: vec![
                Kind::Plain,
                Kind::Wrapped(7),
                Kind::Pair(-3, "x".into()),
                Kind::Shaped { z: true, a: None },
            ],
            by_number: (0..12).map(|i| (i * 7, format!("n{i}"))).collect(),
            by_name: [("b", 1), ("a\"", 2), ("a#", 3), ("", -4), ("\u{e9}", 5)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            ratio: -0.0,
            small: 0.1,
            nothing: None,
            bytes: serde_bytes_like::Bytes(vec![0, 1, 255]),
            initial: '\u{1}',
            unit: (),
            wide: -5,
        }
    }

    #[test]
    fn a_domain_event_is_written_as_its_value_would_be() {
        let events = [
            started(),
            Event::Noted("n".into()),
            Event::Moved(1, 2),
            Event::Ended,
        ];
        for event in &events {
            assert_eq!(content_straight(event), content_through_value(event));
            assert_eq!(straight(event), through_value(event));
        }
        // Keys sort by their bytes, not by their escaped text: `"` (0x22) comes
        // before `#` (0x23), though its escape starts with `\` (0x5c).
        assert!(straight(&events[0]).contains(r##""by_name":{"":-4,"a\"":2,"a#":3,"b":1,"é":5}"##));
        assert!(content_straight(&events[3]) == r#""Ended""#);
    }

    #[test]
    fn floats_are_written_as_a_value_holds_them() {
        for f in [
            0.0,
            -0.0,
            1.0,
            -2.5,
            1e300,
            5e-324,
            f64::NAN,
            f64::INFINITY,
            0.1 + 0.2,
        ] {
            assert_eq!(straight(&f), through_value(&f), "{f}");
            assert_eq!(straight(&vec![f]), through_value(&vec![f]), "{f}");
        }
        assert_eq!(straight(&-0.0f64), "0.0");
        assert_eq!(straight(&0.1f32), through_value(&0.1f32));
    }

    #[test]
    fn a_flattened_map_is_merged_in_key_order() {
        let flat = Flat {
            b: 1,
            rest: [("c".to_owned(), 3), ("a".to_owned(), 2)]
                .into_iter()
                .collect(),
        };
        assert_eq!(straight(&flat), r#"{"a":2,"b":1,"c":3}"#);
        assert_eq!(straight(&flat), through_value(&flat));
    }

    #[test]
    fn what_the_value_route_decides_differently_is_refused() {
        // A key repeated through a flattened map.
        let repeated = Flat {
            b: 1,
            rest: [("b".to_owned(), 2)].into_iter().collect(),
        };
        assert!(CanonicalJson::of(&repeated).is_err());
        // Beyond 64 bits, and a key that is not text.
        assert!(CanonicalJson::of(&(u128::from(u64::MAX) + 1)).is_err());
        assert!(CanonicalJson::of(&u128::from(u64::MAX)).is_ok());
        #[derive(Serialize)]
        struct FloatKeyed(#[serde(serialize_with = "float_keyed")] ());
        fn float_keyed<S: serde::Serializer>(_: &(), s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry(&1.5f64, &1)?;
            map.end()
        }
        assert!(CanonicalJson::of(&FloatKeyed(())).is_err());
        // Only an enum variant's content was asked for.
        assert!(CanonicalJson::of_variant(&json!({"a": 1})).is_err());
        assert!(CanonicalJson::of_variant(&7u8).is_err());
        assert!(CanonicalJson::of_variant(&Address {
            zip: String::new(),
            city: String::new(),
            line2: None,
            line1: String::new(),
        })
        .is_err());
    }

    #[test]
    fn nul_characters_are_noticed_in_strings_and_keys() {
        assert!(!CanonicalJson::of(&json!({"a": "b"}))
            .expect("writes")
            .has_nul());
        assert!(CanonicalJson::of(&json!({"a": "b\u{0}"}))
            .expect("writes")
            .has_nul());
        assert!(CanonicalJson::of(&json!({"a\u{0}": 1}))
            .expect("writes")
            .has_nul());
        assert!(CanonicalJson::of(&'\u{0}').expect("writes").has_nul());
        // An escaped backslash followed by `u0000` is no NUL.
        assert!(!CanonicalJson::of(&"\\u0000").expect("writes").has_nul());
    }

    #[test]
    fn the_text_parses_back_to_the_value() {
        let value = json!({"b": [1, -2, 2.5, null, true], "a": {"z": "\u{e9}", "y": {}}});
        let text = CanonicalJson::of(&value).expect("writes");
        assert_eq!(text.to_value(), value);
        assert_eq!(text, CanonicalJson::from_value(&value));
    }

    proptest! {
        #[test]
        fn any_json_value_is_written_as_canonical_json_writes_it(value in json_values()) {
            let text = CanonicalJson::of(&value).expect("a value always writes");
            let expected = canonical_json(&value);
            prop_assert_eq!(
                String::from_utf8_lossy(text.as_bytes()),
                String::from_utf8_lossy(&expected)
            );
            prop_assert_eq!(text.has_nul(), !crate::prepare::json_strings_are_storable(&value));
        }
    }
}
