//! Reading outside text (JSON, YAML) into JSON values, bounded, and writing YAML back.
//!
//! ```text
//!   JSON ──depth scan (no parser yet)──> serde_json, duplicate keys refused
//!   YAML ──saphyr-parser events──> values, depth and alias expansion bounded as they stream,
//!                                   duplicate keys refused
//! ```
//!
//! Whatever the input, the work is linear in its size: nesting deeper than [`MAX_DEPTH`] is
//! refused before anything under it is read, and aliases may not expand a document to more
//! nodes than a few per byte (a "billion laughs" body is refused, not built). The YAML reader
//! is saphyr-parser's event stream rather than serde_yaml, whose libyaml port is quadratic in
//! the nesting of flow collections (a 120 KB body took 14 s) and which is no longer kept.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};
use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The deepest nesting of mappings and sequences read. Kuma's resources nest about ten deep.
pub const MAX_DEPTH: usize = 64;

/// Why text could not be read: what, and where (1-based line and column; 0 when unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

fn too_deep() -> String {
    format!("nested more than {MAX_DEPTH} levels deep")
}

// --- JSON ---------------------------------------------------------------------------------

/// Where JSON text first nests deeper than [`MAX_DEPTH`], found without parsing it: strings
/// (with their escapes) are skipped, brackets counted.
fn json_too_deep(text: &str) -> Option<TextError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut line, mut column) = (1, 0);
    for c in text.chars() {
        column += 1;
        if c == '\n' {
            line += 1;
            column = 0;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(TextError {
                        line,
                        column,
                        message: too_deep(),
                    });
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// A JSON value that refuses duplicate keys (serde_json keeps the last).
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        no_nul(v).map_err(E::custom)?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        no_nul(&v).map_err(E::custom)?;
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict::deserialize(d).map(|s| s.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            no_nul(&key).map_err(de::Error::custom)?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let Strict(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Refuses a NUL character: no resource needs one, and databases refuse it in text.
fn no_nul(text: &str) -> Result<(), &'static str> {
    if text.contains('\0') {
        Err("a string holds a NUL character")
    } else {
        Ok(())
    }
}

/// Every JSON value in `text` (usually one).
pub fn json_values(text: &str) -> Result<Vec<Value>, TextError> {
    if let Some(e) = json_too_deep(text) {
        return Err(e);
    }
    serde_json::Deserializer::from_str(text)
        .into_iter::<Strict>()
        .map(|doc| {
            doc.map(|s| s.0).map_err(|e| TextError {
                line: e.line(),
                column: e.column(),
                message: strip_location(&e.to_string()),
            })
        })
        .collect()
}

fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

// --- YAML ---------------------------------------------------------------------------------

/// A collection being built.
enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
    },
    Map {
        entries: Map<String, Value>,
        key: Option<String>,
        anchor: usize,
    },
}

/// Builds values from the event stream, within the budgets.
struct Builder {
    stack: Vec<Frame>,
    /// Anchored values, with their size and depth (see [`weigh`]).
    anchors: HashMap<usize, (Value, usize, usize)>,
    /// Bytes that anchors and aliases may still add beyond the text itself.
    budget: usize,
}

fn error_at(span: &Span, message: impl Into<String>) -> TextError {
    TextError {
        line: span.start.line(),
        column: span.start.col() + 1,
        message: message.into(),
    }
}

fn scan_error(e: &ScanError) -> TextError {
    // The scanner looks ahead, and has its own (higher) limit on flow nesting.
    let message = if e.info().contains("recursion limit") {
        too_deep()
    } else {
        e.info().to_owned()
    };
    TextError {
        line: e.marker().line(),
        column: e.marker().col() + 1,
        message,
    }
}

/// Whether a tag is one of YAML's own (`!!str`, `!!map`, ...).
fn core(tag: &saphyr_parser::Tag) -> bool {
    tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:"
}

fn unsupported(span: &Span, tag: &saphyr_parser::Tag) -> TextError {
    error_at(
        span,
        format!("the tag {}{} is not supported", tag.handle, tag.suffix),
    )
}

/// What a copy of `v` costs (its strings' and keys' bytes, and one per node) and how deep it
/// nests: what an alias to it adds to a document.
fn weigh(v: &Value) -> (usize, usize) {
    match v {
        Value::Array(items) => items
            .iter()
            .map(weigh)
            .fold((1, 1), |(b, d), (ib, id)| (b + ib, d.max(id + 1))),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let (b, d) = weigh(v);
                (b + k.len(), d)
            })
            .fold((1, 1), |(b, d), (ib, id)| (b + ib, d.max(id + 1))),
        Value::String(s) => (1 + s.len(), 0),
        _ => (1, 0),
    }
}

