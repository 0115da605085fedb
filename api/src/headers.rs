//! The headers the gateway reads and writes besides the standard ones.

/// Header of command responses: the cursor of the last event written.
pub use app::idempotency::EVENT_POSITION_HEADER;

/// Header naming the tenant a request acts for.
pub const TENANT_HEADER: &str = "x-tenant-id";
/// Header of a read that must reflect at least the write at this cursor.
pub const MIN_POSITION_HEADER: &str = "x-min-position";
/// Header asking for `strict` consistency: 503 rather than stale data.
pub const CONSISTENCY_HEADER: &str = "x-consistency";
/// Header of stale reads: how many events the read model was behind the asked position.
pub const PROJECTION_LAG_HEADER: &str = "x-projection-lag";
/// The most characters an `Idempotency-Key` may have.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
