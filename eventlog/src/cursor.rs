//! Positions in the global order of the log.
//!
//! On PostgreSQL an identity column alone cannot order events for a reader: positions are
//! taken when a row is inserted, but transactions commit in another order, so a reader that
//! has seen position 9 may later find 8 committed. Events are therefore ordered by
//! `(transaction_id, global_position)` and read only below the oldest transaction still
//! running (see [`crate::store`]). On SQLite there is a single writer, so the transaction id
//! is always 0 and the position alone is the commit order.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The position of an event in the log's global order. Ordered lexicographically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor {
    /// The PostgreSQL transaction id (`xid8`) that wrote the event; 0 on SQLite.
    pub transaction_id: i64,
    /// The event's `global_position`.
    pub position: i64,
}

impl Cursor {
    /// The cursor before the first event.
    pub const START: Cursor = Cursor {
        transaction_id: 0,
        position: 0,
    };

    pub fn new(transaction_id: i64, position: i64) -> Self {
        Self {
            transaction_id,
            position,
        }
    }
}

/// Why a cursor string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cursor")]
pub struct CursorParseError;

/// Cursors travel as opaque strings (`x-event-position`, `Last-Event-ID`, `after=`): 16 bytes
/// (transaction id and position, big-endian) in URL-safe base64. Clients compare them for
/// equality only; the gateway compares them by order.
impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.transaction_id.to_be_bytes());
        bytes[8..].copy_from_slice(&self.position.to_be_bytes());
        f.write_str(&URL_SAFE_NO_PAD.encode(bytes))
    }
}

impl FromStr for Cursor {
    type Err = CursorParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 22 {
            return Err(CursorParseError);
        }
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| CursorParseError)?;
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| CursorParseError)?;
        let transaction_id = i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let position = i64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
        if transaction_id < 0 || position < 0 {
            return Err(CursorParseError);
        }
        Ok(Self::new(transaction_id, position))
    }
}
