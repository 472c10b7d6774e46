//! The text-splicing engine behind [`super::apply`]: finds byte positions in the
//! original text (from roxmltree's ranges plus a little ASCII scanning), collects
//! edits as "replace this byte range with that text", and splices them in one pass.
//!
//! Every position handed out here is either a roxmltree range boundary or next to
//! an ASCII byte, so it always falls on a `char` boundary; slicing still goes
//! through `str::get` so that a bug ends in an error, never in a panic.

use std::ops::Range;

use roxmltree::{Attribute, Node};

use super::RewriteError;

/// A new element, rendered in the document's own style when inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Elem {
    name: &'static str,
    attrs: Vec<(&'static str, String)>,
    text: Option<String>,
    children: Vec<Elem>,
}

impl Elem {
    pub(crate) fn new(name: &'static str) -> Self {
        Elem {
            name,
            attrs: Vec::new(),
            text: None,
            children: Vec::new(),
        }
    }

    pub(crate) fn attr(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.attrs.push((name, value.into()));
        self
    }

    pub(crate) fn text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    pub(crate) fn children(mut self, children: impl IntoIterator<Item = Elem>) -> Self {
        self.children.extend(children);
        self
    }
}

/// Where new elements go, relative to an existing node.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Anchor<'a, 'i> {
    /// As following siblings of this element (after any comment on its line).
    After(Node<'a, 'i>),
    /// As preceding siblings of this element.
    Before(Node<'a, 'i>),
    /// As the children of this element, which has no element children yet
    /// (possibly self-closed).
    Into(Node<'a, 'i>),
}

impl Anchor<'_, '_> {
    /// Identifies the anchor (kind + node) so that insertions can be grouped.
    pub(crate) fn key(&self) -> (u8, usize) {
        match self {
            Anchor::After(n) => (0, n.range().start),
            Anchor::Before(n) => (1, n.range().start),
            Anchor::Into(n) => (2, n.range().start),
        }
    }
}

#[derive(Debug)]
struct Edit {
    range: Range<usize>,
    text: String,
}

/// Collects edits against one version of the text and splices them.
pub(crate) struct Editor<'i> {
    src: &'i str,
    /// The document's line break (`\n` or `\r\n`).
    nl: &'static str,
    /// One level of indentation (detected; two spaces by default).
    step: String,
    /// The quote for attributes of new elements (from the root element).
    quote: char,
    edits: Vec<Edit>,
}

/// The first element child named `name` in no namespace (libvirt's vocabulary).
pub(crate) fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    children(node, name).next()
}

/// All element children named `name` in no namespace, in document order.
pub(crate) fn children<'a, 'i>(
    node: Node<'a, 'i>,
    name: &str,
) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(move |n| is_libvirt(*n, name))
}

/// Whether `node` is an element named `name` in no namespace.
pub(crate) fn is_libvirt(node: Node<'_, '_>, name: &str) -> bool {
    node.is_element()
        && node.tag_name().namespace().is_none_or(str::is_empty)
        && node.tag_name().name() == name
}

/// The unprefixed attribute `name` of `node`.
pub(crate) fn attribute<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Attribute<'a, 'i>> {
    node.attributes()
        .find(|a| a.namespace().is_none_or(str::is_empty) && a.name() == name)
}

/// Where a new element named `name` goes among `parent`'s children, given the
/// order libvirt writes them in: after the last child ranked at or before it,
/// else before the first child ranked after it, else after the last element,
/// else as the first child. Children for which `skip` holds (being removed) are
/// never used as anchors.
pub(crate) fn anchor_in<'a, 'i>(
    parent: Node<'a, 'i>,
    order: &[&str],
    name: &str,
    skip: impl Fn(Node<'a, 'i>) -> bool,
) -> Anchor<'a, 'i> {
    let rank = |n: Node<'_, '_>| {
        if n.tag_name().namespace().is_some_and(|ns| !ns.is_empty()) {
            return None;
        }
        order.iter().position(|o| *o == n.tag_name().name())
    };
    let new_rank = order.iter().position(|o| *o == name).unwrap_or(order.len());
    let elements: Vec<Node<'a, 'i>> = parent
        .children()
        .filter(|n| n.is_element() && !skip(*n))
        .collect();
    if let Some(n) = elements
        .iter()
        .rev()
        .find(|n| rank(**n).is_some_and(|r| r <= new_rank))
    {
        return Anchor::After(*n);
    }
    if let Some(n) = elements
        .iter()
        .find(|n| rank(**n).is_some_and(|r| r > new_rank))
    {
        return Anchor::Before(*n);
    }
    match elements.last() {
        Some(n) => Anchor::After(*n),
        None => Anchor::Into(parent),
    }
}

