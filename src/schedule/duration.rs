//! Go's `time.ParseDuration`, which robfig uses for `@every` (so `@every 1h30m` and `@every 1.5h`
//! mean what they mean to Kubernetes). Hand-written: it is ~60 lines and no crate parses Go's
//! grammar with Go's error messages (`humantime` accepts different syntax).

/// Nanoseconds, possibly negative, or Go's error message.
// A transcription of Go's `time.ParseDuration`, kept in Go's shape so the two can be
// compared line by line.
pub fn parse_go_duration(orig: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {}", go_quote(orig));
    let mut s = orig;
    let mut neg = false;
    if let Some(rest) = s.strip_prefix('-') {
        neg = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    const LIMIT: u128 = 1 << 63;
    let mut total: u128 = 0;
    while !s.is_empty() {
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut v: u128 = 0;
        for c in int_part.bytes() {
            v = v * 10 + u128::from(c - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
        }
        let mut frac: u128 = 0;
        let mut scale: f64 = 1.0;
        let mut post = false;
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            post = frac_len > 0;
            let mut overflow = false;
            for c in rest[..frac_len].bytes() {
                if overflow || frac > (u64::MAX as u128) / 10 {
                    overflow = true; // Go ignores further digits once the fraction overflows
                    continue;
                }
                frac = frac * 10 + u128::from(c - b'0');
                scale *= 10.0;
            }
            s = &rest[frac_len..];
        }
        if int_len == 0 && !post {
            return Err(invalid());
        }
        let unit_len = s
            .bytes()
            .take_while(|c| *c != b'.' && !c.is_ascii_digit())
            .count();
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", go_quote(orig)));
        }
        let unit_text = &s[..unit_len];
        s = &s[unit_len..];
        let unit: u128 = match unit_text {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    go_quote(unit_text),
                    go_quote(orig)
                ));
            }
        };
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if frac > 0 {
            // Go computes this in float64 too.
            v += (frac as f64 * (unit as f64 / scale)) as u128;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        total += v;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        return Ok(-(total as i128));
    }
    if total > LIMIT - 1 {
        return Err(invalid());
    }
    Ok(total as i128)
}

/// Go's `strconv.Quote` for the ASCII-printable case; other characters are escaped as `\u{..}`
/// would be by Go (close enough for an error message).
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_duration_cases() {
        let s = 1_000_000_000i128;
        let cases: &[(&str, Result<i128, &str>)] = &[
            ("0", Ok(0)),
            ("5s", Ok(5 * s)),
            ("1h30m", Ok(5400 * s)),
            ("1.5h", Ok(5400 * s)),
            ("90s", Ok(90 * s)),
            ("300ms", Ok(300_000_000)),
            (".5s", Ok(s / 2)),
            ("1µs", Ok(1000)),
            ("-2s", Ok(-2 * s)),
            ("+3m", Ok(180 * s)),
            ("", Err("time: invalid duration \"\"")),
            ("10", Err("time: missing unit in duration \"10\"")),
            ("10x", Err("time: unknown unit \"x\" in duration \"10x\"")),
            ("abc", Err("time: invalid duration \"abc\"")),
            (".s", Err("time: invalid duration \".s\"")),
            ("1d", Err("time: unknown unit \"d\" in duration \"1d\"")),
            (
                "9999999999999999999h",
                Err("time: invalid duration \"9999999999999999999h\""),
            ),
        ];
        for (input, want) in cases {
            let got = parse_go_duration(input);
            assert_eq!(got, want.map_err(str::to_string), "{input:?}");
        }
    }
}
