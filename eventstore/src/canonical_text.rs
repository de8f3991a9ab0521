//! Canonical JSON ([`crate::hash`]) written straight from JSON text, such as the text
//! PostgreSQL returns for a `json` or `jsonb` value, without building a
//! `serde_json::Value`.
//!
//! Verifying the log recomputes the canonical form of every stored event, and parsing
//! each into a tree of values only to write it back costs more than the hashing. This
//! writer copies the text's tokens, reordering object members by key, but only where
//! the copy is byte for byte what [`crate::hash::canonical_json`] writes for the parsed
//! value: integers that fit in 64 bits (as `serde_json` parses them), strings whose
//! escapes are the ones `serde_json` writes, keys without escapes, no repeated key,
//! nesting up to [`TEXT_DEPTH_MAX`]. On anything else (a fraction or exponent, `-0`,
//! `\/`, `\u00e9`, a surrogate pair, malformed text) it returns `None` and the caller
//! parses the value the slow way, so the result never depends on which way was taken.

/// Deepest nesting of objects and arrays copied; deeper text takes the slow way (well
/// inside `serde_json`'s own limit of 128, so the two ways agree on what parses).
pub(crate) const TEXT_DEPTH_MAX: usize = 64;

/// One member of an object being copied: its key in the input (without the quotes,
/// free of escapes) and its value already written, as offsets.
struct Member {
    key_start: usize,
    key_end: usize,
    value_start: usize,
    value_end: usize,
}

/// Reusable buffers for [`CanonicalWriter::write`]: one per thread, so that copying an
/// event allocates nothing once the buffers have grown to the largest event.
#[derive(Default)]
pub(crate) struct CanonicalWriter {
    /// Members of the objects open at the current nesting, innermost last.
    members: Vec<Member>,
    /// An object's values in input order while they are written back sorted.
    scratch: Vec<u8>,
}

/// What an object's top-level members must satisfy for the fast copy to stand; the
/// key and the member's value as written.
pub(crate) type MemberCheck = fn(key: &[u8], value: &[u8]) -> bool;

impl CanonicalWriter {
    /// Appends the canonical form of the JSON `text` to `out`, or returns `None` (with
    /// `out` as it was) when the text needs the slow way.
    pub(crate) fn write(&mut self, text: &[u8], out: &mut Vec<u8>) -> Option<()> {
        self.write_checked(text, None, out)
    }

    /// [`Self::write`] for a text that must be an object whose every member passes
    /// `check` (`None` otherwise).
    pub(crate) fn write_object(
        &mut self,
        text: &[u8],
        check: MemberCheck,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        self.write_checked(text, Some(check), out)
    }

    fn write_checked(
        &mut self,
        text: &[u8],
        check: Option<MemberCheck>,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        let start = out.len();
        self.members.clear();
        let copied = std::str::from_utf8(text).ok().and_then(|_| {
            let mut copy = TextCopy {
                text,
                at: 0,
                out: &mut *out,
                members: &mut self.members,
                scratch: &mut self.scratch,
                check,
            };
            copy.skip_white_space();
            if check.is_some() && copy.peek() != Some(b'{') {
                return None;
            }
            copy.value(0)?;
            copy.skip_white_space();
            (copy.at == text.len()).then_some(())
        });
        if copied.is_none() {
            out.truncate(start);
        }
        copied
    }
}

struct TextCopy<'t, 'b> {
    text: &'t [u8],
    at: usize,
    out: &'b mut Vec<u8>,
    members: &'b mut Vec<Member>,
    scratch: &'b mut Vec<u8>,
    check: Option<MemberCheck>,
}

