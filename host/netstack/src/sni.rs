//! Peeks the server name (SNI) out of a TLS ClientHello, the first bytes a guest sends on a TLS
//! flow, so domain rules and blocks see the name even for an address the sandbox never resolved.
//!
//! The input is hostile: every length is checked against what is there, the hello may span
//! several records, and nothing beyond `MAX_HELLO` bytes is waited for.

/// A ClientHello longer than this is not waited for (the flow is then judged without a name).
pub const MAX_HELLO: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// Not a TLS handshake (or malformed): no name to learn.
    NotTls,
    /// A handshake whose ClientHello is not all there yet.
    Incomplete,
    /// The hello, with its host name if it sent one.
    Hello(Option<String>),
}

/// Looks at the first bytes of a flow.
pub fn peek(data: &[u8]) -> Peek {
    // Handshake bytes gathered from consecutive records.
    let mut hs = Vec::new();
    let mut rest = data;
    loop {
        if rest.is_empty() {
            return Peek::Incomplete;
        }
        if rest[0] != 0x16 {
            return if hs.is_empty() { Peek::NotTls } else { Peek::Hello(None) };
        }
        if rest.len() < 5 {
            return Peek::Incomplete;
        }
        if rest[1] != 3 {
            return Peek::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16 * 1024 + 2048 {
            return Peek::NotTls;
        }
        if rest.len() < 5 + len {
            // Gather what there is: the hello may already be complete in a partial record.
            hs.extend_from_slice(&rest[5..]);
            return match hello(&hs) {
                Some(p) => p,
                None if data.len() >= MAX_HELLO => Peek::NotTls,
                None => Peek::Incomplete,
            };
        }
        hs.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if let Some(p) = hello(&hs) {
            return p;
        }
        if hs.len() >= MAX_HELLO {
            return Peek::NotTls;
        }
    }
}

/// `None` while the handshake message is incomplete.
fn hello(hs: &[u8]) -> Option<Peek> {
    if hs.len() < 4 {
        return None;
    }
    if hs[0] != 1 {
        return Some(Peek::NotTls);
    }
    let len = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
    if len > MAX_HELLO {
        return Some(Peek::NotTls);
    }
    if hs.len() < 4 + len {
        return None;
    }
    Some(match server_name(&hs[4..4 + len]) {
        Ok(name) => Peek::Hello(name),
        Err(()) => Peek::NotTls,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ()> {
        if self.0.len() < n {
            return Err(());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<usize, ()> {
        Ok(usize::from(self.take(1)?[0]))
    }
    fn u16(&mut self) -> Result<usize, ()> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn vec8(&mut self) -> Result<&'a [u8], ()> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Result<&'a [u8], ()> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn server_name(body: &[u8]) -> Result<Option<String>, ()> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    if r.0.is_empty() {
        return Ok(None);
    }
    let mut exts = Reader(r.vec16()?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(Reader(data).vec16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).map_err(|_| ())?;
                if name.is_empty() || name.len() > 253 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
                    return Err(());
                }
                let name = crate::policy::normalize_name(name);
                // "." or "a..b" names no host: the hello is judged without a name.
                if name.is_empty() || name.split('.').any(str::is_empty) {
                    return Ok(None);
                }
                return Ok(Some(name));
            }
        }
        return Ok(None);
    }
    Ok(None)
}

/// A minimal ClientHello naming `name`, as tests and fuzz seeds need one.
pub fn client_hello(name: &str) -> Vec<u8> {
    let mut sni = Vec::new();
    let entry_len = 3 + name.len();
    sni.extend_from_slice(&(entry_len as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name.as_bytes());
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_gives_its_name_whole_split_or_partial() {
        let hello = client_hello("Packages.Example");
        assert_eq!(peek(&hello), Peek::Hello(Some("packages.example".into())));
        for cut in 0..hello.len() {
            assert_eq!(peek(&hello[..cut]), Peek::Incomplete, "cut at {cut}");
        }
        // The same handshake split over two records.
        let hs = &hello[5..];
        let mut two = vec![0x16, 3, 1, 0, 10];
        two.extend_from_slice(&hs[..10]);
        two.extend_from_slice(&[0x16, 3, 1, 0, (hs.len() - 10) as u8]);
        two.extend_from_slice(&hs[10..]);
        assert_eq!(peek(&two), Peek::Hello(Some("packages.example".into())));
    }

    #[test]
    fn names_without_a_host_are_no_name() {
        // Found by the net_packets fuzz target: an SNI of "." became the empty name.
        let found = include_bytes!("../../../tests/fuzz/corpus/net_packets/regress-sni-dot");
        assert_eq!(peek(found), Peek::Hello(None));
        for bad in [".", "..", "a..b", ".a"] {
            assert_eq!(peek(&client_hello(bad)), Peek::Hello(None), "{bad}");
        }
        assert_eq!(peek(&client_hello("a.b.")), Peek::Hello(Some("a.b".into())));
    }

    #[test]
    fn other_protocols_and_lies_give_no_name() {
        assert_eq!(peek(b"GET / HTTP/1.1\r\n"), Peek::NotTls);
        let mut hello = client_hello("a.example");
        let n = hello.len();
        hello[n - 10] = 0xff; // a name length pointing past the end
        assert!(matches!(peek(&hello), Peek::NotTls | Peek::Hello(None)), "{:?}", peek(&hello));
        assert_eq!(peek(&client_hello("bad name!")), Peek::NotTls);
        assert_eq!(peek(&[0x16, 3, 1, 0xff, 0xff]), Peek::NotTls);
    }
}
