//! rclone's `obscure`/`reveal`, byte for byte as rclone's `fs/config/obscure/obscure.go`:
//! AES-256-CTR under a fixed key that rclone publishes, a random 16-byte IV in front
//! of the ciphertext, and unpadded URL-safe base64 (`base64.RawURLEncoding`).
//!
//! This is obfuscation, not encryption: anyone with rclone can reveal the value. It
//! exists because rclone *requires* options it marks `IsPassword` to be stored this
//! way (it reveals them before use); the file's 0600 mode is what protects them.

use aes::Aes256;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ctr::cipher::{KeyIvInit, StreamCipher};

/// Go's `cipher.NewCTR` counts over the whole 16-byte IV, big-endian.
type Aes256Ctr = ctr::Ctr128BE<Aes256>;

/// `cryptKey` in rclone's obscure.go: the same in every rclone build.
const CRYPT_KEY: [u8; 32] = [
    0x9c, 0x93, 0x5b, 0x48, 0x73, 0x0a, 0x55, 0x4d, 0x6b, 0xfd, 0x7c, 0x63, 0xc8, 0x86, 0xa9, 0x2b, 0xd3,
    0x90, 0x19, 0x8e, 0xb8, 0x12, 0x8a, 0xfb, 0xf4, 0xde, 0x16, 0x2b, 0x8b, 0x95, 0xf6, 0x38,
];
const IV_LEN: usize = 16;

/// Obscures `plain` with a fresh random IV, as `rclone obscure` does.
pub fn obscure(plain: &str) -> String {
    obscure_with_iv(plain, rand::random::<[u8; IV_LEN]>())
}

/// Obscures with a given IV (rclone's tests use fixed ones).
pub fn obscure_with_iv(plain: &str, iv: [u8; IV_LEN]) -> String {
    let mut out = Vec::with_capacity(IV_LEN + plain.len());
    out.extend_from_slice(&iv);
    out.extend_from_slice(plain.as_bytes());
    Aes256Ctr::new(&CRYPT_KEY.into(), &iv.into()).apply_keystream(&mut out[IV_LEN..]);
    URL_SAFE_NO_PAD.encode(out)
}

/// Reveals an obscured value; `None` when it is not one (bad base64, too short, or
/// not UTF-8). The reason is deliberately not said: the input may be a secret.
pub fn reveal(obscured: &str) -> Option<String> {
    let mut bytes = URL_SAFE_NO_PAD.decode(obscured).ok()?;
    if bytes.len() < IV_LEN {
        return None;
    }
    let (iv, data) = bytes.split_at_mut(IV_LEN);
    let iv: [u8; IV_LEN] = (*iv).try_into().ok()?;
    Aes256Ctr::new(&CRYPT_KEY.into(), &iv.into()).apply_keystream(data);
    String::from_utf8(data.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of rclone's own `obscure_test.go`.
    #[test]
    fn matches_rclone_test_vectors() {
        for (plain, want, iv) in [
            ("", "YWFhYWFhYWFhYWFhYWFhYQ", *b"aaaaaaaaaaaaaaaa"),
            ("potato", "YWFhYWFhYWFhYWFhYWFhYXMaGgIlEQ", *b"aaaaaaaaaaaaaaaa"),
            ("potato", "YmJiYmJiYmJiYmJiYmJiYp3gcEWbAw", *b"bbbbbbbbbbbbbbbb"),
        ] {
            assert_eq!(obscure_with_iv(plain, iv), want, "{plain:?}");
            assert_eq!(reveal(want).as_deref(), Some(plain));
        }
    }

    #[test]
    fn round_trips_with_random_ivs() {
        // Longer than one AES block, so the counter's carry into the next block matters.
        let plain = "a password that is longer than sixteen bytes: ünïcödé & symbols =:;#";
        let a = obscure(plain);
        let b = obscure(plain);
        assert_ne!(a, b, "each obscure draws a fresh IV");
        assert_eq!(reveal(&a).as_deref(), Some(plain));
        assert_eq!(reveal(&b).as_deref(), Some(plain));
        assert!(!a.contains(['+', '/', '=']), "URL-safe, unpadded: {a}");
    }

    #[test]
    fn rejects_what_is_not_obscured() {
        // rclone's TestRevealErrors inputs.
        for bad in ["YmJiYmJiYmJiYmJiYmJiYp*gcEWbAw", "aGVsbG8", ""] {
            assert_eq!(reveal(bad), None, "{bad}");
        }
    }
}
