//! Positions in the policy text for errors found after deserialization.
//!
//! serde_yaml_ng exposes no spans, but every error raised while it deserializes a
//! node carries that node's line and column. So to find a node we walk the document
//! again with serde_yaml_ng's own parser and fail on purpose when we reach it: the
//! position is right for block and flow style, quoting and anchors alike, and no
//! second YAML parser is involved. Only error paths walk the text again.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path into the document: a mapping key or a sequence index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

pub(super) fn key(k: &str) -> Seg<'_> {
    Seg::Key(k)
}

/// `rules[2].set.nodes`, the way serde_yaml_ng prints paths in its own errors.
pub(super) fn dotted(path: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// The node at the path (a mapping or sequence: where it starts).
    Value,
    /// The key of the path's last segment.
    Key,
}

/// A marker no YAML error message contains.
const FOUND: &str = "\u{1}kvmtune-locate-found";

/// The 1-based line and column of the node at `path`, or `None` when the text has
/// no such node (or no text: a policy built in code).
pub(super) fn locate(text: &str, path: &[Seg<'_>], want: Want) -> Option<(usize, usize)> {
    if text.is_empty() {
        return None;
    }
    let walker = Locate { path, want };
    match walker.deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

/// A repeated key: serde's derive reports one at the start of its mapping; this is
/// the position of the repeat itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Duplicate {
    pub line: usize,
    pub column: usize,
    /// `host: duplicate key `irq_cpus``.
    pub message: String,
}

/// The first key that repeats within one mapping of `text`.
pub(super) fn find_duplicate_key(text: &str) -> Option<Duplicate> {
    let err = DupWalk
        .deserialize(serde_yaml_ng::Deserializer::from_str(text))
        .err()?;
    let location = err.location()?;
    let (line, column) = (location.line(), location.column());
    let message = without_position(&err.to_string(), line, column);
    message.contains("duplicate key").then_some(Duplicate {
        line,
        column,
        message,
    })
}

/// serde_yaml_ng's message without the ` at line L column C` it appends.
pub(super) fn without_position(message: &str, line: usize, column: usize) -> String {
    message.replacen(&format!(" at line {line} column {column}"), "", 1)
}

/// The `visit_*` methods of every scalar type but strings, all answering `$body`.
macro_rules! scalars {
    ($value:ty, |$self:ident| $body:expr) => {
        fn visit_bool<E: de::Error>($self, _: bool) -> Result<$value, E> {
            $body
        }
        fn visit_i64<E: de::Error>($self, _: i64) -> Result<$value, E> {
            $body
        }
        fn visit_u64<E: de::Error>($self, _: u64) -> Result<$value, E> {
            $body
        }
        fn visit_f64<E: de::Error>($self, _: f64) -> Result<$value, E> {
            $body
        }
        fn visit_unit<E: de::Error>($self) -> Result<$value, E> {
            $body
        }
        fn visit_none<E: de::Error>($self) -> Result<$value, E> {
            $body
        }
    };
}

/// Walks down `path`; fails with [`FOUND`] at its end.
struct Locate<'p> {
    path: &'p [Seg<'p>],
    want: Want,
}

impl Locate<'_> {
    fn leaf<E: de::Error>(self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(E::custom(FOUND))
        } else {
            Ok(())
        }
    }
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    scalars!((), |self| self.leaf());

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.leaf()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        let Seg::Key(wanted) = *first else {
            return Ok(());
        };
        let probe = KeyProbe {
            wanted,
            fail_on_hit: rest.is_empty() && self.want == Want::Key,
        };
        while let Some(hit) = map.next_key_seed(probe)? {
            if hit {
                return map.next_value_seed(Locate {
                    path: rest,
                    want: self.want,
                });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        let Seg::Index(wanted) = *first else {
            return Ok(());
        };
        for _ in 0..wanted {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        let next = Locate {
            path: rest,
            want: self.want,
        };
        seq.next_element_seed(next).map(|_| ())
    }
}

/// Reads a mapping key: `true` when it is the wanted one, or fails right there (so
/// the error carries the key's position) when `fail_on_hit`.
#[derive(Clone, Copy)]
struct KeyProbe<'k> {
    wanted: &'k str,
    fail_on_hit: bool,
}

