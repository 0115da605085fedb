//! The AI provider port, and the rules around calling it: which failures are worth a retry,
//! how long to wait before the next attempt, and what a reply costs.
//!
//! Adapters (the simulated vendors, the OpenAI-compatible HTTP client) live outside this
//! crate; the message flow only sees [`Provider`]. Nothing here does IO or reads a clock.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Who said a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

impl ChatRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// One message sent to a provider. Its content is shared: a session's conversation is copied
/// into the context of each of its messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: Arc<str>,
}

/// What is asked of a provider: a chat completion.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// The model to use; `None` lets the provider use its configured default.
    pub model: Option<String>,
    /// System prompt first, then the conversation, ending with the new user message; shared
    /// by the requests of one message's providers and retries.
    pub messages: Arc<[ChatMessage]>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
}

impl CompletionRequest {
    /// The prompt's tokens as estimated from its text, for a provider that reports none.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        self.messages
            .iter()
            .map(|m| estimate_tokens(&m.content))
            .sum()
    }
}

/// A provider's complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub content: String,
    /// The model that answered, as the provider names it.
    pub model: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// The HTTP status of the provider's answer (200 for the simulated vendors).
    pub http_status: u16,
}

/// Why a provider call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureKind {
    /// No answer within the attempt's timeout.
    Timeout,
    /// 429: the provider asks us to slow down.
    RateLimited,
    /// 5xx, a refused connection or a reset: the provider is unwell.
    ProviderError,
    /// An answer that is not the expected shape.
    BadResponse,
    /// 4xx other than 429: this request will not succeed with this provider, however often
    /// it is retried.
    RequestRejected,
}

impl FailureKind {
    /// The `errorCode` of an attempt that failed this way.
    pub fn code(self) -> &'static str {
        match self {
            Self::Timeout => "TIMEOUT",
            Self::RateLimited => "RATE_LIMITED",
            Self::ProviderError => "PROVIDER_ERROR",
            Self::BadResponse => "BAD_RESPONSE",
            Self::RequestRejected => "REQUEST_REJECTED",
        }
    }

    /// Whether the same provider may be asked again.
    pub fn retryable(self) -> bool {
        !matches!(self, Self::RequestRejected)
    }
}

/// What a streamed reply had produced when its provider failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    pub content: String,
    /// Output tokens the provider reported, or an estimate from `content`.
    pub tokens_out: u64,
}

/// A failed provider call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderFailure {
    pub kind: FailureKind,
    pub http_status: Option<u16>,
    /// For 429: how long the provider asked us to wait.
    pub retry_after_ms: Option<u64>,
    /// For a streamed call that failed after its first chunk: what it had produced.
    pub partial: Option<Partial>,
    /// For people and logs.
    pub message: String,
}

impl ProviderFailure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            http_status: None,
            retry_after_ms: None,
            partial: None,
            message: message.into(),
        }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }
}

/// Receives the chunks of a streamed reply as they arrive.
pub type ChunkSink<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// A boxed future, so that providers can be held as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The port to an AI provider.
pub trait Provider: Send + Sync {
    /// Calls the provider once. With `on_chunk`, the reply is streamed: each piece of text is
    /// passed to `on_chunk` as it arrives, and the full reply is returned at the end. A
    /// failure after the first chunk carries what had arrived in [`ProviderFailure::partial`].
    fn complete<'a>(
        &'a self,
        request: &'a CompletionRequest,
        on_chunk: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<Completion, ProviderFailure>>;
}

/// Retry rules of provider calls. Every number is configurable; the defaults are seed 004's:
/// 2 s per attempt, up to 2 retries, backoff 200, 400, 800 ms plus up to 100 ms of jitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "snake_case")]
pub struct RetryPolicy {
    /// Longest one attempt may take before it counts as a timeout.
    pub attempt_timeout_ms: u64,
    /// Retries of the same provider after its first attempt.
    pub max_retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff_base_ms: u64,
    /// Most random milliseconds added to each wait.
    pub jitter_ms: u64,
    /// Most a `retryAfterMs` of a 429 is honoured; a provider asking for longer is given up
    /// on (and the fallback is tried).
    pub max_retry_after_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempt_timeout_ms: 2000,
            max_retries: 2,
            backoff_base_ms: 200,
            jitter_ms: 100,
            max_retry_after_ms: 5000,
        }
    }
}

impl RetryPolicy {
    /// How long to wait before retry number `retry` (1-based) after `failure`, or `None` when
    /// the provider should not be asked again. `jitter` is a random number the caller draws;
    /// only `jitter % (jitter_ms + 1)` is used.
    pub fn wait_before_retry(
        &self,
        retry: u32,
        failure: &ProviderFailure,
        jitter: u64,
    ) -> Option<u64> {
        if retry == 0 || retry > self.max_retries || !failure.kind.retryable() {
            return None;
        }
        if failure.partial.is_some() {
            // The client has seen part of this reply; another attempt would contradict it.
            return None;
        }
        let backoff = self
            .backoff_base_ms
            .saturating_mul(1u64 << (retry - 1).min(20));
        let jitter = jitter % (self.jitter_ms + 1);
        match failure.retry_after_ms {
            Some(asked) if asked > self.max_retry_after_ms => None,
            Some(asked) => Some(asked.max(backoff) + jitter),
            None => Some(backoff + jitter),
        }
    }
}

/// The price of a provider's tokens, in micro-dollars (millionths of a US dollar) per 1,000
/// tokens, input and output alike: $0.002 per 1k tokens is 2,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Price {
    pub micro_usd_per_1k_tokens: u64,
}

