//! `/v1/usage/*`: usage and cost for analysts (role `analyst` or `admin`), from the `usage`
//! projection's pre-aggregated tables. Every endpoint answers JSON, or CSV for
//! `Accept: text/csv`.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use domain::provider::micros_to_usd;
use projections::usage::{self as read_model, Dimension, Selection, Sums};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use app::Error as AppError;

use crate::auth::{Auth, require};
use crate::error::{ApiError, ErrorEnvelope};
use crate::extract::Consistency;
use crate::routes::support::{await_consistency, with_lag};
use crate::state::AppState;
use app::providers::Usd;
use app::usage;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(usage_rollup))
        .routes(routes!(usage_events))
        .routes(routes!(usage_query))
}

/// Longest range of `/v1/usage/rollup`, in days (inclusive of both ends).
pub const MAX_ROLLUP_DAYS: i64 = 366;
/// Largest page of `/v1/usage/events`.
pub const MAX_EVENTS_PAGE: u32 = 1000;

fn invalid(name: &'static str, reason: impl Into<String>) -> ApiError {
    AppError::InvalidParameter {
        name,
        reason: reason.into(),
    }
    .into()
}

/// The query string as pairs, refusing any name not in `known` (a typo should not silently
/// widen a query).
fn parameters(
    pairs: Vec<(String, String)>,
    known: &[&'static str],
) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in pairs {
        let base = name.split('[').next().unwrap_or_default();
        let filter = base == "filter" && known.contains(&"filter");
        if !(filter || known.contains(&name.as_str())) {
            return Err(AppError::InvalidParameter {
                name: "query",
                reason: format!("unknown parameter '{name}'"),
            }
            .into());
        }
        map.entry(name).or_default().push(value);
    }
    Ok(map)
}

fn single<'a>(
    params: &'a BTreeMap<String, Vec<String>>,
    name: &'static str,
) -> Result<Option<&'a str>, ApiError> {
    match params.get(name).map(Vec::as_slice) {
        None => Ok(None),
        Some([value]) => Ok(Some(value.as_str())),
        Some(_) => Err(invalid(name, "given more than once")),
    }
}

fn date(name: &'static str, value: &str) -> Result<NaiveDate, ApiError> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| invalid(name, format!("'{value}' is not a date like 2026-01-31")))
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// `from`/`to` as inclusive dates and the UTC range `[from 00:00, to + 1 day 00:00)`.
fn date_range(
    from: Option<&str>,
    to: Option<&str>,
    max_days: Option<i64>,
) -> Result<(NaiveDate, NaiveDate, DateTime<Utc>, DateTime<Utc>), ApiError> {
    let from = date("from", from.ok_or_else(|| invalid("from", "is required"))?)?;
    let to = date("to", to.ok_or_else(|| invalid("to", "is required"))?)?;
    if to < from {
        return Err(invalid("to", "must not be before from"));
    }
    let days = (to - from).num_days() + 1;
    if let Some(max) = max_days
        && days > max
    {
        return Err(invalid(
            "to",
            format!("the range is {days} days; at most {max} are allowed"),
        ));
    }
    Ok((from, to, midnight(from), midnight(to) + Duration::days(1)))
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/csv"))
}

/// A CSV field, quoted when it needs to be (RFC 4180). Text that a spreadsheet would take
/// for a formula (starting with `=`, `+`, `-`, `@`, a tab or a carriage return, as OWASP
/// lists them) gets a leading `'`, so that an agent or model name never runs in an analyst's
/// spreadsheet; numbers are left alone.
fn csv_field(value: &str) -> String {
    let formula =
        value.starts_with(['=', '+', '-', '@', '\t', '\r']) && value.parse::<f64>().is_err();
    let value = if formula {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if formula || value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

#[cfg(test)]
mod csv_tests {
    use super::csv_field;

    #[test]
    fn formulas_are_neutralised_and_numbers_kept() {
        assert_eq!(csv_field("vendorA"), "vendorA");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(
            csv_field("+1+cmd|' /C calc'!A0"),
            "\"'+1+cmd|' /C calc'!A0\""
        );
        assert_eq!(csv_field("-2+3"), "\"'-2+3\"");
        assert_eq!(csv_field("@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(csv_field("\tx"), "\"'\tx\"");
        assert_eq!(csv_field("-5"), "-5");
        assert_eq!(csv_field("0.000224"), "0.000224");
    }
}

fn csv_response(header_row: &[&str], rows: Vec<Vec<String>>) -> Response {
    let mut body = header_row.join(",");
    body.push_str("\r\n");
    for row in rows {
        let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        body.push_str(&fields.join(","));
        body.push_str("\r\n");
    }
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    response
}

/// Micro-dollars as an exact decimal string, for CSV: `224` → `0.000224`.
fn usd_text(micros: i64) -> String {
    String::from(Usd(micros.max(0) as u64))
}

/// Usage totals.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Distinct sessions with at least one billed reply.
    pub sessions: i64,
    /// Billed replies.
    pub messages: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub tokens_total: i64,
    pub cost_usd: f64,
    pub cost_micros: i64,
}

/// Inclusive UTC dates, `YYYY-MM-DD`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DateRange {
    #[schema(example = "2026-11-01")]
    pub from: String,
    #[schema(example = "2026-11-30")]
    pub to: String,
}

/// One provider's totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderTotals {
    pub provider: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// One agent's totals.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentTotals {
    pub agent_id: String,
    pub agent_name: Option<String>,
    #[serde(flatten)]
    pub totals: Totals,
}

/// Seed 004's rollup.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollup {
    pub range: DateRange,
    pub totals: Totals,
    pub by_provider: Vec<ProviderTotals>,
    /// The ten agents that cost most, most first.
    pub top_agents_by_cost: Vec<AgentTotals>,
}

