//! nova.conf as oslo.config reads it: an INI dialect with `[DEFAULT]`, repeated keys,
//! indented continuation lines and empty values. Owns the parse (every entry keeps
//! its line number, so findings can cite `nova.conf:LINE`) and the lookup rules:
//! the last occurrence of a single-valued option wins, a multi-valued option
//! ([`MULTI_VALUED`]) keeps every occurrence, in file order.
//!
//! Why no crate: rust-ini 0.21 and configparser 3.3 both parse continuation lines
//! and empty values, but neither keeps line numbers, and configparser keeps only
//! the last of a repeated key. The dialect below follows oslo.config's
//! `iniparser.BaseParser` line by line:
//!
//! - a line is stripped of trailing whitespace; an empty line ends a multi-line value;
//! - a line starting with a space or tab continues the previous value (its leading
//!   whitespace removed, joined with `\n`), even when it looks like a comment;
//!   without a value before it (file start, after a blank line, a section or a
//!   comment) it is an error;
//! - `#` or `;` in the first column starts a comment; there are no inline comments
//!   (`key = a # b` has the value `a # b`, as in oslo);
//! - `[name]` starts a section; a missing `]` or an empty name is an error;
//! - otherwise the line is `key = value` or `key: value`, split at whichever of `=`
//!   and `:` comes first; key and value are trimmed, a value wholly in matching
//!   quotes loses them; no separator, an empty key or a key before any section is
//!   an error.

/// Options Nova declares as `MultiOpt`/`MultiStrOpt`: every occurrence counts.
/// Every other option is single-valued: the last occurrence wins (oslo.config's
/// rule), and [`NovaConf::repeated`] reports the earlier ones.
pub const MULTI_VALUED: &[(&str, &str)] = &[
    ("DEFAULT", "reserved_huge_pages"),
    ("pci", "alias"),
    ("pci", "device_spec"),
    ("pci", "passthrough_whitelist"),
];

/// A nova.conf larger than this is not a nova.conf (Nova's full sample is ~0.5 MiB).
pub const MAX_CONF_BYTES: usize = 16 * 1024 * 1024;

/// One `key = value` of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: String,
    pub key: String,
    /// Continuation lines joined with `\n`; may be empty.
    pub value: String,
    /// 1-based line of the key.
    pub line: u32,
}

/// Why a file is not a nova.conf oslo.config would read; each names its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    #[error("larger than {MAX_CONF_BYTES} bytes: not a nova.conf")]
    TooLarge,
    #[error("{line}: not UTF-8 text (a binary file?)")]
    NotUtf8 { line: u32 },
    #[error("{line}: NUL byte (a binary file?)")]
    Nul { line: u32 },
    #[error("{line}: '{text}' is neither [section], key = value nor a comment")]
    NoSeparator { line: u32, text: String },
    #[error("{line}: '{text}': section header without closing ']'")]
    NoSectionEnd { line: u32, text: String },
    #[error("{line}: empty section name")]
    EmptySection { line: u32 },
    #[error("{line}: '{text}': empty key")]
    EmptyKey { line: u32, text: String },
    #[error("{line}: '{text}': key before any [section] (start with [DEFAULT])")]
    NoSection { line: u32, text: String },
    #[error(
        "{line}: indented line continues no value (a blank line, comment or section came before it)"
    )]
    StrayContinuation { line: u32 },
}

impl ConfError {
    /// The 1-based line the error is on (`None`: the whole file).
    pub fn line(&self) -> Option<u32> {
        match self {
            ConfError::TooLarge => None,
            ConfError::NotUtf8 { line }
            | ConfError::Nul { line }
            | ConfError::NoSeparator { line, .. }
            | ConfError::NoSectionEnd { line, .. }
            | ConfError::EmptySection { line }
            | ConfError::EmptyKey { line, .. }
            | ConfError::NoSection { line, .. }
            | ConfError::StrayContinuation { line } => Some(*line),
        }
    }
}

/// A parsed nova.conf: its entries in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NovaConf {
    pub entries: Vec<Entry>,
}

/// Whether `section.key` is multi-valued ([`MULTI_VALUED`]).
pub fn is_multi_valued(section: &str, key: &str) -> bool {
    MULTI_VALUED.contains(&(section, key))
}

fn line_of(bytes: &[u8], offset: usize) -> u32 {
    let newlines = bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count();
    u32::try_from(newlines + 1).unwrap_or(u32::MAX)
}

