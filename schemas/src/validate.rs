//! Checking an Avro body against its writer schema without decoding it.
//!
//! Columnar decoders (arrow-avro) stream values into builders and check some things only
//! when the batch is built: an enum index out of range, a string that is not UTF-8. One
//! such record fails the whole batch, long after it was read. [`BodyCheck`] walks one body
//! over the schema first and says whether it is exactly one well-formed value: every
//! varint terminated and in range, every length inside the body, strings UTF-8, `uuid`
//! strings parseable, enum and union indices in range, booleans 0 or 1, and no byte left
//! over. It allocates nothing per record.
//!
//! It accepts exactly what apache-avro's `from_avro_datum` decodes while consuming the
//! whole body (property tests hold it to that), with one exception: apache-avro reads a
//! body that ends early inside a union as if the union were null, and arrow-avro does
//! not, so neither does this. About 100 ns per `VehicleState` (`cargo bench -p
//! eventbus-schemas`).
//!
//! ```
//! use eventbus_schemas::validate::BodyCheck;
//!
//! let check = BodyCheck::new(r#"{"type":"record","name":"R","fields":[
//!     {"name":"s","type":{"type":"enum","name":"S","symbols":["A","B"]}}]}"#)?;
//! assert!(check.check(&[2]).is_ok()); // index 1: "B"
//! let e = check.check(&[4]).expect_err("index 2 of 2 symbols");
//! assert_eq!(e.to_string(), "field `s`: enum index 2 is out of range (2 symbols) at byte 0");
//! assert!(check.check(&[2, 0]).is_err()); // a byte left over
//! # Ok::<_, String>(())
//! ```

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;

/// Nesting deeper than this is refused, so a recursive schema cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

/// Why a body is not one well-formed value of its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    /// The field, as a dotted path (`position.lat`); empty at the top level.
    pub field: String,
    /// What is wrong.
    pub reason: String,
    /// The byte of the body where it was found.
    pub at: usize,
    /// Whether the body ends before the value does.
    pub cut_short: bool,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{} at byte {}", self.reason, self.at)
        } else {
            write!(
                f,
                "field `{}`: {} at byte {}",
                self.field, self.reason, self.at
            )
        }
    }
}

impl std::error::Error for BodyError {}

#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Uuid,
    Fixed(usize),
    Enum(usize),
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Record(Vec<(String, usize)>),
}

/// One schema compiled for checking bodies; see the module docs.
#[derive(Debug)]
pub struct BodyCheck {
    nodes: Vec<Node>,
}

impl BodyCheck {
    /// Compiles `schema_json`.
    ///
    /// # Errors
    /// The schema does not parse, or refers to a name it does not define.
    pub fn new(schema_json: &str) -> Result<Self, String> {
        let schema = Schema::parse_str(schema_json).map_err(|e| e.to_string())?;
        Self::of(&schema)
    }

    /// Compiles a parsed schema.
    ///
    /// # Errors
    /// The schema refers to a name it does not define.
    pub fn of(schema: &Schema) -> Result<Self, String> {
        let mut b = Builder::default();
        b.node(schema)?;
        Ok(Self { nodes: b.nodes })
    }

    /// Whether `body` is exactly one well-formed value of the schema.
    ///
    /// # Errors
    /// The first thing wrong with it, naming the field and the byte.
    pub fn check(&self, body: &[u8]) -> Result<(), BodyError> {
        let mut w = Walk {
            nodes: &self.nodes,
            body,
            pos: 0,
        };
        w.value(0, 0)?;
        if w.pos != body.len() {
            return Err(w.error(format!(
                "{} bytes left over after the value",
                body.len() - w.pos
            )));
        }
        Ok(())
    }
}

#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    named: HashMap<String, usize>,
}

impl Builder {
    fn push(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn node(&mut self, s: &Schema) -> Result<usize, String> {
        let n = match s {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Node::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes | Schema::BigDecimal => Node::Bytes,
            Schema::String => Node::String,
            Schema::Uuid => Node::Uuid,
            Schema::Duration => Node::Fixed(12),
            Schema::Decimal(d) => return self.node(&d.inner),
            Schema::Fixed(f) => {
                let i = self.push(Node::Fixed(f.size));
                self.named.insert(f.name.fullname(None), i);
                return Ok(i);
            }
            Schema::Enum(e) => {
                let i = self.push(Node::Enum(e.symbols.len()));
                self.named.insert(e.name.fullname(None), i);
                return Ok(i);
            }
            Schema::Array(a) => {
                let i = self.push(Node::Null);
                let items = self.node(&a.items)?;
                self.nodes[i] = Node::Array(items);
                return Ok(i);
            }
            Schema::Map(m) => {
                let i = self.push(Node::Null);
                let values = self.node(&m.types)?;
                self.nodes[i] = Node::Map(values);
                return Ok(i);
            }
            Schema::Union(u) => {
                let i = self.push(Node::Null);
                let branches = u
                    .variants()
                    .iter()
                    .map(|v| self.node(v))
                    .collect::<Result<_, _>>()?;
                self.nodes[i] = Node::Union(branches);
                return Ok(i);
            }
            Schema::Record(r) => {
                // Named before its fields, which may refer to it.
                let i = self.push(Node::Null);
                self.named.insert(r.name.fullname(None), i);
                let fields = r
                    .fields
                    .iter()
                    .map(|f| Ok((f.name.clone(), self.node(&f.schema)?)))
                    .collect::<Result<_, String>>()?;
                self.nodes[i] = Node::Record(fields);
                return Ok(i);
            }
            Schema::Ref { name } => {
                let full = name.fullname(None);
                return self.named.get(&full).copied().ok_or_else(|| {
                    format!("the schema refers to `{full}`, which it does not define")
                });
            }
        };
        Ok(self.push(n))
    }
}

struct Walk<'a> {
    nodes: &'a [Node],
    body: &'a [u8],
    pos: usize,
}