/// The price a reply was billed at.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordPricing {
    pub usd_per1k_tokens: f64,
}

/// One billed reply.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageRecordView {
    /// The reply's message id.
    pub id: String,
    pub session_id: String,
    pub agent_id: String,
    pub provider: String,
    pub model: String,
    /// The API key id or service that sent the message.
    pub api_key: String,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub tokens_total: i64,
    pub cost_usd: f64,
    pub cost_micros: i64,
    pub pricing: RecordPricing,
    pub created_at: DateTime<Utc>,
}

/// A page of usage records.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageEvents {
    /// `null` when no dates were given (all time).
    pub range: Option<DateRange>,
    pub events: Vec<UsageRecordView>,
    pub next_cursor: Option<String>,
}

/// One window of one group.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowTotals {
    /// RFC 3339 in `windowTimeZone`.
    pub window_start: String,
    pub window_end: String,
    /// The group's value of each `groupBy` dimension.
    #[schema(value_type = Object)]
    pub group_by: Map<String, Value>,
    #[serde(flatten)]
    pub totals: Totals,
}

/// A usage time series.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageSeries {
    pub from: String,
    pub to: String,
    /// `HOUR`, `DAY`, `MONTH`, or `null` for one window.
    pub window_size: Option<String>,
    pub window_time_zone: String,
    pub group_by: Vec<String>,
    /// Only windows with usage.
    pub data: Vec<WindowTotals>,
}

fn sums_json(sums: &Sums, sessions: i64) -> Totals {
    Totals {
        sessions,
        messages: sums.messages,
        tokens_in: sums.tokens_in,
        tokens_out: sums.tokens_out,
        tokens_total: sums.tokens_in + sums.tokens_out,
        cost_usd: micros_to_usd(sums.cost_micros.max(0) as u64),
        cost_micros: sums.cost_micros,
    }
}

fn sums_csv(sums: &Sums, sessions: i64) -> Vec<String> {
    vec![
        sessions.to_string(),
        sums.messages.to_string(),
        sums.tokens_in.to_string(),
        sums.tokens_out.to_string(),
        (sums.tokens_in + sums.tokens_out).to_string(),
        usd_text(sums.cost_micros),
    ]
}

/// Totals, by provider and the top agents by cost, over inclusive UTC dates.
///
/// Seed 004's `{range, totals, byProvider, topAgentsByCost}`. `messages` counts billed
/// replies; `sessions` counts distinct sessions with at least one. At most 366 days.
#[utoipa::path(get, path = "/v1/usage/rollup", tag = "usage",
    security(("api_key" = ["analyst"]), ("bearer" = ["analyst"])),
    params(
        ("from" = String, Query, description = "First day, `YYYY-MM-DD` (UTC)"),
        ("to" = String, Query, description = "Last day, inclusive, `YYYY-MM-DD` (UTC)"),
        ("Accept" = Option<String>, Header, description = "`text/csv` for CSV"),
    ),
    responses(
        (status = 200, description = "The rollup, as JSON or CSV", content((Rollup = "application/json"), (String = "text/csv"))),
        (status = 400, description = "INVALID_PARAMETER (bad or reversed dates, range too long, unknown parameter)", body = ErrorEnvelope),
    ))]
