//! The generated documentation: kvmtune(8), one kvmtune-SUBCOMMAND(8) per visible
//! subcommand, kvmtune-policy(5), and the bash and zsh completions. packaging/build.sh
//! runs `cargo xtask man DIR` and `cargo xtask completions DIR` when it builds the
//! packages, from the same sources as the binary they ship with.
//!
//! kvmtune(8) comes from the clap definition ([`kvmtune::cli::Cli`]) through
//! clap_mangen, plus a few sections clap does not know (the hook, files), written
//! in Markdown like the policy page. kvmtune-policy(5) comes from `docs/policy.md`,
//! compiled in: that Markdown is the policy reference's one source, turned into man
//! macros by [`crate::markdown`]. The tests below hold the reference to
//! `config/policy.yaml` and the policy parser.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use kvmtune::cli::Cli;
use roff::{Roff, bold, roman};

use crate::markdown::{markdown_to_man, markdown_to_roff, section};

/// The policy reference, the source of kvmtune-policy(5).
pub const POLICY_REFERENCE: &str = include_str!("../../docs/policy.md");

/// Sections of kvmtune(8) that the clap definition cannot carry; Markdown.
const KVMTUNE_8_EXTRA: &str = "\
## LIBVIRT HOOK

libvirt runs `/etc/libvirt/hooks/qemu` with the arguments GUEST OP SUBOP EXTRA and
the domain XML on standard input. When kvmtune is started under that name (the
packages link it to `/usr/bin/kvmtune`), or from `/etc/libvirt/hooks/qemu.d/` (where
the packages put the link `kvmtune` when the admin already has a hook of their own),
it runs as the hook: at `prepare` it plans the guest and records its placement, at
`started` it pins the paused guest's threads, at `restore` and `migrate` it prints the
rewritten XML, and at `release` it frees the placement. `kvmtune hook` does the same
from the command line.

libvirt looks for hooks only when it starts: after installing kvmtune, restart
libvirtd (or virtqemud on hosts with modular daemons). Running guests keep running.

## FILES

- `/etc/kvmtune/policy.yaml`: the policy, see kvmtune-policy(5).
- `/etc/libvirt/hooks/qemu`, `/etc/libvirt/hooks/qemu.d/kvmtune`: the hook, a
  symbolic link to `/usr/bin/kvmtune`.
- `/run/kvmtune/`: the ledger of the guests kvmtune placed.
- `/var/lib/kvmtune/backups/`: guest definitions saved by `kvmtune apply`.

## ENVIRONMENT

- `KVMTUNE_ALLOW_INSECURE_POLICY=1`: load a policy that is not owned by root or is
  writable by others.
";

/// kvmtune's version, as its clap definition carries it (the `kvmtune` package's).
fn kvmtune_version() -> String {
    Cli::command()
        .get_version()
        .unwrap_or(env!("CARGO_PKG_VERSION"))
        .to_string()
}

