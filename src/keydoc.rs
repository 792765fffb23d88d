//! Key documents: the named inputs of an action, in a fixed order, and their key.
//!
//! The encoding is explicit and stable: a version tag, then for each field its name and a
//! type tag, with every string length-prefixed (u64 little-endian), lists in their given
//! order and maps sorted by key. Never `Debug`, `Hash` or a JSON serializer, whose output can
//! change between versions. The same document renders as text (`ccb query hash`) and is stored
//! with a build so `explain` can diff it against the next one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub fn hash_bytes(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

pub fn hash_str(h: &mut blake3::Hasher, s: &str) {
    hash_bytes(h, s.as_bytes());
}

pub fn hash_list(h: &mut blake3::Hasher, items: &[String]) {
    h.update(&(items.len() as u64).to_le_bytes());
    for i in items {
        hash_str(h, i);
    }
}

pub fn hash_map(h: &mut blake3::Hasher, map: &BTreeMap<String, String>) {
    h.update(&(map.len() as u64).to_le_bytes());
    for (k, v) in map {
        hash_str(h, k);
        hash_str(h, v);
    }
}

/// A field's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Value {
    Str(String),
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

/// An action's key document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDoc {
    pub fields: Vec<(String, Value)>,
}

const VERSION_TAG: &str = "ccb-key-v1";

impl KeyDoc {
    pub fn new() -> Self {
        Self { fields: Vec::new() }
    }

    pub fn str(mut self, name: &str, value: impl Into<String>) -> Self {
        self.fields.push((name.into(), Value::Str(value.into())));
        self
    }

    pub fn list(mut self, name: &str, value: Vec<String>) -> Self {
        self.fields.push((name.into(), Value::List(value)));
        self
    }

    pub fn map(mut self, name: &str, value: BTreeMap<String, String>) -> Self {
        self.fields.push((name.into(), Value::Map(value)));
        self
    }

    /// A map field that only exists when it has entries: adding an optional kind of input
    /// (sources) to the engine must not change the keys of actions that do not use it.
    pub fn map_if_any(self, name: &str, value: BTreeMap<String, String>) -> Self {
        if value.is_empty() {
            self
        } else {
            self.map(name, value)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The key: blake3 of the canonical encoding, hex.
    pub fn key(&self) -> String {
        let mut h = blake3::Hasher::new();
        hash_str(&mut h, VERSION_TAG);
        h.update(&(self.fields.len() as u64).to_le_bytes());
        for (name, value) in &self.fields {
            hash_str(&mut h, name);
            match value {
                Value::Str(s) => {
                    h.update(&[0]);
                    hash_str(&mut h, s);
                }
                Value::List(l) => {
                    h.update(&[1]);
                    hash_list(&mut h, l);
                }
                Value::Map(m) => {
                    h.update(&[2]);
                    hash_map(&mut h, m);
                }
            }
        }
        h.finalize().to_hex().to_string()
    }

    /// The document as text, one `name: value` per line; lists and maps one item per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, value) in &self.fields {
            match value {
                Value::Str(s) => out.push_str(&format!("{name}: {s}\n")),
                Value::List(l) => {
                    out.push_str(&format!("{name}:\n"));
                    for i in l {
                        out.push_str(&format!("  - {i}\n"));
                    }
                }
                Value::Map(m) => {
                    out.push_str(&format!("{name}:\n"));
                    for (k, v) in m {
                        out.push_str(&format!("  {k} = {v}\n"));
                    }
                }
            }
        }
        out
    }

    /// What changed from `old` to `self`, one human line per difference, in field order.
    pub fn diff(&self, old: &KeyDoc) -> Vec<String> {
        let mut out = Vec::new();
        for (name, new) in &self.fields {
            match old.get(name) {
                None => out.push(format!("{name}: new input")),
                Some(prev) if prev == new => {}
                Some(prev) => diff_value(name, prev, new, &mut out),
            }
        }
        for (name, _) in &old.fields {
            if self.get(name).is_none() {
                out.push(format!("{name}: input removed"));
            }
        }
        out
    }
}

impl Default for KeyDoc {
    fn default() -> Self {
        Self::new()
    }
}

fn short(s: &str) -> String {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        crate::ui::short(s, crate::ui::COMMIT_WIDTH).to_string()
    } else {
        format!("{s:?}")
    }
}

