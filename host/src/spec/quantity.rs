//! Kubernetes-style quantities (`512Mi`, `1G`, `100k`) and durations (`60s`, `5m`, `1h30m`).

/// Bytes from a quantity: binary suffixes Ki Mi Gi Ti Pi, decimal k M G T P, or a plain number.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("{text:?} does not start with a number"));
    }
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "P" => 1000u64.pow(5),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return Err(format!("unknown unit {suffix:?} in {text:?}")),
    };
    let value: f64 = num.parse().map_err(|_| format!("{num:?} is not a number"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    if bytes.fract() != 0.0 {
        return Err(format!("{text:?} is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

/// Seconds from a duration: `90`, `90s`, `5m`, `2h`, `1h30m`, `1d`.
pub fn parse_seconds(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("unknown unit {c:?} in {text:?}")),
        };
        let n: u64 = num.parse().map_err(|_| format!("{text:?} is not a duration"))?;
        total = total.checked_add(n.checked_mul(unit).ok_or("duration overflows")?).ok_or("duration overflows")?;
        num.clear();
    }
    if !num.is_empty() || t.is_empty() {
        return Err(format!("{text:?} is not a duration (a number needs a unit: s, m, h, d)"));
    }
    Ok(total)
}

/// Milliseconds from a duration: `250ms`, `2s`, `1m30s`; a bare number is seconds.
pub fn parse_millis(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<u64>() {
        return n.checked_mul(1000).ok_or_else(|| "duration overflows".to_string());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_len = rest[digits..].find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len() - digits);
        let (num, unit) = (&rest[..digits], &rest[digits..digits + unit_len]);
        let n: u64 = num.parse().map_err(|_| format!("{text:?} is not a duration"))?;
        let scale = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("{text:?} is not a duration (a number needs a unit: ms, s, m, h, d)")),
            other => return Err(format!("unknown unit {other:?} in {text:?}")),
        };
        total = total.checked_add(n.checked_mul(scale).ok_or("duration overflows")?).ok_or("duration overflows")?;
        rest = &rest[digits + unit_len..];
    }
    if t.is_empty() {
        return Err("an empty duration".into());
    }
    Ok(total)
}

pub fn format_bytes(n: u64) -> String {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if n >= size && n % size == 0 {
            return format!("{}{unit}", n / size);
        }
    }
    n.to_string()
}

/// Sizes for people: 1.0 MiB, 235.4 MiB, 512 B.
pub fn human_bytes(n: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= size {
            return format!("{:.1} {unit}", n as f64 / size as f64);
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("512Mi").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("12XB").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("Mi").is_err());
        assert!(parse_bytes("0.5").is_err());
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("60s").unwrap(), 60);
        assert_eq!(parse_seconds("1h30m").unwrap(), 5400);
        assert_eq!(parse_seconds("42").unwrap(), 42);
        assert!(parse_seconds("10x").is_err());
        assert!(parse_seconds("1h5").is_err());
        assert_eq!(parse_millis("250ms").unwrap(), 250);
        assert_eq!(parse_millis("1m30s").unwrap(), 90_000);
        assert_eq!(parse_millis("2").unwrap(), 2000);
        assert!(parse_millis("5x").is_err());
        assert!(parse_millis("10ms5").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(512 << 20), "512Mi");
        assert_eq!(format_bytes(1000), "1000");
    }
}
