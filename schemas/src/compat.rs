//! Compatibility checks of schema changes under a subject's mode.

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;

use crate::catalog::Compatibility;

/// Checks that `new` may replace `old` under `mode`:
/// BACKWARD means readers on `new` read data written with `old`; FORWARD means readers
/// still on `old` read data written with `new`; FULL means both; NONE checks nothing.
///
/// # Errors
/// What breaks, in the Avro library's words, which name the field.
pub fn check(mode: Compatibility, old: &Schema, new: &Schema) -> Result<(), String> {
    if old == new {
        return Ok(());
    }
    // apache-avro 0.21's checker rejects a decimal inside a union even against itself;
    // a decimal reads as its underlying bytes or fixed, so compare without the logical
    // type.
    let (old, new) = (&without_decimals(old)?, &without_decimals(new)?);
    let backward = || {
        SchemaCompatibility::can_read(old, new)
            .map_err(|e| format!("new readers cannot read old data: {e}"))
    };
    let forward = || {
        SchemaCompatibility::can_read(new, old)
            .map_err(|e| format!("old readers cannot read new data: {e}"))
    };
    match mode {
        Compatibility::None => Ok(()),
        Compatibility::Backward => backward(),
        Compatibility::Forward => forward(),
        Compatibility::Full => backward().and_then(|()| forward()),
    }
}

fn without_decimals(schema: &Schema) -> Result<Schema, String> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if map.get("logicalType").and_then(|t| t.as_str()) == Some("decimal") {
                    map.remove("logicalType");
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut json = serde_json::to_value(schema).map_err(|e| e.to_string())?;
    strip(&mut json);
    Schema::parse(&json).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(extra: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"E","fields":[{{"name":"id","type":"string"}}{extra}]}}"#
        ))
        .expect("schema")
    }

    #[test]
    fn modes_decide_which_changes_pass() {
        let v1 = schema("");
        let with_default = schema(r#",{"name":"note","type":["null","string"],"default":null}"#);
        let without_default = schema(r#",{"name":"depot","type":"string"}"#);
        // An optional field with a default is fine both ways.
        assert!(check(Compatibility::Full, &v1, &with_default).is_ok());
        // A new required field breaks new readers of old data, naming the field.
        let err = check(Compatibility::Backward, &v1, &without_default).expect_err("backward");
        assert!(err.contains("depot"), "{err}");
        assert!(check(Compatibility::Forward, &v1, &without_default).is_ok());
        assert!(check(Compatibility::Full, &v1, &without_default).is_err());
        // Removing a field old readers need, without a default, breaks them.
        let err = check(Compatibility::Forward, &without_default, &v1).expect_err("forward");
        assert!(err.contains("depot"), "{err}");
        assert!(check(Compatibility::None, &without_default, &v1).is_ok());
    }

    #[test]
    fn a_nullable_decimal_is_compatible_with_itself_and_with_an_added_field() {
        let v1 = schema(
            r#",{"name":"fare","type":["null",{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}],"default":null}"#,
        );
        let v2 = schema(
            r#",{"name":"fare","type":["null",{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}],"default":null},{"name":"tip","type":["null","long"],"default":null}"#,
        );
        assert_eq!(check(Compatibility::Full, &v1, &v2), Ok(()));
        assert!(
            check(
                Compatibility::Backward,
                &v1,
                &schema(r#",{"name":"fare","type":"string"}"#)
            )
            .is_err()
        );
    }
}