/// The anchor that makes new elements the first children of `parent`.
pub(crate) fn first_child_anchor<'a, 'i>(parent: Node<'a, 'i>) -> Anchor<'a, 'i> {
    match parent.children().find(|n| n.is_element()) {
        Some(first) => Anchor::Before(first),
        None => Anchor::Into(parent),
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn escape_attr(value: &str, quote: char) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '\'' if quote == '\'' => out.push_str("&apos;"),
            '"' if quote == '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn escape_text(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl<'i> Editor<'i> {
    /// Detects the document's style (line break, indentation step, quote) from
    /// the text and its root element.
    pub(crate) fn new(src: &'i str, root: Node<'_, 'i>) -> Self {
        let mut editor = Editor {
            src,
            nl: if src.contains("\r\n") { "\r\n" } else { "\n" },
            step: "  ".to_owned(),
            quote: '\'',
            edits: Vec::new(),
        };
        if let Some(quote) = root.attributes().next().and_then(|a| editor.quote_of(&a)) {
            editor.quote = quote;
        }
        let root_indent = editor.line_indent(root.range().start);
        let child_indent = root
            .children()
            .find(|n| n.is_element())
            .and_then(|n| editor.line_indent(n.range().start));
        if let (Some(outer), Some(inner)) = (root_indent, child_indent)
            && inner.len() > outer.len()
            && let Some(step) = inner.strip_prefix(outer)
        {
            editor.step = step.to_owned();
        }
        editor
    }

    fn byte(&self, pos: usize) -> Option<u8> {
        self.src.as_bytes().get(pos).copied()
    }

    /// The whitespace between the start of the line and `pos`, if only blanks
    /// precede `pos` on its line (the start of the text counts as a line start).
    fn line_indent(&self, pos: usize) -> Option<&'i str> {
        let bytes = self.src.as_bytes();
        let mut start = pos.min(bytes.len());
        while start > 0 && is_blank(bytes[start - 1]) {
            start -= 1;
        }
        if start == 0 || bytes[start - 1] == b'\n' {
            self.src.get(start..pos)
        } else {
            None
        }
    }

    /// The position of the line break (`\n`, or the `\r` of `\r\n`) that ends the
    /// line before `pos`, when only blanks separate them.
    fn break_before(&self, pos: usize) -> Option<usize> {
        let bytes = self.src.as_bytes();
        let mut start = pos.min(bytes.len());
        while start > 0 && is_blank(bytes[start - 1]) {
            start -= 1;
        }
        if start == 0 || bytes[start - 1] != b'\n' {
            return None;
        }
        let mut brk = start - 1;
        if brk > 0 && bytes[brk - 1] == b'\r' {
            brk -= 1;
        }
        Some(brk)
    }

    /// The end of `node`'s line for inserting after it: past blanks and comments
    /// that follow it on its line, at the line break. `None` when something else
    /// follows on the same line.
    fn line_end_after(&self, pos: usize) -> Option<usize> {
        let mut at = pos;
        loop {
            while self.byte(at).is_some_and(is_blank) {
                at += 1;
            }
            let rest = self.src.get(at..)?;
            if rest.starts_with("<!--") {
                at += rest.find("-->")? + 3;
                continue;
            }
            return match self.byte(at) {
                Some(b'\r' | b'\n') => Some(at),
                _ => None,
            };
        }
    }

    /// The position just past the `>` of `node`'s start tag.
    pub(crate) fn start_tag_end(&self, node: Node<'_, '_>) -> usize {
        let range = node.range();
        let bytes = self.src.as_bytes();
        let mut quote = None;
        let mut at = range.start + 1;
        while at < range.end {
            let b = bytes[at];
            match quote {
                Some(q) if b == q => quote = None,
                Some(_) => {}
                None if b == b'\'' || b == b'"' => quote = Some(b),
                None if b == b'>' => return at + 1,
                None => {}
            }
            at += 1;
        }
        range.end
    }

    pub(crate) fn is_self_closing(&self, node: Node<'_, '_>) -> bool {
        let end = node.range().end;
        self.start_tag_end(node) == end && end >= 2 && self.src.get(end - 2..end) == Some("/>")
    }

    /// The value range (inside the quotes) and quote of an attribute, from its
    /// raw text (robust against any spacing around `=`).
    fn value_of(&self, attr: &Attribute<'_, '_>) -> Option<(Range<usize>, char)> {
        let range = attr.range();
        let raw = self.src.get(range.clone())?;
        let quote = raw.chars().last().filter(|c| *c == '\'' || *c == '"')?;
        let eq = raw.find('=')?;
        let open = eq + 1 + raw.get(eq + 1..)?.find(quote)?;
        Some((range.start + open + 1..range.end - 1, quote))
    }

    fn quote_of(&self, attr: &Attribute<'_, '_>) -> Option<char> {
        self.value_of(attr).map(|(_, q)| q)
    }

    /// The quote new attributes of `node` get: that of its first attribute.
    fn element_quote(&self, node: Node<'_, '_>) -> char {
        node.attributes()
            .next()
            .and_then(|a| self.quote_of(&a))
            .unwrap_or(self.quote)
    }

    fn push(&mut self, range: Range<usize>, text: String) {
        self.edits.push(Edit { range, text });
    }

    /// Sets attribute `name` of `node` to `value` unless `satisfied` says the
    /// current value already means the same; replaces the value in place (same
    /// quote) or appends the attribute at the end of the start tag.
    pub(crate) fn set_attr(
        &mut self,
        node: Node<'_, '_>,
        name: &str,
        value: &str,
        satisfied: impl Fn(&str) -> bool,
    ) -> Result<(), RewriteError> {
        match attribute(node, name) {
            Some(attr) => {
                if satisfied(attr.value()) {
                    return Ok(());
                }
                let (range, quote) = self
                    .value_of(&attr)
                    .ok_or_else(|| internal(format!("cannot locate the value of {name}")))?;
                self.push(range, escape_attr(value, quote));
            }
            None => {
                let quote = self.element_quote(node);
                let pos = self.attr_insert_pos(node);
                let text = format!(" {name}={quote}{}{quote}", escape_attr(value, quote));
                self.push(pos..pos, text);
            }
        }
        Ok(())
    }

    /// Just after the last attribute (or the name) of `node`'s start tag, before
    /// any blanks and the closing `>`/`/>`.
    fn attr_insert_pos(&self, node: Node<'_, '_>) -> usize {
        let mut pos = self.start_tag_end(node).saturating_sub(1);
        if pos > 0 && self.byte(pos - 1) == Some(b'/') {
            pos -= 1;
        }
        while pos > node.range().start + 1
            && self.byte(pos - 1).is_some_and(|b| b.is_ascii_whitespace())
        {
            pos -= 1;
        }
        pos
    }

    /// Removes attribute `name` of `node` with the whitespace before it.
    pub(crate) fn remove_attr(&mut self, node: Node<'_, '_>, name: &str) {
        if let Some(attr) = attribute(node, name) {
            let range = attr.range();
            let mut start = range.start;
            while start > 0
                && self
                    .byte(start - 1)
                    .is_some_and(|b| b.is_ascii_whitespace())
            {
                start -= 1;
            }
            self.push(start..range.end, String::new());
        }
    }

    /// Removes `node`; when it starts its own line, the line break and
    /// indentation before it go too.
    pub(crate) fn remove_element(&mut self, node: Node<'_, '_>) {
        let range = node.range();
        let start = self.break_before(range.start).unwrap_or(range.start);
        self.push(start..range.end, String::new());
    }

    /// Replaces `range` of the original text.
    pub(crate) fn replace(&mut self, range: Range<usize>, text: impl Into<String>) {
        self.push(range, text.into());
    }

    /// Inserts `elems` at `anchor`, indented like their new siblings.
    pub(crate) fn insert(&mut self, anchor: Anchor<'_, '_>, elems: &[Elem]) {
        if elems.is_empty() {
            return;
        }
        match anchor {
            Anchor::After(node) => {
                let indent = self.line_indent(node.range().start);
                let end = node.range().end;
                let (pos, indent) = match (indent, self.line_end_after(end)) {
                    (Some(indent), Some(pos)) => (pos, Some(indent)),
                    (Some(indent), None) => (end, Some(indent)),
                    (None, _) => (end, None),
                };
                let mut text = String::new();
                for elem in elems {
                    if let Some(indent) = indent {
                        text.push_str(self.nl);
                        text.push_str(indent);
                    }
                    self.render(elem, indent, &mut text);
                }
                self.push(pos..pos, text);
            }
            Anchor::Before(node) => {
                let pos = node.range().start;
                let indent = self.line_indent(pos);
                let mut text = String::new();
                for elem in elems {
                    self.render(elem, indent, &mut text);
                    if let Some(indent) = indent {
                        text.push_str(self.nl);
                        text.push_str(indent);
                    }
                }
                self.push(pos..pos, text);
            }
            Anchor::Into(parent) => self.insert_into(parent, elems),
        }
    }

    fn insert_into(&mut self, parent: Node<'_, '_>, elems: &[Elem]) {
        let outer = self.line_indent(parent.range().start);
        let inner = outer.map(|o| format!("{o}{}", self.step));
        let mut body = String::new();
        for elem in elems {
            if let Some(inner) = &inner {
                body.push_str(self.nl);
                body.push_str(inner);
            }
            self.render(elem, inner.as_deref(), &mut body);
        }
        let end = parent.range().end;
        let name = parent.tag_name().name();
        if self.is_self_closing(parent) {
            let mut text = format!(">{body}");
            if let Some(outer) = outer {
                text.push_str(self.nl);
                text.push_str(outer);
            }
            text.push_str(&format!("</{name}>"));
            self.push(end - 2..end, text);
            return;
        }
        let close = self
            .src
            .get(parent.range())
            .and_then(|raw| raw.rfind("</"))
            .map_or(end, |i| parent.range().start + i);
        match (outer, self.break_before(close)) {
            (Some(_), Some(brk)) => self.push(brk..brk, body),
            (Some(outer), None) => {
                body.push_str(self.nl);
                body.push_str(outer);
                self.push(close..close, body);
            }
            (None, _) => self.push(close..close, body),
        }
    }

    /// Writes `elem` at the current position; `indent` is that of its own line,
    /// `None` for a document written without line breaks.
    fn render(&self, elem: &Elem, indent: Option<&str>, out: &mut String) {
        let q = self.quote;
        out.push('<');
        out.push_str(elem.name);
        for (name, value) in &elem.attrs {
            out.push_str(&format!(" {name}={q}{}{q}", escape_attr(value, q)));
        }
        if elem.children.is_empty() && elem.text.is_none() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        if let Some(text) = &elem.text {
            out.push_str(&escape_text(text));
        }
        let inner = indent.map(|i| format!("{i}{}", self.step));
        for child in &elem.children {
            if let Some(inner) = &inner {
                out.push_str(self.nl);
                out.push_str(inner);
            }
            self.render(child, inner.as_deref(), out);
        }
        if !elem.children.is_empty()
            && let Some(indent) = indent
        {
            out.push_str(self.nl);
            out.push_str(indent);
        }
        out.push_str("</");
        out.push_str(elem.name);
        out.push('>');
    }

    /// Splices all edits into the text. Insertions at the same position keep
    /// the order they were made in.
    pub(crate) fn finish(mut self) -> Result<String, RewriteError> {
        if self.edits.is_empty() {
            return Ok(self.src.to_owned());
        }
        // Stable: equal (start, end) keep their insertion order; an insertion
        // at P sorts before a removal starting at P.
        self.edits.sort_by_key(|e| (e.range.start, e.range.end));
        let extra: usize = self.edits.iter().map(|e| e.text.len()).sum();
        let mut out = String::with_capacity(self.src.len() + extra);
        let mut cursor = 0;
        for edit in &self.edits {
            if edit.range.start < cursor || edit.range.end < edit.range.start {
                return Err(internal("overlapping edits".to_owned()));
            }
            let kept = self
                .src
                .get(cursor..edit.range.start)
                .ok_or_else(|| internal("edit off a character boundary".to_owned()))?;
            out.push_str(kept);
            out.push_str(&edit.text);
            cursor = edit.range.end;
        }
        let rest = self
            .src
            .get(cursor..)
            .ok_or_else(|| internal("edit off a character boundary".to_owned()))?;
        out.push_str(rest);
        Ok(out)
    }
}

fn internal(what: String) -> RewriteError {
    RewriteError::Invalid(format!("internal rewrite error: {what}"))
}
