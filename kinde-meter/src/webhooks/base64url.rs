//! Base64url without padding (RFC 4648 §5), the encoding of every part of a JWS and of a
//! JWK's `n` and `e`. Decoding only, and strict: a byte outside the alphabet, padding, an
//! impossible length or non-zero leftover bits is refused, so one string has one meaning.

/// The 6-bit value of one base64url character.
fn sextet(b: u8) -> Option<u32> {
    let value = match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    };
    Some(u32::from(value))
}

/// Decodes unpadded base64url, or `None` if `input` is not exactly that.
pub(super) fn decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    for chunk in input.chunks(4) {
        let mut bits = 0u32;
        for &b in chunk {
            bits = bits << 6 | sextet(b)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(bits >> 16) as u8, (bits >> 8) as u8, bits as u8]),
            // 18 bits: two bytes, then 2 bits that must be zero.
            3 if bits & 0b11 == 0 => {
                out.extend_from_slice(&[(bits >> 10) as u8, (bits >> 2) as u8])
            }
            // 12 bits: one byte, then 4 bits that must be zero.
            2 if bits & 0b1111 == 0 => out.push((bits >> 4) as u8),
            // One character carries 6 bits, less than a byte: never a valid ending.
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
pub(super) fn encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut bits = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            bits |= u32::from(b) << (16 - 8 * i);
        }
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 4648 §10, in the url alphabet and without padding.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(
                decode(encoded.as_bytes()).as_deref(),
                Some(plain.as_bytes())
            );
            assert_eq!(encode(plain.as_bytes()), encoded);
        }
        assert_eq!(decode(b"-_-_").as_deref(), Some(&[0xfb, 0xff, 0xbf][..]));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            &b"Zg=="[..], // padding
            b"Zm9v+/",    // the standard alphabet
            b"Z",         // one character: not even a byte
            b"Zh",        // leftover bits set: `Zg` is the one encoding of "f"
            b"Zm9",       // leftover bits set
            b"Zm 9v",     // whitespace
            "Zm9v\u{e9}".as_bytes(),
        ] {
            assert_eq!(decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            proptest::prop_assert_eq!(decode(encode(&bytes).as_bytes()), Some(bytes));
        }
    }
}
