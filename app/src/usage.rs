//! The usage time series of `/v1/usage/query`, in the manner of OpenMeter's meter query:
//! windows aligned in an IANA time zone, built from the `usage` projection's hourly (or daily)
//! totals, grouped and filtered by dimension.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use eventlog::Db;
use projections::usage::{self as read_model, Dimension, Selection, Sums};

use crate::error::Error;

/// Longest range of a query, in days.
pub const MAX_QUERY_DAYS: i64 = 400;
/// Most windows one query may have.
pub const MAX_WINDOWS: usize = 2000;

/// Window sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSize {
    Hour,
    Day,
    Month,
}

impl WindowSize {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "HOUR" => Some(Self::Hour),
            "DAY" => Some(Self::Day),
            "MONTH" => Some(Self::Month),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Hour => "HOUR",
            Self::Day => "DAY",
            Self::Month => "MONTH",
        }
    }
}

/// What to query: `[from, to)` on whole UTC hours.
#[derive(Debug, Clone)]
pub struct SeriesQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// `None`: one window for the whole range.
    pub size: Option<WindowSize>,
    pub tz: Tz,
    pub group_by: Vec<Dimension>,
    pub filters: Vec<(Dimension, String)>,
}

/// One window of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub start: DateTime<Tz>,
    pub end: DateTime<Tz>,
    /// The group's values, in the order of [`SeriesQuery::group_by`].
    pub values: Vec<String>,
    pub sums: Sums,
    /// Distinct sessions with usage in the window and group.
    pub sessions: usize,
}

fn invalid(name: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidParameter {
        name,
        reason: reason.into(),
    }
}

/// The start of the window holding `at`, in `tz`.
fn window_floor(at: DateTime<Utc>, size: WindowSize, tz: Tz) -> DateTime<Tz> {
    let local = at.with_timezone(&tz);
    let naive = match size {
        WindowSize::Hour => local
            .date_naive()
            .and_hms_opt(local.hour(), 0, 0)
            .expect("a valid hour"),
        WindowSize::Day => local.date_naive().and_hms_opt(0, 0, 0).expect("midnight"),
        WindowSize::Month => NaiveDate::from_ymd_opt(local.year(), local.month(), 1)
            .expect("the first of the month")
            .and_hms_opt(0, 0, 0)
            .expect("midnight"),
    };
    resolve(naive, tz)
}

/// A local time as an instant: the earlier of two when the clocks went back, the first
/// instant after the gap when they went forward.
fn resolve(naive: chrono::NaiveDateTime, tz: Tz) -> DateTime<Tz> {
    let mut probe = naive;
    loop {
        if let Some(at) = tz.from_local_datetime(&probe).earliest() {
            return at;
        }
        probe += Duration::minutes(15);
    }
}

/// The start of the window after the one starting at `start`.
fn window_next(start: DateTime<Tz>, size: WindowSize, tz: Tz) -> DateTime<Tz> {
    match size {
        // Hours are physical: a day with a DST change has 23 or 25 of them.
        WindowSize::Hour => (start.with_timezone(&Utc) + Duration::hours(1)).with_timezone(&tz),
        WindowSize::Day => {
            let date = start.date_naive() + Duration::days(1);
            resolve(date.and_hms_opt(0, 0, 0).expect("midnight"), tz)
        }
        WindowSize::Month => {
            let date = start.date_naive();
            let (year, month) = if date.month() == 12 {
                (date.year() + 1, 1)
            } else {
                (date.year(), date.month() + 1)
            };
            let first = NaiveDate::from_ymd_opt(year, month, 1).expect("the first of a month");
            resolve(first.and_hms_opt(0, 0, 0).expect("midnight"), tz)
        }
    }
}

/// The windows' boundaries: aligned in the time zone, clipped to `[from, to)`, each on a
/// whole UTC hour (usage is aggregated by the UTC hour).
pub fn boundaries(query: &SeriesQuery) -> Result<Vec<DateTime<Utc>>, Error> {
    let SeriesQuery {
        from, to, size, tz, ..
    } = query;
    if to <= from {
        return Err(invalid("to", "must be after from"));
    }
    if *to - *from > Duration::days(MAX_QUERY_DAYS) {
        return Err(invalid(
            "to",
            format!("the range may be at most {MAX_QUERY_DAYS} days"),
        ));
    }
    let mut boundaries = vec![*from];
    if let Some(size) = *size {
        let mut next = window_next(window_floor(*from, size, *tz), size, *tz);
        while next.with_timezone(&Utc) < *to {
            let at = next.with_timezone(&Utc);
            if at.minute() != 0 || at.second() != 0 {
                return Err(invalid(
                    "windowTimeZone",
                    format!(
                        "windows in {tz} do not start on whole UTC hours; usage is aggregated by the UTC hour"
                    ),
                ));
            }
            boundaries.push(at);
            if boundaries.len() > MAX_WINDOWS {
                return Err(invalid(
                    "windowSize",
                    format!(
                        "more than {MAX_WINDOWS} windows; use a larger window or a shorter range"
                    ),
                ));
            }
            next = window_next(next, size, *tz);
        }
    }
    boundaries.push(*to);
    Ok(boundaries)
}

