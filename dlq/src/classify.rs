//! Categories of dead letters: configurable rules first, then the built-in ones.

use regex::Regex;

use crate::envelope::LetterContext;

/// The built-in categories, in the order they are tried.
pub const BUILT_IN: [&str; 6] = [
    "schema_unknown",
    "timeout",
    "downstream_unavailable",
    "decode_error",
    "validation",
    "unknown",
];

/// One rule: every condition given must hold. Conditions compare case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The category a matching letter gets.
    pub category: String,
    /// The error class: `transient` or `permanent`.
    #[serde(default)]
    pub class: Option<String>,
    /// The stage: `operator`, `sink:<name>`; a prefix is enough (`sink`).
    #[serde(default)]
    pub stage: Option<String>,
    /// A substring of the exception (error type) name.
    #[serde(default)]
    pub exception: Option<String>,
    /// A regular expression the error message must match.
    #[serde(default)]
    pub message: Option<String>,
    /// The original topic.
    #[serde(default)]
    pub topic: Option<String>,
}

/// Puts letters into categories.
#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<(Rule, Option<Regex>)>,
    built_in: Vec<(&'static str, Regex)>,
}

impl Classifier {
    /// A classifier with these rules in front of the built-in ones.
    ///
    /// # Errors
    /// A rule's message pattern does not compile; the error names the rule's category.
    pub fn new(rules: Vec<Rule>) -> Result<Self, String> {
        let rules = rules
            .into_iter()
            .map(|r| {
                let re = r
                    .message
                    .as_deref()
                    .map(|m| Regex::new(&format!("(?i){m}")))
                    .transpose()
                    .map_err(|e| format!("rule for category {}: message: {e}", r.category))?;
                Ok((r, re))
            })
            .collect::<Result<_, String>>()?;
        let pattern = |p: &str| Regex::new(p).unwrap_or_else(|_| unreachable!("fixed pattern"));
        let built_in = vec![
            (
                "schema_unknown",
                pattern(
                    r"(?i)registry does not know|unknown schema|schema id \d+ (is )?not (found|registered)",
                ),
            ),
            ("timeout", pattern(r"(?i)timed? ?out|deadline exceeded")),
            (
                "downstream_unavailable",
                pattern(
                    r"(?i)unavailable|connection (refused|reset)|too many requests|\b(429|502|503|504)\b|cannot look up schema",
                ),
            ),
            (
                "decode_error",
                pattern(
                    r"(?i)wire-format|magic byte|does not match schema|bytes left after decoding|cannot be read as|decode",
                ),
            ),
            (
                "validation",
                pattern(r"(?i)validat|invalid|outside|out of range|must be|not accepted"),
            ),
        ];
        Ok(Self { rules, built_in })
    }

    /// The category of a letter.
    pub fn classify(&self, c: &LetterContext) -> String {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| have.as_ref().is_some_and(|h| h.eq_ignore_ascii_case(w)))
        };
        for (rule, re) in &self.rules {
            let stage = rule.stage.as_ref().is_none_or(|s| {
                c.stage
                    .as_ref()
                    .is_some_and(|h| h.to_lowercase().starts_with(&s.to_lowercase()))
            });
            let exception = rule.exception.as_ref().is_none_or(|e| {
                c.exception
                    .as_ref()
                    .is_some_and(|h| h.to_lowercase().contains(&e.to_lowercase()))
            });
            let message = re
                .as_ref()
                .is_none_or(|re| c.message.as_ref().is_some_and(|m| re.is_match(m)));
            if eq(&rule.class, &c.class)
                && eq(&rule.topic, &c.topic)
                && stage
                && exception
                && message
            {
                return rule.category.clone();
            }
        }
        let message = c.message.as_deref().unwrap_or_default();
        let transient = c.class.as_deref() == Some("transient");
        for (name, re) in &self.built_in {
            if re.is_match(message) {
                return (*name).to_owned();
            }
            if *name == "downstream_unavailable" && transient {
                return (*name).to_owned();
            }
        }
        "unknown".to_owned()
    }
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new(Vec::new()).unwrap_or_else(|_| unreachable!("no rules, nothing to fail"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(class: &str, stage: &str, message: &str) -> LetterContext {
        LetterContext {
            class: Some(class.into()),
            stage: Some(stage.into()),
            message: Some(message.into()),
            topic: Some("vehicle.state.v1".into()),
            ..LetterContext::default()
        }
    }

    #[test]
    fn built_in_categories_follow_the_messages_eventbus_writes() {
        let c = Classifier::default();
        let cases = [
            (
                "permanent",
                "operator",
                "topic t partition 0 offset 1 names schema id 9, which the registry does not know",
                "schema_unknown",
            ),
            (
                "permanent",
                "operator",
                "topic t partition 0 offset 1 starts with byte 0x7b, not the wire-format magic byte 0x00",
                "decode_error",
            ),
            (
                "permanent",
                "operator",
                "body does not match schema id 3: unexpected end",
                "decode_error",
            ),
            (
                "permanent",
                "operator",
                "battery_pct 180 is outside 0..=100",
                "validation",
            ),
            (
                "transient",
                "sink:http",
                "downstream unavailable",
                "downstream_unavailable",
            ),
            (
                "transient",
                "sink:http",
                "request timed out after 30 s",
                "timeout",
            ),
            (
                "transient",
                "sink:db",
                "deadlock detected",
                "downstream_unavailable",
            ),
            ("permanent", "sink:db", "constraint xyz", "unknown"),
        ];
        for (class, stage, message, want) in cases {
            assert_eq!(c.classify(&ctx(class, stage, message)), want, "{message}");
        }
    }

    #[test]
    fn rules_come_first_and_combine_their_conditions() {
        let c = Classifier::new(vec![Rule {
            category: "fleet_rejected".into(),
            stage: Some("sink".into()),
            message: Some("fleet .* not accepted".into()),
            ..Rule::default()
        }])
        .unwrap();
        assert_eq!(
            c.classify(&ctx("permanent", "sink:test", "fleet f-9 is not accepted")),
            "fleet_rejected"
        );
        assert_eq!(
            c.classify(&ctx("permanent", "operator", "fleet f-9 is not accepted")),
            "validation"
        );
        let bad = Classifier::new(vec![Rule {
            category: "x".into(),
            message: Some("(".into()),
            ..Rule::default()
        }]);
        assert!(bad.unwrap_err().contains("category x"));
    }
}
