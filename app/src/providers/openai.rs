//! `openai`: a client of any OpenAI-compatible chat-completions server (`POST
//! {base_url}/chat/completions`), streamed or not.
//!
//! Mapping of failures: 429 → `RATE_LIMITED` with `retry-after-ms` or `retry-after` honoured;
//! 5xx, refused or reset connections → `PROVIDER_ERROR`; other 4xx → `REQUEST_REJECTED` (not
//! retried); a body that is not a chat completion → `BAD_RESPONSE`. Timeouts are the caller's
//! (see `providers::call`). When the server reports no usage, tokens are estimated from the
//! text.

use domain::provider::{
    BoxFuture, ChunkSink, Completion, CompletionRequest, FailureKind, Partial, Provider,
    ProviderFailure, estimate_tokens,
};
use futures::StreamExt;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

pub struct OpenAiCompatible {
    client: reqwest::Client,
    url: String,
    api_key: Option<SecretString>,
    default_model: String,
}

impl OpenAiCompatible {
    pub fn new(base_url: &str, api_key: Option<SecretString>, default_model: &str) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            client,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
            default_model: default_model.to_string(),
        }
    }

    fn body(&self, request: &CompletionRequest, stream: bool) -> Value {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let mut body = json!({
            "model": request.model.as_deref().unwrap_or(&self.default_model),
            "messages": messages,
            "stream": stream,
        });
        if let Some(temperature) = request.temperature {
            body["temperature"] = json!(temperature);
        }
        if let Some(max_tokens) = request.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    async fn send(
        &self,
        request: &CompletionRequest,
        stream: bool,
    ) -> Result<reqwest::Response, ProviderFailure> {
        let mut call = self
            .client
            .post(&self.url)
            .json(&self.body(request, stream));
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key.expose_secret());
        }
        let response = call.send().await.map_err(transport_failure)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after_ms = retry_after_ms(response.headers());
        let kind = if status == StatusCode::TOO_MANY_REQUESTS {
            FailureKind::RateLimited
        } else if status.is_server_error() {
            FailureKind::ProviderError
        } else {
            FailureKind::RequestRejected
        };
        let mut failure = ProviderFailure::new(kind, format!("the provider answered {status}"))
            .with_status(status.as_u16());
        failure.retry_after_ms = retry_after_ms.filter(|_| kind == FailureKind::RateLimited);
        Err(failure)
    }
}

fn transport_failure(error: reqwest::Error) -> ProviderFailure {
    if error.is_timeout() {
        ProviderFailure::new(FailureKind::Timeout, error.to_string())
    } else {
        ProviderFailure::new(FailureKind::ProviderError, error.to_string())
    }
}

/// `retry-after-ms` (milliseconds) or `retry-after` (whole seconds).
fn retry_after_ms(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    number("retry-after-ms")
        .map(|ms| ms as u64)
        .or_else(|| number("retry-after").map(|s| (s * 1000.0) as u64))
}

fn bad_response(status: u16, detail: impl Into<String>) -> ProviderFailure {
    ProviderFailure::new(FailureKind::BadResponse, detail).with_status(status)
}

fn usage(value: &Value) -> Option<(u64, u64)> {
    let usage = value.get("usage")?;
    Some((
        usage.get("prompt_tokens")?.as_u64()?,
        usage.get("completion_tokens")?.as_u64()?,
    ))
}

impl OpenAiCompatible {
    async fn complete_whole(
        &self,
        request: &CompletionRequest,
    ) -> Result<Completion, ProviderFailure> {
        let response = self.send(request, false).await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport_failure)?;
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| bad_response(status, format!("the body is not JSON: {e}")))?;
        let content = body
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_response(status, "no choices[0].message.content"))?
            .to_string();
        let (tokens_in, tokens_out) = usage(&body)
            .unwrap_or_else(|| (request.estimated_prompt_tokens(), estimate_tokens(&content)));
        Ok(Completion {
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or(&self.default_model)
                .to_string(),
            content,
            tokens_in,
            tokens_out,
            http_status: status,
        })
    }

    async fn complete_streamed(
        &self,
        request: &CompletionRequest,
        sink: ChunkSink<'_>,
    ) -> Result<Completion, ProviderFailure> {
        let response = self.send(request, true).await?;
        let status = response.status().as_u16();
        let mut model = None;
        let mut content = String::new();
        let mut reported = None;
        let mut buffer = Vec::new();
        let mut bytes = response.bytes_stream();
        let fail = |failure: ProviderFailure, content: &String| {
            let mut failure = failure;
            if !content.is_empty() {
                failure.partial = Some(Partial {
                    tokens_out: estimate_tokens(content),
                    content: content.clone(),
                });
            }
            failure
        };
        let mut done = false;
        while !done {
            let Some(next) = bytes.next().await else {
                break;
            };
            let chunk = next.map_err(|e| fail(transport_failure(e), &content))?;
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim().strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    break;
                }
                let event: Value = serde_json::from_str(data).map_err(|e| {
                    fail(
                        bad_response(status, format!("bad stream event: {e}")),
                        &content,
                    )
                })?;
                if model.is_none() {
                    model = event.get("model").and_then(Value::as_str).map(String::from);
                }
                if let Some(usage) = usage(&event) {
                    reported = Some(usage);
                }
                if let Some(delta) = event
                    .pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                    .filter(|d| !d.is_empty())
                {
                    sink(delta);
                    content.push_str(delta);
                }
            }
        }
        if !done {
            return Err(fail(
                ProviderFailure::new(FailureKind::ProviderError, "the stream ended early"),
                &content,
            ));
        }
        let (tokens_in, tokens_out) = reported
            .unwrap_or_else(|| (request.estimated_prompt_tokens(), estimate_tokens(&content)));
        Ok(Completion {
            model: model.unwrap_or_else(|| self.default_model.clone()),
            content,
            tokens_in,
            tokens_out,
            http_status: status,
        })
    }
}

impl Provider for OpenAiCompatible {
    fn complete<'a>(
        &'a self,
        request: &'a CompletionRequest,
        on_chunk: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<Completion, ProviderFailure>> {
        Box::pin(async move {
            match on_chunk {
                Some(sink) => self.complete_streamed(request, sink).await,
                None => self.complete_whole(request).await,
            }
        })
    }
}
