//! Times in responses, written as `chrono` writes them (RFC 3339 in UTC with `Z`, and a
//! fraction of 3, 6 or 9 digits only when the time has one) without the formatting machinery:
//! a record's response carries two or three of them, and `chrono`'s serializer writes each
//! through a dozen formatter calls, each escaped on its own.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serializer;

/// Serializes `at` (for `#[serde(serialize_with = "app::timestamps::serialize")]`).
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buffer = [0u8; 32];
    match write(at, &mut buffer) {
        Some(text) => serializer.serialize_str(text),
        // Years outside 0..=9999 carry a sign; rare enough for chrono's own path.
        None => serde::Serialize::serialize(at, serializer),
    }
}

/// [`serialize`] for an optional time (`None` is `null`).
pub fn serialize_option<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, serializer),
        None => serializer.serialize_none(),
    }
}

/// `at` as text in `buffer`; `None` for a year outside 0..=9999.
fn write<'b>(at: &DateTime<Utc>, buffer: &'b mut [u8; 32]) -> Option<&'b str> {
    let year = at.year();
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut nano = at.nanosecond();
    let mut second = at.second();
    // A leap second is a nanosecond count past one second.
    if nano >= 1_000_000_000 {
        second += 1;
        nano -= 1_000_000_000;
    }
    let mut text = Text { buffer, length: 0 };
    text.digits(year as u32, 4);
    let parts = [
        (b'-', at.month()),
        (b'-', at.day()),
        (b'T', at.hour()),
        (b':', at.minute()),
        (b':', second),
    ];
    for (separator, value) in parts {
        text.byte(separator);
        text.digits(value, 2);
    }
    if nano != 0 {
        text.byte(b'.');
        if nano.is_multiple_of(1_000_000) {
            text.digits(nano / 1_000_000, 3);
        } else if nano.is_multiple_of(1_000) {
            text.digits(nano / 1_000, 6);
        } else {
            text.digits(nano, 9);
        }
    }
    text.byte(b'Z');
    let length = text.length;
    std::str::from_utf8(&buffer[..length]).ok()
}

/// ASCII written into a fixed buffer (large enough for any time this module writes).
struct Text<'b> {
    buffer: &'b mut [u8; 32],
    length: usize,
}

impl Text<'_> {
    fn byte(&mut self, byte: u8) {
        self.buffer[self.length] = byte;
        self.length += 1;
    }

    /// `value`'s last `count` decimal digits, zero-padded.
    fn digits(&mut self, value: u32, count: u32) {
        for place in (0..count).rev() {
            self.byte(b'0' + (value / 10u32.pow(place) % 10) as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};

    fn ours(at: &DateTime<Utc>) -> String {
        let mut out = Vec::new();
        serialize(at, &mut serde_json::Serializer::new(&mut out)).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_same_text_as_chrono_writes() {
        let mut times = vec![
            Utc.with_ymd_and_hms(2026, 12, 6, 1, 2, 3).unwrap(),
            Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 6, 15, 12, 0, 0).unwrap(),
            Utc::now(),
        ];
        for nanos in [
            1,
            10,
            999,
            1_000,
            120_000,
            999_999,
            1_000_000,
            7_000_000,
            123_456_789,
            999_999_999,
        ] {
            times.push(times[0] + chrono::Duration::nanoseconds(nanos));
        }
        // A leap second.
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        times.push(leap);
        for at in &times {
            assert_eq!(ours(at), serde_json::to_string(at).unwrap(), "{at:?}");
        }
        let mut out = Vec::new();
        serialize_option(&None, &mut serde_json::Serializer::new(&mut out)).unwrap();
        assert_eq!(out, b"null");
    }
}
