//! Rules: what the `[[rule]]` sections say, checked against the topics' schemas and
//! compiled once.
//!
//! A rule is either a condition (`when`, a CEL expression over the decoded event's
//! fields) or an absence (`absent_for`: no event from a key for that long). Every name a
//! rule uses (in `when`, in `message` placeholders, its `key`) must be a field of its
//! topic's schema; nested fields are dotted (`position.lat`). Anything wrong fails
//! start-up with an error that names the rule and what is wrong with it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use cel::Program;
use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use serde::Deserialize;

/// How urgent an alert is: the `AlertSeverity` symbols of `Alert.avsc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    /// For information.
    Info,
    /// Someone should look.
    Warning,
    /// Someone must act now.
    Critical,
}

impl Severity {
    /// The Avro enum symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Info => "INFO",
            Self::Warning => "WARNING",
            Self::Critical => "CRITICAL",
        }
    }
}

/// One `[[rule]]` section, as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name; it is the alert's `rule`.
    pub name: String,
    /// The catalog topic whose events the rule reads.
    pub topic: String,
    /// A CEL expression over the event's fields; the rule fires when it is true.
    #[serde(default)]
    pub when: Option<String>,
    /// Instead of `when`: no event from a key for this long, in processing time.
    #[serde(default)]
    pub absent_for: Option<String>,
    /// `INFO`, `WARNING` or `CRITICAL`.
    pub severity: Severity,
    /// The alert's text; `{field}` placeholders are replaced by the event's values.
    pub message: String,
    /// The condition must hold this long, in event time, for the same key.
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
    /// At most one alert per (rule, key) per this long, in event time.
    #[serde(default)]
    pub cooldown: Option<String>,
    /// The field alerts are keyed by (the alert's `vehicle_id`). Default `vehicle_id`.
    #[serde(default)]
    pub key: Option<String>,
}

/// What makes a rule fire.
#[derive(Debug)]
pub enum Trigger {
    /// A condition, sustained for `for_ms`, at most once per `cooldown_ms`.
    When {
        /// The compiled expression.
        program: Program,
        /// How long it must hold, event time.
        for_ms: i64,
        /// Quiet time after an alert, event time.
        cooldown_ms: i64,
    },
    /// No event from a key for this long (processing time).
    Absent(Duration),
    /// Every event: the emergency topic's built-in rule.
    Every,
}

/// A rule, checked and compiled.
#[derive(Debug)]
pub struct Rule {
    /// As written (reloads compare it).
    pub spec: RuleSpec,
    /// What makes it fire.
    pub trigger: Trigger,
    /// The message template.
    pub message: Template,
    /// The key field's path.
    pub key: Vec<String>,
}

/// A message with `{field}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Piece>);

/// A part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text as written.
    Text(String),
    /// A field's value (a dotted path).
    Field(Vec<String>),
}

impl Template {
    /// Splits `text` at `{name}` placeholders; `{{` and `}}` are literal braces.
    ///
    /// # Errors
    /// An unclosed or empty placeholder.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("placeholder {{{name} is not closed")),
                        }
                    }
                    let name = name.trim();
                    if name.is_empty() {
                        return Err("an empty placeholder {}".to_owned());
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Field(name.split('.').map(str::to_owned).collect()));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Self(pieces))
    }

    /// The fields the template names.
    pub fn fields(&self) -> impl Iterator<Item = &[String]> {
        self.0.iter().filter_map(|p| match p {
            Piece::Field(path) => Some(path.as_slice()),
            Piece::Text(_) => None,
        })
    }
}

/// A duration as people write them: `500ms`, `10s`, `5m`, `1h 30m`.
///
/// # Errors
/// Text that is not a duration, named with `what`.
pub fn parse_duration(what: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{what} = {text:?} is not a duration like \"500ms\", \"10s\" or \"5m\" ({e})")
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The schema a topic's rules are checked against.
#[derive(Debug, Clone)]
pub struct TopicSchema {
    /// The reader schema (the catalog subject's latest).
    pub schema: Arc<Schema>,
    /// Named types by full name, to follow references.
    names: BTreeMap<String, Schema>,
    /// Fields whose values are personal data (masked in messages).
    pub pii: Vec<String>,
}

impl TopicSchema {
    /// Indexes `schema`.
    pub fn new(schema: Arc<Schema>, pii: Vec<String>) -> Self {
        let mut names = BTreeMap::new();
        collect_names(&schema, &mut names);
        Self { schema, names, pii }
    }

    /// The schema at `path`, if every step is a field.
    pub fn field(&self, path: &[String]) -> Option<&Schema> {
        let mut at: &Schema = &self.schema;
        for step in path {
            let record = self.record_of(at)?;
            at = record
                .fields
                .iter()
                .find(|f| &f.name == step)
                .map(|f| &f.schema)?;
        }
        Some(at)
    }

