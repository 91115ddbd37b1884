//! What an event must be before anything is written: its topic, key and
//! id, and a payload PostgreSQL's `jsonb` can store (checked as `jsonb`
//! would, so that the drain never meets an event it must refuse).

use super::*;

/// Checks an event against the spool's rules; every producer path (library,
/// `outboxctl enqueue`, the socket's `enqueue` op) calls it before writing.
///
/// - topic: [`TOPIC_RULE`];
/// - key: at most [`MAX_KEY`] bytes, no NUL;
/// - id: 1 to [`MAX_ID`] bytes, no NUL;
/// - payload: valid JSON of at most [`MAX_PAYLOAD`] bytes that PostgreSQL's
///   `jsonb` can store: no `\u0000` in a string, no unpaired UTF-16
///   surrogate escape, no number beyond the range of PostgreSQL's `numeric`.
///
/// The error is [`Error::Invalid`] naming the field, what is wrong and the
/// limit.
pub fn validate(event: &NewEvent) -> Result<()> {
    let invalid = |what| move |message| Error::Invalid { what, message };
    check_topic(&event.topic).map_err(invalid("topic"))?;
    if let Some(key) = &event.key {
        check_text(key, 0, MAX_KEY).map_err(invalid("key"))?;
    }
    if let Some(id) = &event.id {
        check_text(id, 1, MAX_ID).map_err(invalid("id"))?;
    }
    check_payload(&event.payload).map_err(invalid("payload"))
}

pub(super) fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC {
        return Err(format!(
            "is {} bytes long; a topic is {TOPIC_RULE}",
            topic.len()
        ));
    }
    let allowed = |(at, c): (usize, char)| {
        c.is_ascii_alphanumeric() || (at > 0 && matches!(c, '.' | '_' | ':' | '/' | '-'))
    };
    match topic.char_indices().find(|&(at, c)| !allowed((at, c))) {
        Some((0, c)) => Err(format!(
            "{topic:?} starts with {c:?}; a topic is {TOPIC_RULE}"
        )),
        Some((_, c)) => Err(format!("{topic:?} contains {c:?}; a topic is {TOPIC_RULE}")),
        None => Ok(()),
    }
}

pub(super) fn check_text(text: &str, min: usize, max: usize) -> Result<(), String> {
    if text.len() < min || text.len() > max {
        return Err(format!(
            "is {} bytes long; the limits are {min} to {max} bytes",
            text.len()
        ));
    }
    if text.contains('\0') {
        return Err("contains a NUL character".into());
    }
    Ok(())
}

pub(super) fn check_payload(payload: &str) -> Result<(), String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "is {} bytes of JSON; the limit is {MAX_PAYLOAD} bytes",
            payload.len()
        ));
    }
    // IgnoredAny checks the syntax without building a value.
    serde_json::from_str::<serde::de::IgnoredAny>(payload)
        .map_err(|error| format!("is not valid JSON: {error}"))?;
    check_jsonb(payload.as_bytes())
}

/// The limits of PostgreSQL's `numeric`, which holds jsonb numbers: digits
/// before the decimal point, digits after it (as written, shifted by the
/// exponent), and an exponent it refuses outright, even on zero
/// (±`INT_MAX / 2`). Measured against PostgreSQL 15.
pub(super) const NUMERIC_MAX_DIGITS_BEFORE_POINT: i64 = 131_072;

pub(super) const NUMERIC_MAX_DIGITS_AFTER_POINT: i64 = 16_383;

pub(super) const NUMERIC_MAX_EXPONENT: i64 = 1_073_741_823;

/// Checks what valid JSON text must also satisfy to be stored as jsonb: no
/// `\u0000` and no unpaired surrogate escape in any string (keys included),
/// and every number within `numeric`. One pass; it relies on the text being
/// valid JSON, so outside strings a `-` or a digit always starts a number.
pub(super) fn check_jsonb(text: &[u8]) -> Result<(), String> {
    let mut at = 0;
    while let Some(&byte) = text.get(at) {
        at = match byte {
            b'"' => check_string(text, at + 1)?,
            b'-' | b'0'..=b'9' => check_number(text, at)?,
            _ => at + 1,
        };
    }
    Ok(())
}

