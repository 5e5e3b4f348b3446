//! Low-level encodings: PAX records, PAX times, ustar numeric fields and the
//! header checksum. Everything here parses strictly and never panics on
//! input.

use cs_protocol::Timestamp;

pub(crate) const BLOCK: usize = 512;
/// Byte range of the checksum field in a header.
const CKSUM: std::ops::Range<usize> = 148..156;

/// Appends one PAX record `"<len> <key>=<value>\n"` to `out`; `len` counts
/// the whole record including its own digits.
pub(crate) fn push_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    loop {
        let next = rest + decimal_digits(len);
        if next == len {
            break;
        }
        len = next;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn decimal_digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Splits PAX extended header data into `(key, value)` records.
pub(crate) fn parse_records(mut data: &[u8]) -> Result<Vec<(&str, &[u8])>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let sp = data.iter().take(21).position(|&b| b == b' ').ok_or("PAX record length is not followed by a space")?;
        let digits = &data[..sp];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(format!("PAX record length {:?} is not a decimal number", String::from_utf8_lossy(digits)));
        }
        let len: usize =
            std::str::from_utf8(digits).ok().and_then(|s| s.parse().ok()).ok_or("PAX record length overflows")?;
        if len > data.len() {
            return Err(format!(
                "PAX record claims {len} bytes but only {} remain in the extension header",
                data.len()
            ));
        }
        // Shortest record: "<len> k=\n".
        if len < sp + 4 {
            return Err(format!("PAX record length {len} is too short"));
        }
        let rec = &data[..len];
        if rec[len - 1] != b'\n' {
            return Err("PAX record does not end with a newline".into());
        }
        let body = &rec[sp + 1..len - 1];
        let eq = body.iter().position(|&b| b == b'=').ok_or("PAX record has no '='")?;
        let key = std::str::from_utf8(&body[..eq]).map_err(|_| "PAX keyword is not UTF-8")?;
        if key.is_empty() {
            return Err("PAX record has an empty keyword".into());
        }
        out.push((key, &body[eq + 1..]));
        data = &data[len..];
    }
    Ok(out)
}

/// Formats a time as a PAX decimal real number, exact to the nanosecond.
pub(crate) fn format_time(t: Timestamp) -> String {
    if t.nsec == 0 {
        t.sec.to_string()
    } else if t.sec >= 0 {
        format!("{}.{:09}", t.sec, t.nsec)
    } else {
        // sec + nsec/1e9 = -((|sec| - 1) + (1e9 - nsec)/1e9)
        let whole = -(t.sec as i128) - 1;
        format!("-{}.{:09}", whole, 1_000_000_000 - t.nsec)
    }
}

/// Parses a PAX time `[-]<digits>[.<digits>]`. Fraction digits beyond the
/// ninth are dropped (the magnitude is truncated). `None` on anything else or
/// on overflow of `i64` seconds.
pub(crate) fn parse_time(s: &[u8]) -> Option<Timestamp> {
    let (neg, s) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    let (int, frac) = match s.iter().position(|&b| b == b'.') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    if int.is_empty() || !int.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut whole: i128 = 0;
    for &d in int {
        whole = whole.checked_mul(10)?.checked_add(i128::from(d - b'0'))?;
        if whole > i128::from(u64::MAX) {
            return None;
        }
    }
    let mut nsec: u32 = 0;
    if let Some(frac) = frac {
        if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        for i in 0..9 {
            nsec = nsec * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
        }
    }
    let (sec, nsec) = if !neg {
        (whole, nsec)
    } else if nsec == 0 {
        (-whole, 0)
    } else {
        (-whole - 1, 1_000_000_000 - nsec)
    };
    let sec = i64::try_from(sec).ok()?;
    Some(Timestamp::new(sec, nsec))
}

/// Parses a ustar numeric field: octal ASCII (optional leading spaces, then
/// digits, then NUL/space padding) or GNU base-256 (high bit of the first
/// byte set; `0xff` first byte means negative two's complement).
pub(crate) fn parse_numeric(field: &[u8]) -> Result<i64, String> {
    let Some(&first) = field.first() else {
        return Err("empty numeric field".into());
    };
    if first & 0x80 != 0 {
        let negative = first == 0xff;
        let mut v: i128 = if negative { -1 } else { 0 };
        for (i, &b) in field.iter().enumerate() {
            let b = if i == 0 && !negative { b & 0x7f } else { b };
            v = (v << 8) | i128::from(b);
            if !(i128::from(i64::MIN)..=i128::from(i64::MAX)).contains(&v) {
                return Err("base-256 numeric field overflows".into());
            }
        }
        return Ok(v as i64);
    }
    let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
    let digits_end =
        field[start..].iter().position(|&b| !(b'0'..=b'7').contains(&b)).map_or(field.len(), |i| start + i);
    let digits = &field[start..digits_end];
    let bad = || format!("numeric field {:?} is not octal", String::from_utf8_lossy(field).trim_end_matches('\0'));
    if digits.is_empty() || !field[digits_end..].iter().all(|&b| b == 0 || b == b' ') {
        return Err(bad());
    }
    let mut v: i64 = 0;
    for &d in digits {
        v = v.checked_mul(8).and_then(|v| v.checked_add(i64::from(d - b'0'))).ok_or_else(bad)?;
    }
    Ok(v)
}

