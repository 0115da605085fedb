//! Whether spans are exported (a process installed an OpenTelemetry layer). Spans that serve
//! traces only, such as a command's commit, are made only then: without an exporter they would
//! cost every request for nothing.

use std::sync::atomic::{AtomicBool, Ordering};

static EXPORTED: AtomicBool = AtomicBool::new(false);

/// Marks spans as exported, for the rest of the process.
pub fn export() {
    EXPORTED.store(true, Ordering::Relaxed);
}

/// Whether spans are exported.
pub fn exported() -> bool {
    EXPORTED.load(Ordering::Relaxed)
}

/// A span named `name` when spans are exported, else the disabled span.
#[macro_export]
macro_rules! traced_span {
    ($($arg:tt)*) => {
        if $crate::spans::exported() {
            ::tracing::info_span!($($arg)*)
        } else {
            ::tracing::Span::none()
        }
    };
}
