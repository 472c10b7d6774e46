//! Markdown to man(7), for kvmtune-policy(5) (from `docs/policy.md`) and the extra
//! sections of kvmtune(8). pulldown-cmark reads the Markdown; every line of output is
//! built with the `roff` crate, which escapes the text (backslashes, dashes, leading
//! control characters, apostrophes): nothing here escapes roff by hand. Section and
//! subsection titles go on the line after `.SH`/`.SS` (man(7) allows it) so that
//! they are escaped text too, not request arguments.
//!
//! The converter keeps to the subset the policy reference uses (headings `#`, `##`,
//! `###`, paragraphs, lists, code blocks, emphasis, code spans, links, HTML comments)
//! and refuses the rest (tables, quotes, images, other HTML), so a construct that
//! would render badly fails the build instead. A `###` heading that is one code span
//! is a policy key: its name in bold and its description indented below it.

use anyhow::{Result, bail};
use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use roff::{Inline, Roff, bold, italic, line_break, roman};

/// The man(7) bullet glyph for `.IP` tags (a glyph name, not an escape of text).
const BULLET: &str = r"\(bu";

/// A whole man page from Markdown: `# name(section)`, then one paragraph that
/// becomes the NAME section, then `##` sections.
pub fn markdown_to_man(markdown: &str, date: &str, source: &str, manual: &str) -> Result<String> {
    let mut conv = Converter::new(true);
    conv.run(markdown)?;
    let Some((name, section)) = conv.title.clone() else {
        bail!("no `# name(section)` title");
    };
    let mut page = Roff::new();
    page.control(
        "TH",
        [
            name.to_uppercase().as_str(),
            section.as_str(),
            date,
            source,
            manual,
        ],
    );
    page.extend([conv.roff]);
    Ok(page.render())
}

/// Man page sections from Markdown that starts at a `##` heading (no title), to
/// append to a page (with roff's apostrophe preamble again, which is harmless).
pub fn markdown_to_roff(markdown: &str) -> Result<String> {
    let mut conv = Converter::new(false);
    conv.run(markdown)?;
    Ok(conv.roff.render())
}

/// `.SH` with its title on the next line, as escaped text.
pub fn section(roff: &mut Roff, title: &str) {
    roff.control("SH", []).text([roman(title.to_uppercase())]);
}

/// What the inline text being collected belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    None,
    Title,
    Section,
    Subsection,
    Paragraph,
    Item,
    Code,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Font {
    Roman,
    Bold,
    Italic,
}

/// Markdown events to man(7) macros.
struct Converter {
    roff: Roff,
    expect_title: bool,
    title: Option<(String, String)>,
    /// The paragraph after the title is the NAME section.
    name_pending: bool,
    block: Block,
    inlines: Vec<Inline>,
    /// Code spans in the current heading (one and nothing else: a key heading).
    heading_codes: usize,
    heading_other: bool,
    fonts: Vec<Font>,
    links: Vec<String>,
    code: String,
    /// Open lists: whether ordered, and the next number.
    lists: Vec<Option<u64>>,
    /// The current list item has printed its tag and nothing else yet.
    item_fresh: bool,
    /// Inside a key's indented body (`.RS` open).
    in_key: bool,
    /// A heading (section, subsection, key) was just written: the paragraph after
    /// it needs no `.PP` (mandoc: "skipping paragraph macro: PP after SH").
    fresh: bool,
    /// An HTML block started and its first line is still to come.
    html_block_fresh: bool,
}

impl Converter {
    fn new(expect_title: bool) -> Self {
        Converter {
            roff: Roff::new(),
            expect_title,
            title: None,
            name_pending: false,
            block: Block::None,
            inlines: Vec::new(),
            heading_codes: 0,
            heading_other: false,
            fonts: Vec::new(),
            links: Vec::new(),
            code: String::new(),
            lists: Vec::new(),
            item_fresh: false,
            in_key: false,
            fresh: false,
            html_block_fresh: false,
        }
    }

    fn run(&mut self, markdown: &str) -> Result<()> {
        for event in Parser::new_ext(markdown, Options::empty()) {
            self.event(event)?;
        }
        self.close_key();
        if self.expect_title && self.title.is_none() {
            bail!("no `# name(section)` title");
        }
        Ok(())
    }

    fn font(&self) -> Font {
        self.fonts.last().copied().unwrap_or(Font::Roman)
    }

    fn push_text(&mut self, text: &str, font: Font) {
        if self.block == Block::Code {
            self.code.push_str(text);
            return;
        }
        if matches!(self.block, Block::Section | Block::Subsection) {
            self.heading_other |= !text.trim().is_empty();
        }
        self.inlines.push(match font {
            Font::Roman => roman(text),
            Font::Bold => bold(text),
            Font::Italic => italic(text),
        });
    }

    fn inline_text(&self) -> String {
        self.inlines
            .iter()
            .map(|i| match i {
                Inline::Roman(s) | Inline::Bold(s) | Inline::Italic(s) => s.as_str(),
                Inline::LineBreak => " ",
            })
            .collect()
    }