/// Checks a header's checksum field against its contents (the unsigned sum
/// of all bytes with the checksum field read as spaces; the historic signed
/// sum is accepted too).
pub(crate) fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let Ok(stored) = parse_numeric(&block[CKSUM]) else {
        return false;
    };
    let mut unsigned: i64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if CKSUM.contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || stored == signed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lengths_count_their_own_digits() {
        for vlen in [0, 1, 5, 6, 7, 80, 89, 90, 91, 95, 96, 990, 995, 996, 4096] {
            let mut out = Vec::new();
            let value = vec![b'v'; vlen];
            push_record(&mut out, "path", &value);
            let recs = parse_records(&out).unwrap();
            assert_eq!(recs, vec![("path", &value[..])], "value length {vlen}");
        }
    }

    #[test]
    fn records_parse_strictly() {
        assert_eq!(parse_records(b"8 a=bcd\n12 path=x=y\n").unwrap(), vec![("a", &b"bcd"[..]), ("path", &b"x=y"[..])]);
        for bad in [
            &b"10 a=bcd\n"[..], // length too long for the data
            b"7 a=bcd\n",       // length cuts the record: no newline at its end
            b"x a=b\n",         // not a number
            b"6 =bc\n",         // empty keyword
            b"5 ab\n",          // no '='
            b"3 \n",            // too short
            b"99999999999999999999999 a=b\n",
            b"1234567890123456789012",
        ] {
            assert!(parse_records(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn times_round_trip() {
        for (sec, nsec, text) in [
            (1_700_000_000, 123_456_789, "1700000000.123456789"),
            (0, 0, "0"),
            (5, 999_999_999, "5.999999999"),
            (-1, 500_000_000, "-0.500000000"),
            (-2, 0, "-2"),
            (-100, 1, "-99.999999999"),
            (i64::MIN, 0, "-9223372036854775808"),
            (i64::MIN, 1, "-9223372036854775807.999999999"),
            (i64::MAX, 999_999_999, "9223372036854775807.999999999"),
        ] {
            let t = Timestamp::new(sec, nsec);
            assert_eq!(format_time(t), text);
            assert_eq!(parse_time(text.as_bytes()), Some(t), "{text}");
        }
        assert_eq!(parse_time(b"1.5"), Some(Timestamp::new(1, 500_000_000)));
        assert_eq!(parse_time(b"1.1234567899"), Some(Timestamp::new(1, 123_456_789)));
        assert_eq!(parse_time(b"-1.25"), Some(Timestamp::new(-2, 750_000_000)));
        assert_eq!(parse_time(b"-0"), Some(Timestamp::new(0, 0)));
        for bad in [
            &b""[..],
            b"-",
            b".5",
            b"1.",
            b"1.2.3",
            b"+1",
            b" 1",
            b"1 ",
            b"1e9",
            b"abc",
            b"--1",
            b"9223372036854775808",
            b"-9223372036854775808.5",
            b"99999999999999999999999999999999999999999",
        ] {
            assert_eq!(parse_time(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_numeric(b"0000644\0"), Ok(0o644));
        assert_eq!(parse_numeric(b"  644 \0\0"), Ok(0o644));
        assert_eq!(parse_numeric(b"00000000012\0"), Ok(10));
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[7] = 2; // 2 << 32
        assert_eq!(parse_numeric(&b256), Ok(2 << 32));
        assert_eq!(parse_numeric(&[0xff; 12]), Ok(-1));
        let mut huge = [0xffu8; 12];
        huge[0] = 0x80;
        assert!(parse_numeric(&huge).is_err());
        for bad in [&b"\0\0\0\0"[..], b"        ", b"0008\0", b"12 3\0", b"abc", b""] {
            assert!(parse_numeric(bad).is_err(), "{bad:?}");
        }
    }
}