fn diff_value(name: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Str(a), Value::Str(b)) => out.push(format!("{name}: {} → {}", short(a), short(b))),
        (Value::Map(a), Value::Map(b)) => {
            for (k, v) in b {
                match a.get(k) {
                    None => out.push(format!("{name}: {k} added ({})", short(v))),
                    Some(old) if old != v => {
                        out.push(format!("{name}: {k} changed {} → {}", short(old), short(v)))
                    }
                    _ => {}
                }
            }
            for k in a.keys() {
                if !b.contains_key(k) {
                    out.push(format!("{name}: {k} removed"));
                }
            }
        }
        (Value::List(a), Value::List(b)) => {
            let before = out.len();
            for x in b.iter().filter(|x| !a.contains(x)) {
                out.push(format!("{name}: {x} added"));
            }
            for x in a.iter().filter(|x| !b.contains(x)) {
                out.push(format!("{name}: {x} removed"));
            }
            // Same items, other order (or other multiplicity): still a change of this field.
            if out.len() == before {
                out.push(format!("{name}: order changed"));
            }
        }
        _ => out.push(format!("{name}: changed kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_names_values_and_order() {
        let a = KeyDoc::new().str("x", "1").str("y", "2");
        assert_eq!(a.key(), KeyDoc::new().str("x", "1").str("y", "2").key());
        assert_ne!(a.key(), KeyDoc::new().str("y", "2").str("x", "1").key());
        assert_ne!(a.key(), KeyDoc::new().str("x", "1").str("y", "3").key());
        assert_ne!(a.key(), KeyDoc::new().str("x", "1").str("z", "2").key());
        // Length prefixes: moving a byte between adjacent fields changes the key.
        assert_ne!(
            KeyDoc::new().str("ab", "c").key(),
            KeyDoc::new().str("a", "bc").key()
        );
        // A one-item list is not the same as a string.
        assert_ne!(
            KeyDoc::new().str("x", "1").key(),
            KeyDoc::new().list("x", vec!["1".into()]).key()
        );
    }

    #[test]
    fn a_reordered_list_is_reported_even_after_other_changes() {
        let old = KeyDoc::new()
            .str("a", "1")
            .list("l", vec!["x".into(), "y".into()]);
        let new = KeyDoc::new()
            .str("a", "2")
            .list("l", vec!["y".into(), "x".into()]);
        let diff = new.diff(&old);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert_eq!(diff[1], "l: order changed");
    }

    #[test]
    fn diff_names_the_changed_map_entry() {
        let mut env = BTreeMap::new();
        env.insert("DIB_RELEASE".to_string(), "bookworm".to_string());
        let old = KeyDoc::new().map("environment", env.clone());
        env.insert("DIB_RELEASE".to_string(), "trixie".to_string());
        let new = KeyDoc::new().map("environment", env);
        assert_eq!(
            new.diff(&old),
            vec!["environment: DIB_RELEASE changed \"bookworm\" → \"trixie\"".to_string()]
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            ".{0,8}".prop_map(Value::Str),
            proptest::collection::vec(".{0,6}", 0..4).prop_map(Value::List),
            proptest::collection::btree_map("[A-Z_]{1,6}", ".{0,6}", 0..4).prop_map(Value::Map),
        ]
    }

    fn doc() -> impl Strategy<Value = KeyDoc> {
        proptest::collection::vec(("[a-z]{1,8}", value()), 1..6).prop_map(|fields| {
            let mut seen = std::collections::BTreeSet::new();
            KeyDoc {
                fields: fields
                    .into_iter()
                    .filter(|(n, _)| seen.insert(n.clone()))
                    .collect(),
            }
        })
    }

    proptest! {
        /// A key changes if and only if an input changes.
        #[test]
        fn key_changes_iff_an_input_changes(a in doc(), b in doc()) {
            prop_assert_eq!(a == b, a.key() == b.key());
        }

        /// Changing one field's value changes the key, and the diff names that field.
        #[test]
        fn one_changed_field_is_named(a in doc(), idx in any::<prop::sample::Index>(), v in value()) {
            let i = idx.index(a.fields.len());
            let mut b = a.clone();
            b.fields[i].1 = v;
            if a.fields[i].1 == b.fields[i].1 {
                prop_assert_eq!(a.key(), b.key());
                prop_assert!(b.diff(&a).is_empty());
            } else {
                prop_assert_ne!(a.key(), b.key());
                let diff = b.diff(&a);
                prop_assert!(!diff.is_empty());
                let name = &a.fields[i].0;
                prop_assert!(diff.iter().all(|l| l.starts_with(&format!("{name}:"))), "{:?}", diff);
            }
        }
    }
}
