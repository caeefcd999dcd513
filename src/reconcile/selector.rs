//! `--task-function-selector`: which TaskFunctions this installation manages.
//!
//! Matching is kube's ([`kube::core::Selector`], Kubernetes' label-selector semantics). kube
//! builds selectors from expressions or a `LabelSelector` object but has no parser for the text
//! form `kubectl -l` takes, so this module parses that text into kube's [`Expression`]s,
//! following Kubernetes' grammar (`k8s.io/apimachinery/pkg/labels`): `key=value`, `key==value`,
//! `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`, `!key`, separated by commas. Anything
//! else is refused at start-up instead of being dropped.

use std::{collections::BTreeMap, fmt};

use kube::core::{Expression, Selector, SelectorExt};

/// Label keys' name part and values: at most 63 characters.
const MAX_NAME: usize = 63;
/// A label key's DNS-subdomain prefix: at most 253 characters.
const MAX_PREFIX: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    selector: String,
    reason: String,
}

/// A parsed label selector; the empty one selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Selector);

impl LabelSelector {
    /// Parse the text form (`env!=prod,tier in (a,b)`). Empty or blank: everything.
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        let fail = |reason: String| SelectorError {
            selector: text.to_string(),
            reason,
        };
        let mut selector = Selector::default();
        for requirement in split_requirements(text).map_err(fail)? {
            selector.extend(parse_requirement(requirement).map_err(fail)?);
        }
        Ok(LabelSelector(selector))
    }

    /// A selector no object matches (`key in ()`, which the text form cannot say).
    pub fn nothing() -> LabelSelector {
        LabelSelector(Expression::In("kubebeat.io/nothing".into(), Default::default()).into())
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.matches(labels)
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// For clap: the selector text as given, once it is known to parse.
pub fn checked(text: &str) -> Result<String, SelectorError> {
    LabelSelector::parse(text).map(|_| text.to_string())
}

/// The comma-separated requirements (commas inside `( )` belong to a set).
fn split_requirements(text: &str) -> Result<Vec<&str>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0u32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            '(' => return Err("nested parentheses".into()),
            ')' if depth == 1 => depth = 0,
            ')' => return Err("unbalanced ')'".into()),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&text[start..]);
    if let Some(empty) = parts.iter().position(|p| p.trim().is_empty()) {
        return Err(format!("requirement {} is empty", empty + 1));
    }
    Ok(parts)
}

/// One requirement: `!key`, `key`, `key op value` or `key in|notin (values)`.
fn parse_requirement(text: &str) -> Result<Expression, String> {
    let text = text.trim();
    if let Some(key) = text.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(key_checked(key.trim())?));
    }
    let key_end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
        .unwrap_or(text.len());
    let (key, rest) = (key_checked(&text[..key_end])?, text[key_end..].trim_start());
    if rest.is_empty() {
        return Ok(Expression::Exists(key));
    }
    if let Some(v) = rest.strip_prefix("!=") {
        return Ok(Expression::NotEqual(key, value_checked(v.trim())?));
    }
    if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        return Ok(Expression::Equal(key, value_checked(v.trim())?));
    }
    if let Some(set) = set_operand(rest, "notin") {
        return Ok(Expression::NotIn(key, values_checked(set)?));
    }
    if let Some(set) = set_operand(rest, "in") {
        return Ok(Expression::In(key, values_checked(set)?));
    }
    if rest.starts_with(['<', '>']) {
        return Err(format!(
            "{text:?}: the numeric operators < and > are not supported"
        ));
    }
    Err(format!(
        "{text:?}: expected =, ==, !=, in (...) or notin (...) after the key {key:?}"
    ))
}

/// The `( ... )` after the word `op`, if `rest` starts with that word.
fn set_operand<'a>(rest: &'a str, op: &str) -> Option<&'a str> {
    let after = rest.strip_prefix(op)?;
    let after = after
        .strip_prefix(char::is_whitespace)
        .map(str::trim_start)
        .or_else(|| after.starts_with('(').then_some(after))?;
    Some(after)
}

fn values_checked(set: &str) -> Result<std::collections::BTreeSet<String>, String> {
    let inner = set
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("{set:?}: a set of values is written (a,b)"))?;
    if inner.trim().is_empty() {
        return Err("a set of values must not be empty".into());
    }
    inner.split(',').map(|v| value_checked(v.trim())).collect()
}

fn key_checked(key: &str) -> Result<String, String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let dns = prefix.len() <= MAX_PREFIX
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !dns {
            return Err(format!(
                "the key prefix {prefix:?} is not a DNS subdomain (lower case, digits, '-', '.')"
            ));
        }
    }
    if name.is_empty() || !name_ok(name) {
        return Err(format!(
            "the key {key:?} is not a label key (at most {MAX_NAME} letters, digits, '-', '_', \
             '.', starting and ending with a letter or digit, optionally after a prefix and '/')"
        ));
    }
    Ok(key.to_string())
}