/// Writes every man page into `dir` (created if missing); returns the paths.
pub fn write_man_pages(dir: &Path, date: &str) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut pages = command_pages(date)?;
    pages.push((
        "kvmtune-policy.5".to_string(),
        policy_man_page(date).context("docs/policy.md")?,
    ));
    let mut written = Vec::new();
    for (name, text) in pages {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Writes the bash and zsh completions into `dir` (created if missing).
pub fn write_completions(dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = visible_command();
    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh] {
        let path = clap_complete::generate_to(shell, &mut cmd, "kvmtune", dir)
            .with_context(|| format!("writing the {shell} completion into {}", dir.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The command line without hidden subcommands (clap_complete would offer them):
/// the same root arguments and the visible subcommands under a fresh root.
fn visible_command() -> clap::Command {
    let cli = Cli::command();
    let mut root = clap::Command::new("kvmtune")
        // The workspace's version, which is kvmtune's (`version.workspace = true`).
        .version(env!("CARGO_PKG_VERSION"))
        .args(cli.get_arguments().cloned())
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = cli.get_about() {
        root = root.about(about.clone());
    }
    root
}

/// kvmtune.8 and one page per visible subcommand, as (file name, roff text).
fn command_pages(date: &str) -> Result<Vec<(String, String)>> {
    // clap's generated `help` subcommand needs no page of its own.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let visible: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let sub_page = |s: &clap::Command| format!("kvmtune-{}(8)", s.get_name());

    let mut pages = Vec::new();
    let mut main = render_man(cmd.clone(), date)?;
    main.push_str(&markdown_to_roff(KVMTUNE_8_EXTRA).context("kvmtune(8) extra sections")?);
    let see_also: Vec<String> = visible
        .iter()
        .map(sub_page)
        .chain(["kvmtune-policy(5)", "virsh(1)", "libvirtd(8)"].map(String::from))
        .collect();
    main.push_str(&see_also_section(&see_also));
    pages.push(("kvmtune.8".to_string(), main));

    for sub in visible {
        let name = format!("kvmtune-{}.8", sub.get_name());
        let mut text = render_man(sub.clone(), date)?;
        text.push_str(&see_also_section(&[
            "kvmtune(8)".to_string(),
            "kvmtune-policy(5)".to_string(),
        ]));
        pages.push((name, text));
    }
    Ok(pages)
}

/// One page from a clap command: clap_mangen's sections, except that the
/// `after_help` text (prose, `Heading:` blocks of examples) is laid out here
/// instead of as clap_mangen's preformatting-less "EXTRA" section.
fn render_man(cmd: clap::Command, date: &str) -> Result<String> {
    let version = cmd
        .get_version()
        .map_or_else(kvmtune_version, str::to_string);
    let after_help = cmd
        .get_after_long_help()
        .or(cmd.get_after_help())
        .map(|h| h.to_string());
    let has_options = cmd.get_arguments().any(|a| !a.is_hide_set());
    let has_subcommands = cmd.get_subcommands().any(|s| !s.is_hide_set());
    let man = Man::new(cmd)
        .section("8")
        .date(date)
        .source(format!("kvmtune {version}"))
        .manual("kvmtune");
    let (prose, blocks) = split_after_help(after_help.as_deref().unwrap_or(""));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    let mut roff = Roff::new();
    for paragraph in prose {
        roff.control("PP", []).text([roman(paragraph)]);
    }
    out.extend(roff.render().into_bytes());
    if has_options {
        man.render_options_section(&mut out)?;
    }
    if has_subcommands {
        man.render_subcommands_section(&mut out)?;
    }
    let mut roff = Roff::new();
    for (heading, lines) in blocks {
        section(&mut roff, &heading);
        roff.control("nf", []);
        for line in lines {
            roff.text([roman(line)]);
        }
        roff.control("fi", []);
    }
    out.extend(roff.render().into_bytes());
    Ok(String::from_utf8(out)?)
}

/// `after_help` in blank-line separated blocks: a block whose first line ends in
/// `:` is a heading with preformatted lines (`Examples:`); the rest is prose,
/// joined into one line per paragraph.
fn split_after_help(text: &str) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let mut prose = Vec::new();
    let mut blocks = Vec::new();
    for block in text
        .split("\n\n")
        .map(str::trim_end)
        .filter(|b| !b.trim().is_empty())
    {
        let mut lines = block.lines();
        let first = lines.next().unwrap_or("").trim();
        let rest: Vec<String> = lines.map(str::to_string).collect();
        match first.strip_suffix(':') {
            Some(heading) if !rest.is_empty() => blocks.push((heading.to_string(), rest)),
            _ => prose.push(block.split_whitespace().collect::<Vec<_>>().join(" ")),
        }
    }
    (prose, blocks)
}

fn see_also_section(pages: &[String]) -> String {
    let mut roff = Roff::new();
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        match page.split_once('(') {
            Some((name, section)) => {
                line.push(bold(name));
                line.push(roman(format!("({section}")));
            }
            None => line.push(bold(page.as_str())),
        }
    }
    roff.text(line);
    roff.render()
}

/// kvmtune-policy(5), rendered from [`POLICY_REFERENCE`].
pub fn policy_man_page(date: &str) -> Result<String> {
    let source = format!("kvmtune {}", kvmtune_version());
    markdown_to_man(POLICY_REFERENCE, date, &source, "kvmtune")
}

/// The man page date: `SOURCE_DATE_EPOCH` (reproducible builds) or today, as
/// YYYY-MM-DD in UTC.
pub fn man_date() -> String {
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
        });
    civil_date(seconds.div_euclid(86_400))
}

