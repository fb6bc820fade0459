//! The one place that parses YAML: turns a multi-document stream into trees of nodes that know
//! their line and column, so every validation error can point at the source. (yaml-rust2's event
//! parser; swapping the YAML library is a change to this file only.)

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// A scalar and whether it was written plain (unquoted), which decides if `123`, `true`
    /// and `null` are numbers, booleans and null or strings.
    Scalar { text: String, plain: bool },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub col: usize,
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar { text, plain } => {
                if !plain {
                    "string"
                } else if text.parse::<i64>().is_ok() || text.parse::<f64>().is_ok() {
                    "number"
                } else if matches!(text.as_str(), "true" | "false") {
                    "boolean"
                } else {
                    "string"
                }
            }
            Value::Seq(_) => "list",
            Value::Map(_) => "mapping",
        }
    }
}

/// A YAML syntax error: where and what.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// How far a document may nest (mappings and lists): far beyond any real manifest, and low
/// enough that nothing walking the tree runs out of stack.
pub const MAX_DEPTH: usize = 64;
/// Nodes that aliases may add beyond the ones written out: this floor plus
/// [`ALIAS_FACTOR`] times the written ones. A YAML alias bomb (the "billion laughs" shape)
/// multiplies a few lines into billions of nodes; this keeps the tree within a small multiple
/// of the input, as Kubernetes' YAML reader does since CVE-2019-11253.
pub const ALIAS_NODE_FLOOR: usize = 10_000;
pub const ALIAS_FACTOR: usize = 10;
/// Scalar bytes that aliases may add: this floor plus [`ALIAS_FACTOR`] times the input's size.
pub const ALIAS_BYTE_FLOOR: usize = 1 << 20;

#[derive(Default)]
struct Builder {
    docs: Vec<Node>,
    /// Open containers, each with its pending map key and how many nodes it holds so far.
    stack: Vec<(Node, Option<Node>, usize)>,
    /// Anchored nodes with their size in nodes and scalar bytes.
    anchors: std::collections::HashMap<usize, (Node, usize, usize)>,
    pending_anchor: Vec<usize>,
    written_nodes: usize,
    alias_nodes: usize,
    alias_bytes: usize,
    input_len: usize,
    /// The text's last line: the scanner can place an event or an error at end of input one
    /// line past it (found by the spec_yaml fuzz target).
    last_line: usize,
}

/// Nodes and scalar bytes in a tree (for anchors: measured once, when the anchor closes).
fn measure(node: &Node) -> (usize, usize) {
    match &node.value {
        Value::Null => (1, 0),
        Value::Scalar { text, .. } => (1, text.len()),
        Value::Seq(items) => items.iter().map(measure).fold((1, 0), |a, b| (a.0 + b.0, a.1 + b.1)),
        Value::Map(entries) => entries.iter().flat_map(|(k, v)| [measure(k), measure(v)]).fold((1, 0), |a, b| (a.0 + b.0, a.1 + b.1)),
    }
}

impl Builder {
    fn push_value(&mut self, node: Node, size: usize) {
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some((parent, pending_key, count)) => {
                *count += size;
                match &mut parent.value {
                    Value::Seq(items) => items.push(node),
                    Value::Map(entries) => match pending_key.take() {
                        None => *pending_key = Some(node),
                        Some(k) => entries.push((k, node)),
                    },
                    _ => {}
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event, mark: Marker) -> Result<(), SyntaxError> {
        let (line, col) = (mark.line().min(self.last_line), mark.col() + 1);
        let located = |message: String| SyntaxError { line, col, message };
        match ev {
            Event::DocumentStart => self.anchors.clear(),
            Event::Scalar(text, style, anchor, _tag) => {
                self.written_nodes += 1;
                let plain = style == TScalarStyle::Plain;
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar { text, plain }
                };
                let node = Node { value, line, col };
                if anchor > 0 {
                    let bytes = if let Value::Scalar { text, .. } = &node.value { text.len() } else { 0 };
                    self.anchors.insert(anchor, (node.clone(), 1, bytes));
                }
                self.push_value(node, 1);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                self.written_nodes += 1;
                if self.stack.len() >= MAX_DEPTH {
                    return Err(located(format!("nested too deeply: more than {MAX_DEPTH} levels")));
                }
                let value = if matches!(ev, Event::SequenceStart(..)) { Value::Seq(vec![]) } else { Value::Map(vec![]) };
                self.pending_anchor.push(anchor);
                self.stack.push((Node { value, line, col }, None, 0));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _, count)) = self.stack.pop() {
                    if let Some(anchor) = self.pending_anchor.pop() {
                        if anchor > 0 {
                            let (nodes, bytes) = measure(&node);
                            self.anchors.insert(anchor, (node.clone(), nodes, bytes));
                        }
                    }
                    self.push_value(node, count + 1);
                }
            }
            Event::Alias(id) => {
                let Some((node, nodes, bytes)) = self.anchors.get(&id) else {
                    return Err(located("an alias to an anchor this document does not define".into()));
                };
                self.alias_nodes += nodes;
                self.alias_bytes += bytes;
                let node_budget = ALIAS_NODE_FLOOR + ALIAS_FACTOR * self.written_nodes;
                let byte_budget = ALIAS_BYTE_FLOOR + ALIAS_FACTOR * self.input_len;
                if self.alias_nodes > node_budget || self.alias_bytes > byte_budget {
                    return Err(located(format!(
                        "aliases expand this document beyond {ALIAS_FACTOR} times its written size ({} nodes, {} bytes so far); \
                         refused as a YAML alias bomb",
                        self.alias_nodes, self.alias_bytes
                    )));
                }
                let (node, nodes) = (node.clone(), *nodes);
                self.push_value(node, nodes);
            }
            _ => {}
        }
        Ok(())
    }
}