    /// The field names of the record at `path`.
    pub fn fields_at(&self, path: &[String]) -> Vec<String> {
        self.field(path)
            .and_then(|s| self.record_of(s))
            .map(|r| r.fields.iter().map(|f| f.name.clone()).collect())
            .unwrap_or_default()
    }

    /// The record a value of `schema` is (through a nullable union or a reference).
    fn record_of<'a>(
        &'a self,
        schema: &'a Schema,
    ) -> Option<&'a apache_avro::schema::RecordSchema> {
        match schema {
            Schema::Record(r) => Some(r),
            Schema::Ref { name } => self
                .names
                .get(&name.fullname(None))
                .and_then(|s| self.record_of(s)),
            Schema::Union(u) => u.variants().iter().find_map(|v| self.record_of(v)),
            _ => None,
        }
    }
}

fn collect_names(schema: &Schema, names: &mut BTreeMap<String, Schema>) {
    match schema {
        Schema::Record(r) => {
            names.insert(r.name.fullname(None), schema.clone());
            for f in &r.fields {
                collect_names(&f.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.fullname(None), schema.clone());
        }
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_names(v, names)),
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        _ => {}
    }
}

/// The dotted field paths a CEL expression reads, leaving out the variables its macros
/// bind (`x` in `list.all(x, x > 0)`).
pub fn field_paths(expr: &IdedExpr) -> Vec<Vec<String>> {
    let mut bound = HashSet::new();
    collect_bound(expr, &mut bound);
    let mut paths = Vec::new();
    collect_paths(expr, &bound, &mut paths);
    paths
}

fn collect_bound(expr: &IdedExpr, bound: &mut HashSet<String>) {
    for_each_child(expr, &mut |child| collect_bound(child, bound));
    if let Expr::Comprehension(c) = &expr.expr {
        bound.insert(c.iter_var.clone());
        bound.insert(c.accu_var.clone());
        if let Some(v) = &c.iter_var2 {
            bound.insert(v.clone());
        }
    }
}

/// The path `expr` names, if it is an identifier followed by field selections.
fn path_of(expr: &IdedExpr) -> Option<Vec<String>> {
    match &expr.expr {
        Expr::Ident(name) => Some(vec![name.clone()]),
        Expr::Select(s) => {
            let mut path = path_of(&s.operand)?;
            path.push(s.field.clone());
            Some(path)
        }
        _ => None,
    }
}

fn collect_paths(expr: &IdedExpr, bound: &HashSet<String>, out: &mut Vec<Vec<String>>) {
    if let Some(path) = path_of(expr) {
        if !bound.contains(&path[0]) {
            out.push(path);
        }
        return;
    }
    for_each_child(expr, &mut |child| collect_paths(child, bound, out));
}

fn for_each_child(expr: &IdedExpr, f: &mut dyn FnMut(&IdedExpr)) {
    match &expr.expr {
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                f(target);
            }
            call.args.iter().for_each(&mut *f);
        }
        Expr::Comprehension(c) => {
            for e in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                f(e);
            }
        }
        Expr::List(list) => list.elements.iter().for_each(&mut *f),
        Expr::Map(map) => map.entries.iter().for_each(|e| entry(e, f)),
        Expr::Struct(s) => s.entries.iter().for_each(|e| entry(e, f)),
        Expr::Select(s) => f(&s.operand),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn entry(e: &cel::common::ast::IdedEntryExpr, f: &mut dyn FnMut(&IdedExpr)) {
    match &e.expr {
        EntryExpr::StructField(s) => f(&s.value),
        EntryExpr::MapEntry(m) => {
            f(&m.key);
            f(&m.value);
        }
    }
}