impl TextCopy<'_, '_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_white_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, literal: &[u8]) -> Option<()> {
        let end = self.at + literal.len();
        (self.text.get(self.at..end)? == literal).then(|| {
            self.at = end;
            self.out.extend_from_slice(literal);
        })
    }

    /// One value at nesting `depth` (the number of objects and arrays around it).
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => {
                let start = self.at;
                self.string(true)?;
                self.out.extend_from_slice(&self.text[start..self.at]);
                Some(())
            }
            b't' => self.expect(b"true"),
            b'f' => self.expect(b"false"),
            b'n' => self.expect(b"null"),
            b'-' | b'0'..=b'9' => self.integer(),
            _ => None,
        }
    }

    /// Skips a string from its opening quote to past its closing one. Escapes are
    /// allowed (when `escapes`) only in the form `serde_json` writes them, so the text
    /// between the quotes is already what it would write.
    fn string(&mut self, escapes: bool) -> Option<()> {
        self.at += 1;
        loop {
            match *self.text.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' if escapes => {
                    let escaped = *self.text.get(self.at + 1)?;
                    self.at += match escaped {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' => {
                            // Only control characters without a short escape, in
                            // lower-case hex: `\u0000`..`\u001f`.
                            let hex = self.text.get(self.at + 2..self.at + 6)?;
                            let low = match hex[3] {
                                d @ b'0'..=b'9' => d - b'0',
                                h @ b'a'..=b'f' => h - b'a' + 10,
                                _ => return None,
                            };
                            let code = match hex[..3] {
                                [b'0', b'0', b'0'] => low,
                                [b'0', b'0', b'1'] => 16 + low,
                                _ => return None,
                            };
                            if matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                                return None;
                            }
                            6
                        }
                        _ => return None,
                    };
                }
                // A raw control character (or, in a key, any escape) is not copied.
                0x00..=0x1f | b'\\' => return None,
                _ => self.at += 1,
            }
        }
    }

    /// An integer as `serde_json` keeps it: a `u64`, or a negative `i64` (its `-0`
    /// and anything wider are floats there, written differently).
    fn integer(&mut self) -> Option<()> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let first = self.at;
        let mut magnitude: u64 = 0;
        while let Some(digit @ b'0'..=b'9') = self.peek() {
            magnitude = magnitude
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - first;
        if digits == 0 || (digits > 1 && self.text[first] == b'0') {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return None;
        }
        if negative && (magnitude == 0 || magnitude > 1 << 63) {
            return None;
        }
        self.out.extend_from_slice(&self.text[start..self.at]);
        Some(())
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > TEXT_DEPTH_MAX {
            return None;
        }
        self.at += 1;
        self.out.push(b'[');
        self.skip_white_space();
        if self.peek() == Some(b']') {
            self.at += 1;
            self.out.push(b']');
            return Some(());
        }
        loop {
            self.skip_white_space();
            self.value(depth)?;
            self.skip_white_space();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.out.push(b',');
                }
                b']' => {
                    self.at += 1;
                    self.out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Writes the members' values in input order first, then moves them into key
    /// order behind their keys.
    fn object(&mut self, depth: usize) -> Option<()> {
        if depth > TEXT_DEPTH_MAX {
            return None;
        }
        self.at += 1;
        let first = self.members.len();
        let values_start = self.out.len();
        self.skip_white_space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            self.out.extend_from_slice(b"{}");
            return Some(());
        }
        loop {
            self.skip_white_space();
            if self.peek()? != b'"' {
                return None;
            }
            let key_start = self.at + 1;
            self.string(false)?;
            let key_end = self.at - 1;
            self.skip_white_space();
            if self.peek()? != b':' {
                return None;
            }
            self.at += 1;
            self.skip_white_space();
            let value_start = self.out.len();
            self.value(depth)?;
            self.members.push(Member {
                key_start,
                key_end,
                value_start,
                value_end: self.out.len(),
            });
            self.skip_white_space();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    break;
                }
                _ => return None,
            }
        }

        let text = self.text;
        let key = |m: &Member| &text[m.key_start..m.key_end];
        let members = &mut self.members[first..];
        if !members.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
            members.sort_unstable_by(|a, b| key(a).cmp(key(b)));
            // `serde_json` keeps the last of repeated keys; leave that to it.
            if members.windows(2).any(|w| key(&w[0]) == key(&w[1])) {
                return None;
            }
        }
        if depth == 1 {
            if let Some(check) = self.check {
                let out = &*self.out;
                if !members
                    .iter()
                    .all(|m| check(key(m), &out[m.value_start..m.value_end]))
                {
                    return None;
                }
            }
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.out[values_start..]);
        self.out.truncate(values_start);
        self.out.push(b'{');
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.push(b'"');
            self.out.extend_from_slice(key(m));
            self.out.extend_from_slice(b"\":");
            self.out.extend_from_slice(
                &self.scratch[m.value_start - values_start..m.value_end - values_start],
            );
        }
        self.out.push(b'}');
        self.members.truncate(first);
        Some(())
    }
}