pub async fn usage_rollup(
    State(state): State<AppState>,
    auth: Auth<require::Analyst>,
    consistency: Consistency,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let params = parameters(pairs, &["from", "to"])?;
    let (from, to, start, end) = date_range(
        single(&params, "from")?,
        single(&params, "to")?,
        Some(MAX_ROLLUP_DAYS),
    )?;
    let lag = await_consistency(&state, consistency, read_model::NAME).await?;
    let db = state.log.db();
    let tenant = auth.tenant().as_str();
    let selection = Selection {
        tenant_id: tenant,
        from: start,
        to: end,
        filters: &[],
    };
    let rollup = read_model::rollup(db, &selection).await?;
    let (total, total_sessions) = (rollup.total, rollup.sessions);
    let providers: Vec<(&String, &(Sums, i64))> = rollup.by_provider.iter().collect();
    let mut agents: Vec<(&String, &(Sums, i64))> = rollup.by_agent.iter().collect();
    agents.sort_by(|a, b| {
        b.1.0
            .cost_micros
            .cmp(&a.1.0.cost_micros)
            .then_with(|| a.0.cmp(b.0))
    });
    agents.truncate(10);
    let ids: Vec<String> = agents.iter().map(|(id, _)| (*id).clone()).collect();
    let names = projections::agents::names(db, tenant, &ids).await?;

    let response = if wants_csv(&headers) {
        let mut rows = vec![{
            let mut row = vec!["total".to_string(), String::new(), String::new()];
            row.extend(sums_csv(&total, total_sessions));
            row
        }];
        for (provider, (sums, sessions)) in &providers {
            let mut row = vec!["provider".to_string(), (*provider).clone(), String::new()];
            row.extend(sums_csv(sums, *sessions));
            rows.push(row);
        }
        for (id, (sums, sessions)) in &agents {
            let name = names.get(*id).cloned().unwrap_or_default();
            let mut row = vec!["agent".to_string(), (*id).clone(), name];
            row.extend(sums_csv(sums, *sessions));
            rows.push(row);
        }
        csv_response(
            &[
                "scope",
                "id",
                "name",
                "sessions",
                "messages",
                "tokensIn",
                "tokensOut",
                "tokensTotal",
                "costUsd",
            ],
            rows,
        )
    } else {
        let by_provider = providers
            .iter()
            .map(|(provider, (sums, sessions))| ProviderTotals {
                provider: (*provider).clone(),
                totals: sums_json(sums, *sessions),
            })
            .collect();
        let top_agents_by_cost = agents
            .iter()
            .map(|(id, (sums, sessions))| AgentTotals {
                agent_id: (*id).clone(),
                agent_name: names.get(*id).cloned(),
                totals: sums_json(sums, *sessions),
            })
            .collect();
        axum::Json(Rollup {
            range: DateRange {
                from: from.to_string(),
                to: to.to_string(),
            },
            totals: sums_json(&total, total_sessions),
            by_provider,
            top_agents_by_cost,
        })
        .into_response()
    };
    Ok(with_lag(response, lag))
}

fn record_json(record: &read_model::UsageRecord) -> UsageRecordView {
    UsageRecordView {
        id: record.message_id.clone(),
        session_id: record.session_id.clone(),
        agent_id: record.agent_id.clone(),
        provider: record.provider.clone(),
        model: record.model.clone(),
        api_key: record.api_key.clone(),
        tokens_in: record.tokens_in,
        tokens_out: record.tokens_out,
        tokens_total: record.tokens_in + record.tokens_out,
        cost_usd: micros_to_usd(record.cost_micros.max(0) as u64),
        cost_micros: record.cost_micros,
        pricing: RecordPricing {
            usd_per1k_tokens: micros_to_usd(record.price_micros_per_1k.max(0) as u64),
        },
        created_at: record.recorded_at,
    }
}

/// Usage records (one per billed reply), newest first.
#[utoipa::path(get, path = "/v1/usage/events", tag = "usage",
    security(("api_key" = ["analyst"]), ("bearer" = ["analyst"])),
    params(
        ("from" = Option<String>, Query, description = "First day, `YYYY-MM-DD` (UTC); with `to`"),
        ("to" = Option<String>, Query, description = "Last day, inclusive; with `from`"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 200", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
        ("Accept" = Option<String>, Header, description = "`text/csv` for CSV"),
    ),
    responses(
        (status = 200, description = "A page of usage records, as JSON or CSV (`x-next-cursor` header)", content((UsageEvents = "application/json"), (String = "text/csv"))),
        (status = 400, description = "INVALID_PARAMETER", body = ErrorEnvelope),
    ))]
