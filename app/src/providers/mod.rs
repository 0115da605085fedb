//! The AI providers the gateway is configured with, their prices, and the reliability rules
//! of calling them: a timeout per attempt, retries with exponential backoff and jitter,
//! `retryAfterMs` honoured on 429, then the agent's fallback provider.
//!
//! Adapters implement [`domain::provider::Provider`]: [`simulated`] (the built-in `vendorA`
//! and `vendorB`) and [`openai`] (any OpenAI-compatible chat-completions server).

pub mod openai;
pub mod simulated;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use domain::provider::{
    BoxFuture, ChatMessage, ChunkSink, Completion, CompletionRequest, FailureKind, Partial, Price,
    Provider, ProviderFailure, RetryPolicy, estimate_tokens,
};
use domain::session::ProviderAttempt;
use rand::Rng;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use self::simulated::{SimulatedVendor, SimulationControl};
pub use crate::settings::{ProviderKind, ProviderSettings, Usd, parse_usd_micros};

struct Entry {
    provider: Box<dyn Provider>,
    default_model: String,
    price: Price,
    model_prices: BTreeMap<String, Price>,
    simulation: Option<SimulationControl>,
}

/// Records a provider attempt as it happens (as an event).
pub trait AttemptRecorder: Send + Sync {
    fn record(&self, attempt: ProviderAttempt) -> BoxFuture<'_, ()>;
}

/// What to ask: the providers in order (primary, then fallback) with the model for each,
/// and the request without its model.
#[derive(Debug, Clone)]
pub struct CallPlan {
    pub providers: Vec<(String, Option<String>)>,
    /// Shared with every request made from the plan.
    pub messages: std::sync::Arc<[ChatMessage]>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
}

/// A reply and where it came from.
#[derive(Debug, Clone)]
pub struct Answer {
    pub completion: Completion,
    pub provider: String,
    pub fallback_used: bool,
    /// The provider failed after its first chunk: `completion` holds what it had produced.
    pub incomplete: bool,
}

/// Every provider the gateway can call.
pub struct Providers {
    entries: BTreeMap<String, Entry>,
    policy: RetryPolicy,
}

impl Providers {
    pub fn new(
        settings: &BTreeMap<String, ProviderSettings>,
        policy: RetryPolicy,
    ) -> anyhow::Result<Self> {
        let mut entries = BTreeMap::new();
        for (name, provider) in settings {
            let (adapter, simulation): (Box<dyn Provider>, _) = match provider.kind {
                ProviderKind::Simulated => {
                    let vendor = SimulatedVendor::new(
                        name,
                        &provider.default_model,
                        provider.simulation.clone(),
                    );
                    let control = vendor.control();
                    (Box::new(vendor), Some(control))
                }
                ProviderKind::Openai => {
                    let Some(base_url) = provider.base_url.as_deref().filter(|u| !u.is_empty())
                    else {
                        bail!("provider '{name}' is of kind openai and needs a base_url");
                    };
                    let key = provider
                        .api_key
                        .as_ref()
                        .filter(|k| !k.expose_secret().is_empty())
                        .cloned();
                    (
                        Box::new(openai::OpenAiCompatible::new(
                            base_url,
                            key,
                            &provider.default_model,
                        )),
                        None,
                    )
                }
            };
            for usd in
                std::iter::once(&provider.usd_per_1k_tokens).chain(provider.model_prices.values())
            {
                if usd.0 > domain::provider::MAX_PRICE_MICROS_PER_1K {
                    anyhow::bail!(
                        "provider '{name}': a price of ${} per 1k tokens is over the most the \
                         gateway bills ($1000000)",
                        String::from(*usd)
                    );
                }
            }
            let price = |usd: Usd| Price {
                micro_usd_per_1k_tokens: usd.0,
            };
            entries.insert(
                name.clone(),
                Entry {
                    provider: adapter,
                    default_model: provider.default_model.clone(),
                    price: price(provider.usd_per_1k_tokens),
                    model_prices: provider
                        .model_prices
                        .iter()
                        .map(|(model, usd)| (model.clone(), price(*usd)))
                        .collect(),
                    simulation,
                },
            );
        }
        Ok(Self { entries, policy })
    }