/// A plain scalar's value, by YAML 1.2's core schema.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let negative = text.starts_with('-');
    // Digits only: `from_str_radix` would take a second sign (`-0x-8000000000000000`).
    let radix = |digits: &str, radix: u32| {
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        i64::from_str_radix(digits, radix)
            .ok()
            .and_then(|n| if negative { n.checked_neg() } else { Some(n) })
            .map(Value::from)
    };
    let parsed = if let Some(hex) = unsigned.strip_prefix("0x") {
        radix(hex, 16)
    } else if let Some(oct) = unsigned.strip_prefix("0o") {
        radix(oct, 8)
    } else if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<u64>().map(Value::from))
            .ok()
            .or_else(|| {
                text.parse::<f64>()
                    .ok()
                    .and_then(Number::from_f64)
                    .map(Value::Number)
            })
    } else if is_float(unsigned) {
        text.parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
    } else {
        None
    };
    parsed.unwrap_or_else(|| Value::String(text.to_owned()))
}

/// `1.5`, `.5`, `1.`, `1e3`, `1.5E-3` (not `.inf`, `.nan`: JSON has no such numbers).
fn is_float(text: &str) -> bool {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((whole, frac)) => {
            (digits(whole) || whole.is_empty())
                && (digits(frac) || frac.is_empty())
                && !(whole.is_empty() && frac.is_empty())
        }
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exponent_ok && (mantissa.contains('.') || exponent.is_some())
}

impl Builder {
    /// Adds a finished node to the collection being built, or returns it if it is a document.
    fn add(&mut self, value: Value, anchor: usize, span: &Span) -> Result<Option<Value>, TextError> {
        if anchor != 0 {
            let (bytes, depth) = weigh(&value);
            self.spend(bytes, span)?;
            self.anchors.insert(anchor, (value.clone(), bytes, depth));
        }
        match self.stack.last_mut() {
            None => Ok(Some(value)),
            Some(Frame::Seq { items, .. }) => {
                items.push(value);
                Ok(None)
            }
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    *key = Some(match value {
                        Value::String(s) => s,
                        Value::Null => String::new(),
                        Value::Bool(_) | Value::Number(_) => value.to_string(),
                        _ => return Err(error_at(span, "a mapping key must be a scalar")),
                    });
                    Ok(None)
                }
                Some(k) => {
                    if entries.contains_key(&k) {
                        return Err(error_at(span, format!("duplicate key {k:?}")));
                    }
                    entries.insert(k, value);
                    Ok(None)
                }
            },
        }
    }

    fn spend(&mut self, bytes: usize, span: &Span) -> Result<(), TextError> {
        self.budget = self
            .budget
            .checked_sub(bytes)
            .ok_or_else(|| error_at(span, "aliases expand this document too far (a YAML bomb?)"))?;
        Ok(())
    }

    fn open(&mut self, frame: Frame, span: &Span) -> Result<(), TextError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(error_at(span, too_deep()));
        }
        self.stack.push(frame);
        Ok(())
    }
}