/// Checks the escapes of the string whose contents start at `at`; returns
/// where the string ends (after its closing quote).
pub(super) fn check_string(text: &[u8], mut at: usize) -> Result<usize, String> {
    let unpaired = |unit: u32| {
        format!(
            "contains \\u{unit:04x} without its pair; jsonb stores UTF-16 surrogates only in pairs"
        )
    };
    loop {
        // Jump over plain characters to the closing quote or an escape.
        let rest = text.get(at..).unwrap_or_default();
        let Some(skip) = rest.iter().position(|&b| b == b'"' || b == b'\\') else {
            return Ok(text.len());
        };
        at += skip;
        if text[at] == b'"' {
            return Ok(at + 1);
        }
        if text.get(at + 1) != Some(&b'u') {
            at += 2;
            continue;
        }
        match hex4(text, at + 2) {
            Some(0) => {
                return Err("contains \\u0000: PostgreSQL's jsonb cannot store \
                            the NUL character"
                    .into());
            }
            Some(high @ 0xD800..=0xDBFF) => {
                let low = match text.get(at + 6..at + 8) {
                    Some(b"\\u") => hex4(text, at + 8),
                    _ => None,
                };
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return Err(unpaired(high));
                }
                at += 12;
            }
            Some(low @ 0xDC00..=0xDFFF) => return Err(unpaired(low)),
            _ => at += 6,
        }
    }
}

/// The value of the four hex digits at `at`.
pub(super) fn hex4(text: &[u8], at: usize) -> Option<u32> {
    text.get(at..at + 4)?.iter().try_fold(0, |value, &digit| {
        Some(value * 16 + char::from(digit).to_digit(16)?)
    })
}

/// Checks that the number starting at `start` fits PostgreSQL's `numeric`
/// (the rules of its `numeric_in`); returns where the number ends.
pub(super) fn check_number(text: &[u8], start: usize) -> Result<usize, String> {
    let digits_from = |at: usize| at + text[at..].iter().take_while(|d| d.is_ascii_digit()).count();
    let int_start = usize::from(text[start] == b'-') + start;
    let mut end = digits_from(int_start);
    // JSON allows no leading zeros: an integer part starting with 0 is "0".
    let int_digits = (end - int_start) as i64;
    let int_is_zero = text.get(int_start) == Some(&b'0');
    let (mut frac_digits, mut frac_leading_zeros) = (0, 0);
    if text.get(end) == Some(&b'.') {
        let frac_start = end + 1;
        end = digits_from(frac_start);
        let frac = &text[frac_start..end];
        frac_digits = frac.len() as i64;
        frac_leading_zeros = frac.iter().take_while(|&&d| d == b'0').count() as i64;
    }
    let mut exponent: i64 = 0;
    if matches!(text.get(end), Some(b'e' | b'E')) {
        let sign_at = end + 1;
        let negative = text.get(sign_at) == Some(&b'-');
        let exp_start = sign_at + usize::from(matches!(text.get(sign_at), Some(b'+' | b'-')));
        end = digits_from(exp_start);
        exponent = text[exp_start..end].iter().fold(0, |e: i64, d| {
            e.saturating_mul(10).saturating_add(i64::from(d - b'0'))
        });
        if negative {
            exponent = -exponent;
        }
    }
    // The power of ten of the leading non-zero digit; none for zero.
    let magnitude = if !int_is_zero {
        Some(int_digits - 1 + exponent)
    } else if frac_leading_zeros < frac_digits {
        Some(exponent - frac_leading_zeros - 1)
    } else {
        None
    };
    let scale = frac_digits - exponent;
    let fits = exponent.abs() < NUMERIC_MAX_EXPONENT
        && scale <= NUMERIC_MAX_DIGITS_AFTER_POINT
        && magnitude.is_none_or(|m| m < NUMERIC_MAX_DIGITS_BEFORE_POINT);
    if fits {
        return Ok(end);
    }
    let number = String::from_utf8_lossy(&text[start..end.min(start + 40)]);
    let more = if end - start > 40 { "..." } else { "" };
    Err(format!(
        "number {number}{more} is out of range for PostgreSQL's numeric, which holds jsonb \
         numbers (at most {NUMERIC_MAX_DIGITS_BEFORE_POINT} digits before the decimal point \
         and {NUMERIC_MAX_DIGITS_AFTER_POINT} after)"
    ))
}
