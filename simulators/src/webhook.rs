//! Posting the preset payloads to the gateway's webhook inputs (`[[inputs.http]]`), as the
//! vendors post them, with a sender's retry discipline.
//!
//! Why it exists: an ALPR engine or a network server's HTTP integration keeps a webhook until the
//! receiver takes it: `503` (the gateway's buffer cannot persist it now; `Retry-After` says when)
//! and connection errors are retried, so a webhook counts as delivered only on the gateway's
//! `204`, which the gateway sends only once the readings are durable. A `400` is the gateway's
//! final word that the payload can never be stored (a join event, an uplink without a decoded
//! object). Either final answer is what the manifest records; anything else (`401` a wrong
//! token, `404` no input on that path, `413`, `415`) is a setup problem and ends the run.

use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::manifest::Expect;
use crate::presets::{webhook_body, PresetSend};

/// Where and how to post.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// `http://host:port` of the gateway's webhook listener (paths are the presets' own).
    pub base: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Give one webhook up after retrying this long.
    pub retry_for: Duration,
    /// Timeout of one request.
    pub timeout: Duration,
}

impl WebhookOptions {
    pub fn new(base: &str) -> Self {
        WebhookOptions {
            base: base.trim_end_matches('/').to_owned(),
            token: None,
            retry_for: Duration::from_secs(60),
            timeout: Duration::from_secs(20),
        }
    }
}

/// The gateway's final answer to one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `2xx`: the readings are durable.
    Stored,
    /// `400` with the gateway's reason: the payload can never be stored.
    Refused(String),
}

/// Why a webhook could not be delivered.
#[derive(Debug, Error)]
pub enum WebhookError {
    /// An answer that retrying cannot change: the gateway is not set up for this webhook.
    #[error("POST {url}: {status} {body}")]
    Setup {
        url: String,
        status: u16,
        body: String,
    },
    /// No final answer within the retry time.
    #[error("POST {url}: no final answer after {tries} tries in {seconds:.1} s (last: {last})")]
    GaveUp {
        url: String,
        tries: u64,
        seconds: f64,
        last: String,
    },
    /// The manifest could not be written.
    #[error("writing the manifest: {0}")]
    Manifest(#[from] std::io::Error),
}

/// Counts of a webhook run, for the one-line summary.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct WebhookSummary {
    /// Webhooks with a final answer.
    pub posted: u64,
    /// Answered `204`.
    pub accepted: u64,
    /// Answered `400`.
    pub refused: u64,
    /// Answers that differ from the manifest's expectation (`204` for a payload the gateway must
    /// refuse, `400` for one it must store): the manifest keeps the expectation, `verify` shows it.
    pub unexpected: u64,
    /// Requests repeated after a `503`, `429`, another `5xx` or a connection error.
    pub retries: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// A keep-alive client for the gateway's webhook inputs.
pub struct WebhookSender {
    agent: ureq::Agent,
    opts: WebhookOptions,
}

impl WebhookSender {
    pub fn new(opts: WebhookOptions) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout(opts.timeout)
            .max_idle_connections_per_host(4)
            .build();
        WebhookSender { agent, opts }
    }

    /// The URL a send is posted to.
    pub fn url(&self, send: &PresetSend) -> String {
        format!(
            "{}{}{}",
            self.opts.base,
            send.fixture.preset.webhook_path(),
            send.fixture.webhook_query
        )
    }

    /// Posts one send until the gateway gives a final answer; `retries` counts the repeats.
    pub fn post(&self, send: &PresetSend, retries: &mut u64) -> Result<Answer, WebhookError> {
        let url = self.url(send);
        let (content_type, body) = webhook_body(send);
        let started = Instant::now();
        let mut tries = 0u64;
        let mut pause = Duration::from_millis(100);
        loop {
            tries += 1;
            let mut req = self.agent.post(&url).set("Content-Type", &content_type);
            if let Some(t) = &self.opts.token {
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            let (last, wait) = match req.send_bytes(&body) {
                Ok(_) => return Ok(Answer::Stored),
                Err(ureq::Error::Status(400, r)) => {
                    return Ok(Answer::Refused(r.into_string().unwrap_or_default()))
                }
                Err(ureq::Error::Status(status, r)) if status == 429 || status >= 500 => {
                    let after = r
                        .header("Retry-After")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s.min(30)));
                    let text = r.into_string().unwrap_or_default();
                    (format!("{status} {}", text.trim()), after)
                }
                Err(ureq::Error::Status(status, r)) => {
                    return Err(WebhookError::Setup {
                        url,
                        status,
                        body: r.into_string().unwrap_or_default().trim().to_owned(),
                    })
                }
                Err(ureq::Error::Transport(t)) => (t.to_string(), None),
            };
            let wait = wait.unwrap_or(pause);
            if started.elapsed() + wait > self.opts.retry_for {
                return Err(WebhookError::GaveUp {
                    url,
                    tries,
                    seconds: started.elapsed().as_secs_f64(),
                    last,
                });
            }
            *retries += 1;
            std::thread::sleep(wait);
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

impl WebhookSender {
    /// Posts one send until its final answer, counts it in `summary` (an answer other than the
    /// expected one is also said on stderr), and writes the send's entries to `manifest`.
    pub fn deliver(
        &self,
        send: &PresetSend,
        summary: &mut WebhookSummary,
        manifest: &mut impl std::io::Write,
    ) -> Result<Answer, WebhookError> {
        let answer = self.post(send, &mut summary.retries)?;
        summary.posted += 1;
        match &answer {
            Answer::Stored => summary.accepted += 1,
            Answer::Refused(_) => summary.refused += 1,
        }
        if !as_expected(send, &answer) {
            summary.unexpected += 1;
            eprintln!(
                "sensor-sim: {} answered {:?} for {}",
                self.url(send),
                answer,
                send.fixture.file
            );
        }
        for e in &send.entries {
            manifest.write_all(e.to_line().as_bytes())?;
        }
        manifest.flush()?;
        Ok(answer)
    }
}

/// Whether an answer is what the send's entries expect (all stored, or all refused).
pub fn as_expected(send: &PresetSend, answer: &Answer) -> bool {
    let stored = send.entries.iter().any(|e| e.x == Expect::Stored);
    matches!(answer, Answer::Stored) == stored
}