pub async fn usage_events(
    State(state): State<AppState>,
    auth: Auth<require::Analyst>,
    consistency: Consistency,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let params = parameters(pairs, &["from", "to", "limit", "cursor"])?;
    let (from, to) = (single(&params, "from")?, single(&params, "to")?);
    let (range, start, end) = match (from, to) {
        // All time, within what both databases store and compare as times.
        (None, None) => (
            None,
            midnight(NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date")),
            midnight(NaiveDate::from_ymd_opt(9999, 12, 31).expect("a date")),
        ),
        _ => {
            let (from, to, start, end) = date_range(from, to, None)?;
            (
                Some(DateRange {
                    from: from.to_string(),
                    to: to.to_string(),
                }),
                start,
                end,
            )
        }
    };
    let limit = match single(&params, "limit")? {
        None => 200,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_EVENTS_PAGE).contains(l))
            .ok_or_else(|| invalid("limit", format!("must be 1 to {MAX_EVENTS_PAGE}")))?,
    };
    let before = single(&params, "cursor")?
        .map(|raw| {
            URL_SAFE_NO_PAD
                .decode(raw)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|text| {
                    let (at, id) = text.split_once('|')?;
                    let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
                    Some((at, id.to_string()))
                })
                .ok_or_else(|| invalid("cursor", "not a cursor returned by the gateway"))
        })
        .transpose()?;
    let lag = await_consistency(&state, consistency, read_model::NAME).await?;
    let mut records = read_model::records(
        state.log.db(),
        auth.tenant().as_str(),
        start,
        end,
        before,
        limit + 1,
    )
    .await?;
    let next_cursor = (records.len() > limit as usize).then(|| {
        records.truncate(limit as usize);
        let last = records.last().expect("a full page");
        URL_SAFE_NO_PAD.encode(format!(
            "{}|{}",
            last.recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            last.message_id
        ))
    });
    let response = if wants_csv(&headers) {
        let rows = records
            .iter()
            .map(|r| {
                vec![
                    r.message_id.clone(),
                    r.recorded_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    r.session_id.clone(),
                    r.agent_id.clone(),
                    r.provider.clone(),
                    r.model.clone(),
                    r.api_key.clone(),
                    r.tokens_in.to_string(),
                    r.tokens_out.to_string(),
                    usd_text(r.cost_micros),
                    usd_text(r.price_micros_per_1k),
                ]
            })
            .collect();
        let mut response = csv_response(
            &[
                "id",
                "createdAt",
                "sessionId",
                "agentId",
                "provider",
                "model",
                "apiKey",
                "tokensIn",
                "tokensOut",
                "costUsd",
                "usdPer1kTokens",
            ],
            rows,
        );
        if let Some(next) = next_cursor
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            response.headers_mut().insert("x-next-cursor", next);
        }
        response
    } else {
        axum::Json(UsageEvents {
            range,
            events: records.iter().map(record_json).collect(),
            next_cursor,
        })
        .into_response()
    };
    Ok(with_lag(response, lag))
}

fn instant(name: &'static str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let at = DateTime::parse_from_rfc3339(value)
        .map_err(|_| invalid(name, format!("'{value}' is not an RFC 3339 time")))?
        .with_timezone(&Utc);
    if at.minute() != 0 || at.second() != 0 || at.nanosecond() != 0 {
        return Err(invalid(
            name,
            "must be on a whole hour: usage is aggregated by the UTC hour",
        ));
    }
    Ok(at)
}

/// A usage time series, grouped, in the manner of OpenMeter's meter query.
///
/// `from` and `to` are RFC 3339 times on whole hours (`to` defaults to the end of the current
/// hour); `windowSize` is `HOUR`, `DAY` or `MONTH` (absent: one window for the whole range);
/// windows are aligned in `windowTimeZone` (IANA, default `UTC`), so a `DAY` across a
/// daylight-saving change lasts 23 or 25 hours. `groupBy` is any of `provider`, `model`,
/// `agentId`, `apiKey` (comma-separated or repeated); `filter[<dimension>]=value` keeps only
/// matching usage. Only windows with usage are returned.
#[utoipa::path(get, path = "/v1/usage/query", tag = "usage",
    security(("api_key" = ["analyst"]), ("bearer" = ["analyst"])),
    params(
        ("from" = String, Query, description = "RFC 3339, on a whole hour"),
        ("to" = Option<String>, Query, description = "RFC 3339, on a whole hour; default: the end of the current hour"),
        ("windowSize" = Option<String>, Query, description = "HOUR, DAY or MONTH"),
        ("windowTimeZone" = Option<String>, Query, description = "IANA time zone, default UTC"),
        ("groupBy" = Option<String>, Query, description = "provider, model, agentId, apiKey"),
        ("filter[provider]" = Option<String>, Query, description = "Also filter[model], filter[agentId], filter[apiKey]"),
        ("Accept" = Option<String>, Header, description = "`text/csv` for CSV"),
    ),
    responses(
        (status = 200, description = "The series, as JSON or CSV", content((UsageSeries = "application/json"), (String = "text/csv"))),
        (status = 400, description = "INVALID_PARAMETER (bad times, window size, time zone, groupBy or filter)", body = ErrorEnvelope),
    ))]