/// Every document in YAML `text`; empty documents are left out.
pub fn yaml_values(text: &str) -> Result<Vec<Value>, TextError> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        budget: 4 * text.len() + 1024,
    };
    let mut docs = Vec::new();
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| scan_error(&e))?;
        let done = match event {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentStart(_) | Event::DocumentEnd => None,
            Event::Scalar(text, style, anchor, tag) => {
                no_nul(&text).map_err(|e| error_at(&span, e))?;
                let plain = style == ScalarStyle::Plain;
                let value = match tag.as_deref() {
                    None if plain => resolve_plain(&text),
                    None => Value::String(text.into_owned()),
                    Some(tag) if core(tag) => match tag.suffix.as_str() {
                        "str" => Value::String(text.into_owned()),
                        "int" | "float" | "bool" | "null" if plain => resolve_plain(&text),
                        _ => return Err(unsupported(&span, tag)),
                    },
                    Some(tag) => return Err(unsupported(&span, tag)),
                };
                builder.add(value, anchor, &span)?
            }
            Event::Alias(anchor) => {
                let (bytes, depth) = match builder.anchors.get(&anchor) {
                    Some((_, bytes, depth)) => (*bytes, *depth),
                    None => return Err(error_at(&span, "an alias to an unknown anchor")),
                };
                // An alias nests what it names where it stands: the depth limit holds for it too.
                if builder.stack.len() + depth > MAX_DEPTH {
                    return Err(error_at(&span, too_deep()));
                }
                builder.spend(bytes, &span)?;
                let value = builder
                    .anchors
                    .get(&anchor)
                    .map(|(v, _, _)| v.clone())
                    .unwrap_or_default();
                builder.add(value, 0, &span)?
            }
            Event::SequenceStart(anchor, tag) => {
                if let Some(tag) = tag.filter(|t| !(core(t) && t.suffix == "seq")) {
                    return Err(unsupported(&span, &tag));
                }
                builder.open(
                    Frame::Seq {
                        items: Vec::new(),
                        anchor,
                    },
                    &span,
                )?;
                None
            }
            Event::MappingStart(anchor, tag) => {
                if let Some(tag) = tag.filter(|t| !(core(t) && t.suffix == "map")) {
                    return Err(unsupported(&span, &tag));
                }
                builder.open(
                    Frame::Map {
                        entries: Map::new(),
                        key: None,
                        anchor,
                    },
                    &span,
                )?;
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor) = match builder.stack.pop() {
                    Some(Frame::Seq { items, anchor }) => (Value::Array(items), anchor),
                    Some(Frame::Map { entries, anchor, .. }) => (Value::Object(entries), anchor),
                    None => return Err(error_at(&span, "unbalanced collection end")),
                };
                builder.add(value, anchor, &span)?
            }
        };
        if let Some(doc) = done
            && !doc.is_null()
        {
            docs.push(doc);
        }
    }
    Ok(docs)
}

// --- YAML out -----------------------------------------------------------------------------

/// `value` as block-style YAML that [`yaml_values`] reads back as the same value. Strings are
/// written plain where that is unambiguous, else double-quoted (JSON's escapes are YAML's).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    out
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => string_text(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
        other => other.to_string(),
    }
}

fn string_text(s: &str) -> String {
    let plain_safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@+=<>()".contains(c) || c == ' ')
        // Not opening with a YAML indicator (those allowed in the body above).
        && !s.starts_with(['-', ':', '@', ' ', '>'])
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.contains(" #")
        // Not a document marker.
        && !s.starts_with("---")
        && !s.starts_with("...")
        && resolve_plain(s) == Value::String(s.to_owned());
    if plain_safe {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

fn indent(out: &mut String, level: usize) {
    out.extend(std::iter::repeat_n("  ", level));
}

/// Keys longer than this are written as explicit keys (`? KEY` then `: VALUE`): YAML allows
/// an implicit key of at most 1024 characters.
const LONGEST_IMPLICIT_KEY: usize = 1000;

fn write_map(out: &mut String, m: &Map<String, Value>, level: usize) {
    for (k, v) in m {
        indent(out, level);
        let key = string_text(k);
        if key.chars().count() > LONGEST_IMPLICIT_KEY {
            out.push_str("? ");
            out.push_str(&key);
            out.push('\n');
            indent(out, level);
        } else {
            out.push_str(&key);
        }
        out.push(':');
        write_child(out, v, level);
    }
}

fn write_seq(out: &mut String, a: &[Value], level: usize) {
    for v in a {
        indent(out, level);
        out.push('-');
        match v {
            // `- key: value` with the rest of the mapping under it, as people write it.
            Value::Object(m) if !m.is_empty() => {
                let mut nested = String::new();
                write_map(&mut nested, m, level + 1);
                out.push(' ');
                out.push_str(&nested[2 * (level + 1)..]);
            }
            _ => write_child(out, v, level),
        }
    }
}

fn write_child(out: &mut String, v: &Value, level: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, level + 1);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(out, a, level + 1);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests;
