//! AWS Signature Version 4, verified: with credentials configured
//! (`serve --http-credentials FILE`), every request must be signed with one
//! of them, as boto3, the AWS CLI and every SDK sign.
//!
//! Verification recomputes the signature from the request as received and
//! the configured secret, and compares it in constant time (`Mac::verify_slice`).
//! https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use hyper::http::request::Parts;
use hyper::StatusCode;
use sha2::{Digest, Sha256};

use super::clock;
use super::errors::ApiError;

type HmacSha256 = Hmac<Sha256>;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The service name in the credential scope: the clients sign for `lambda`.
const SERVICE: &str = "lambda";
/// How far X-Amz-Date may be from this host's clock, as on AWS: 15 minutes.
pub const MAX_SKEW_SECS: i64 = 15 * 60;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the HTTP credentials file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the HTTP credentials file {} is readable by group or others (mode {mode:o}): it holds secrets; chmod 600 it", path.display())]
    Mode { path: PathBuf, mode: u32 },
    #[error("{}:{line}: expected `ACCESS_KEY_ID SECRET_ACCESS_KEY`, two words", path.display())]
    Line { path: PathBuf, line: usize },
    #[error("the HTTP credentials file {} has no credentials: add a line `ACCESS_KEY_ID SECRET_ACCESS_KEY`", path.display())]
    Empty { path: PathBuf },
}

/// The access key ids that may call, with their secret keys.
#[derive(Clone)]
pub struct Credentials {
    secrets: HashMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("Credentials")
            .field("access_key_ids", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credentials {
    /// Read `ACCESS_KEY_ID SECRET_ACCESS_KEY` lines (blank lines and `#`
    /// comments skipped) from a file only its owner can read.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let read = |source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = fs::metadata(path).map_err(read)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CredentialsError::Mode {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(read)?;
        let mut secrets = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let [id, secret] = words.as_slice() else {
                return Err(CredentialsError::Line {
                    path: path.to_path_buf(),
                    line: i + 1,
                });
            };
            secrets.insert((*id).to_owned(), (*secret).to_owned());
        }
        if secrets.is_empty() {
            return Err(CredentialsError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Credentials { secrets })
    }

    #[cfg(test)]
    pub fn of(pairs: &[(&str, &str)]) -> Credentials {
        Credentials {
            secrets: pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
        }
    }
}

fn denied(kind: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, kind, message)
}