    fn close_key(&mut self) {
        if self.in_key {
            self.roff.control("RE", []);
            self.in_key = false;
        }
    }

    fn event(&mut self, event: Event<'_>) -> Result<()> {
        match event {
            Event::Start(tag) => self.start(tag)?,
            Event::End(tag) => self.end(tag)?,
            Event::Text(text) => {
                let font = self.font();
                self.push_text(&text, font);
            }
            Event::Code(code) => {
                if matches!(self.block, Block::Section | Block::Subsection) {
                    self.heading_codes += 1;
                }
                self.inlines.push(bold(code.as_ref()));
            }
            Event::SoftBreak => self.push_text(" ", Font::Roman),
            Event::HardBreak => self.inlines.push(line_break()),
            // Comments only: the reference's own notes to its editors.
            Event::Html(html) => {
                if self.html_block_fresh && !html.trim_start().starts_with("<!--") {
                    bail!("HTML is not supported: {}", html.trim());
                }
                self.html_block_fresh = false;
            }
            Event::InlineHtml(html) => {
                if !html.starts_with("<!--") {
                    bail!("HTML is not supported: {}", html.trim());
                }
            }
            other => bail!("Markdown construct not supported in a man page: {other:?}"),
        }
        Ok(())
    }

    fn start(&mut self, tag: Tag<'_>) -> Result<()> {
        match tag {
            Tag::Heading { level, .. } => {
                self.inlines.clear();
                self.heading_codes = 0;
                self.heading_other = false;
                self.block = match level {
                    HeadingLevel::H1 if self.expect_title && self.title.is_none() => Block::Title,
                    HeadingLevel::H2 => Block::Section,
                    HeadingLevel::H3 => Block::Subsection,
                    other => bail!("heading level {other:?} is not supported"),
                };
            }
            Tag::Paragraph => {
                self.inlines.clear();
                if self.block == Block::Item {
                    if !self.item_fresh {
                        // A further paragraph of the item: no tag, same indent.
                        self.roff.control("IP", []);
                    }
                } else if self.name_pending {
                    self.roff.control("SH", ["NAME"]);
                } else if !self.fresh {
                    self.roff.control("PP", []);
                }
                self.fresh = false;
                if self.block != Block::Item {
                    self.block = Block::Paragraph;
                }
            }
            Tag::List(start) => {
                self.fresh = false;
                self.flush_item_text();
                if !self.lists.is_empty() {
                    self.roff.control("RS", ["2"]);
                }
                self.lists.push(start);
            }
            Tag::Item => {
                self.inlines.clear();
                let (tag, indent) = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        let tag = format!("{n}.");
                        *n += 1;
                        (tag, "4")
                    }
                    _ => (BULLET.to_string(), "2"),
                };
                self.roff.control("IP", [tag.as_str(), indent]);
                self.block = Block::Item;
                self.item_fresh = true;
            }
            Tag::CodeBlock(_) => {
                self.fresh = false;
                self.flush_item_text();
                self.code.clear();
                self.roff.control("PP", []);
                self.roff.control("RS", ["4"]);
                self.roff.control("nf", []);
                self.block = Block::Code;
            }
            Tag::Emphasis => self.fonts.push(Font::Italic),
            Tag::Strong => self.fonts.push(Font::Bold),
            Tag::Link { dest_url, .. } => self.links.push(dest_url.to_string()),
            Tag::HtmlBlock => self.html_block_fresh = true,
            other => bail!("Markdown construct not supported in a man page: {other:?}"),
        }
        Ok(())
    }

    fn end(&mut self, tag: TagEnd) -> Result<()> {
        match tag {
            TagEnd::Heading(_) => {
                let text = self.inline_text();
                match self.block {
                    Block::Title => {
                        let Some((name, section)) = text
                            .trim()
                            .strip_suffix(')')
                            .and_then(|t| t.split_once('('))
                        else {
                            bail!("the title must read `name(section)`, not `{text}`");
                        };
                        self.title = Some((name.to_string(), section.to_string()));
                        self.name_pending = true;
                    }
                    Block::Section => {
                        self.close_key();
                        section(&mut self.roff, &text);
                        self.fresh = true;
                    }
                    Block::Subsection if self.heading_codes == 1 && !self.heading_other => {
                        // A key: its name in bold, its description indented below.
                        self.close_key();
                        if !self.fresh {
                            self.roff.control("PP", []);
                        }
                        self.roff.text([bold(text)]);
                        self.roff.control("RS", ["4"]);
                        self.in_key = true;
                        self.fresh = true;
                    }
                    Block::Subsection => {
                        self.close_key();
                        self.roff.control("SS", []).text([roman(text)]);
                        self.fresh = true;
                    }
                    _ => {}
                }
                self.inlines.clear();
                self.block = Block::None;
            }
            TagEnd::Paragraph => {
                let inlines = std::mem::take(&mut self.inlines);
                self.roff.text(inlines);
                self.name_pending = false;
                if self.block == Block::Item {
                    self.item_fresh = false;
                } else {
                    self.block = Block::None;
                }
            }
            TagEnd::Item => {
                self.flush_item_text();
                self.block = if self.lists.is_empty() {
                    Block::None
                } else {
                    Block::Item
                };
                self.item_fresh = false;
            }
            TagEnd::List(_) => {
                self.flush_item_text();
                self.lists.pop();
                if self.lists.is_empty() {
                    self.block = Block::None;
                } else {
                    self.roff.control("RE", []);
                    self.block = Block::Item;
                }
            }
            TagEnd::CodeBlock => {
                let code = std::mem::take(&mut self.code);
                for line in code.trim_end_matches('\n').split('\n') {
                    self.roff.text([roman(line)]);
                }
                self.roff.control("fi", []);
                self.roff.control("RE", []);
                self.block = if self.lists.is_empty() {
                    Block::None
                } else {
                    Block::Item
                };
            }
            TagEnd::Emphasis | TagEnd::Strong => {
                self.fonts.pop();
            }
            TagEnd::Link => {
                let url = self.links.pop().unwrap_or_default();
                let shown = self.last_inline_text();
                if shown != url && !url.is_empty() {
                    self.inlines.push(roman(format!(" <{url}>")));
                }
            }
            TagEnd::HtmlBlock => {}
            other => bail!("Markdown construct not supported in a man page: {other:?}"),
        }
        Ok(())
    }

    /// The text of the last inline element (a link's text, for autolinks).
    fn last_inline_text(&self) -> String {
        match self.inlines.last() {
            Some(Inline::Roman(s) | Inline::Bold(s) | Inline::Italic(s)) => s.clone(),
            _ => String::new(),
        }
    }

    /// Text of a tight list item (no paragraph events) goes out as one line.
    fn flush_item_text(&mut self) {
        if self.block == Block::Item && !self.inlines.is_empty() {
            let inlines = std::mem::take(&mut self.inlines);
            self.roff.text(inlines);
            self.item_fresh = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converter_escapes_and_structures() {
        let md = "# demo(7)\n\ndemo - a demo\n\n## Usage\n\n.starts with a dot, \
                  back\\\\slash and `--flag`\n\n- one\n- two `x`\n\n1. first\n2. second\n\n\
                  ```\n.nf looks like a request\n\nblank above\n```\n\n### `some.key`\n\n\
                  Body *it* **bold** [libvirt](https://libvirt.org) <https://x.org>\n\n\
                  ### Plain sub-section\n\ntext\n\n## Back\\\\slash-title\n";
        let page = markdown_to_man(md, "2026-01-02", "src", "man").unwrap();
        assert!(page.contains(".TH DEMO 7 2026-01-02 src man\n"), "{page}");
        assert!(page.contains(".SH NAME\ndemo \\- a demo\n"), "{page}");
        // No `.PP` right after a heading (mandoc warns about it).
        assert!(page.contains(".SH\nUSAGE\n\\&.starts"), "{page}");
        assert!(
            page.contains("\\&.starts with a dot, back\\\\slash"),
            "{page}"
        );
        assert!(page.contains("\\fB\\-\\-flag\\fR"), "{page}");
        assert!(page.contains(".IP \\(bu 2\none\n"), "{page}");
        assert!(page.contains(".IP 2. 4\nsecond\n"), "{page}");
        assert!(
            page.contains(".nf\n\\&.nf looks like a request\n\nblank above\n.fi\n"),
            "{page}"
        );
        assert!(page.contains(".PP\n\\fBsome.key\\fR\n.RS 4\n"), "{page}");
        assert!(page.contains("\\fIit\\fR"), "{page}");
        assert!(page.contains("libvirt <https://libvirt.org>"), "{page}");
        assert!(!page.contains("https://x.org <"), "{page}");
        assert!(page.contains(".RE\n.SS\nPlain sub\\-section\n"), "{page}");
        // Titles are text, escaped like any other.
        assert!(page.contains(".SH\nBACK\\\\SLASH\\-TITLE\n"), "{page}");
    }

    #[test]
    fn converter_refuses_what_it_cannot_render() {
        for md in [
            "# t(1)\n\n> quote\n",
            "# t(1)\n\n![img](x.png)\n",
            "# t(1)\n\n<b>x</b>\n",
            "# t(1)\n\n#### too deep\n",
        ] {
            assert!(markdown_to_man(md, "", "", "").is_err(), "{md}");
        }
        let _ = markdown_to_man("## no title\n", "", "", "").unwrap_err();
    }

    #[test]
    fn sections_without_a_title() {
        let roff = markdown_to_roff("## Files\n\n- `/etc/x`: the x\n").unwrap();
        assert!(roff.contains("\n.SH\nFILES\n"), "{roff}");
        assert!(roff.contains("\\fB/etc/x\\fR: the x"), "{roff}");
    }
}
