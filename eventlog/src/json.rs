//! JSON columns read back without serde_json's nesting limit.
//!
//! serde_json refuses documents nested more than 128 levels deep, and sqlx's `Json<T>` decodes
//! with that limit. A row the gateway wrote must always read back, whatever a client put in it:
//! one unreadable event would stop every reader of the log. [`DeepJson`] decodes a `JSONB`
//! (PostgreSQL) or `TEXT` (SQLite) column with the limit lifted, after checking that the
//! document stays within [`MAX_READ_DEPTH`] levels, which bounds the stack the parse (and the
//! drop of the value) can take. Nothing the gateway accepts comes near it: request bodies are
//! refused beyond 64 levels, and earlier versions refused them beyond 128.

use serde_json::Value;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueFormat, PgValueRef, Postgres};
use sqlx::sqlite::{Sqlite, SqliteTypeInfo, SqliteValueRef};
use sqlx::types::Json;
use sqlx::{Decode, Type, TypeInfo, ValueRef};

/// The deepest document [`DeepJson`] reads. Each level costs a few hundred bytes of stack in
/// the parse; a thousand stay far below the two mebibytes of a runtime thread.
pub const MAX_READ_DEPTH: usize = 1_000;

/// A JSON column decoded without serde_json's recursion limit (see the module's docs).
#[derive(Debug, Clone, PartialEq)]
pub struct DeepJson(pub Value);

