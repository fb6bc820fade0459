//! The one place that parses YAML: turns a multi-document stream into trees of nodes that know
//! their line and column, so every validation error can point at the source. (yaml-rust2's event
//! parser; swapping the YAML library is a change to this file only.)

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
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

#[derive(Default)]
struct Builder {
    docs: Vec<Node>,
    stack: Vec<(Node, Option<Node>)>,
    anchors: std::collections::HashMap<usize, Node>,
    pending_anchor: Vec<usize>,
}

impl Builder {
    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some((parent, pending_key)) => match &mut parent.value {
                Value::Seq(items) => items.push(node),
                Value::Map(entries) => match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(k) => entries.push((k, node)),
                },
                _ => {}
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let (line, col) = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == TScalarStyle::Plain;
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar { text, plain }
                };
                let node = Node { value, line, col };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push_value(node);
            }
            Event::SequenceStart(anchor, _) => {
                self.pending_anchor.push(anchor);
                self.stack.push((Node { value: Value::Seq(vec![]), line, col }, None));
            }
            Event::MappingStart(anchor, _) => {
                self.pending_anchor.push(anchor);
                self.stack.push((Node { value: Value::Map(vec![]), line, col }, None));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    if let Some(anchor) = self.pending_anchor.pop() {
                        if anchor > 0 {
                            self.anchors.insert(anchor, node.clone());
                        }
                    }
                    self.push_value(node);
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().unwrap_or(Node { value: Value::Null, line, col });
                self.push_value(node);
            }
            Event::DocumentEnd => {}
            _ => {}
        }
    }
}

/// Parses every document of a stream. Empty documents (a file that is only comments) are
/// dropped. Alias expansion is bounded by the input size because aliases are cloned nodes.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| SyntaxError {
        line: e.marker().line(),
        col: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
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

    #[test]
    fn comment_only_documents_are_dropped() {
        assert!(parse_documents("# nothing\n---\n").unwrap().is_empty());
    }
}
