//! Random names and hex: instance ids, temporary file names, secret placeholders. One place,
//! so every random name comes from the kernel's generator and none silently from zeros.

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `bytes` random bytes from the kernel, as hex.
///
/// Panics only if the kernel has no random generator at all (no `getrandom(2)` and no
/// `/dev/urandom`): a placeholder or instance id must never be predictable.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most the rest of `buf` into it.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut buf[filled..]))
                .expect("the kernel's random generator (getrandom(2) or /dev/urandom)");
            break;
        }
    }
    hex(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_and_random_names_differ() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
        let a = random_hex(12);
        assert_eq!(a.len(), 24);
        assert_ne!(a, random_hex(12));
        assert_ne!(a, "0".repeat(24));
    }
}