/// CEL names that are not fields: type names usable in `type(x) == int`.
const CEL_TYPES: &[&str] = &[
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// Checks `spec` against its topic's schema and compiles it.
///
/// # Errors
/// A message naming the rule: no trigger or two, bad CEL, a field the schema does not
/// have, a duration that does not parse, a bad placeholder.
pub fn compile(spec: &RuleSpec, schema: &TopicSchema) -> Result<Rule, String> {
    let name = &spec.name;
    let err = |what: String| format!("rule {name:?} (topic {}): {what}", spec.topic);
    let check_path = |what: &str, path: &[String]| -> Result<(), String> {
        if schema.field(path).is_none() {
            let parent = &path[..path.len().saturating_sub(1)];
            return Err(err(format!(
                "{what} names field {:?}, which the topic's schema {} does not have \
                 (fields{}: {})",
                path.join("."),
                eventbus_schemas::codec::schema_name(&schema.schema),
                if parent.is_empty() {
                    String::new()
                } else {
                    format!(" of {}", parent.join("."))
                },
                schema.fields_at(parent).join(", ")
            )));
        }
        Ok(())
    };
    let duration = |key: &str, text: &Option<String>| -> Result<i64, String> {
        text.as_deref()
            .map(|t| parse_duration(key, t).map(millis))
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(err)
    };
    let trigger = match (&spec.when, &spec.absent_for) {
        (Some(_), Some(_)) => return Err(err("set `when` or `absent_for`, not both".to_owned())),
        (None, None) => {
            return Err(err(
                "set `when` (a CEL condition) or `absent_for`".to_owned()
            ));
        }
        (Some(when), None) => {
            let program =
                Program::compile(when).map_err(|e| err(format!("`when` is not valid CEL: {e}")))?;
            for path in field_paths(program.expression()) {
                if path.len() == 1 && CEL_TYPES.contains(&path[0].as_str()) {
                    continue;
                }
                check_path("`when`", &path)?;
            }
            Trigger::When {
                program,
                for_ms: duration("for", &spec.for_)?,
                cooldown_ms: duration("cooldown", &spec.cooldown)?,
            }
        }
        (None, Some(after)) => {
            if spec.for_.is_some() || spec.cooldown.is_some() {
                return Err(err(
                    "`for` and `cooldown` go with `when`; an absence alerts once per silence"
                        .to_owned(),
                ));
            }
            let after = parse_duration("absent_for", after).map_err(err)?;
            if after.is_zero() {
                return Err(err("absent_for must be more than 0".to_owned()));
            }
            Trigger::Absent(after)
        }
    };
    let message = Template::parse(&spec.message).map_err(|e| err(format!("message: {e}")))?;
    for path in message.fields() {
        check_path("message", path)?;
    }
    let key: Vec<String> = spec
        .key
        .as_deref()
        .unwrap_or("vehicle_id")
        .split('.')
        .map(str::to_owned)
        .collect();
    check_path("key", &key)?;
    Ok(Rule {
        spec: spec.clone(),
        trigger,
        message,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vehicle_state() -> TopicSchema {
        let registry = eventbus_schemas::FileRegistry::embedded().expect("registry");
        let (_, schema) = registry
            .latest_of("vehicle.state.v1-value")
            .expect("subject");
        TopicSchema::new(schema, vec!["driver_id".to_owned()])
    }

    fn spec(when: &str) -> RuleSpec {
        RuleSpec {
            name: "r".to_owned(),
            topic: "vehicle.state.v1".to_owned(),
            when: Some(when.to_owned()),
            absent_for: None,
            severity: Severity::Warning,
            message: "{vehicle_id} at {speed_kph}".to_owned(),
            for_: Some("10s".to_owned()),
            cooldown: None,
            key: None,
        }
    }

    #[test]
    fn a_good_rule_compiles_with_nested_and_optional_fields() {
        let rule = compile(
            &spec("speed_kph > 120.0 && status == 'DRIVING' && position.lat > 0.0 && driver_id != null"),
            &vehicle_state(),
        )
        .expect("compiles");
        assert!(matches!(
            rule.trigger,
            Trigger::When {
                for_ms: 10_000,
                cooldown_ms: 0,
                ..
            }
        ));
    }

    #[test]
    fn each_mistake_is_named() {
        let schema = vehicle_state();
        let e = compile(&spec("speed_kph > > 1"), &schema).unwrap_err();
        assert!(
            e.contains("rule \"r\"") && e.contains("not valid CEL"),
            "{e}"
        );
        let e = compile(&spec("speed_mph > 1.0"), &schema).unwrap_err();
        assert!(e.contains("\"speed_mph\""), "{e}");
        let e = compile(&spec("position.altitude > 1.0"), &schema).unwrap_err();
        assert!(e.contains("\"position.altitude\""), "{e}");
        let e = compile(&spec("[1, 2].exists(x, x > speed)"), &schema).unwrap_err();
        assert!(e.contains("\"speed\"") && !e.contains("\"x\""), "{e}");
        let mut s = spec("speed_kph > 1.0");
        s.for_ = Some("ten seconds".to_owned());
        let e = compile(&s, &schema).unwrap_err();
        assert!(e.contains("for = \"ten seconds\""), "{e}");
        let mut s = spec("speed_kph > 1.0");
        s.message = "{vehicle} is fast".to_owned();
        let e = compile(&s, &schema).unwrap_err();
        assert!(e.contains("message") && e.contains("\"vehicle\""), "{e}");
    }

    #[test]
    fn templates_split_at_placeholders() {
        let t = Template::parse("{a.b} at {{literal}} {c}!").expect("parses");
        assert_eq!(
            t.0,
            vec![
                Piece::Field(vec!["a".into(), "b".into()]),
                Piece::Text(" at {literal} ".into()),
                Piece::Field(vec!["c".into()]),
                Piece::Text("!".into()),
            ]
        );
        assert!(Template::parse("{open").is_err());
    }
}
