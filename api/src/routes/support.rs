//! What the handlers share: pages of lists, and read-your-writes waits with the lag header.

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use projections::progress::{self, Freshness};

use app::Error as AppError;

use crate::error::ApiError;
use crate::extract::{Consistency, PROJECTION_LAG_HEADER};
use crate::state::AppState;

/// A page request of a list route.
pub struct Page {
    pub limit: u32,
    /// The id after which the page starts.
    pub after: Option<String>,
}

/// Largest page of a list.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Page size when `limit` is not given.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

impl Page {
    /// Validates `limit` (1 to 500, default 50) and decodes `cursor`.
    pub fn parse(limit: Option<u32>, cursor: Option<&str>) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(AppError::InvalidParameter {
                name: "limit",
                reason: format!("must be between 1 and {MAX_PAGE_SIZE}"),
            }
            .into());
        }
        let after = cursor
            .map(|cursor| {
                URL_SAFE_NO_PAD
                    .decode(cursor)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or(AppError::InvalidParameter {
                        name: "cursor",
                        reason: "not a cursor returned by the gateway".into(),
                    })
            })
            .transpose()?;
        Ok(Self { limit, after })
    }
}

/// Trims a page fetched with `limit + 1` rows and returns the next page's cursor, if any.
pub fn page_cursor<T>(rows: &mut Vec<T>, limit: u32, id: impl Fn(&T) -> &str) -> Option<String> {
    if rows.len() <= limit as usize {
        return None;
    }
    rows.truncate(limit as usize);
    rows.last()
        .map(|last| URL_SAFE_NO_PAD.encode(id(last).as_bytes()))
}

/// Waits for the read model when the request asks for a position; returns the lag header to
/// send when the data is stale.
pub async fn await_consistency(
    state: &AppState,
    consistency: Consistency,
    projector: &str,
) -> Result<Option<HeaderValue>, ApiError> {
    let Some(target) = consistency.min_position else {
        return Ok(None);
    };
    let freshness = progress::wait_until(
        &state.log,
        &state.progress,
        projector,
        target,
        state.settings.consistency_wait(),
    )
    .await?;
    match freshness {
        Freshness::Fresh => Ok(None),
        Freshness::Stale { events_behind } if consistency.strict => {
            Err(AppError::ProjectionStale { events_behind }.into())
        }
        Freshness::Stale { events_behind } => Ok(Some(HeaderValue::from(events_behind))),
    }
}

pub fn with_lag(mut response: Response, lag: Option<HeaderValue>) -> Response {
    if let Some(lag) = lag {
        response
            .headers_mut()
            .insert(HeaderName::from_static(PROJECTION_LAG_HEADER), lag);
    }
    response
}
