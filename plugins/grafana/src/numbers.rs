//! The JSON text of an answer's numbers, most of what an answer costs: a thousand points
//! are a thousand values and a thousand timestamps.
//!
//! Two things make it dear in wasm: 128-bit products, which wasm emulates (zmij needs
//! fewer than ryu), and copies of a length known only at run time, which become
//! `memory.copy`, an out-of-line call into the runtime that costs more than copying the
//! twenty bytes of a number. So numbers are appended with fixed-size copies, and
//! timestamps are written eight digits at a time.

/// Below this, a whole number prints as its digits and `.0`, as the shortest form does.
pub const PLAIN_INTEGER_LIMIT: f64 = 1e15;

/// Epoch milliseconds with 13 digits: from 2001-09-09 to 2286-11-20.
const THIRTEEN_DIGITS: std::ops::Range<i64> = 1_000_000_000_000..10_000_000_000_000;

/// Appends a JSON number (the shortest text that reads back as `value`), or `null` for NaN
/// and infinities. Whole numbers (steps, counts) skip the float formatting.
pub fn push_number(out: &mut String, value: f64) {
    if !value.is_finite() {
        out.push_str("null");
    } else if value != 0.0 && value.fract() == 0.0 && value.abs() < PLAIN_INTEGER_LIMIT {
        push_ascii(out, itoa::Buffer::new().format(value as i64).as_bytes());
        out.push_str(".0");
    } else {
        push_ascii(out, zmij::Buffer::new().format_finite(value).as_bytes());
    }
}

/// Appends an integer such as epoch milliseconds.
pub fn push_integer(out: &mut String, value: i64) {
    if THIRTEEN_DIGITS.contains(&value) {
        let value = value as u64;
        let (high, low) = ((value / 100_000_000) as u32, (value % 100_000_000) as u32);
        let mut digits = [0u8; 16];
        digits[..8].copy_from_slice(&eight_digits(high).to_le_bytes());
        digits[8..].copy_from_slice(&eight_digits(low).to_le_bytes());
        push_ascii(out, &digits[3..]);
    } else {
        push_ascii(out, itoa::Buffer::new().format(value).as_bytes());
    }
}

/// The eight decimal digits of `value` (below 10^8, with leading zeros) as ASCII bytes,
/// the first digit in the lowest byte: each step splits every lane of the word in two at
/// once (into 10^4s, then 10^2s, then 10s), dividing by multiplying and shifting.
fn eight_digits(value: u32) -> u64 {
    let (high, low) = (value / 10_000, value % 10_000);
    let mut lanes = u64::from(high) | (u64::from(low) << 32);
    let hundreds = ((lanes * 10_486) >> 20) & 0x0000_007F_0000_007F;
    lanes = hundreds | ((lanes - hundreds * 100) << 16);
    let tens = ((lanes * 103) >> 10) & 0x000F_000F_000F_000F;
    lanes = tens | ((lanes - tens * 10) << 8);
    lanes | 0x3030_3030_3030_3030
}

/// Appends `text`, at most 32 bytes of ASCII (digits and signs from the formatters above),
/// by two fixed-size copies that overlap.
fn push_ascii(out: &mut String, text: &[u8]) {
    let len = text.len();
    assert!(len <= 32, "a number's text is at most 32 bytes");
    debug_assert!(text.is_ascii());
    out.reserve(32);
    // SAFETY: `text` is ASCII (it comes from number formatting only), so the string stays
    // UTF-8; `reserve` made room for the bytes written past the end, and each copy reads
    // and writes within the first `len` bytes.
    unsafe {
        let vec = out.as_mut_vec();
        let (from, to) = (text.as_ptr(), vec.as_mut_ptr().add(vec.len()));
        match len {
            16..=32 => {
                std::ptr::copy_nonoverlapping(from, to, 16);
                std::ptr::copy_nonoverlapping(from.add(len - 16), to.add(len - 16), 16);
            }
            8..=15 => {
                std::ptr::copy_nonoverlapping(from, to, 8);
                std::ptr::copy_nonoverlapping(from.add(len - 8), to.add(len - 8), 8);
            }
            _ => {
                for index in 0..len {
                    *to.add(index) = *from.add(index);
                }
            }
        }
        vec.set_len(vec.len() + len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number_text(value: f64) -> String {
        let mut out = String::new();
        push_number(&mut out, value);
        out
    }

    #[test]
    fn numbers_are_the_shortest_text_that_reads_back_exactly() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut values = vec![0.0, -0.0, 1.0, -1.0, 250.0, 0.1, 1e15 - 1.0, 1e15, 1e16, 1e21, 5e-324, f64::MAX, f64::MIN_POSITIVE];
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            values.extend([f64::from_bits(state), (state >> 11) as f64 / 1e6, (state % 1_000_000) as f64 - 500_000.0]);
        }
        for value in values.into_iter().filter(|value| value.is_finite()) {
            let text = number_text(value);
            let back: f64 = text.parse().unwrap_or_else(|_| panic!("{text} is no number"));
            assert_eq!(back.to_bits(), value.to_bits(), "{value:e} written as {text}");
            assert!(serde_json::from_str::<f64>(&text).is_ok(), "{text} is no JSON number");
            if value.fract() == 0.0 && value.abs() < PLAIN_INTEGER_LIMIT {
                assert_eq!(text, format!("{value:?}"), "whole number {value}");
            }
        }
    }

    #[test]
    fn nan_and_infinities_are_null() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(number_text(value), "null");
        }
    }

    #[test]
    fn integers_read_back_exactly_at_every_length() {
        let mut values = vec![0, 1, -1, 9, 10, 99_999_999, 100_000_000, i64::MIN, i64::MAX];
        values.extend([THIRTEEN_DIGITS.start - 1, THIRTEEN_DIGITS.start, THIRTEEN_DIGITS.end - 1, THIRTEEN_DIGITS.end]);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            values.extend([state as i64, (state % 10_000_000_000_000) as i64, 1_700_000_000_000 + (state % 1_000_000_000) as i64]);
        }
        let mut out = String::new();
        for value in values {
            out.clear();
            out.push('x');
            push_integer(&mut out, value);
            assert_eq!(out, format!("x{value}"));
        }
    }

    #[test]
    fn short_texts_of_every_length_are_appended_whole() {
        let text = "0123456789abcdefghijklmnopqrstuv";
        for len in 0..=32 {
            let mut out = String::from("<");
            push_ascii(&mut out, &text.as_bytes()[..len]);
            assert_eq!(out, format!("<{}", &text[..len]));
        }
    }
}
