//! Finding the line and column of a field after parsing.
//!
//! Problems that involve several fields (a duplicate rule name, a capture a
//! pattern lacks) are found after deserialization, when positions are gone.
//! serde_yaml_ng gives no spans, but it does stamp an error raised while a
//! value is being read with that value's position; so to place a field we
//! read the document again, walk to the field, and fail right there.

use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::error::{MAX_SHOWN, Problem};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A problem found after parsing, not placed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: Vec<Seg>,
    pub message: String,
}

impl Found {
    pub fn new(path: Vec<Seg>, message: impl Into<String>) -> Self {
        Self { path, message: message.into() }
    }
}

/// Writes a path as `rules[1].ports[0]`.
pub struct Display<'a>(pub &'a [Seg]);

impl fmt::Display for Display<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if index == 0 => f.write_str(key)?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(at) => write!(f, "[{at}]")?,
            }
        }
        Ok(())
    }
}

/// Turns found problems into placed ones. Only the problems that will be
/// shown are placed: each placement reads the document again.
pub fn place_all(text: &str, found: Vec<Found>) -> Vec<Problem> {
    found
        .into_iter()
        .enumerate()
        .map(|(index, found)| {
            let field = Display(&found.path).to_string();
            let position = if index < MAX_SHOWN { find(text, &found.path, None) } else { None };
            Problem::new(field, found.message).at(position)
        })
        .collect()
}

/// The 1-based line and column of the value at `path`, or, with `key`, of
/// the `n`th key named so in the mapping at `path`.
pub fn find(text: &str, path: &[Seg], key: Option<(&str, usize)>) -> Option<(usize, usize)> {
    let target = Target { path, key };
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    match (Walk { target: &target, depth: 0 }).deserialize(deserializer) {
        Err(error) if error.to_string().contains(HERE) => {
            error.location().map(|at| (at.line(), at.column()))
        }
        _ => None,
    }
}

/// The error text that means "found it"; no real YAML error says this.
const HERE: &str = "gridward-locate-here";

struct Target<'a> {
    path: &'a [Seg],
    key: Option<(&'a str, usize)>,
}

/// Reads one value at `depth` steps down the target path.
#[derive(Clone, Copy)]
struct Walk<'a> {
    target: &'a Target<'a>,
    depth: usize,
}

impl Walk<'_> {
    fn here(&self) -> bool {
        self.depth == self.target.path.len()
    }

    /// Fails when this value is the target, so that its position is stamped.
    fn scalar<E: de::Error>(self) -> Result<(), E> {
        if self.here() && self.target.key.is_none() { Err(E::custom(HERE)) } else { Ok(()) }
    }

    fn deeper(self) -> Self {
        Self { depth: self.depth + 1, ..self }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.here() {
            return self.scalar();
        }
        let wanted = match &self.target.path[self.depth] {
            Seg::Index(at) => Some(*at),
            Seg::Key(_) => None,
        };
        let mut index = 0;
        loop {
            let more = if Some(index) == wanted {
                seq.next_element_seed(self.deeper())?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.here() && self.target.key.is_none() {
            return self.scalar();
        }
        let mut seen = 0;
        while let Some(key) = map.next_key_seed(KeySeed { walk: self, seen: &mut seen })? {
            let follow = !self.here()
                && matches!(&self.target.path[self.depth], Seg::Key(want) if *want == key);
            if follow {
                map.next_value_seed(self.deeper())?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// Reads a mapping key as text, failing on the key itself when it is the
/// target key occurrence.
struct KeySeed<'a, 'w> {
    walk: Walk<'w>,
    seen: &'a mut usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl KeySeed<'_, '_> {
    fn key<E: de::Error>(self, text: String) -> Result<String, E> {
        if let (true, Some((name, nth))) = (self.walk.here(), self.walk.target.key)
            && text == name
        {
            *self.seen += 1;
            if *self.seen == nth {
                return Err(E::custom(HERE));
            }
        }
        Ok(text)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<String, E> {
        self.key(text.to_owned())
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<String, E> {
        self.key(value.to_string())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<String, E> {
        self.key(value.to_string())
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<String, E> {
        self.key(value.to_string())
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<String, E> {
        let mut text = String::new();
        let _ = write!(text, "{value}");
        self.key(text)
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Ok(String::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        // A list as a key names no field of ours; skip it whole.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(String::new())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
a: 1
rules:
  - name: x
    ports: [80, \"90-100\"]
  - {name: y, from: [host]}
b:
  c: {d: true}
";

    fn key(text: &str) -> Seg {
        Seg::Key(text.to_owned())
    }

    #[test]
    fn finds_scalars_lists_and_mappings() {
        assert_eq!(find(TEXT, &[key("a")], None), Some((1, 4)));
        assert_eq!(find(TEXT, &[key("rules")], None), Some((3, 3)));
        assert_eq!(find(TEXT, &[key("rules"), Seg::Index(0)], None), Some((3, 5)));
        let port = [key("rules"), Seg::Index(0), key("ports"), Seg::Index(1)];
        assert_eq!(find(TEXT, &port, None), Some((4, 17)));
        let flow = [key("rules"), Seg::Index(1), key("from"), Seg::Index(0)];
        assert_eq!(find(TEXT, &flow, None), Some((5, 22)));
        assert_eq!(find(TEXT, &[key("b"), key("c"), key("d")], None), Some((7, 10)));
    }

    #[test]
    fn finds_the_nth_key() {
        let text = "x: 1\ny: 2\nx: 3\n";
        assert_eq!(find(text, &[], Some(("x", 1))), Some((1, 1)));
        assert_eq!(find(text, &[], Some(("x", 2))), Some((3, 1)));
        assert_eq!(find(text, &[], Some(("x", 3))), None);
    }

    #[test]
    fn missing_paths_are_not_found() {
        assert_eq!(find(TEXT, &[key("nope")], None), None);
        assert_eq!(find(TEXT, &[key("rules"), Seg::Index(5)], None), None);
        assert_eq!(find("a: [1, 2", &[key("b")], None), None);
    }

    #[test]
    fn displays_paths() {
        let path = [key("rules"), Seg::Index(1), key("ports"), Seg::Index(0)];
        assert_eq!(Display(&path).to_string(), "rules[1].ports[0]");
        assert_eq!(Display(&[]).to_string(), "");
    }
}
