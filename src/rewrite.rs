//! Applies planned [`Change`]s to domain XML text, touching only the edited
//! elements: every other byte (comments, foreign metadata, attribute order, quotes,
//! indentation) stays identical, and rewriting the output again changes nothing.

use crate::plan::Change;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("domain XML is not well-formed: {0}")]
    Xml(String),
    #[error("domain XML has no element for {0}")]
    Missing(String),
}

/// Applies `changes` to `xml`.
pub fn apply(xml: &str, changes: &[Change]) -> Result<String, RewriteError> {
    let _ = (xml, changes);
    unimplemented!()
}