/// The tenant's usage series over the windows `boundaries` (from [`boundaries`]): only windows
/// with usage, in window then group order.
pub async fn series(
    db: &Db,
    tenant: &str,
    query: &SeriesQuery,
    boundaries: &[DateTime<Utc>],
) -> Result<Vec<Window>, Error> {
    let window_of = |at: DateTime<Utc>| boundaries.partition_point(|b| *b <= at) - 1;
    let selection = Selection {
        tenant_id: tenant,
        from: query.from,
        to: query.to,
        filters: &query.filters,
    };
    let mut windows: BTreeMap<(usize, Vec<String>), Sums> = BTreeMap::new();
    // Windows made of whole UTC days read the daily totals: 24 times fewer rows.
    let table = if boundaries.iter().all(|b| b.hour() == 0) {
        "usage_daily"
    } else {
        "usage_hourly"
    };
    for group in read_model::totals(db, table, &selection, &query.group_by, true).await? {
        let bucket = group.bucket.expect("grouped by bucket");
        windows
            .entry((window_of(bucket), group.values))
            .or_default()
            .merge(&group.sums);
    }
    let mut sessions: BTreeMap<(usize, Vec<String>), BTreeSet<String>> = BTreeMap::new();
    for (bucket, session, values) in
        read_model::session_hours(db, &selection, &query.group_by).await?
    {
        sessions
            .entry((window_of(bucket), values))
            .or_default()
            .insert(session);
    }
    Ok(windows
        .into_iter()
        .map(|((window, values), sums)| {
            let count = sessions
                .get(&(window, values.clone()))
                .map_or(0, BTreeSet::len);
            Window {
                start: boundaries[window].with_timezone(&query.tz),
                end: boundaries[window + 1].with_timezone(&query.tz),
                values,
                sums,
                sessions: count,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn query(from: &str, to: &str, size: Option<WindowSize>, tz: Tz) -> SeriesQuery {
        SeriesQuery {
            from: at(from),
            to: at(to),
            size,
            tz,
            group_by: Vec::new(),
            filters: Vec::new(),
        }
    }

    #[test]
    fn a_day_across_the_change_to_summer_time_lasts_23_hours() {
        let q = query(
            "2026-03-28T23:00:00Z",
            "2026-03-30T22:00:00Z",
            Some(WindowSize::Day),
            chrono_tz::Europe::Berlin,
        );
        let b = boundaries(&q).unwrap();
        assert_eq!(
            b,
            vec![
                at("2026-03-28T23:00:00Z"),
                at("2026-03-29T22:00:00Z"),
                at("2026-03-30T22:00:00Z")
            ]
        );
        assert_eq!(b[1] - b[0], Duration::hours(23));
    }

    #[test]
    fn windows_clip_to_the_range_and_months_follow_the_calendar() {
        let q = query(
            "2026-01-15T00:00:00Z",
            "2026-03-02T00:00:00Z",
            Some(WindowSize::Month),
            Tz::UTC,
        );
        assert_eq!(
            boundaries(&q).unwrap(),
            vec![
                at("2026-01-15T00:00:00Z"),
                at("2026-02-01T00:00:00Z"),
                at("2026-03-01T00:00:00Z"),
                at("2026-03-02T00:00:00Z")
            ]
        );
    }

    #[test]
    fn a_zone_off_the_hour_is_refused_for_windows_but_not_for_one_total() {
        let india = "Asia/Kolkata".parse::<Tz>().unwrap();
        let q = query(
            "2026-01-01T00:00:00Z",
            "2026-01-03T00:00:00Z",
            Some(WindowSize::Day),
            india,
        );
        assert!(matches!(
            boundaries(&q),
            Err(Error::InvalidParameter {
                name: "windowTimeZone",
                ..
            })
        ));
        let whole = query("2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z", None, india);
        assert_eq!(boundaries(&whole).unwrap().len(), 2);
    }

    #[test]
    fn ranges_are_bounded() {
        let backwards = query(
            "2026-01-02T00:00:00Z",
            "2026-01-01T00:00:00Z",
            None,
            Tz::UTC,
        );
        assert!(matches!(
            boundaries(&backwards),
            Err(Error::InvalidParameter { name: "to", .. })
        ));
        let hours = query(
            "2026-01-01T00:00:00Z",
            "2026-12-01T00:00:00Z",
            Some(WindowSize::Hour),
            Tz::UTC,
        );
        assert!(matches!(
            boundaries(&hours),
            Err(Error::InvalidParameter {
                name: "windowSize",
                ..
            })
        ));
    }
}