/// Whether a member of an event's stored metadata reads back into
/// [`crate::types::Metadata`] unchanged, so that the metadata's canonical form is the
/// text's: a known field, ids as lower-case hyphenated UUIDs (the form `Uuid` writes),
/// `actor` a string, `custom` anything but null (which `Metadata` leaves out).
pub(crate) fn metadata_member(key: &[u8], value: &[u8]) -> bool {
    match key {
        b"command_id" | b"correlation_id" | b"causation_id" => is_uuid_string(value),
        b"actor" => value.first() == Some(&b'"'),
        b"custom" => value != b"null",
        _ => false,
    }
}

/// `"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"` in lower-case hex, quotes included.
fn is_uuid_string(value: &[u8]) -> bool {
    let [b'"', inner @ .., b'"'] = value else {
        return false;
    };
    inner.len() == 36
        && inner.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hash::{canonical_json, metadata_value};
    use crate::types::Metadata;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// The slow way: parse, then write the value.
    fn parsed(text: &str) -> Option<Vec<u8>> {
        serde_json::from_str::<Value>(text)
            .ok()
            .map(|v| canonical_json(&v))
    }

    fn copied(text: &str) -> Option<Vec<u8>> {
        let mut out = b"kept".to_vec();
        let result = CanonicalWriter::default().write(text.as_bytes(), &mut out);
        assert!(out.starts_with(b"kept"), "the buffer's head is left alone");
        match result {
            Some(()) => Some(out[4..].to_vec()),
            None => {
                assert_eq!(out, b"kept", "a refused text leaves nothing behind");
                None
            }
        }
    }

    fn copied_metadata(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        CanonicalWriter::default()
            .write_object(text.as_bytes(), metadata_member, &mut out)
            .map(|()| out)
    }

    /// How PostgreSQL prints a `jsonb` value: keys by length, then bytes; a space
    /// after every `:` and `,`; strings escaped as `serde_json` does (for the
    /// characters in these tests, PostgreSQL's escaping is the same).
    fn jsonb_text(value: &Value) -> String {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_by(|a, b| (a.len(), a.as_bytes()).cmp(&(b.len(), b.as_bytes())));
                let members: Vec<String> = keys
                    .into_iter()
                    .map(|k| format!("{}: {}", Value::from(k.as_str()), jsonb_text(&map[k])))
                    .collect();
                format!("{{{}}}", members.join(", "))
            }
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(jsonb_text).collect();
                format!("[{}]", items.join(", "))
            }
            other => other.to_string(),
        }
    }

    #[test]
    fn stored_event_text_is_copied_in_canonical_form() {
        let text = r#"{"i": 7, "sku": "SHOE-42", "email": "a@example.com", "lines": [{"qty": 2, "price": -1999}], "gift": false, "note": null}"#;
        assert_eq!(
            copied(text).map(String::from_utf8),
            Some(Ok(
                r#"{"email":"a@example.com","gift":false,"i":7,"lines":[{"price":-1999,"qty":2}],"note":null,"sku":"SHOE-42"}"#
                    .to_string()
            ))
        );
        assert_eq!(copied(text), parsed(text));
    }

    #[test]
    fn text_the_copy_cannot_reproduce_is_left_to_the_parser() {
        for text in [
            r#"{"price": 19.99}"#,
            r#"[1e3]"#,
            r#"-0"#,
            r#"18446744073709551616"#,
            r#"-9223372036854775809"#,
            r#""a\/b""#,
            r#""caf\u00e9""#,
            r#""\ud83d\ude00""#,
            r#""\u000A""#,
            r#""\u001F""#,
            r#""\u007f""#,
            r#"{"a\nb": 1}"#,
            r#"{"a": 1, "a": 2}"#,
            r#"{"a": 1,}"#,
            r#"[1 2]"#,
            r#"01"#,
            r#"{"a": tru}"#,
            "\"tab\there\"",
            r#"{} {}"#,
            "",
        ] {
            assert_eq!(copied(text), None, "{text}");
        }
        let deep = "[".repeat(TEXT_DEPTH_MAX + 1) + &"]".repeat(TEXT_DEPTH_MAX + 1);
        assert_eq!(copied(&deep), None);
        let deepest = "[".repeat(TEXT_DEPTH_MAX) + &"]".repeat(TEXT_DEPTH_MAX);
        assert_eq!(copied(&deepest), parsed(&deepest));
    }

    #[test]
    fn escapes_and_extremes_serde_json_writes_the_same_way_are_copied() {
        for text in [
            r#""say \"hi\"\\ \b\f\n\r\t \u0000 \u001f""#,
            "\"caf\u{e9} \u{2028} \u{1F600}\"",
            r#"[18446744073709551615, -9223372036854775808, 0, -1]"#,
            r#"{"": {}, "b": [], "a": [[]]}"#,
            " \t\n{ \"z\" : true ,\"y\":null } \r\n",
        ] {
            let fast = copied(text);
            assert!(fast.is_some(), "{text}");
            assert_eq!(fast, parsed(text), "{text}");
        }
    }

    #[test]
    fn metadata_is_copied_only_when_it_reads_back_unchanged() {
        let id = "0192f0c4-5b6e-7a8b-9c0d-1e2f3a4b5c6d";
        let slow = |text: &str| {
            serde_json::from_str::<Metadata>(text)
                .ok()
                .map(|m| canonical_json(&metadata_value(&m)))
        };
        let copied_fast = format!(
            r#"{{"actor": "customer:42", "custom": {{"b": 1, "a": [2]}}, "command_id": "{id}", "causation_id": "{id}", "correlation_id": "{id}"}}"#
        );
        for text in [copied_fast.as_str(), "{}"] {
            assert!(copied_metadata(text).is_some(), "{text}");
            assert_eq!(copied_metadata(text), slow(text), "{text}");
        }
        for text in [
            format!(r#"{{"command_id": "{}"}}"#, id.to_uppercase()),
            format!(r#"{{"command_id": "{}"}}"#, id.replace('-', "")),
            r#"{"actor": null}"#.to_string(),
            r#"{"custom": null}"#.to_string(),
            r#"{"actor": 42}"#.to_string(),
            r#"{"unknown": 1}"#.to_string(),
            r#"[null, null, null, "x"]"#.to_string(),
        ] {
            assert_eq!(copied_metadata(&text), None, "{text}");
        }
    }

    pub(crate) fn json_values() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-z\"\\\\/\u{0}-\u{1f}\u{e9}\u{1F600} ]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map("[a-zA-Z_\u{e9}\n]{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// No floats and no keys that need escapes: what PostgreSQL's text of the
    /// engine's own events holds.
    fn copyable(value: &Value) -> bool {
        match value {
            Value::Number(n) => n.is_i64() || n.is_u64(),
            Value::Array(items) => items.iter().all(copyable),
            Value::Object(map) => map.iter().all(|(k, v)| {
                !k.contains(|c: char| c < ' ' || c == '"' || c == '\\') && copyable(v)
            }),
            _ => true,
        }
    }

    proptest! {
        #[test]
        fn the_copy_agrees_with_the_parser_whenever_it_answers(value in json_values()) {
            for text in [jsonb_text(&value), value.to_string(), format!("{value:#}")] {
                if let Some(fast) = copied(&text) {
                    prop_assert_eq!(Some(fast), parsed(&text), "{}", text);
                }
            }
        }

        #[test]
        fn integers_strings_and_literals_always_take_the_copy(
            value in json_values().prop_filter("floats or escaped keys", copyable)
        ) {
            let text = jsonb_text(&value);
            prop_assert_eq!(copied(&text), Some(canonical_json(&value)), "{}", text);
        }
    }
}
