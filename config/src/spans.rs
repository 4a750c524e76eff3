//! Source positions for YAML (and JSON) documents: a map from a field path such as
//! `services.orders.endpoints.1` to the 1-based line that holds it. serde gives us typed values but
//! no positions for semantic errors (unknown parent, bad endpoint); this index lets every
//! validation error name its line without a custom deserializer.

use rustc_hash::FxHashMap;
use yaml_rust2::parser::{Event, Parser};

/// Line positions of the fields of one YAML document.
#[derive(Debug, Default, Clone)]
pub struct Spans {
    lines: FxHashMap<String, u32>,
    /// Line of the document start, used when a path is not found.
    first_line: u32,
}

impl Spans {
    /// The line of `path`, or of its nearest recorded ancestor, or of the document start.
    pub fn line(&self, path: &str) -> u32 {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return *l;
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return self.first_line,
            }
        }
    }

    /// Whether the document sets `path` explicitly.
    pub fn has(&self, path: &str) -> bool {
        self.lines.contains_key(path)
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

struct Collector {
    docs: Vec<Spans>,
    stack: Vec<Frame>,
    path: Vec<String>,
}

impl Collector {
    fn current(&mut self) -> &mut Spans {
        if self.docs.is_empty() {
            self.docs.push(Spans::default());
        }
        let last = self.docs.len() - 1;
        &mut self.docs[last]
    }

    fn record(&mut self, line: u32) {
        let joined = self.path.join(".");
        if !joined.is_empty() {
            self.current().lines.entry(joined).or_insert(line);
        }
    }

    /// Called before a value (scalar, map or seq) starts: pushes its path segment.
    /// Returns true when the event was a mapping key rather than a value.
    fn enter_value(&mut self, scalar: Option<&str>, line: u32) -> bool {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => {
                if key.is_none() {
                    *key = Some(scalar.unwrap_or("?").to_string());
                    let k = key.clone().unwrap_or_default();
                    self.path.push(k);
                    self.record(line);
                    self.path.pop();
                    return true;
                }
                let k = key.clone().unwrap_or_default();
                self.path.push(k);
                false
            }
            Some(Frame::Seq { index }) => {
                let i = *index;
                *index += 1;
                self.path.push(i.to_string());
                self.record(line);
                false
            }
            None => false,
        }
    }

    /// A scalar (or alias) is either a mapping key or a complete value.
    fn scalar(&mut self, text: Option<&str>, line: u32) {
        if !self.enter_value(text, line) {
            self.leave_value();
        }
    }

    /// Called after a value ends: pops its path segment and resets the parent map's key.
    fn leave_value(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => {
                *key = None;
                self.path.pop();
            }
            Some(Frame::Seq { .. }) => {
                self.path.pop();
            }
            None => {}
        }
    }
}

impl Collector {
    fn on_event(&mut self, ev: Event, line: u32) {
        match ev {
            Event::DocumentStart => {
                self.docs.push(Spans {
                    lines: FxHashMap::default(),
                    first_line: line.max(1),
                });
                self.stack.clear();
                self.path.clear();
            }
            Event::Scalar(v, ..) => self.scalar(Some(&v), line),
            Event::Alias(_) => self.scalar(None, line),
            Event::MappingStart(..) => {
                self.enter_value(None, line);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.enter_value(None, line);
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.leave_value();
            }
            _ => {}
        }
    }
}

/// A document nests collections deeper than the limit given to [`index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    /// The line of the collection that crossed the limit.
    pub line: u32,
}

/// Index every document of `text`, refusing collections nested more than `max_depth` deep. The
/// events are pulled one at a time and the depth counted as they come, so a hostile text is
/// refused after `max_depth` levels, before any recursive parser (yaml-rust2's own `load`,
/// serde) walks it. A syntax error yields no spans: the serde parse reports it with its own
/// position.
pub fn index(text: &str, max_depth: usize) -> Result<Vec<Spans>, TooDeep> {
    let mut c = Collector {
        docs: Vec::new(),
        stack: Vec::new(),
        path: Vec::new(),
    };
    let mut parser = Parser::new_from_str(text);
    loop {
        let (ev, mark) = match parser.next_token() {
            Ok(v) => v,
            // the scanner reads ahead while a flow collection might still turn out to be a key,
            // and gives up at 256 open flow levels: beyond our limit too, so report it as such
            Err(e) if e.info() == "recursion limit exceeded" => {
                let line = u32::try_from(e.marker().line()).unwrap_or(u32::MAX);
                return Err(TooDeep { line });
            }
            Err(_) => return Ok(Vec::new()),
        };
        let line = u32::try_from(mark.line()).unwrap_or(u32::MAX);
        match ev {
            Event::StreamEnd => return Ok(c.docs),
            Event::MappingStart(..) | Event::SequenceStart(..) if c.stack.len() >= max_depth => {
                return Err(TooDeep { line });
            }
            ev => c.on_event(ev, line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_have_lines() {
        let text = "kind: branch\nservices:\n  orders:\n    endpoints:\n      - a:1\n      - b:2\n    image: x\n";
        let docs = index(text, 64).expect("shallow");
        assert_eq!(docs.len(), 1);
        let s = &docs[0];
        assert_eq!(s.line("kind"), 1);
        assert_eq!(s.line("services.orders"), 3);
        assert_eq!(s.line("services.orders.endpoints"), 4);
        assert_eq!(s.line("services.orders.endpoints.1"), 6);
        assert_eq!(s.line("services.orders.image"), 7);
        // unknown path falls back to the nearest ancestor
        assert_eq!(s.line("services.orders.env.FOO"), 3);
    }

    #[test]
    fn multi_document_and_flow_style() {
        let text = "kind: org\n---\nkind: team\nservices: {payments: {endpoints: [\"x:1\"]}}\n";
        let docs = index(text, 64).expect("shallow");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].line("services.payments.endpoints"), 4);
        assert!(docs[1].has("kind"));
    }
}
