//! Value semantics for rule assertions: loose equality (kv and ini values are strings, so `"0"` equals `0`),
//! ordering of numbers, durations (`30s` < `1m`) and versions (`1.2` < `1.10`), and type names.

use crate::units::parse_duration;
use serde_json::Value;
use std::cmp::Ordering;

/// A scalar as text: strings bare, everything else as JSON.
pub fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// Equal, or equal as text when one side is a string and the other a number or boolean.
pub fn loose_eq(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => as_number(a) == as_number(b),
        (Value::String(s), Value::Number(_) | Value::Bool(_))
        | (Value::Number(_) | Value::Bool(_), Value::String(s)) => {
            let other = if matches!(a, Value::String(_)) { b } else { a };
            match (as_number(a), as_number(b)) {
                (Some(x), Some(y)) => x == y,
                _ => s.trim() == text_of(other),
            }
        }
        _ => false,
    }
}

fn as_version(v: &Value) -> Option<Vec<u64>> {
    let s = text_of(v);
    let s = s.trim().trim_start_matches(['v', 'V']);
    if s.is_empty() {
        return None;
    }
    s.split('.').map(|p| p.parse::<u64>().ok()).collect()
}

/// Order `a` (observed) against `b` (the rule's value): as versions when the rule wrote a quoted dotted
/// string (`ge = "1.2"`, so `"1.10"` > `"1.2"`), else as numbers, else as durations, else as versions.
pub fn compare_loose(a: &Value, b: &Value) -> Option<Ordering> {
    if let Value::String(s) = b
        && s.contains('.')
        && let (Some(x), Some(y)) = (as_version(a), as_version(b))
    {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (as_number(a), as_number(b)) {
        return x.partial_cmp(&y);
    }
    if let (Ok(x), Ok(y)) = (parse_duration(&text_of(a)), parse_duration(&text_of(b))) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (as_version(a), as_version(b)) {
        return Some(x.cmp(&y));
    }
    None
}

/// Whether `v` has JSON type `t` (`string`, `number`, `integer`, `boolean`, `array`, `object`, `null`).
pub fn type_is(v: &Value, t: &str) -> bool {
    match t {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" | "bool" => v.is_boolean(),
        "array" | "list" => v.is_array(),
        "object" | "map" => v.is_object(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// The type names `type` accepts.
pub const TYPES: &[&str] = &[
    "string", "number", "integer", "boolean", "bool", "array", "list", "object", "map", "null",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn loose_equality() {
        assert!(loose_eq(&json!("0"), &json!(0)));
        assert!(loose_eq(&json!(1.0), &json!(1)));
        assert!(loose_eq(&json!("yes"), &json!("yes")));
        assert!(loose_eq(&json!("true"), &json!(true)));
        assert!(!loose_eq(&json!("1"), &json!(0)));
        assert!(!loose_eq(&json!([1]), &json!(1)));
    }

    #[test]
    fn ordering() {
        assert_eq!(
            compare_loose(&json!("4096"), &json!(1024)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare_loose(&json!("30s"), &json!("1m")),
            Some(Ordering::Less)
        );
        assert_eq!(
            compare_loose(&json!("1.10"), &json!("1.2")),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare_loose(&json!("1.10"), &json!(1.2)),
            Some(Ordering::Less),
            "an unquoted number is a number"
        );
        assert_eq!(
            compare_loose(&json!("v2.0.1"), &json!("2.0.1")),
            Some(Ordering::Equal)
        );
        assert_eq!(compare_loose(&json!("tls1.2"), &json!("1.2")), None);
    }
}