impl<'de> DeserializeSeed<'de> for KeyProbe<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyProbe<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    // Our schema's keys are strings; any other key is simply not the wanted one.
    scalars!(bool, |self| Ok(false));

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match (v == self.wanted, self.fail_on_hit) {
            (true, true) => Err(E::custom(FOUND)),
            (hit, _) => Ok(hit),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// Walks every node, failing at the first key repeated within one mapping.
struct DupWalk;

impl<'de> DeserializeSeed<'de> for DupWalk {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DupWalk {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    scalars!((), |self| Ok(()));

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: Vec<String> = Vec::new();
        while let Some(k) = map.next_key_seed(DupKey { seen: &seen })? {
            seen.extend(k);
            map.next_value_seed(DupWalk)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(DupWalk)?.is_some() {}
        Ok(())
    }
}

/// A mapping key as text (`None` for a mapping or sequence used as a key), or an
/// error when `seen` already holds it.
struct DupKey<'s> {
    seen: &'s [String],
}

impl DupKey<'_> {
    fn check<E: de::Error>(self, text: String) -> Result<Option<String>, E> {
        if self.seen.contains(&text) {
            Err(E::custom(format!("duplicate key `{text}`")))
        } else {
            Ok(Some(text))
        }
    }
}

impl<'de> DeserializeSeed<'de> for DupKey<'_> {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DupKey<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<String>, E> {
        self.check(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Option<String>, E> {
        self.check(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<String>, E> {
        self.check(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<String>, E> {
        self.check(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Option<String>, E> {
        self.check(v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<String>, E> {
        self.check("null".to_string())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<String>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_and_keys() {
        let text = "a:\n  b: [x, {c: 1}]\n  d: 2\n";
        let path = [key("a"), key("b"), Seg::Index(1), key("c")];
        assert_eq!(locate(text, &path, Want::Value), Some((2, 14)));
        assert_eq!(locate(text, &path, Want::Key), Some((2, 11)));
        assert_eq!(locate(text, &[key("a"), key("d")], Want::Key), Some((3, 3)));
        assert_eq!(
            locate(text, &[key("a"), key("b")], Want::Value),
            Some((2, 6))
        );
        assert_eq!(locate(text, &[key("a"), key("e")], Want::Value), None);
        let past_end = [key("a"), key("b"), Seg::Index(5)];
        assert_eq!(locate(text, &past_end, Want::Value), None);
        assert_eq!(locate(text, &[Seg::Index(0)], Want::Value), None);
        assert_eq!(locate("", &[key("a")], Want::Value), None);
    }

    #[test]
    fn follows_anchors_and_quoting() {
        let text = "base: &b {n: 1}\nx:\n  \"quoted key\": 'v'\n  y: *b\n";
        assert_eq!(
            locate(text, &[key("x"), key("quoted key")], Want::Key),
            Some((3, 3))
        );
        assert_eq!(
            locate(text, &[key("x"), key("quoted key")], Want::Value),
            Some((3, 17))
        );
        assert!(locate(text, &[key("x"), key("y"), key("n")], Want::Value).is_some());
    }

    #[test]
    fn finds_the_repeated_key() {
        let text = "a: 1\nb:\n  - {c: 1, d: 2}\n  - c: 1\n    e: 2\n    c: 3\n";
        assert_eq!(
            find_duplicate_key(text),
            Some(Duplicate {
                line: 6,
                column: 5,
                message: "b[1]: duplicate key `c`".into(),
            })
        );
        assert_eq!(find_duplicate_key("a: 1\nb: 2\n"), None);
        assert_eq!(
            find_duplicate_key("1: x\n\"1\": y\n").map(|d| (d.line, d.column)),
            Some((2, 1))
        );
    }

    #[test]
    fn paths_print_like_serde_yaml_ng() {
        let path = [key("rules"), Seg::Index(2), key("set"), key("nodes")];
        assert_eq!(dotted(&path), "rules[2].set.nodes");
        assert_eq!(dotted(&[]), "");
    }
}