impl<'a> Walk<'a> {
    fn error(&self, reason: String) -> BodyError {
        // The field's path is filled in on the way out, by the records it is in.
        BodyError {
            field: String::new(),
            reason,
            at: self.pos,
            cut_short: false,
        }
    }

    fn cut_short(&self, reason: String) -> BodyError {
        BodyError {
            cut_short: true,
            ..self.error(reason)
        }
    }

    fn varint(&mut self) -> Result<i64, BodyError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.body.get(self.pos) else {
                self.pos = start;
                return Err(self.cut_short("the value is cut short inside a number".into()));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                self.pos = start;
                return Err(self.error("a number is longer than 64 bits".into()));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                // Zig-zag.
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        self.pos = start;
        Err(self.error("a number is longer than 64 bits".into()))
    }

    fn int(&mut self) -> Result<i32, BodyError> {
        let start = self.pos;
        let v = self.varint()?;
        i32::try_from(v).map_err(|_| {
            self.pos = start;
            self.error(format!("{v} does not fit an int"))
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BodyError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.body.len());
        let Some(end) = end else {
            return Err(self.cut_short(format!(
                "the value is cut short: {n} bytes wanted, {} left",
                self.body.len() - self.pos
            )));
        };
        let s = &self.body[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn length(&mut self) -> Result<usize, BodyError> {
        let start = self.pos;
        let n = self.varint()?;
        usize::try_from(n).map_err(|_| {
            self.pos = start;
            self.error(format!("negative length {n}"))
        })
    }

    fn string(&mut self) -> Result<&'a str, BodyError> {
        let n = self.length()?;
        let start = self.pos;
        let s = self.take(n)?;
        std::str::from_utf8(s).map_err(|e| {
            self.pos = start + e.valid_up_to();
            self.error("a string is not UTF-8".into())
        })
    }

    /// The item count of the next block of an array or map, 0 at the end. A negative
    /// count is followed by the block's size in bytes, which readers skip over and so
    /// does this (apache-avro and arrow-avro take any value there).
    fn block(&mut self) -> Result<usize, BodyError> {
        let start = self.pos;
        let n = self.varint()?;
        if n < 0 {
            self.varint()?;
        }
        let n = n.unsigned_abs();
        // Every item takes at least one byte, unless it is empty (null, an empty record):
        // then the count alone is bounded, so no body makes the walk loop for long.
        if n > (self.body.len() - self.pos) as u64 + (1 << 16) {
            self.pos = start;
            return Err(self.error(format!("a block of {n} items is larger than the value")));
        }
        Ok(n as usize)
    }

    fn value(&mut self, node: usize, depth: usize) -> Result<(), BodyError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let nodes = self.nodes;
        match &nodes[node] {
            Node::Null => {}
            Node::Boolean => {
                let b = self.take(1)?[0];
                if b > 1 {
                    self.pos -= 1;
                    return Err(self.error(format!("boolean byte {b} is neither 0 nor 1")));
                }
            }
            Node::Int => {
                self.int()?;
            }
            Node::Long => {
                self.varint()?;
            }
            Node::Float => {
                self.take(4)?;
            }
            Node::Double => {
                self.take(8)?;
            }
            Node::Bytes => {
                let n = self.length()?;
                self.take(n)?;
            }
            Node::String => {
                self.string()?;
            }
            Node::Uuid => {
                let start = self.pos;
                let s = self.string()?;
                if uuid::Uuid::try_parse(s).is_err() {
                    self.pos = start;
                    return Err(self.error("a uuid string does not parse".into()));
                }
            }
            Node::Fixed(n) => {
                self.take(*n)?;
            }
            Node::Enum(symbols) => {
                let start = self.pos;
                let i = self.int()?;
                if i < 0 || i as usize >= *symbols {
                    self.pos = start;
                    return Err(self.error(format!(
                        "enum index {i} is out of range ({symbols} symbols)"
                    )));
                }
            }
            Node::Union(branches) => {
                let start = self.pos;
                let i = self.varint()?;
                let Some(&branch) = usize::try_from(i).ok().and_then(|i| branches.get(i)) else {
                    self.pos = start;
                    return Err(self.error(format!(
                        "union branch {i} is out of range ({} branches)",
                        branches.len()
                    )));
                };
                self.value(branch, depth + 1)?;
            }
            Node::Array(items) => loop {
                let n = self.block()?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    self.value(*items, depth + 1)?;
                }
            },
            Node::Map(values) => loop {
                let n = self.block()?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    self.string()?;
                    self.value(*values, depth + 1)?;
                }
            },
            Node::Record(fields) => {
                for (name, f) in fields {
                    self.value(*f, depth + 1).map_err(|mut e| {
                        e.field = if e.field.is_empty() {
                            name.clone()
                        } else {
                            format!("{name}.{}", e.field)
                        };
                        e
                    })?;
                }
            }
        }
        Ok(())
    }
}