/// How deeply `bytes`, a JSON text, nests objects and arrays (0 for a scalar). Brackets in
/// strings do not count. Does not validate the text: a parser does that afterwards.
pub fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // A string ends at the first quote not escaped: jump from one quote or
                // backslash to the next instead of looking at every byte of it.
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &bytes[i.min(bytes.len())..]) {
                        None => return deepest,
                        Some(at) if bytes[i + at] == b'\\' => i += at + 2,
                        Some(at) => {
                            i += at;
                            break;
                        }
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// Whether a JSON text has `\u0000` in a string (a raw NUL byte is not JSON at all). An
/// escaped backslash followed by `u0000` (`\\u0000`, the six characters) is not one.
pub fn has_nul_escape(bytes: &[u8]) -> bool {
    // The searcher is built once (building one costs as much as searching a short body).
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\\u0000"));
    FINDER.find_iter(bytes).any(|at| {
        // The backslash at `at` starts an escape when the backslashes that end there are odd
        // in number (the others escape one another).
        let run = bytes[..=at]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        run % 2 == 1
    })
}

/// Parses a JSON text of at most [`MAX_READ_DEPTH`] levels, however deep beyond serde_json's
/// own limit of 128.
pub fn parse_deep(bytes: &[u8]) -> Result<Value, BoxDynError> {
    parse_within_depth(bytes, || serde_json::de::SliceRead::new(bytes))
}

/// [`parse_deep`] of a text already known to be UTF-8 (a SQLite `TEXT` column, checked when it
/// was read as a `str`): its strings are not checked again.
pub fn parse_deep_str(text: &str) -> Result<Value, BoxDynError> {
    parse_within_depth(text.as_bytes(), || serde_json::de::StrRead::new(text))
}

/// Parses with serde_json's own limit first, which every document of ordinary depth passes in
/// one pass; only a document it refuses is measured ([`nesting_depth`]) and, within
/// [`MAX_READ_DEPTH`], parsed again without the limit.
fn parse_within_depth<'a, R: serde_json::de::Read<'a>>(
    bytes: &[u8],
    read: impl Fn() -> R,
) -> Result<Value, BoxDynError> {
    let parse = |unlimited: bool| -> Result<Value, serde_json::Error> {
        let mut deserializer = serde_json::Deserializer::new(read());
        if unlimited {
            deserializer.disable_recursion_limit();
        }
        let value = serde::Deserialize::deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(value)
    };
    let error = match parse(false) {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    let depth = nesting_depth(bytes);
    if depth > MAX_READ_DEPTH {
        return Err(
            format!("a JSON document nested {depth} levels deep (most: {MAX_READ_DEPTH})").into(),
        );
    }
    if depth < SERDE_JSON_DEPTH {
        // Refused for another reason than its depth.
        return Err(error.into());
    }
    Ok(parse(true)?)
}

/// The nesting serde_json refuses by default (its recursion limit, 128), less a margin: a
/// document at least this deep that it refused is parsed again without the limit.
const SERDE_JSON_DEPTH: usize = 120;

impl From<DeepJson> for Value {
    fn from(json: DeepJson) -> Value {
        json.0
    }
}

impl Type<Postgres> for DeepJson {
    fn type_info() -> PgTypeInfo {
        <Json<Value> as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <Json<Value> as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for DeepJson {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let binary_jsonb =
            value.format() == PgValueFormat::Binary && value.type_info().name() == "JSONB";
        let mut bytes = value.as_bytes()?;
        if binary_jsonb {
            // JSONB's binary form is a version byte, then the text.
            match bytes.split_first() {
                Some((1, text)) => bytes = text,
                _ => return Err("unsupported JSONB format version".into()),
            }
        }
        parse_deep(bytes).map(Self)
    }
}

impl Type<Sqlite> for DeepJson {
    fn type_info() -> SqliteTypeInfo {
        <Json<Value> as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <Json<Value> as Type<Sqlite>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Sqlite> for DeepJson {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        parse_deep_str(text).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    }

    #[test]
    fn depth_counts_containers_outside_strings() {
        assert_eq!(nesting_depth(b"1"), 0);
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(nesting_depth(br#"{"a":"[[[{{{\"]]]"}"#), 1);
        assert_eq!(nesting_depth(nested(200).as_bytes()), 200);
        // Escaped backslashes and quotes inside strings, and texts cut off inside a string
        // or just after a backslash.
        assert_eq!(nesting_depth(br#"{"a":"\\","b":[["\\\"[["]]}"#), 3);
        assert_eq!(nesting_depth(br#"[{"a":"x\"#), 2);
        assert_eq!(nesting_depth(br#"[{"a":"x\""#), 2);
        assert_eq!(nesting_depth(br#"[["#), 2);
        assert_eq!(nesting_depth(b""), 0);
    }

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not_one() {
        assert!(has_nul_escape(br#"{"text":"a\u0000b"}"#));
        assert!(has_nul_escape(br#"{"a\u0000b":1}"#));
        assert!(has_nul_escape(br#"{"t":"\\\u0000"}"#));
        assert!(!has_nul_escape(br#"{"text":"a\\u0000b"}"#));
        assert!(!has_nul_escape(br#"{"text":"u0000"}"#));
        assert!(!has_nul_escape(br#"{"text":"\u00001"}"#.split_at(12).0));
        assert!(!has_nul_escape(b""));
    }

    #[test]
    fn documents_deeper_than_serde_json_allows_read_back() {
        assert!(serde_json::from_str::<Value>(&nested(200)).is_err());
        let value = parse_deep(nested(200).as_bytes()).unwrap();
        assert_eq!(serde_json::to_string(&value).unwrap(), nested(200));
        assert_eq!(parse_deep(nested(3).as_bytes()).unwrap()["a"]["a"]["a"], 1);
        assert_eq!(parse_deep_str(&nested(200)).unwrap(), value);
        // On either side of serde_json's own limit, where the first parse gives way.
        for depth in 115..=135 {
            assert_eq!(
                parse_deep(nested(depth).as_bytes()).unwrap(),
                parse_deep_str(&nested(depth)).unwrap()
            );
        }
        assert_eq!(parse_deep_str("{\"é\": \"\\u00e9\"}").unwrap()["é"], "é");
    }

    #[test]
    fn documents_beyond_the_read_depth_are_an_error_not_a_crash() {
        assert!(parse_deep(nested(MAX_READ_DEPTH + 1).as_bytes()).is_err());
        assert!(parse_deep(b"{\"a\": 1} trailing").is_err());
        assert!(parse_deep_str(&nested(MAX_READ_DEPTH + 1)).is_err());
        assert!(parse_deep_str("{\"a\": 1} trailing").is_err());
    }
}
