//! The AWS SDK pieces every S3 part of guard shares (the S3 store and the S3 target): one cached
//! client per endpoint and region with every wait on the server bounded ([`Limits`]), SDK errors
//! as messages people can act on (and whether the server itself failed, [`unavailable`]), and a
//! CompleteMultipartUpload that survives servers whose answer the SDK cannot parse.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Result};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::{BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;

use crate::runtime::wait;

/// How long guard waits on an S3 server, and how often it asks again. Every request is bounded:
/// connecting takes at most `connect`; once sent, a request (its body included) must get the
/// response's headers within `read`; a response body (or a request body being uploaded) that
/// moves no byte for `read` fails; no single attempt lasts longer than `attempt`, whatever
/// it moves. A request that fails in one of these ways (or gets no connection, or a 5xx) is
/// tried `attempts` times in all, with exponential backoff (jittered, 0.5 s doubling up to
/// 5 s) in between, and the whole request (every attempt and backoff) is cut off after
/// [`Limits::operation`]. So a server that stops answering fails a request within about
/// `attempts × (connect + read) + backoff` (at most 115 s with the defaults, about 95 s when
/// the connection is accepted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub connect: Duration,
    pub read: Duration,
    pub attempt: Duration,
    pub attempts: u32,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        connect: Duration::from_secs(5),
        read: Duration::from_secs(30),
        attempt: Duration::from_secs(900),
        attempts: 3,
    };

    /// The defaults, overridden by `GUARD_S3_CONNECT_TIMEOUT`, `GUARD_S3_READ_TIMEOUT`,
    /// `GUARD_S3_ATTEMPT_TIMEOUT` (seconds, fractions allowed) and `GUARD_S3_ATTEMPTS`.
    pub fn from_env() -> Limits {
        let secs = |name: &str, default: Duration| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(|s| Duration::from_secs_f64(s.max(0.05)))
                .unwrap_or(default)
        };
        let d = Limits::DEFAULT;
        Limits {
            connect: secs("GUARD_S3_CONNECT_TIMEOUT", d.connect),
            read: secs("GUARD_S3_READ_TIMEOUT", d.read),
            attempt: secs("GUARD_S3_ATTEMPT_TIMEOUT", d.attempt),
            attempts: std::env::var("GUARD_S3_ATTEMPTS")
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok())
                .map(|n| n.clamp(1, 10))
                .unwrap_or(d.attempts),
        }
    }
}

impl Limits {
    /// The bound on one request with all its attempts: `attempts` attempts of at most
    /// `attempt` each, and the backoff between them (at most 5 s each).
    pub fn operation(&self) -> Duration {
        self.attempt * self.attempts + Duration::from_secs(5) * self.attempts.saturating_sub(1)
    }
}

fn limits() -> Limits {
    static L: OnceLock<Limits> = OnceLock::new();
    *L.get_or_init(Limits::from_env)
}

/// A request not sent because its server stopped answering moments ago ([`Breaker`]).
#[derive(Debug)]
struct StoppedAnswering {
    ago: Duration,
    why: String,
}

impl std::fmt::Display for StoppedAnswering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not sent: the S3 server stopped answering {:.0?} ago ({})",
            self.ago, self.why
        )
    }
}

impl std::error::Error for StoppedAnswering {}

/// After a request timed out on every attempt, its server is taken to have stopped answering
/// for a while (`cooldown`, as long as such a request takes): requests to it in that time fail
/// at once instead of each waiting out its timeouts again, so that a run against a hung server
/// ends within one request's bound instead of one per request still to make (removing the
/// partial snapshot, writing the journal, releasing the lock, …). The first request after the
/// cooldown is sent again; one that succeeds clears it.
#[derive(Debug)]
struct Breaker {
    cooldown: Duration,
    tripped: Mutex<Option<(std::time::Instant, String)>>,
}

impl Intercept for Breaker {
    fn name(&self) -> &'static str {
        "guard::aws::Breaker"
    }

    fn read_before_execution(
        &self,
        _: &BeforeSerializationInterceptorContextRef<'_>,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        match &*self.tripped.lock().expect("breaker") {
            Some((at, why)) if at.elapsed() < self.cooldown => Err(Box::new(StoppedAnswering {
                ago: at.elapsed(),
                why: why.clone(),
            })),
            _ => Ok(()),
        }
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let mut tripped = self.tripped.lock().expect("breaker");
        match context.output_or_error() {
            Some(Ok(_)) => *tripped = None,
            Some(Err(e)) if e.is_timeout_error() || e.as_connector_error().is_some_and(|c| c.is_timeout()) => {
                *tripped = Some((std::time::Instant::now(), causes(e)))
            }
            _ => {}
        }
        Ok(())
    }
}

/// `e` and its sources' messages, joined (no debug dumps).
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !out.iter().any(|o| o.contains(&m)) {
            out.push(m);
        }
        cur = c.source();
    }
    out.join(": ")
}