/// How many lines a text has as YAML counts them: breaks at \n, \r\n and a lone \r.
pub fn line_count(text: &str) -> usize {
    text.matches('\n').count() + text.matches('\r').count() - text.matches("\r\n").count() + 1
}

/// Parses every document of a stream. Empty documents (a file that is only comments) are
/// dropped. Hostile input stays bounded: nesting by [`MAX_DEPTH`], alias expansion by
/// [`ALIAS_FACTOR`] times the written size; the parser is driven event by event (no recursion),
/// and the first violation ends parsing with its location.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let last_line = line_count(text);
    let mut builder = Builder { input_len: text.len(), last_line, ..Builder::default() };
    let mut parser = Parser::new_from_str(text);
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| SyntaxError {
            line: e.marker().line().min(last_line),
            col: e.marker().col() + 1,
            // The scanner stops flow collections ([[[...) at its own depth limit.
            message: if e.info() == "recursion limit exceeded" { format!("nested too deeply: {}", e.info()) } else { e.info().to_string() },
        })?;
        if ev == Event::StreamEnd {
            break;
        }
        builder.on_event(ev, mark)?;
    }
    Ok(builder.docs.into_iter().filter(|d| d.value != Value::Null).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_one_based() {
        let docs = parse_documents("a: 1\nb:\n  - x\n  - 'y'\n---\nc: true\n").unwrap();
        assert_eq!(docs.len(), 2);
        let Value::Map(entries) = &docs[0].value else { panic!() };
        assert_eq!((entries[0].0.line, entries[0].0.col), (1, 1));
        let Value::Seq(items) = &entries[1].1.value else { panic!() };
        assert_eq!((items[1].line, items[1].col), (4, 5));
        assert_eq!(items[1].value, Value::Scalar { text: "y".into(), plain: false });
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let err = parse_documents("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.line >= 1, "{err:?}");
    }

    /// The nine-line shape that took 17.9 GB before the bound.
    pub const ALIAS_BOMB: &str = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
";

    #[test]
    fn an_alias_bomb_is_refused_at_the_alias_that_crosses_the_bound() {
        let started = std::time::Instant::now();
        let err = parse_documents(ALIAS_BOMB).unwrap_err();
        assert!(err.message.contains("alias bomb"), "{err:?}");
        assert!((4..=6).contains(&err.line), "located at the level that crossed the bound: {err:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn modest_aliases_still_work() {
        let text = "base: &base { image: x, env: { A: '1' } }\none: *base\ntwo: *base\n";
        let docs = parse_documents(text).unwrap();
        let Value::Map(entries) = &docs[0].value else { panic!() };
        assert_eq!(entries[1].1.value, entries[0].1.value);
        assert_eq!(entries.len(), 3);
    }

    #[test]
    fn a_huge_scalar_aliased_many_times_is_refused() {
        let big = "x".repeat(200_000);
        let text = format!("a: &a '{big}'\nb: [{}]\n", vec!["*a"; 200].join(","));
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("alias bomb"), "{err:?}");
    }

    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack() {
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("nested too deeply"), "{err:?}");
        let text = format!("{}x", (0..200).map(|i| format!("{}k:\n", "  ".repeat(i))).collect::<String>());
        assert!(parse_documents(&text).unwrap_err().message.contains("nested too deeply: more than 64"));
        assert!(parse_documents(&format!("{}{}", "[".repeat(60), "]".repeat(60))).is_ok());
    }

    #[test]
    fn an_alias_to_another_document_is_an_error() {
        let err = parse_documents("a: &x 1\n---\nb: *x\n").unwrap_err();
        assert_eq!(err.line, 3, "{err:?}");
    }

    /// From the spec_yaml fuzz target: an error, or a node, at the very end of a text was
    /// placed one line past its end (a lone \r as the last line break; `? ` at the end).
    #[test]
    fn an_error_at_the_end_is_located_on_a_line_the_text_has() {
        let text = std::str::from_utf8(include_bytes!("../../../tests/fuzz/corpus/spec_yaml/regress-error-past-the-end")).unwrap();
        let lines = line_count(text);
        let err = parse_documents(text).unwrap_err();
        assert!(err.line <= lines, "{err:?} in a {lines}-line text");
        let text = std::str::from_utf8(include_bytes!("../../../tests/fuzz/corpus/spec_yaml/regress-node-past-the-end")).unwrap();
        let errs = super::super::parse_str(std::path::Path::new("/x.yaml"), text).unwrap_err();
        assert!(errs.iter().all(|e| e.line <= 1), "{errs:?} in a 1-line text");
    }

    #[test]
    fn comment_only_documents_are_dropped() {
        assert!(parse_documents("# nothing\n---\n").unwrap().is_empty());
    }
}