/// Before the body is read: a request without an Authorization header is
/// refused at once.
pub fn precheck(parts: &Parts) -> Result<(), ApiError> {
    if parts.headers.contains_key(hyper::header::AUTHORIZATION) {
        Ok(())
    } else {
        Err(denied(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token: this server requires AWS Signature Version 4 (sign with the credentials configured by `serve --http-credentials`)",
        ))
    }
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
struct Authorization<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, ApiError> {
    let incomplete = |what: &str| {
        denied(
            "IncompleteSignatureException",
            format!("the Authorization header is not an AWS Signature Version 4: {what}"),
        )
    };
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| incomplete(&format!("it must start with {ALGORITHM}")))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for field in rest.split(',') {
        let (k, v) = field
            .trim()
            .split_once('=')
            .ok_or_else(|| incomplete("fields are KEY=VALUE"))?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let credential = credential.ok_or_else(|| incomplete("no Credential"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, "aws4_request"] = scope.as_slice() else {
        return Err(incomplete(
            "Credential must be ACCESS_KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    Ok(Authorization {
        access_key,
        date,
        region,
        service,
        signed_headers: signed
            .ok_or_else(|| incomplete("no SignedHeaders"))?
            .split(';')
            .collect(),
        signature: signature.ok_or_else(|| incomplete("no Signature"))?,
    })
}

/// AWS's URI encoding: every byte but the unreserved ones as `%XX`
/// (upper-case hex); `/` kept when `keep_slash`.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical query string: each name and value decoded, then encoded
/// the AWS way, sorted by name then value.
fn canonical_query(raw: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = raw
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (uri_encode(&dec(k), false), uri_encode(&dec(v), false))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Check the request's signature. `now` is Unix seconds.
pub fn verify(creds: &Credentials, parts: &Parts, body: &[u8], now: i64) -> Result<(), ApiError> {
    verify_for(creds, parts, body, now, SERVICE)
}

fn verify_for(
    creds: &Credentials,
    parts: &Parts,
    body: &[u8],
    now: i64,
    service: &str,
) -> Result<(), ApiError> {
    precheck(parts)?;
    let header = |name: &str| -> Result<Option<&str>, ApiError> {
        match parts.headers.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().map(Some).map_err(|_| {
                denied(
                    "InvalidSignatureException",
                    format!("the {name} header is not ASCII text"),
                )
            }),
        }
    };
    let auth = parse_authorization(header("authorization")?.unwrap_or(""))?;
    let Some(secret) = creds.secrets.get(auth.access_key) else {
        return Err(denied(
            "UnrecognizedClientException",
            "The security token included in the request is invalid: its access key id is not one of this server's --http-credentials",
        ));
    };
    if auth.service != service {
        return Err(denied(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to correct service: '{service}' (it is scoped to '{}')",
                auth.service
            ),
        ));
    }
    let amz_date = header("x-amz-date")?.ok_or_else(|| {
        denied(
            "IncompleteSignatureException",
            "the request has no X-Amz-Date header: sign it with an SDK",
        )
    })?;
    let when = clock::parse_amz_date(amz_date).ok_or_else(|| {
        denied(
            "IncompleteSignatureException",
            format!("X-Amz-Date {amz_date:?} is not YYYYMMDDTHHMMSSZ"),
        )
    })?;
    if (now - when).abs() > MAX_SKEW_SECS {
        return Err(denied(
            "InvalidSignatureException",
            format!(
                "Signature expired: {amz_date} is more than 15 minutes from the server's time {}: check the client's clock",
                clock::clf_time(now.max(0) as u64)
            ),
        ));
    }
    if auth.date != &amz_date[..8] {
        return Err(denied(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to a valid date: {} is not the date of X-Amz-Date {amz_date}",
                auth.date
            ),
        ));
    }
    if !auth.signed_headers.contains(&"host") {
        return Err(denied(
            "InvalidSignatureException",
            "SignedHeaders must include host",
        ));
    }

    let payload_hash = hex(&Sha256::digest(body));
    if let Some(claimed) = header("x-amz-content-sha256")? {
        if claimed != payload_hash {
            return Err(denied(
                "InvalidSignatureException",
                "X-Amz-Content-Sha256 does not match the body's SHA-256",
            ));
        }
    }
    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let values: Vec<String> = parts
            .headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(denied(
                "InvalidSignatureException",
                format!("the signed header {name} is not in the request"),
            ));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let path = parts.uri.path();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        parts.method,
        if path.is_empty() {
            "/".to_owned()
        } else {
            uri_encode(path, true)
        },
        canonical_query(parts.uri.query()),
        canonical_headers,
        auth.signed_headers.join(";"),
        payload_hash
    );
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes());
    let k_region = hmac(&k_date, auth.region.as_bytes());
    let k_service = hmac(&k_region, auth.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let mut mac = HmacSha256::new_from_slice(&k_signing).expect("HMAC takes any key length");
    mac.update(string_to_sign.as_bytes());
    let given = unhex(auth.signature).unwrap_or_default();
    mac.verify_slice(&given).map_err(|_| {
        denied(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's Signature Version 4 test suite, `get-vanilla`.
    const ID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const VANILLA_SIG: &str = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

    fn vanilla(sig: &str, date: &str) -> Parts {
        let req = hyper::Request::get("/")
            .header("Host", "example.amazonaws.com")
            .header("X-Amz-Date", date)
            .header(
                "Authorization",
                format!("AWS4-HMAC-SHA256 Credential={ID}/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}"),
            )
            .body(())
            .unwrap();
        req.into_parts().0
    }

    #[test]
    fn aws_test_vector_verifies() {
        let creds = Credentials::of(&[(ID, SECRET)]);
        let now = clock::parse_amz_date("20150830T123600Z").unwrap();
        let parts = vanilla(VANILLA_SIG, "20150830T123600Z");
        verify_for(&creds, &parts, b"", now, "service").unwrap();
        // A changed signature, another secret, a stale clock: refused.
        let bad = vanilla(&VANILLA_SIG.replace('5', "6"), "20150830T123600Z");
        let e = verify_for(&creds, &bad, b"", now, "service").unwrap_err();
        assert_eq!(e.kind, "InvalidSignatureException");
        let other = Credentials::of(&[(ID, "another-secret")]);
        assert!(verify_for(&other, &parts, b"", now, "service").is_err());
        let e = verify_for(&creds, &parts, b"", now + 16 * 60, "service").unwrap_err();
        assert!(e.message.contains("Signature expired"), "{}", e.message);
        let stranger = Credentials::of(&[("AKIDOTHER", SECRET)]);
        let e = verify_for(&stranger, &parts, b"", now, "service").unwrap_err();
        assert_eq!(e.kind, "UnrecognizedClientException");
        // Signed for another service than lambda.
        assert!(verify(&creds, &parts, b"", now).is_err());
        // A body that is not the one signed.
        assert!(verify_for(&creds, &parts, b"x", now, "service").is_err());
    }

    #[test]
    fn unsigned_is_refused() {
        let creds = Credentials::of(&[(ID, SECRET)]);
        let parts = hyper::Request::get("/").body(()).unwrap().into_parts().0;
        let e = verify(&creds, &parts, b"", 0).unwrap_err();
        assert_eq!(e.status, 403);
        assert_eq!(e.kind, "MissingAuthenticationTokenException");
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(
            uri_encode("/2015-03-31/functions/a%3Ab/invocations", true),
            "/2015-03-31/functions/a%253Ab/invocations"
        );
        assert_eq!(
            canonical_query(Some("b=2&a=%24LATEST&a=1")),
            "a=%24LATEST&a=1&b=2"
        );
    }

    #[test]
    fn credentials_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("creds");
        fs::write(&p, "# id secret\nAKID1 s3cret\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Credentials::load(&p),
            Err(CredentialsError::Mode { .. })
        ));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let c = Credentials::load(&p).unwrap();
        assert_eq!(c.secrets["AKID1"], "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        fs::write(&p, "AKID1\n").unwrap();
        assert!(matches!(
            Credentials::load(&p),
            Err(CredentialsError::Line { line: 1, .. })
        ));
    }
}