/// A client for `endpoint` (or the standard chain's) and `region` (or the chain's, else
/// `us-east-1`). Credentials come from the standard AWS chain (environment, profile, …).
/// A custom endpoint (the target's `endpoint`, `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`) is
/// addressed path-style, which every S3-compatible server understands. Clients are cached.
pub fn client(endpoint: Option<&str>, region: Option<&str>) -> Client {
    type Key = (Option<String>, Option<String>);
    static CLIENTS: OnceLock<Mutex<Vec<(Key, Client)>>> = OnceLock::new();
    let id = (endpoint.map(str::to_string), region.map(str::to_string));
    let cache = CLIENTS.get_or_init(|| Mutex::new(Vec::new()));
    if let Some((_, c)) = cache.lock().expect("client cache").iter().find(|(k, _)| *k == id) {
        return c.clone();
    }
    let c = wait(async {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r.to_string()));
        }
        let sdk = loader.load().await;
        let l = limits();
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(l.connect)
                    .read_timeout(l.read)
                    .operation_attempt_timeout(l.attempt)
                    .operation_timeout(l.operation())
                    .build(),
            )
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(l.attempts)
                    .with_initial_backoff(Duration::from_millis(500))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .stalled_stream_protection(
                aws_sdk_s3::config::StalledStreamProtectionConfig::enabled()
                    .grace_period(l.read)
                    .build(),
            )
            // Operations without a streaming body (CopyObject, ListObjectsV2, …) get no
            // stalled-stream protection from the SDK: a server that sends the headers of such a
            // response and then stops would be waited on for the whole attempt timeout. The
            // SDK's own interceptor, added for every operation, bounds their bodies by `read`
            // too (streaming operations already have it; a second one watching the same bytes
            // changes nothing).
            .interceptor(
                aws_smithy_runtime::client::stalled_stream_protection::StalledStreamProtectionInterceptor::default(),
            )
            .interceptor(Breaker {
                cooldown: l.read * l.attempts,
                tripped: Mutex::new(None),
            });
        if sdk.region().is_none() {
            b = b.region(aws_config::Region::new("us-east-1"));
        }
        let env_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
        if let Some(ep) = endpoint.map(str::to_string).or(env_endpoint) {
            b = b.endpoint_url(ep).force_path_style(true);
        }
        Client::from_conf(b.build())
    });
    cache.lock().expect("client cache").push((id, c.clone()));
    c
}

/// A failed S3 request: what was attempted and why, and whether the server (or the way to it)
/// failed rather than the request — no connection, no answer within the [`Limits`], a broken
/// response, a 5xx — after every attempt.
#[derive(Debug)]
pub struct S3Failure {
    msg: String,
    pub unavailable: bool,
}

impl std::fmt::Display for S3Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for S3Failure {}

/// Whether `e` says the S3 server stopped answering (or answers only with errors of its own),
/// so that asking it about other objects is pointless.
pub fn unavailable(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<S3Failure>().is_some_and(|f| f.unavailable))
}

/// A body that stopped arriving (or broke) as an [`S3Failure`] of the server.
pub fn body_error(what: impl std::fmt::Display, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(S3Failure {
        msg: format!("{what}: {e}"),
        unavailable: true,
    })
}

/// An SDK error as a message naming what was attempted, the HTTP status and the S3 error code
/// (an [`S3Failure`]).
pub fn sdk_error<E>(what: impl std::fmt::Display, e: SdkError<E, HttpResponse>) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let timed_out = match &e {
        SdkError::TimeoutError(_) => true,
        SdkError::DispatchFailure(d) => d.is_timeout(),
        _ => false,
    };
    let not_sent = source_of::<StoppedAnswering>(&e);
    let unavailable = timed_out
        || not_sent.is_some()
        || matches!(
            e,
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
        )
        || status.is_some_and(|s| s >= 500);
    let l = limits();
    let msg = match (status, e.code()) {
        _ if not_sent.is_some() => format!("{what}: {}", not_sent.expect("checked")),
        _ if timed_out => format!(
            "{what}: the S3 server did not answer in time ({}; {} attempt(s), each allowed {:?} to connect and {:?} for a response; GUARD_S3_CONNECT_TIMEOUT, GUARD_S3_READ_TIMEOUT, GUARD_S3_ATTEMPTS)",
            causes(&e),
            l.attempts,
            l.connect,
            l.read,
        ),
        (Some(s), Some(code)) => format!(
            "{what}: HTTP {s} {code}{}",
            e.message().map(|m| format!(": {m}")).unwrap_or_default()
        ),
        (Some(s), None) => format!("{what}: HTTP {s}: {}", DisplayErrorContext(&e)),
        _ => format!("{what}: {}", DisplayErrorContext(&e)),
    };
    anyhow::Error::new(S3Failure { msg, unavailable })
}

/// The first error of type `T` among `e`'s sources.
fn source_of<'a, T: std::error::Error + 'static>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        cur = c.source();
    }
    None
}

