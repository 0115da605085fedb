//! `vendorA`, `vendorB`: simulated AI vendors for demos and tests.
//!
//! Replies are deterministic (they quote the user's last message), token counts are derived
//! from the text ([`estimate_tokens`]), and the behaviour is configurable per provider and
//! changeable at run time: latency, error rate, 429 rate with `retryAfterMs`, timeout rate,
//! a number of first calls that fail, and a failure in the middle of a streamed reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use domain::provider::{
    BoxFuture, ChatRole, ChunkSink, Completion, CompletionRequest, FailureKind, Partial, Provider,
    ProviderFailure, estimate_tokens,
};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// How a simulated vendor behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Simulation {
    /// Time to the reply (or to the first chunk of a streamed one), in milliseconds.
    pub latency_ms: u64,
    /// Share of calls, 0 to 1, answered with a 503.
    pub error_rate: f64,
    /// Share of calls, 0 to 1, answered with a 429 carrying `retry_after_ms`.
    pub rate_limit_rate: f64,
    pub retry_after_ms: u64,
    /// Share of calls, 0 to 1, that never answer (the caller's timeout ends them).
    pub timeout_rate: f64,
    /// The first this many calls (counted from when this behaviour was set) fail with a 503,
    /// whatever the rates.
    pub fail_first: u64,
    /// Characters per chunk of a streamed reply.
    pub chunk_chars: usize,
    /// Pause between two chunks, in milliseconds.
    pub chunk_delay_ms: u64,
    /// A streamed reply breaks (connection reset) after this many chunks.
    pub fail_after_chunks: Option<usize>,
}

impl Default for Simulation {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after_ms: 500,
            timeout_rate: 0.0,
            fail_first: 0,
            chunk_chars: 16,
            chunk_delay_ms: 0,
            fail_after_chunks: None,
        }
    }
}

/// A simulated vendor.
pub struct SimulatedVendor {
    name: String,
    default_model: String,
    behaviour: Arc<std::sync::RwLock<Simulation>>,
    calls: Arc<AtomicU64>,
}

/// A handle to change a simulated vendor's behaviour while it runs.
#[derive(Clone)]
pub struct SimulationControl {
    behaviour: Arc<std::sync::RwLock<Simulation>>,
    calls: Arc<AtomicU64>,
}

impl SimulationControl {
    /// Replaces the behaviour; `fail_first` counts from now.
    pub fn set(&self, simulation: Simulation) {
        let mut behaviour = self.behaviour.write().unwrap_or_else(|e| e.into_inner());
        *behaviour = simulation;
        self.calls.store(0, Ordering::Relaxed);
    }

    pub fn get(&self) -> Simulation {
        self.behaviour
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl SimulatedVendor {
    pub fn new(name: &str, default_model: &str, simulation: Simulation) -> Self {
        Self {
            name: name.to_string(),
            default_model: default_model.to_string(),
            behaviour: Arc::new(std::sync::RwLock::new(simulation)),
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn control(&self) -> SimulationControl {
        SimulationControl {
            behaviour: self.behaviour.clone(),
            calls: self.calls.clone(),
        }
    }

    /// The deterministic reply to `request`.
    fn reply(&self, request: &CompletionRequest) -> String {
        let last = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == ChatRole::User)
            .map(|m| &*m.content)
            .unwrap_or("");
        format!(
            "[{}] Thanks for your message. You said: \"{}\". How else can I help?",
            self.name,
            last.trim()
        )
    }
}

fn roll(rate: f64) -> bool {
    rate > 0.0 && (rate >= 1.0 || rand::thread_rng().r#gen::<f64>() < rate)
}

impl Provider for SimulatedVendor {
    fn complete<'a>(
        &'a self,
        request: &'a CompletionRequest,
        on_chunk: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<Completion, ProviderFailure>> {
        Box::pin(async move {
            let behaviour = self
                .behaviour
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let call = self.calls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
            if call < behaviour.fail_first || roll(behaviour.error_rate) {
                return Err(
                    ProviderFailure::new(FailureKind::ProviderError, "simulated outage")
                        .with_status(503),
                );
            }
            if roll(behaviour.rate_limit_rate) {
                let mut failure =
                    ProviderFailure::new(FailureKind::RateLimited, "simulated rate limit")
                        .with_status(429);
                failure.retry_after_ms = Some(behaviour.retry_after_ms);
                return Err(failure);
            }
            if roll(behaviour.timeout_rate) {
                // Never answers: the caller's timeout ends the attempt.
                std::future::pending::<()>().await;
            }
            let mut content = self.reply(request);
            // Like a real model, never more than `max_tokens` (four characters a token).
            if let Some(max) = request.max_tokens {
                let most = max as usize * 4;
                if content.chars().count() > most {
                    content = content.chars().take(most).collect();
                }
            }
            let tokens_in = request
                .messages
                .iter()
                .map(|m| estimate_tokens(&m.content))
                .sum();
            if let Some(sink) = on_chunk {
                let chars: Vec<char> = content.chars().collect();
                let mut sent = String::new();
                for (index, chunk) in chars.chunks(behaviour.chunk_chars.max(1)).enumerate() {
                    if behaviour.fail_after_chunks == Some(index) {
                        let mut failure =
                            ProviderFailure::new(FailureKind::ProviderError, "stream reset");
                        failure.partial = Some(Partial {
                            tokens_out: estimate_tokens(&sent),
                            content: sent,
                        });
                        return Err(failure);
                    }
                    if index > 0 && behaviour.chunk_delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(behaviour.chunk_delay_ms)).await;
                    }
                    let chunk: String = chunk.iter().collect();
                    sink(&chunk);
                    sent.push_str(&chunk);
                }
            }
            Ok(Completion {
                tokens_out: estimate_tokens(&content),
                content,
                model: request
                    .model
                    .clone()
                    .unwrap_or_else(|| self.default_model.clone()),
                tokens_in,
                http_status: 200,
            })
        })
    }
}