    /// The configured provider names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// The price of `model` at `provider` now.
    pub fn price(&self, provider: &str, model: &str) -> Price {
        self.entries
            .get(provider)
            .map(|entry| {
                entry
                    .model_prices
                    .get(model)
                    .copied()
                    .unwrap_or(entry.price)
            })
            .unwrap_or(Price {
                micro_usd_per_1k_tokens: 0,
            })
    }

    /// The highest price among the providers an agent may be answered by (primary and
    /// fallback, with the models it asks each for): what a reply of it may cost per 1k tokens.
    pub fn highest_price(&self, agent: &domain::agent::AgentConfig) -> Price {
        agent
            .providers()
            .filter_map(|provider| {
                let entry = self.entries.get(provider)?;
                let model = agent.model_for(provider).unwrap_or(&entry.default_model);
                Some(self.price(provider, model))
            })
            .max_by_key(|price| price.micro_usd_per_1k_tokens)
            .unwrap_or(Price {
                micro_usd_per_1k_tokens: 0,
            })
    }

    /// The behaviour control of a simulated provider.
    pub fn simulation(&self, provider: &str) -> Option<SimulationControl> {
        self.entries.get(provider)?.simulation.clone()
    }

    /// `{"vendorA": {"usdPer1kTokens": 0.002, "models": {...}}, …}` for `/v1/me`.
    pub fn pricing(&self) -> Value {
        let mut pricing = serde_json::Map::new();
        for (name, entry) in &self.entries {
            let mut price = json!({ "usdPer1kTokens": entry.price.usd_per_1k_tokens() });
            if !entry.model_prices.is_empty() {
                price["models"] = entry
                    .model_prices
                    .iter()
                    .map(|(m, p)| {
                        (
                            m.clone(),
                            json!({ "usdPer1kTokens": p.usd_per_1k_tokens() }),
                        )
                    })
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            pricing.insert(name.clone(), price);
        }
        Value::Object(pricing)
    }

    /// Asks the plan's providers in order until one answers, retrying each as the policy
    /// allows. Every attempt is passed to `recorder` as soon as it ends. With `on_chunk` the
    /// reply is streamed; a provider that fails after its first chunk is neither retried nor
    /// replaced (the client has seen part of its reply): its partial reply is the answer.
    pub async fn call(
        &self,
        plan: &CallPlan,
        recorder: &dyn AttemptRecorder,
        on_chunk: Option<ChunkSink<'_>>,
    ) -> Option<Answer> {
        for (index, (name, model)) in plan.providers.iter().enumerate() {
            let Some(entry) = self.entries.get(name) else {
                tracing::warn!(provider = %name, "the agent names a provider that is not configured");
                continue;
            };
            let request = CompletionRequest {
                model: model.clone(),
                messages: plan.messages.clone(),
                temperature: plan.temperature,
                max_tokens: plan.max_tokens,
            };
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                let started = Instant::now();
                let result = self
                    .attempt(entry, &request, on_chunk)
                    .await
                    .and_then(|completion| {
                        if completion.usage_in_range() {
                            Ok(completion)
                        } else {
                            Err(ProviderFailure::new(
                                FailureKind::BadResponse,
                                format!(
                                    "reported {} tokens in and {} out; at most {} are believed",
                                    completion.tokens_in,
                                    completion.tokens_out,
                                    domain::provider::MAX_REPORTED_TOKENS
                                ),
                            ))
                        }
                    });
                let latency_ms = started.elapsed().as_millis() as u64;
                let model_used = match &result {
                    Ok(completion) => completion.model.clone(),
                    Err(_) => model.clone().unwrap_or_else(|| entry.default_model.clone()),
                };
                let record =
                    |status: &str, http: Option<u16>, failure: Option<&ProviderFailure>| {
                        ProviderAttempt {
                            provider: name.clone(),
                            model: Some(model_used.clone()),
                            attempt,
                            status: status.into(),
                            http_status: http,
                            latency_ms,
                            error_code: failure.map(|f| f.kind.code().to_string()),
                            retry_after_ms: failure.and_then(|f| f.retry_after_ms),
                        }
                    };
                match result {
                    Ok(completion) => {
                        recorder
                            .record(record("success", Some(completion.http_status), None))
                            .await;
                        return Some(Answer {
                            completion,
                            provider: name.clone(),
                            fallback_used: index > 0,
                            incomplete: false,
                        });
                    }
                    Err(failure) => {
                        tracing::info!(provider = %name, attempt, code = failure.kind.code(),
                            message = %failure.message, "provider attempt failed");
                        recorder
                            .record(record("error", failure.http_status, Some(&failure)))
                            .await;
                        if let Some(partial) = failure.partial {
                            return Some(Answer {
                                completion: Completion {
                                    content: partial.content,
                                    model: model_used,
                                    tokens_in: request.estimated_prompt_tokens(),
                                    tokens_out: partial.tokens_out,
                                    http_status: failure.http_status.unwrap_or(200),
                                },
                                provider: name.clone(),
                                fallback_used: index > 0,
                                incomplete: true,
                            });
                        }
                        let jitter = rand::thread_rng().r#gen::<u64>();
                        match self.policy.wait_before_retry(attempt, &failure, jitter) {
                            Some(wait) => tokio::time::sleep(Duration::from_millis(wait)).await,
                            None => break,
                        }
                    }
                }
            }
        }
        None
    }

