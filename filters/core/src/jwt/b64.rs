//! Base64url decoding exactly as abseil's `WebSafeBase64Unescape`, which
//! jwt_verify_lib uses for every JWT segment and JWK field: padding optional
//! (`=` or `.`), ASCII whitespace skipped, leftover bits not checked, a single
//! dangling character rejected. A stricter decoder would turn Envoy's
//! "Jwt verification fails" into a different 401 body.

fn value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

pub fn decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4 + 2);
    let mut acc: u32 = 0;
    let mut state = 0;
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        match value(c) {
            Some(v) => {
                acc = (acc << 6) | v;
                state += 1;
                if state == 4 {
                    out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
                    acc = 0;
                    state = 0;
                }
            }
            None if is_space(c) => {}
            None if c == b'=' || c == b'.' => break,
            None => return None,
        }
        i += 1;
    }
    let expected_equals = match state {
        0 => 0,
        1 => return None,
        2 => {
            out.push((acc >> 4) as u8);
            2
        }
        _ => {
            out.push((acc >> 10) as u8);
            out.push((acc >> 2) as u8);
            1
        }
    };
    let mut equals = 0;
    for &c in &input[i..] {
        if c == b'=' || c == b'.' {
            equals += 1;
        } else if !is_space(c) {
            return None;
        }
    }
    (equals == 0 || equals == expected_equals).then_some(out)
}

/// Standard base64 with padding (Envoy `Base64::encode`, used for object and
/// list claims copied to headers).
pub fn encode_std(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        s.push(T[(n >> 18) as usize & 63] as char);
        s.push(T[(n >> 12) as usize & 63] as char);
        s.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

/// Unpadded base64url (tests sign tokens with it).
pub fn encode_url(data: &[u8]) -> String {
    encode_std(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abseil_compatible_decoding() {
        let cases: &[(&str, Option<&[u8]>)] = &[
            ("", Some(b"")),
            ("YQ", Some(b"a")),
            ("YQ==", Some(b"a")),
            ("YQ=", None), // wrong number of pads
            ("YWI", Some(b"ab")),
            ("YWI=", Some(b"ab")),
            ("YWJj", Some(b"abc")),
            ("Y", None),         // one dangling character
            ("YR", Some(b"a")),  // leftover bits are not checked
            ("Y Q", Some(b"a")), // whitespace skipped
            ("YQ+", None),       // standard alphabet is not web-safe
            ("-_-_", Some(&[0xfb, 0xff, 0xbf])),
            ("YQ==x", None),
        ];
        for (input, want) in cases {
            assert_eq!(decode(input.as_bytes()).as_deref(), *want, "{input:?}");
        }
    }

    #[test]
    fn encoders() {
        assert_eq!(encode_std(b"a"), "YQ==");
        assert_eq!(encode_std(b"abcd"), "YWJjZA==");
        assert_eq!(encode_url(&[0xfb, 0xff, 0xbf, 0x01]), "-_-_AQ");
        for n in 0..40u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(decode(encode_url(&data).as_bytes()), Some(data));
        }
    }
}
