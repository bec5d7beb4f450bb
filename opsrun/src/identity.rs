//! Run identity: canonical JSON and the sha256 identity hash that
//! deduplicates active runs. The exact bytes are a contract with every
//! producer, in any language; the golden vectors below pin them.
//!
//! ```text
//! run_identity_hash = lowercase_hex(sha256(
//!     decimal(tenant_id) ‖ type ‖ canonical_json(inputs)))       -- UTF-8, no separators
//! ```
//! Canonical JSON: object keys sorted by their UTF-8 bytes (= code points),
//! recursively; no whitespace; strings escaped as JSON requires (`\"`, `\\`,
//! `\n`, `\t`, `\r`, `\b`, `\f`, other control characters as `\u00xx`,
//! everything else literal UTF-8, `/` unescaped); integers in decimal;
//! other numbers in their shortest round-trip form. Python's
//! `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`
//! produces the same bytes for integer, string, boolean and null values.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Canonical JSON text of `value` (sorted keys, no insignificant whitespace).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            // Sort explicitly: serde_json's map order depends on a cargo
            // feature (`preserve_order`) that any dependency may switch on.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The identity hash of a run: 64 lowercase hex characters.
pub fn identity_hash(tenant_id: i64, run_type: &str, inputs: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(tenant_id.to_string().as_bytes());
    hasher.update(run_type.as_bytes());
    hasher.update(canonical_json(inputs).as_bytes());
    hex(hasher)
}

/// Identity of a `nonce` run: the deterministic bytes followed by `#` and
/// the nonce, so every start has its own identity.
pub fn nonce_identity_hash(tenant_id: i64, run_type: &str, inputs: &Value, nonce: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(tenant_id.to_string().as_bytes());
    hasher.update(run_type.as_bytes());
    hasher.update(canonical_json(inputs).as_bytes());
    hasher.update(b"#");
    hasher.update(nonce.as_bytes());
    hex(hasher)
}

/// Identity of a `strict` run: the deterministic hash of only the named
/// input keys (e.g. a schedule id and its scheduled time). `Err` names the
/// first key the inputs lack.
pub fn strict_identity_hash(
    tenant_id: i64,
    run_type: &str,
    inputs: &Value,
    keys: &[String],
) -> Result<String, String> {
    let mut selected = serde_json::Map::new();
    for key in keys {
        match inputs.get(key) {
            Some(value) if !value.is_null() => {
                selected.insert(key.clone(), value.clone());
            }
            _ => return Err(key.clone()),
        }
    }
    Ok(identity_hash(tenant_id, run_type, &Value::Object(selected)))
}

fn hex(hasher: Sha256) -> String {
    format!("{:x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Computed independently with Python's hashlib and json.dumps (see the
    /// module doc); changing any of these breaks every deployed producer.
    #[test]
    fn identity_hashes_match_golden_vectors() {
        let vectors = [
            (
                1,
                "inventory.sync",
                json!({}),
                "{}",
                "94a3a33bac38a1d16ed7919ae228e08e82354cb18d3683d9970d3afa771a4e4c",
            ),
            (
                42,
                "inventory.sync",
                json!({"site": "paris", "full": true}),
                r#"{"full":true,"site":"paris"}"#,
                "d6d20e11b5f5487030aa0f5dc49a9d065e494632cd55f889dd507b8853e703f9",
            ),
            (
                7,
                "backup.run",
                json!({"b": {"z": 1, "a": [3, {"y": null, "x": "é"}]}, "a": "line\nbreak \"q\""}),
                r#"{"a":"line\nbreak \"q\"","b":{"a":[3,{"x":"é","y":null}],"z":1}}"#,
                "87662e0f521c0947c1c53ae5791e43ae1aa816934bf08e7949dbdbf30d2dfbf2",
            ),
            (
                i64::MAX,
                "restore.execute",
                json!({"note": "ünï ✓", "n": -12, "ids": [1, 2, 3]}),
                r#"{"ids":[1,2,3],"n":-12,"note":"ünï ✓"}"#,
                "cf0e4e48075087bccab5534cd3ca052b380be9948489e1e3662f267ae62af317",
            ),
        ];
        for (tenant, ty, inputs, canonical, hash) in vectors {
            assert_eq!(canonical_json(&inputs), canonical);
            assert_eq!(
                identity_hash(tenant, ty, &inputs),
                hash,
                "{tenant} {ty} {canonical}"
            );
        }
    }

    #[test]
    fn strict_identities_use_only_the_named_keys_and_nonces_differ() {
        let keys = vec!["schedule".to_string(), "at".to_string()];
        let a = json!({"schedule": 4, "at": "2026-11-22T02:00:00Z", "note": "x"});
        let b = json!({"at": "2026-11-22T02:00:00Z", "schedule": 4, "note": "y"});
        let strict = strict_identity_hash(1, "backup.run", &a, &keys).unwrap();
        assert_eq!(
            strict,
            strict_identity_hash(1, "backup.run", &b, &keys).unwrap()
        );
        assert_eq!(
            strict,
            identity_hash(
                1,
                "backup.run",
                &json!({"schedule": 4, "at": "2026-11-22T02:00:00Z"})
            )
        );
        assert_eq!(
            strict_identity_hash(1, "backup.run", &json!({"schedule": 4}), &keys).unwrap_err(),
            "at"
        );
        assert_ne!(
            nonce_identity_hash(1, "a.b", &a, "n1"),
            nonce_identity_hash(1, "a.b", &a, "n2")
        );
        // "42inventory.sync{}#n1"
        assert_eq!(
            nonce_identity_hash(42, "inventory.sync", &json!({}), "n1"),
            "1e75b86c7e3512716f6a5c05aa52ee03b29746345b12023289c50eb0c6bc8db9"
        );
    }

    #[test]
    fn key_order_and_whitespace_do_not_change_identity() {
        let a: Value = serde_json::from_str(r#"{ "b" : 1, "a" : { "y": 2, "x": 1 } }"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":1,"y":2},"b":1}"#).unwrap();
        assert_eq!(identity_hash(5, "a.b", &a), identity_hash(5, "a.b", &b));
        assert_ne!(identity_hash(5, "a.b", &a), identity_hash(6, "a.b", &a));
        assert_ne!(identity_hash(5, "a.b", &a), identity_hash(5, "a.c", &a));
    }
}
