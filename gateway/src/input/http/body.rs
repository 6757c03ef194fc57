//! From a webhook's body as received to the payload the decoder reads: the content type is
//! checked, a gzip'd body is inflated (never past `max_body_bytes`, so a gzip bomb costs at most
//! that much memory), and from `multipart/form-data` the JSON part is taken and every other part
//! (a Plate Recognizer snapshot, say) dropped without being stored.
//!
//! Separate from the server so the rules are plain functions over bytes, testable without a
//! socket; every refusal is a [`BodyError`] with the status it gets and a stable label.

use std::io::Read;

use bytes::Bytes;

/// Why a body was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body larger than {limit} bytes{}", if *.inflated { " once decompressed" } else { "" })]
    TooLarge { limit: usize, inflated: bool },
    #[error("content type {0:?} is not accepted: send application/json, text/plain or multipart/form-data")]
    UnsupportedType(String),
    #[error("content encoding {0:?} is not accepted: send gzip or no encoding")]
    UnsupportedEncoding(String),
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("multipart body cannot be read: {0}")]
    BadMultipart(String),
    #[error("multipart body has no JSON part (a part named \"json\" or of type application/json)")]
    NoJsonPart,
}

impl BodyError {
    /// Stable label for `readings_rejected_total{reason}`.
    pub fn label(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "too_large",
            BodyError::UnsupportedType(_) => "unsupported_content_type",
            BodyError::UnsupportedEncoding(_) => "unsupported_content_encoding",
            BodyError::BadGzip(_) => "bad_gzip",
            BodyError::BadMultipart(_) => "bad_multipart",
            BodyError::NoJsonPart => "no_json_part",
        }
    }

    /// The HTTP status a sender gets for it.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge { .. } => 413,
            BodyError::UnsupportedType(_) | BodyError::UnsupportedEncoding(_) => 415,
            BodyError::BadGzip(_) | BodyError::BadMultipart(_) | BodyError::NoJsonPart => 400,
        }
    }
}

/// How the body is wrapped, from `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    /// The payload itself (JSON, line protocol, CSV...): the decoder judges the bytes.
    Plain,
    /// `multipart/form-data` with this boundary.
    Multipart { boundary: String },
}

/// Reads `Content-Type`. Absent: the body is taken as the input's format. Accepted: JSON
/// (`application/json`, `text/json`, `application/*+json`), text (`text/plain`, `text/csv`,
/// the natural types of line protocol and CSV), and `multipart/form-data`.
pub fn body_kind(content_type: Option<&str>) -> Result<BodyKind, BodyError> {
    let Some(ct) = content_type else {
        return Ok(BodyKind::Plain);
    };
    let mime: mime::Mime = ct
        .parse()
        .map_err(|_| BodyError::UnsupportedType(ct.to_owned()))?;
    let (ty, sub, suffix) = (
        mime.type_().as_str(),
        mime.subtype().as_str(),
        mime.suffix().map(|s| s.as_str()),
    );
    match (ty, sub, suffix) {
        ("application", "json", _) | ("text", "json", _) | ("application", _, Some("json")) => {
            Ok(BodyKind::Plain)
        }
        ("text", "plain" | "csv", _) => Ok(BodyKind::Plain),
        ("multipart", "form-data", _) => match mime.get_param(mime::BOUNDARY) {
            Some(b) if !b.as_str().is_empty() => Ok(BodyKind::Multipart {
                boundary: b.as_str().to_owned(),
            }),
            _ => Err(BodyError::BadMultipart(
                "multipart/form-data without a boundary".into(),
            )),
        },
        _ => Err(BodyError::UnsupportedType(ct.to_owned())),
    }
}

/// Undoes `Content-Encoding` (`gzip`, `x-gzip`, `identity` or none), never producing more than
/// `limit` bytes.
pub fn decode_content(
    encoding: Option<&str>,
    body: Bytes,
    limit: usize,
) -> Result<Bytes, BodyError> {
    match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => Ok(body),
        Some("gzip") | Some("x-gzip") => gunzip(&body, limit).map(Bytes::from),
        Some(other) => Err(BodyError::UnsupportedEncoding(other.to_owned())),
    }
}

/// Inflates gzip into at most `limit` bytes: reading stops one byte past it.
fn gunzip(gz: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::with_capacity(gz.len().saturating_mul(4).min(limit));
    let mut reader = flate2::read::MultiGzDecoder::new(gz).take(limit as u64 + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|e| BodyError::BadGzip(e.to_string()))?;
    if out.len() > limit {
        return Err(BodyError::TooLarge {
            limit,
            inflated: true,
        });
    }
    Ok(out)
}