fn value_checked(value: &str) -> Result<String, String> {
    if !value.is_empty() && !name_ok(value) {
        return Err(format!(
            "the value {value:?} is not a label value (at most {MAX_NAME} letters, digits, '-', \
             '_', '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(value.to_string())
}

/// A label name or non-empty value.
fn name_ok(s: &str) -> bool {
    s.len() <= MAX_NAME
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selects(selector: &str, pairs: &[(&str, &str)]) -> bool {
        LabelSelector::parse(selector)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(&labels(pairs))
    }

    #[test]
    fn not_equal_selects_other_values_and_objects_without_the_label() {
        assert!(!selects("env!=prod", &[("env", "prod")]));
        assert!(selects("env!=prod", &[("env", "dev")]));
        assert!(selects("env!=prod", &[]));
        // About the key `env`, not `env!` (what the hand-written parser made of it).
        assert!(!selects("env!=prod", &[("env", "prod"), ("env!", "prod")]));
        assert!(selects(" env != prod ", &[("env", "dev")]));
    }

    #[test]
    fn equality_in_both_spellings() {
        for s in [
            "kubebeat.io/installation=team-a",
            "kubebeat.io/installation==team-a",
        ] {
            assert!(selects(s, &[("kubebeat.io/installation", "team-a")]), "{s}");
            assert!(
                !selects(s, &[("kubebeat.io/installation", "team-b")]),
                "{s}"
            );
            assert!(!selects(s, &[]), "{s}");
        }
        // An empty value is a value.
        assert!(selects("tier=", &[("tier", "")]));
        assert!(!selects("tier=", &[("tier", "a")]));
    }

    #[test]
    fn set_based_terms_are_honoured() {
        let s = "tier in (a, b)";
        assert!(selects(s, &[("tier", "a")]));
        assert!(selects(s, &[("tier", "b")]));
        assert!(!selects(s, &[("tier", "c")]));
        assert!(!selects(s, &[]));
        let s = "tier notin (a,b)";
        assert!(!selects(s, &[("tier", "a")]));
        assert!(selects(s, &[("tier", "c")]));
        assert!(selects(s, &[]));
        assert!(selects("tier in(a)", &[("tier", "a")]));
    }

    #[test]
    fn existence_terms() {
        assert!(selects("team", &[("team", "x")]));
        assert!(selects("team", &[("team", "")]));
        assert!(!selects("team", &[("other", "x")]));
        assert!(selects("!legacy", &[("team", "x")]));
        assert!(!selects("!legacy", &[("legacy", "")]));
    }

    #[test]
    fn terms_are_all_required() {
        let s = "env!=prod,tier in (a,b),!legacy,team";
        assert!(selects(s, &[("tier", "a"), ("team", "t")]));
        assert!(!selects(
            s,
            &[("tier", "a"), ("team", "t"), ("env", "prod")]
        ));
        assert!(!selects(s, &[("tier", "a")]));
        assert!(!selects(
            s,
            &[("tier", "a"), ("team", "t"), ("legacy", "1")]
        ));
        assert!(!selects(s, &[("tier", "c"), ("team", "t")]));
    }

    #[test]
    fn empty_selects_everything() {
        for s in ["", "  "] {
            assert!(selects(s, &[]));
            assert!(selects(s, &[("a", "b")]));
        }
    }

    #[test]
    fn malformed_selectors_are_refused_with_a_reason() {
        for (text, why) in [
            ("tier in (a,b", "unbalanced '('"),
            ("tier in a,b)", "unbalanced ')'"),
            ("tier in ()", "must not be empty"),
            ("tier in a", "written (a,b)"),
            ("a=b,,c=d", "requirement 2 is empty"),
            ("a=b,", "requirement 2 is empty"),
            ("replicas>3", "not supported"),
            ("=prod", "not a label key"),
            ("!", "not a label key"),
            ("env=prod value", "not a label value"),
            ("env=-x", "not a label value"),
            ("Bad_Prefix/env=x", "not a DNS subdomain"),
            ("tierin (a)", "expected"),
        ] {
            let err = LabelSelector::parse(text).expect_err(text).to_string();
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
        }
        let long = format!("k={}", "v".repeat(64));
        assert!(LabelSelector::parse(&long).is_err());
    }

    #[test]
    fn nothing_selects_nothing() {
        assert!(!LabelSelector::nothing().matches(&labels(&[])));
        assert!(!LabelSelector::nothing().matches(&labels(&[("kubebeat.io/nothing", "")])));
    }

    #[test]
    fn clap_keeps_the_text_of_a_valid_selector() {
        assert_eq!(checked("env!=prod").as_deref(), Ok("env!=prod"));
        assert!(checked("env in (").is_err());
    }
}
