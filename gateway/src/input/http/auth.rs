//! Who may post to a webhook input: the token from `Authorization: Bearer <token>` or from
//! `?token=<token>` (for senders that can only configure a URL), compared in constant time so
//! response timing says nothing about how much of a guess was right.

use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// Whether the request presents `expected`. `authorization` is the header's value, `query` the
/// URL's query string (without `?`).
pub fn authorized(expected: &Secret, authorization: Option<&[u8]>, query: Option<&str>) -> bool {
    let want = expected.expose().as_bytes();
    let from_header = authorization
        .and_then(|h| {
            let (scheme, rest) = std::str::from_utf8(h).ok()?.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .map(|t| bool::from(t.as_bytes().ct_eq(want)));
    if from_header == Some(true) {
        return true;
    }
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix("token="))
        .any(|t| bool::from(percent_decode(t).as_slice().ct_eq(want)))
}

/// `%XX` and `+` decoding of one query value (a token may hold `+`, `/`, `=` when base64).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_or_query_token() {
        let s = Secret::new("s3cr+t/=");
        assert!(authorized(&s, Some(b"Bearer s3cr+t/="), None));
        assert!(authorized(&s, Some(b"bearer  s3cr+t/= "), None));
        assert!(!authorized(&s, Some(b"Bearer s3cr+t"), None));
        assert!(!authorized(&s, Some(b"Basic s3cr+t/="), None));
        assert!(authorized(&s, None, Some("a=1&token=s3cr%2Bt%2F%3D")));
        assert!(
            !authorized(&s, None, Some("token=s3cr+t/=")),
            "+ is a space in a query"
        );
        assert!(!authorized(&s, None, Some("token=")));
        assert!(!authorized(&s, None, None));
        // A wrong header does not hide a right query token.
        assert!(authorized(&s, Some(b"Bearer x"), Some("token=s3cr%2Bt/=")));
    }

    #[test]
    fn percent_decoding_keeps_what_it_cannot_decode() {
        assert_eq!(percent_decode("a%2"), b"a%2");
        assert_eq!(percent_decode("%zz"), b"%zz");
        assert_eq!(percent_decode("%41%"), b"A%");
    }
}