/// The payload in a body of `kind`: the body itself, or a multipart body's JSON part (the part
/// named `json`, else the first of type `application/json`); other parts are read past and
/// dropped.
pub async fn payload(kind: &BodyKind, body: Bytes) -> Result<Bytes, BodyError> {
    let BodyKind::Multipart { boundary } = kind else {
        return Ok(body);
    };
    let stream = tokio_stream::once(Ok::<Bytes, std::io::Error>(body));
    let mut form = multer::Multipart::new(stream, boundary.clone());
    let mut named_json_part: Option<Bytes> = None;
    let mut typed_json: Option<Bytes> = None;
    // Every part is read to the closing boundary, so a truncated body is refused whole even
    // when its JSON part came through.
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|e| BodyError::BadMultipart(e.to_string()))?;
        let Some(field) = field else { break };
        let named_json = field.name() == Some("json");
        let is_json = field
            .content_type()
            .is_some_and(|m| m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON));
        let data = field
            .bytes()
            .await
            .map_err(|e| BodyError::BadMultipart(e.to_string()))?;
        if named_json && named_json_part.is_none() {
            named_json_part = Some(data);
        } else if is_json && typed_json.is_none() {
            typed_json = Some(data);
        }
    }
    named_json_part.or(typed_json).ok_or(BodyError::NoJsonPart)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    #[test]
    fn content_types() {
        assert_eq!(body_kind(None), Ok(BodyKind::Plain));
        assert_eq!(
            body_kind(Some("application/json; charset=utf-8")),
            Ok(BodyKind::Plain)
        );
        assert_eq!(
            body_kind(Some("application/cloudevents+json")),
            Ok(BodyKind::Plain)
        );
        assert_eq!(body_kind(Some("text/plain")), Ok(BodyKind::Plain));
        assert_eq!(
            body_kind(Some("multipart/form-data; boundary=XyZ")),
            Ok(BodyKind::Multipart {
                boundary: "XyZ".into()
            })
        );
        assert_eq!(
            body_kind(Some("application/xml")).unwrap_err().status(),
            415
        );
        assert_eq!(body_kind(Some("not a type")).unwrap_err().status(), 415);
        assert_eq!(
            body_kind(Some("multipart/form-data")).unwrap_err().status(),
            400
        );
    }

    #[test]
    fn gzip_is_inflated_within_the_limit() {
        let body = gz(br#"{"a":1}"#);
        assert_eq!(
            &decode_content(Some("gzip"), body, 100).unwrap()[..],
            br#"{"a":1}"#
        );
        // A bomb: 64 MiB of zeros in ~64 KiB; refused at limit + 1 bytes.
        let bomb = gz(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        let err = decode_content(Some("gzip"), bomb, 1 << 20).unwrap_err();
        assert_eq!(
            err,
            BodyError::TooLarge {
                limit: 1 << 20,
                inflated: true
            }
        );
        assert_eq!(err.status(), 413);
        let err = decode_content(Some("gzip"), Bytes::from_static(b"plain"), 100).unwrap_err();
        assert_eq!(err.label(), "bad_gzip");
        assert_eq!(
            decode_content(Some("br"), Bytes::new(), 100)
                .unwrap_err()
                .status(),
            415
        );
    }

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Bytes {
        let mut b = Vec::new();
        for (name, ct, data) in parts {
            b.extend_from_slice(b"--BOUND\r\n");
            match ct {
                Some(ct) => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"f\"\r\nContent-Type: {ct}\r\n\r\n").as_bytes(),
                ),
                None => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            b.extend_from_slice(data);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--BOUND--\r\n");
        Bytes::from(b)
    }

    #[tokio::test]
    async fn multipart_gives_its_json_part() {
        let kind = BodyKind::Multipart {
            boundary: "BOUND".into(),
        };
        let body = form(&[
            ("upload", Some("image/jpeg"), b"\xff\xd8\xff\xe0 jpeg"),
            ("json", None, br#"{"a":1}"#),
        ]);
        assert_eq!(&payload(&kind, body).await.unwrap()[..], br#"{"a":1}"#);
        let typed = form(&[("data", Some("application/json"), br#"{"b":2}"#)]);
        assert_eq!(&payload(&kind, typed).await.unwrap()[..], br#"{"b":2}"#);
        let none = form(&[("upload", Some("image/jpeg"), b"\xff\xd8")]);
        assert_eq!(payload(&kind, none).await, Err(BodyError::NoJsonPart));
        let full = form(&[("json", None, br#"{"a":1}"#)]);
        let truncated = full.slice(..full.len() - 20);
        assert_eq!(
            payload(&kind, truncated).await.unwrap_err().label(),
            "bad_multipart"
        );
    }
}