/// Days since 1970-01-01 to YYYY-MM-DD (Howard Hinnant's civil_from_days).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use std::collections::BTreeSet;

    use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};
    use serde_yaml_ng::Value;

    use super::*;
    use kvmtune_core::policy::{Policy, SHIPPED_POLICY};

    /// One `### \`key\`` section of the policy reference.
    #[derive(Debug, Default)]
    struct KeyDoc {
        default: Option<String>,
        required: bool,
        values: Vec<String>,
    }

    /// The keys of docs/policy.md with their `Default:`, `Required.` and `Values:`.
    fn documented_keys() -> BTreeMap<String, KeyDoc> {
        let mut keys: BTreeMap<String, KeyDoc> = BTreeMap::new();
        let mut current: Option<String> = None;
        let mut in_heading = false;
        let mut heading: Vec<(bool, String)> = Vec::new();
        let mut paragraph: Option<Vec<(bool, String)>> = None;
        for event in Parser::new(POLICY_REFERENCE) {
            match event {
                Event::Start(Tag::Heading { .. }) => {
                    in_heading = true;
                    heading.clear();
                }
                Event::End(TagEnd::Heading(level)) => {
                    in_heading = false;
                    current = None;
                    if level == HeadingLevel::H3 && heading.len() == 1 && heading[0].0 {
                        let key = heading[0].1.clone();
                        assert!(!keys.contains_key(&key), "key `{key}` documented twice");
                        keys.insert(key.clone(), KeyDoc::default());
                        current = Some(key);
                    }
                }
                Event::Start(Tag::Paragraph) => paragraph = Some(Vec::new()),
                Event::End(TagEnd::Paragraph) => {
                    let (Some(parts), Some(key)) = (paragraph.take(), current.as_ref()) else {
                        continue;
                    };
                    let doc = keys.get_mut(key).unwrap();
                    let first = parts.first().map(|(_, t)| t.trim()).unwrap_or("");
                    let codes = || parts.iter().filter(|(c, _)| *c).map(|(_, t)| t.clone());
                    if first.starts_with("Default:") {
                        assert!(doc.default.is_none(), "`{key}`: two Default: paragraphs");
                        doc.default = Some(codes().next().expect("Default: `value`"));
                    } else if first == "Required." {
                        doc.required = true;
                    } else if first.starts_with("Values:") {
                        doc.values = codes().collect();
                    }
                }
                Event::Text(t) => {
                    if in_heading {
                        heading.push((false, t.to_string()));
                    } else if let Some(p) = paragraph.as_mut() {
                        p.push((false, t.to_string()));
                    }
                }
                Event::Code(t) => {
                    if in_heading {
                        heading.push((true, t.to_string()));
                    } else if let Some(p) = paragraph.as_mut() {
                        p.push((true, t.to_string()));
                    }
                }
                _ => {}
            }
        }
        keys
    }

    /// Every leaf key of config/policy.yaml, dotted (`defaults.pin_vcpus`), with its
    /// value as the reference writes it.
    fn shipped_keys() -> BTreeMap<String, String> {
        fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
            match value {
                Value::Mapping(map) if !map.is_empty() => {
                    for (k, v) in map {
                        let k = k.as_str().expect("string keys");
                        let path = if prefix.is_empty() {
                            k.to_string()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&path, v, out);
                    }
                }
                leaf => {
                    let shown = match leaf {
                        Value::Null => "null".to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        Value::String(s) => s.clone(),
                        Value::Mapping(_) => "{}".to_string(),
                        other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
                    };
                    out.insert(prefix.to_string(), shown);
                }
            }
        }
        let root: Value = serde_yaml_ng::from_str(SHIPPED_POLICY).unwrap();
        let mut out = BTreeMap::new();
        walk("", &root, &mut out);
        out
    }

    #[test]
    fn every_shipped_key_is_documented_with_its_default() {
        let docs = documented_keys();
        let shipped = shipped_keys();
        assert!(shipped.len() > 15, "walked too few keys: {shipped:?}");
        for (key, value) in &shipped {
            let doc = docs
                .get(key)
                .unwrap_or_else(|| panic!("docs/policy.md does not document `{key}`"));
            if doc.required {
                continue;
            }
            assert_eq!(
                doc.default.as_deref(),
                Some(value.as_str()),
                "docs/policy.md: default of `{key}` differs from config/policy.yaml"
            );
        }
    }

    #[test]
    fn every_documented_key_is_shipped_or_a_rule_key() {
        let shipped = shipped_keys();
        for (key, doc) in documented_keys() {
            assert!(
                doc.required != doc.default.is_some(),
                "`{key}` needs exactly one of a Default: or a Required. paragraph"
            );
            if !key.starts_with("rules[]") {
                assert!(
                    shipped.contains_key(&key),
                    "docs/policy.md documents `{key}`, which config/policy.yaml lacks"
                );
            }
        }
    }

    /// `a.b.c` and `v` as nested YAML: `a:\n  b:\n    c: v\n`.
    fn nested(path: &str, value: &str) -> String {
        let parts: Vec<&str> = path.split('.').collect();
        let mut out = String::new();
        for (depth, part) in parts.iter().enumerate() {
            out.push_str(&"  ".repeat(depth));
            out.push_str(part);
            out.push(':');
            if depth + 1 == parts.len() {
                out.push(' ');
                out.push_str(value);
            }
            out.push('\n');
        }
        out
    }

    /// Policy texts that set `key` (as the reference names it) to `value`.
    fn policy_setting(key: &str, value: &str) -> Vec<String> {
        let rule = "version: 1\nrules:\n  - name: t\n";
        if key == "version" {
            vec![format!("version: {value}\n")]
        } else if let Some(k) = key.strip_prefix("defaults.") {
            vec![
                format!("version: 1\n{}", nested(key, value)),
                format!("{rule}    match:\n      name: x\n    set:\n      {k}: {value}\n"),
            ]
        } else if key == "rules[].name" {
            vec![format!(
                "version: 1\nrules:\n  - name: {value}\n    match:\n      name: x\n"
            )]
        } else if let Some(k) = key.strip_prefix("rules[].match.") {
            vec![format!("{rule}    match:\n      {k}: {value}\n")]
        } else if let Some(k) = key.strip_prefix("rules[].") {
            vec![format!(
                "{rule}    match:\n      name: x\n    {k}: {value}\n"
            )]
        } else {
            vec![format!("version: 1\n{}", nested(key, value))]
        }
    }

    #[test]
    fn every_documented_value_parses() {
        let mut tried = 0;
        for (key, doc) in documented_keys() {
            // `rules`, `match`, `set` are structures and list no example values.
            for value in &doc.values {
                for text in policy_setting(&key, value) {
                    Policy::parse(&text, Path::new("<doc>")).unwrap_or_else(|e| {
                        panic!("docs/policy.md: `{key}: {value}` does not parse: {e}\n{text}")
                    });
                    tried += 1;
                }
            }
        }
        assert!(tried > 60, "only {tried} documented values tried");
        // The harness can fail: a value no key takes.
        for text in policy_setting("defaults.disk_cache", "sometimes") {
            let _ = Policy::parse(&text, Path::new("<doc>")).unwrap_err();
        }
    }

    #[test]
    fn policy_page_has_every_key_and_the_man_header() {
        let page = policy_man_page("2026-01-01").unwrap();
        assert!(
            page.contains(".TH KVMTUNE-POLICY 5 2026-01-01 \"kvmtune "),
            "{page}"
        );
        assert!(page.contains(".SH NAME\nkvmtune\\-policy \\- the tuning policy"));
        for key in documented_keys().keys() {
            let roff_key = key.replace('-', "\\-");
            assert!(
                page.contains(&format!("\\fB{roff_key}\\fR")),
                "kvmtune-policy.5 lacks `{key}`"
            );
        }
        // Every .RS is closed.
        assert_eq!(page.matches("\n.RS").count(), page.matches("\n.RE").count());
        assert!(!page.contains("<!--"));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_782), "2024-02-29");
        assert_eq!(civil_date(20_453), "2025-12-31");
    }

    #[test]
    fn man_pages_cover_every_subcommand_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let man = dir.path().join("man");
        let written = write_man_pages(&man, "2026-01-01").unwrap();
        let mut cmd = Cli::command().disable_help_subcommand(true);
        cmd.build();
        let mut expected: BTreeSet<PathBuf> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| man.join(format!("kvmtune-{}.8", s.get_name())))
            .collect();
        expected.insert(man.join("kvmtune.8"));
        expected.insert(man.join("kvmtune-policy.5"));
        assert_eq!(written.iter().cloned().collect::<BTreeSet<_>>(), expected);
        assert!(expected.len() > 8, "{expected:?}");
        assert!(!man.join("kvmtune-help.8").exists());

        let main = fs::read_to_string(man.join("kvmtune.8")).unwrap();
        assert!(main.contains("\n.TH kvmtune 8 "), "{main}");
        assert!(main.contains(".SH\nLIBVIRT HOOK\n"), "{main}");
        assert!(main.contains(".SH\nEXAMPLES\n"), "{main}");
        assert!(main.contains("\\fBkvmtune\\-policy\\fR(5)"), "{main}");
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = sub.get_name().replace('-', "\\-");
            assert!(
                main.contains(&format!("\\fBkvmtune\\-{name}\\fR(8)")),
                "kvmtune.8 does not refer to kvmtune-{name}(8)"
            );
            assert!(
                main.contains(&format!("kvmtune\\-{name}(8)")),
                "kvmtune.8 lists no {name}"
            );
        }
        use kvmtune::exit::{FINDINGS, INPUT, LIBVIRT, OK, USAGE};
        let exit = main
            .split_once("Exit codes: ")
            .map(|(_, rest)| rest.lines().next().unwrap_or(""))
            .unwrap_or_else(|| panic!("kvmtune.8 lists no exit codes: {main}"));
        for code in [OK, FINDINGS, USAGE, INPUT, LIBVIRT] {
            assert!(
                exit.starts_with(&format!("{code} ")) || exit.contains(&format!(", {code} ")),
                "kvmtune.8 does not explain exit code {code}: {exit}"
            );
        }
        for page in &written {
            let text = fs::read_to_string(page).unwrap();
            assert!(text.contains(".SH NAME\n"), "{}: no NAME", page.display());
            assert!(text.contains(".SH \"SEE ALSO\"\n") || page.ends_with("kvmtune-policy.5"));
        }
    }

    #[test]
    fn completions_offer_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_completions(dir.path()).unwrap();
        assert_eq!(written.len(), 2);
        let bash = fs::read_to_string(dir.path().join("kvmtune.bash")).unwrap();
        assert!(bash.contains("complete -F _kvmtune"), "{bash}");
        let zsh = fs::read_to_string(dir.path().join("_kvmtune")).unwrap();
        assert!(zsh.starts_with("#compdef kvmtune"), "{zsh}");
        for sub in Cli::command().get_subcommands() {
            for (shell, text) in [("bash", &bash), ("zsh", &zsh)] {
                assert_eq!(
                    text.contains(sub.get_name()),
                    !sub.is_hide_set(),
                    "{shell}: {}",
                    sub.get_name()
                );
            }
        }
    }
}