    /// One call with the attempt timeout. A streamed call times out when no chunk arrives for
    /// the timeout (time to first token, then between tokens), not after a fixed total.
    async fn attempt(
        &self,
        entry: &Entry,
        request: &CompletionRequest,
        on_chunk: Option<ChunkSink<'_>>,
    ) -> Result<Completion, ProviderFailure> {
        let timeout = Duration::from_millis(self.policy.attempt_timeout_ms.max(1));
        let timed_out = || {
            ProviderFailure::new(
                FailureKind::Timeout,
                format!("no answer within {} ms", timeout.as_millis()),
            )
        };
        let Some(sink) = on_chunk else {
            return tokio::time::timeout(timeout, entry.provider.complete(request, None))
                .await
                .unwrap_or_else(|_| Err(timed_out()));
        };
        let received = Mutex::new(String::new());
        let chunks = AtomicU64::new(0);
        let forward = |chunk: &str| {
            received
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(chunk);
            chunks.fetch_add(1, Ordering::Relaxed);
            sink(chunk);
        };
        let call = entry.provider.complete(request, Some(&forward));
        tokio::pin!(call);
        let mut seen = 0;
        loop {
            tokio::select! {
                result = &mut call => return result,
                () = tokio::time::sleep(timeout) => {
                    let now = chunks.load(Ordering::Relaxed);
                    if now == seen {
                        let mut failure = timed_out();
                        let content = received.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        if !content.is_empty() {
                            failure.partial = Some(Partial {
                                tokens_out: estimate_tokens(&content),
                                content,
                            });
                        }
                        return Err(failure);
                    }
                    seen = now;
                }
            }
        }
    }
}

/// The providers of `settings`, shared.
pub fn from_settings(settings: &crate::settings::Settings) -> anyhow::Result<Arc<Providers>> {
    Ok(Arc::new(Providers::new(
        &settings.providers,
        settings.provider_retry.clone(),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_amounts_parse_exactly() {
        assert_eq!(parse_usd_micros("0.002"), Ok(2000));
        assert_eq!(parse_usd_micros("1"), Ok(1_000_000));
        assert_eq!(parse_usd_micros(".5"), Ok(500_000));
        assert_eq!(parse_usd_micros("0.000001"), Ok(1));
        assert!(parse_usd_micros("0.0000001").is_err());
        assert!(parse_usd_micros("-1").is_err());
        assert!(parse_usd_micros("1e-3").is_err());
        assert!(parse_usd_micros("").is_err());
        let from_number: Usd = serde_json::from_value(json!(0.003)).unwrap();
        assert_eq!(from_number, Usd(3000));
        assert_eq!(String::from(Usd(2000)), "0.002000");
    }
}