/// The most tokens one provider call may report, in or out. A report beyond it is a
/// provider error (`BAD_RESPONSE`), never a number that wraps and bills nonsense.
pub const MAX_REPORTED_TOKENS: u64 = 1_000_000_000;

/// The highest price a provider may be configured with: $1,000,000 per 1,000 tokens. With
/// [`MAX_REPORTED_TOKENS`] it keeps every reply's cost (at most 2·10¹⁸ micro-dollars) inside
/// the signed 64-bit integers the usage tables store.
pub const MAX_PRICE_MICROS_PER_1K: u64 = 1_000_000_000_000;

impl Completion {
    /// Whether the provider's token counts are within [`MAX_REPORTED_TOKENS`].
    pub fn usage_in_range(&self) -> bool {
        self.tokens_in <= MAX_REPORTED_TOKENS && self.tokens_out <= MAX_REPORTED_TOKENS
    }
}

impl Price {
    /// The cost of a reply in micro-dollars: `(tokensIn + tokensOut) / 1000 × price`, rounded
    /// half up to a whole micro-dollar. Integers throughout; no float ever touches money.
    /// `None` when the cost does not fit a signed 64-bit integer (the stored sums' type), which
    /// tokens and prices within [`MAX_REPORTED_TOKENS`] and [`MAX_PRICE_MICROS_PER_1K`] never
    /// reach.
    pub fn cost_micros(self, tokens_in: u64, tokens_out: u64) -> Option<u64> {
        let tokens = u128::from(tokens_in) + u128::from(tokens_out);
        let scaled = tokens.checked_mul(u128::from(self.micro_usd_per_1k_tokens))?;
        let micros = u64::try_from(scaled.checked_add(500)? / 1000).ok()?;
        (micros <= i64::MAX as u64).then_some(micros)
    }

    /// The price in dollars per 1k tokens, for display only.
    pub fn usd_per_1k_tokens(self) -> f64 {
        self.micro_usd_per_1k_tokens as f64 / 1e6
    }
}

/// Micro-dollars as dollars, for display only (`224` → `0.000224`).
pub fn micros_to_usd(micros: u64) -> f64 {
    micros as f64 / 1e6
}

/// An estimate of the tokens in `text` when a provider does not report them: one token per
/// four characters, at least one for non-empty text. The simulated vendors count this way.
pub fn estimate_tokens(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_exact_integer_micro_dollars() {
        let vendor_a = Price {
            micro_usd_per_1k_tokens: 2000,
        };
        // Seed 004's example: 45 + 67 tokens at $0.002 per 1k is $0.000224.
        assert_eq!(vendor_a.cost_micros(45, 67), Some(224));
        let odd = Price {
            micro_usd_per_1k_tokens: 1500,
        };
        assert_eq!(
            odd.cost_micros(1, 0),
            Some(2),
            "1.5 micro-dollars rounds half up"
        );
        assert_eq!(odd.cost_micros(0, 0), Some(0));
        // A million replies of 112 tokens add up exactly.
        let total: u64 = (0..1_000_000)
            .map(|_| vendor_a.cost_micros(45, 67).unwrap())
            .sum();
        assert_eq!(total, 224_000_000);
    }

    #[test]
    fn costs_beyond_a_signed_64_bit_sum_are_none_not_wrapped() {
        let highest = Price {
            micro_usd_per_1k_tokens: MAX_PRICE_MICROS_PER_1K,
        };
        let cost = highest.cost_micros(MAX_REPORTED_TOKENS, MAX_REPORTED_TOKENS);
        assert_eq!(
            cost,
            Some(2_000_000_000_000_000_000),
            "the bounds' worst case fits"
        );
        let absurd = Price {
            micro_usd_per_1k_tokens: u64::MAX,
        };
        assert_eq!(absurd.cost_micros(u64::MAX, u64::MAX), None);
        assert_eq!(highest.cost_micros(u64::MAX, 0), None);
    }

    #[test]
    fn retries_back_off_exponentially_and_honour_retry_after() {
        let policy = RetryPolicy {
            jitter_ms: 0,
            ..RetryPolicy::default()
        };
        let error = ProviderFailure::new(FailureKind::ProviderError, "503");
        assert_eq!(policy.wait_before_retry(1, &error, 7), Some(200));
        assert_eq!(policy.wait_before_retry(2, &error, 7), Some(400));
        assert_eq!(policy.wait_before_retry(3, &error, 7), None, "two retries");

        let mut limited = ProviderFailure::new(FailureKind::RateLimited, "429");
        limited.retry_after_ms = Some(700);
        assert_eq!(policy.wait_before_retry(1, &limited, 0), Some(700));
        limited.retry_after_ms = Some(60_000);
        assert_eq!(policy.wait_before_retry(1, &limited, 0), None);

        let rejected = ProviderFailure::new(FailureKind::RequestRejected, "400");
        assert_eq!(policy.wait_before_retry(1, &rejected, 0), None);

        let mut cut = ProviderFailure::new(FailureKind::ProviderError, "reset");
        cut.partial = Some(Partial {
            content: "Hel".into(),
            tokens_out: 1,
        });
        assert_eq!(policy.wait_before_retry(1, &cut, 0), None);
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        let policy = RetryPolicy::default();
        let error = ProviderFailure::new(FailureKind::Timeout, "slow");
        for jitter in [0, 1, 99, 100, 101, u64::MAX] {
            let wait = policy.wait_before_retry(1, &error, jitter).unwrap();
            assert!((200..=300).contains(&wait), "{wait}");
        }
    }

    #[test]
    fn token_estimate() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcdefgh"), 2);
        assert_eq!(estimate_tokens("héllo"), 2);
    }
}
