//! The AWS SDK pieces every S3 part of guard shares (the S3 store and the S3 target): one cached
//! client per endpoint and region, SDK errors as messages people can act on (and whether the
//! server itself failed, [`unavailable`]), and a
//! CompleteMultipartUpload that survives servers whose answer the SDK cannot parse.

use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, Result};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;

use crate::runtime::wait;

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
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
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
/// failed rather than the request — no connection, no answer in time, a broken response, a 5xx
/// — after every attempt.
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
    let unavailable = matches!(
        e,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
    ) || status.is_some_and(|s| s >= 500);
    let msg = match (status, e.code()) {
        (Some(s), Some(code)) => format!(
            "{what}: HTTP {s} {code}{}",
            e.message().map(|m| format!(": {m}")).unwrap_or_default()
        ),
        (Some(s), None) => format!("{what}: HTTP {s}: {}", DisplayErrorContext(&e)),
        _ => format!("{what}: {}", DisplayErrorContext(&e)),
    };
    anyhow::Error::new(S3Failure { msg, unavailable })
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