pub async fn usage_query(
    State(state): State<AppState>,
    auth: Auth<require::Analyst>,
    consistency: Consistency,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let params = parameters(
        pairs,
        &[
            "from",
            "to",
            "windowSize",
            "windowTimeZone",
            "groupBy",
            "filter",
        ],
    )?;
    let from = instant(
        "from",
        single(&params, "from")?.ok_or_else(|| invalid("from", "is required"))?,
    )?;
    let to = match single(&params, "to")? {
        Some(raw) => instant("to", raw)?,
        None => read_model::hour_of(Utc::now()) + Duration::hours(1),
    };
    let size = single(&params, "windowSize")?
        .map(|raw| {
            usage::WindowSize::parse(raw)
                .ok_or_else(|| invalid("windowSize", "must be HOUR, DAY or MONTH"))
        })
        .transpose()?;
    let tz: Tz = match single(&params, "windowTimeZone")? {
        None => Tz::UTC,
        Some(raw) => raw.parse().map_err(|_| {
            invalid(
                "windowTimeZone",
                format!("'{raw}' is not an IANA time zone"),
            )
        })?,
    };
    let mut group_by: Vec<Dimension> = Vec::new();
    for name in params
        .get("groupBy")
        .into_iter()
        .flatten()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        let dimension = Dimension::parse(name).ok_or_else(|| {
            invalid(
                "groupBy",
                format!("'{name}' is not one of provider, model, agentId, apiKey"),
            )
        })?;
        if !group_by.contains(&dimension) {
            group_by.push(dimension);
        }
    }
    let mut filters: Vec<(Dimension, String)> = Vec::new();
    for (name, values) in &params {
        let Some(inner) = name
            .strip_prefix("filter[")
            .and_then(|rest| rest.strip_suffix(']'))
        else {
            continue;
        };
        let dimension = Dimension::parse(inner).ok_or_else(|| {
            invalid(
                "filter",
                format!("'{inner}' is not one of provider, model, agentId, apiKey"),
            )
        })?;
        let [value] = values.as_slice() else {
            return Err(invalid(
                "filter",
                format!("filter[{inner}] is given more than once"),
            ));
        };
        filters.push((dimension, value.clone()));
    }

    let query = usage::SeriesQuery {
        from,
        to,
        size,
        tz,
        group_by,
        filters,
    };
    let boundaries = usage::boundaries(&query)?;
    let lag = await_consistency(&state, consistency, read_model::NAME).await?;
    let windows =
        usage::series(state.log.db(), auth.tenant().as_str(), &query, &boundaries).await?;
    let group_by = query.group_by;
    let local = |at: DateTime<Utc>| at.with_timezone(&query.tz).to_rfc3339();
    let names: Vec<&str> = group_by.iter().map(|d| d.name()).collect();

    let response = if wants_csv(&headers) {
        let mut header_row = vec!["windowStart", "windowEnd"];
        header_row.extend(names.iter().copied());
        header_row.extend([
            "sessions",
            "messages",
            "tokensIn",
            "tokensOut",
            "tokensTotal",
            "costUsd",
        ]);
        let rows = windows
            .iter()
            .map(|window| {
                let mut row = vec![window.start.to_rfc3339(), window.end.to_rfc3339()];
                row.extend(window.values.iter().cloned());
                row.extend(sums_csv(&window.sums, window.sessions as i64));
                row
            })
            .collect();
        csv_response(&header_row, rows)
    } else {
        let data = windows
            .iter()
            .map(|window| WindowTotals {
                window_start: window.start.to_rfc3339(),
                window_end: window.end.to_rfc3339(),
                group_by: names
                    .iter()
                    .zip(&window.values)
                    .map(|(name, value)| (name.to_string(), Value::from(value.as_str())))
                    .collect(),
                totals: sums_json(&window.sums, window.sessions as i64),
            })
            .collect();
        axum::Json(UsageSeries {
            from: local(from),
            to: local(to),
            window_size: query.size.map(|size| size.name().to_string()),
            window_time_zone: query.tz.name().to_string(),
            group_by: names.iter().map(|name| name.to_string()).collect(),
            data,
        })
        .into_response()
    };
    Ok(with_lag(response, lag))
}
