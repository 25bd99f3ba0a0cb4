//! RFC 3339 dates as Grafana sends them (`2024-01-01T00:00:00.000Z`), tolerating
//! offsets, lowercase `t`/`z`, a space for `T` and a leap second `:60`.

use serde_json::Value;

/// Milliseconds since the Unix epoch of a JSON date value: an RFC 3339 string, as the JSON
/// datasource's OpenAPI document types `range.from` and `range.to`.
pub fn epoch_ms(value: &Value) -> Result<i64, String> {
    match value {
        Value::String(text) => parse_rfc3339(text),
        other => Err(format!("{other} is not a date (expected RFC 3339 text such as 2024-01-31T12:00:00Z)")),
    }
}

fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not an RFC 3339 date (expected e.g. 2024-01-31T12:00:00.000Z)");
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !text.is_ascii() {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = &text[range];
        if part.bytes().all(|byte| byte.is_ascii_digit()) { part.parse().map_err(|_| bad()) } else { Err(bad()) }
    };
    let separators_ok =
        bytes[4] == b'-' && bytes[7] == b'-' && matches!(bytes[10], b'T' | b't' | b' ') && bytes[13] == b':' && bytes[16] == b':';
    if !separators_ok {
        return Err(bad());
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let kept = &fraction[..digits.min(3)];
        millis = kept.parse::<i64>().map_err(|_| bad())? * 10i64.pow(3 - kept.len() as u32);
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') && rest.as_bytes()[3] == b':' => {
            let (hours, minutes) = (number(text.len() - 5..text.len() - 3)?, number(text.len() - 2..text.len())?);
            if hours > 23 || minutes > 59 {
                return Err(bad());
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (hours * 60 + minutes)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_what_grafana_sends_and_tolerated_variants() {
        assert_eq!(epoch_ms(&json!("1970-01-01T00:00:00Z")), Ok(0));
        assert_eq!(epoch_ms(&json!("2024-02-29T12:34:56.789Z")), Ok(1_709_210_096_789));
        assert_eq!(epoch_ms(&json!("2024-02-29t12:34:56.789z")), Ok(1_709_210_096_789));
        assert_eq!(epoch_ms(&json!("2024-02-29T14:34:56.789+02:00")), Ok(1_709_210_096_789));
        assert_eq!(epoch_ms(&json!("2016-12-31T23:59:60Z")), Ok(1_483_228_800_000));
    }

    #[test]
    fn refuses_malformed_dates() {
        assert!(epoch_ms(&json!(1234)).is_err());
        for bad in
            ["", "1234", "yesterday", "2024-13-01T00:00:00Z", "2023-02-29T00:00:00Z", "2024-01-01T00:00:00", "2024-01-01T00:00:00+2:00"]
        {
            assert!(epoch_ms(&json!(bad)).is_err(), "{bad}");
        }
    }
}