impl NovaConf {
    /// Parses raw file bytes: refuses what is too large, not UTF-8 or holds NUL bytes.
    pub fn parse_bytes(bytes: &[u8]) -> Result<NovaConf, ConfError> {
        if bytes.len() > MAX_CONF_BYTES {
            return Err(ConfError::TooLarge);
        }
        if let Some(at) = bytes.iter().position(|b| *b == 0) {
            return Err(ConfError::Nul {
                line: line_of(bytes, at),
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| ConfError::NotUtf8 {
            line: line_of(bytes, e.valid_up_to()),
        })?;
        Self::parse(text.strip_prefix('\u{feff}').unwrap_or(text))
    }

    /// Parses nova.conf text (rules in the module doc).
    pub fn parse(text: &str) -> Result<NovaConf, ConfError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut section: Option<String> = None;
        // Whether the last entry may still take continuation lines.
        let mut open = false;
        for (index, raw) in text.lines().enumerate() {
            let line = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let trimmed = raw.trim_end();
            if trimmed.is_empty() {
                open = false;
                continue;
            }
            if trimmed.starts_with([' ', '\t']) {
                match entries.last_mut() {
                    Some(entry) if open => {
                        entry.value.push('\n');
                        entry.value.push_str(trimmed.trim_start());
                    }
                    _ => return Err(ConfError::StrayContinuation { line }),
                }
                continue;
            }
            open = false;
            if let Some(rest) = trimmed.strip_prefix('[') {
                let name = rest.strip_suffix(']').ok_or(ConfError::NoSectionEnd {
                    line,
                    text: trimmed.to_string(),
                })?;
                if name.trim().is_empty() {
                    return Err(ConfError::EmptySection { line });
                }
                section = Some(name.to_string());
                continue;
            }
            if trimmed.starts_with(['#', ';']) {
                continue;
            }
            let at = trimmed
                .find(['=', ':'])
                .ok_or_else(|| ConfError::NoSeparator {
                    line,
                    text: trimmed.to_string(),
                })?;
            let key = trimmed[..at].trim();
            if key.is_empty() {
                return Err(ConfError::EmptyKey {
                    line,
                    text: trimmed.to_string(),
                });
            }
            let Some(section) = &section else {
                return Err(ConfError::NoSection {
                    line,
                    text: trimmed.to_string(),
                });
            };
            let mut value = trimmed[at + 1..].trim();
            if value.len() >= 2
                && (value.starts_with('"') && value.ends_with('"')
                    || value.starts_with('\'') && value.ends_with('\''))
            {
                value = &value[1..value.len() - 1];
            }
            entries.push(Entry {
                section: section.clone(),
                key: key.to_string(),
                value: value.to_string(),
                line,
            });
            open = true;
        }
        Ok(NovaConf { entries })
    }

    /// Every occurrence of `section.key`, in file order.
    pub fn get_all<'a>(&'a self, section: &str, key: &str) -> impl Iterator<Item = &'a Entry> {
        let (section, key) = (section.to_string(), key.to_string());
        self.entries
            .iter()
            .filter(move |e| e.section == section && e.key == key)
    }

    /// The value oslo.config uses for a single-valued option: the last occurrence.
    pub fn get(&self, section: &str, key: &str) -> Option<&Entry> {
        self.get_all(section, key).last()
    }

    /// Single-valued options set more than once: (the entry that wins, the lines
    /// of the earlier ones), in the order of the winning lines.
    pub fn repeated(&self) -> Vec<(&Entry, Vec<u32>)> {
        let mut out: Vec<(&Entry, Vec<u32>)> = Vec::new();
        for (i, entry) in self.entries.iter().enumerate() {
            if is_multi_valued(&entry.section, &entry.key) {
                continue;
            }
            let later = self.entries[i + 1..]
                .iter()
                .any(|e| e.section == entry.section && e.key == entry.key);
            if later {
                continue;
            }
            let earlier: Vec<u32> = self.entries[..i]
                .iter()
                .filter(|e| e.section == entry.section && e.key == entry.key)
                .map(|e| e.line)
                .collect();
            if !earlier.is_empty() {
                out.push((entry, earlier));
            }
        }
        out.sort_by_key(|(e, _)| e.line);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(section: &str, key: &str, value: &str, line: u32) -> Entry {
        Entry {
            section: section.into(),
            key: key.into(),
            value: value.into(),
            line,
        }
    }

    #[test]
    fn sections_keys_values_and_lines() {
        let conf = NovaConf::parse(
            "# comment\n[DEFAULT]\ndebug = True\n; other comment\nstate_path=/var/lib/nova\n\n[libvirt]\ncpu_mode: host-model\nimages_type =\n",
        )
        .unwrap();
        assert_eq!(
            conf.entries,
            vec![
                entry("DEFAULT", "debug", "True", 3),
                entry("DEFAULT", "state_path", "/var/lib/nova", 5),
                entry("libvirt", "cpu_mode", "host-model", 8),
                entry("libvirt", "images_type", "", 9),
            ]
        );
    }

    #[test]
    fn separator_is_whichever_of_equals_and_colon_comes_first() {
        let conf = NovaConf::parse(
            "[DEFAULT]\nreserved_huge_pages = node:0,size:2048,count:64\ntransport_url: rabbit://u:p@h:5672/\n",
        )
        .unwrap();
        assert_eq!(conf.entries[0].key, "reserved_huge_pages");
        assert_eq!(conf.entries[0].value, "node:0,size:2048,count:64");
        assert_eq!(conf.entries[1].key, "transport_url");
        assert_eq!(conf.entries[1].value, "rabbit://u:p@h:5672/");
    }

    #[test]
    fn continuation_lines_join_with_newline_and_stop_at_blank_lines() {
        let conf = NovaConf::parse(
            "[compute]\ncpu_shared_set = 2-7,\n    18-23\n\t# still the value\nx = 1\n",
        )
        .unwrap();
        assert_eq!(conf.entries[0].value, "2-7,\n18-23\n# still the value");
        assert_eq!(conf.entries[1], entry("compute", "x", "1", 5));
        assert_eq!(
            NovaConf::parse("[compute]\na = 1\n\n  b\n"),
            Err(ConfError::StrayContinuation { line: 4 })
        );
        assert_eq!(
            NovaConf::parse("[compute]\n# c\n  b\n"),
            Err(ConfError::StrayContinuation { line: 3 })
        );
        assert_eq!(
            NovaConf::parse("  a = 1\n"),
            Err(ConfError::StrayContinuation { line: 1 })
        );
    }

    #[test]
    fn no_inline_comments_and_quotes_stripped() {
        let conf =
            NovaConf::parse("[DEFAULT]\na = x # y\nb = \"q w\"\nc = 'z\"\nd = \"\n").unwrap();
        let values: Vec<&str> = conf.entries.iter().map(|e| e.value.as_str()).collect();
        assert_eq!(values, ["x # y", "q w", "'z\"", "\""]);
    }

    #[test]
    fn repeated_single_valued_last_wins_multi_valued_keeps_all() {
        let conf = NovaConf::parse(
            "[DEFAULT]\nreserved_huge_pages = node:0,size:2048,count:8\nreserved_huge_pages = node:1,size:2048,count:8\n[compute]\ncpu_shared_set = 1-3\ncpu_shared_set = 4-7\n",
        )
        .unwrap();
        assert_eq!(conf.get("compute", "cpu_shared_set").unwrap().value, "4-7");
        assert_eq!(
            conf.get_all("DEFAULT", "reserved_huge_pages")
                .map(|e| e.line)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        let repeated = conf.repeated();
        assert_eq!(repeated.len(), 1);
        assert_eq!(repeated[0].0.line, 6);
        assert_eq!(repeated[0].1, [5]);
        assert!(conf.get("compute", "missing").is_none());
        assert!(conf.get("DEFAULT", "cpu_shared_set").is_none());
    }

    #[test]
    fn errors_name_their_line() {
        let cases: &[(&str, ConfError)] = &[
            (
                "[DEFAULT]\nvcpu_pin_set\n",
                ConfError::NoSeparator {
                    line: 2,
                    text: "vcpu_pin_set".into(),
                },
            ),
            (
                "just words\n",
                ConfError::NoSeparator {
                    line: 1,
                    text: "just words".into(),
                },
            ),
            (
                "debug = True\n",
                ConfError::NoSection {
                    line: 1,
                    text: "debug = True".into(),
                },
            ),
            (
                "[DEFAULT\n",
                ConfError::NoSectionEnd {
                    line: 1,
                    text: "[DEFAULT".into(),
                },
            ),
            ("\n[ ]\n", ConfError::EmptySection { line: 2 }),
            (
                "[DEFAULT]\n= 3\n",
                ConfError::EmptyKey {
                    line: 2,
                    text: "= 3".into(),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(NovaConf::parse(text).as_ref(), Err(want), "{text:?}");
            let last = u32::try_from(text.lines().count()).unwrap();
            assert_eq!(want.line(), Some(last), "{text:?}");
        }
    }

    #[test]
    fn binary_input_is_refused_with_its_line() {
        assert_eq!(
            NovaConf::parse_bytes(b"[DEFAULT]\na = 1\n\x7fELF\x02\x01\x00\x00"),
            Err(ConfError::Nul { line: 3 })
        );
        assert_eq!(
            NovaConf::parse_bytes(b"[DEFAULT]\n\xff\xfe"),
            Err(ConfError::NotUtf8 { line: 2 })
        );
        assert_eq!(
            NovaConf::parse_bytes(&vec![b'#'; MAX_CONF_BYTES + 1]),
            Err(ConfError::TooLarge)
        );
        assert_eq!(
            NovaConf::parse_bytes("\u{feff}[DEFAULT]\na = 1\n".as_bytes())
                .unwrap()
                .entries
                .len(),
            1
        );
    }

    #[test]
    fn crlf_line_endings() {
        let conf =
            NovaConf::parse("[libvirt]\r\ncpu_mode = custom\r\ncpu_models = Skylake\r\n").unwrap();
        assert_eq!(conf.get("libvirt", "cpu_mode").unwrap().value, "custom");
        assert_eq!(conf.get("libvirt", "cpu_models").unwrap().line, 3);
    }

    #[test]
    fn empty_file_has_no_entries() {
        assert_eq!(NovaConf::parse("").unwrap(), NovaConf::default());
    }
}