/// CompleteMultipartUpload `parts` of `bucket/key`, whose content must total `size` bytes.
/// Returns the object's ETag.
///
/// Some S3-compatible servers (moto) answer 200 with an XML root the SDK refuses to parse. A
/// 200 whose body cannot be parsed is therefore confirmed with HeadObject: the object must
/// have the expected size and exactly the multipart ETag its parts imply (MD5 of the parts'
/// MD5s, `-N`); anything else is an error.
pub async fn complete_multipart(
    c: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    parts: Vec<CompletedPart>,
    size: u64,
) -> Result<String> {
    use md5::{Digest as _, Md5};
    let shown = format!("s3://{bucket}/{key}");
    let mut expected = Md5::new();
    let mut exact = true;
    for p in &parts {
        match hex::decode(p.e_tag().unwrap_or_default().trim_matches('"')) {
            Ok(b) if b.len() == 16 => expected.update(b),
            _ => exact = false,
        }
    }
    let expected = format!("{}-{}", hex::encode(expected.finalize()), parts.len());
    let n = parts.len();
    let r = c
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await;
    match r {
        Ok(r) => Ok(r.e_tag().unwrap_or_default().trim_matches('"').to_string()),
        Err(e) if status_of(&e) == Some(200) && e.code().is_none() => {
            let h = c
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| sdk_error(format!("{shown}: confirming the completed multipart upload"), e))?;
            let etag = h.e_tag().unwrap_or_default().trim_matches('"').to_string();
            let len = h.content_length().unwrap_or(-1);
            let etag_ok = if exact {
                etag == expected
            } else {
                etag.ends_with(&format!("-{n}"))
            };
            if len != size as i64 || !etag_ok {
                return Err(anyhow!(
                    "{shown}: completing the multipart upload failed ({}); the object there has {len} bytes and ETag {etag}, expected {size} bytes and ETag {expected}",
                    DisplayErrorContext(&e)
                ));
            }
            Ok(etag)
        }
        Err(e) => Err(sdk_error(format!("{shown}: completing the multipart upload failed"), e)),
    }
}

/// The HTTP status of a failed request, when the server answered.
pub fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// Server-side encryption guard asks for on every object it writes to a bucket (`sse`,
/// `kms_key_id`): SSE-S3 (`AES256`) or SSE-KMS (`aws:kms`, with the server's default key or
/// `kms_key_id`). The server's answer is checked: a write that comes back without the asked-for
/// encryption fails, so a server that ignores the header cannot leave a plaintext copy unnoticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sse {
    pub kind: SseKind,
    pub kms_key_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseKind {
    Aes256,
    Kms,
}

impl Sse {
    /// `sse` and `kms_key_id` together, by the rules both an s3 target and an `s3://` store
    /// follow: a key only with `aws:kms`. `Err` is what is wrong, for the caller to place.
    pub fn pair(kind: Option<SseKind>, kms_key_id: Option<String>) -> Result<Option<Sse>, &'static str> {
        match (kind, kms_key_id) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err("kms_key_id needs sse = \"aws:kms\" (add it, or remove kms_key_id)"),
            (Some(SseKind::Aes256), Some(_)) => {
                Err("kms_key_id goes with sse = \"aws:kms\", not \"AES256\" (SSE-S3 uses the server's own keys)")
            }
            (Some(kind), kms_key_id) => Ok(Some(Sse { kind, kms_key_id })),
        }
    }

    /// The policy's words for it.
    pub const CHOICES: &'static [(&'static str, Option<SseKind>)] =
        &[("AES256", Some(SseKind::Aes256)), ("aws:kms", Some(SseKind::Kms))];

    pub fn as_str(&self) -> &'static str {
        match self.kind {
            SseKind::Aes256 => "AES256",
            SseKind::Kms => "aws:kms",
        }
    }

    /// The `x-amz-server-side-encryption` value.
    pub fn header(&self) -> aws_sdk_s3::types::ServerSideEncryption {
        match self.kind {
            SseKind::Aes256 => aws_sdk_s3::types::ServerSideEncryption::Aes256,
            SseKind::Kms => aws_sdk_s3::types::ServerSideEncryption::AwsKms,
        }
    }

    /// `x-amz-server-side-encryption` for requests that write, when `sse` is set.
    pub fn header_of(sse: Option<&Sse>) -> Option<aws_sdk_s3::types::ServerSideEncryption> {
        sse.map(Sse::header)
    }

    /// `x-amz-server-side-encryption-aws-kms-key-id`, when `sse` names a key.
    pub fn key_of(sse: Option<&Sse>) -> Option<String> {
        sse.and_then(|s| s.kms_key_id.clone())
    }

    /// Check the encryption a write's response (or a HeadObject of what it wrote) reports.
    pub fn check(sse: Option<&Sse>, got: Option<&aws_sdk_s3::types::ServerSideEncryption>, what: &str) -> Result<()> {
        let Some(want) = sse else { return Ok(()) };
        if got == Some(&want.header()) {
            return Ok(());
        }
        Err(anyhow!(
            "{what}: the server did not encrypt it as asked (sse = {:?}; it reports {}); nothing unencrypted is kept",
            want.as_str(),
            got.map(|g| format!("{:?}", g.as_str()))
                .unwrap_or_else(|| "no encryption".into())
        ))
    }
}
