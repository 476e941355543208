//! The policy's JSON Schema (`guard schema`), derived with schemars from the very types the
//! parser reads ([`super::raw`] and each kind's `config::Raw`), so it cannot drift from them:
//! a key added to a parser type is in the schema, and a kind added to [`Kind::ALL`] must be
//! given its keys here (the match below is exhaustive).

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Value};

use crate::targets::{self, Kind};

/// The schema of a policy file, as JSON (draft 2020-12).
pub fn schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let root = generator.into_root_schema_for::<super::raw::RawPolicy>();
    let mut v = root.to_value();
    if let Some(o) = v.as_object_mut() {
        o.insert("title".into(), json!("guard policy"));
        o.insert(
            "description".into(),
            json!("A guard policy (guard.toml): what to snapshot, the checks, retention. Every key: docs/policy.md."),
        );
    }
    v
}

/// `[[target]]`: `name`, `kind`, and that kind's keys (one schema per kind, chosen by `kind`).
pub struct TargetSchema;

impl JsonSchema for TargetSchema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Target".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let kinds: Vec<Value> = Kind::ALL
            .into_iter()
            .map(|k| {
                let keys = match k {
                    Kind::Sqlite => targets::sqlite::config::Raw::json_schema(generator),
                    Kind::Dir => targets::dir::config::Raw::json_schema(generator),
                    Kind::Postgres => targets::postgres::config::Raw::json_schema(generator),
                    Kind::S3 => targets::s3::config::Raw::json_schema(generator),
                    Kind::Turso => targets::turso::config::Raw::json_schema(generator),
                };
                let mut s = keys.to_value();
                let o = s.as_object_mut().expect("a kind's keys are an object schema");
                o.remove("title");
                o.insert(
                    "description".into(),
                    json!(format!("kind = \"{}\": docs/targets/{}.md", k.as_str(), k.as_str())),
                );
                let props = o
                    .entry("properties")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("properties");
                props.insert(
                    "name".into(),
                    json!({"type": "string", "description": "target name, unique in the policy"}),
                );
                props.insert("kind".into(), json!({"const": k.as_str()}));
                o.insert("required".into(), json!(["name", "kind"]));
                o.insert("additionalProperties".into(), json!(false));
                s
            })
            .collect();
        let names: Vec<&str> = Kind::ALL.into_iter().map(Kind::as_str).collect();
        json_schema!({
            "type": "object",
            "required": ["name", "kind"],
            "properties": {"kind": {"enum": names}},
            "oneOf": kinds,
        })
    }
}

/// A check's `expect`: words, or `{ text = "…" }` (see [`super::raw::RawExpect`]).
impl JsonSchema for super::raw::RawExpect {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Expect".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "unchanged, changed, == n, != n, < n, <= n, > n, >= n, or a literal; { text = \"…\" } for a literal that starts like a comparison",
            "anyOf": [
                {"type": "string"},
                {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"], "additionalProperties": false}
            ]
        })
    }
}

/// `store`: a location (a directory or `s3://bucket/prefix`), or the `[store]` table. The table
/// is read by [`super::sections::store_parts`]; this type only describes it.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum StoreSchema {
    /// A local directory (relative to the policy) or `s3://bucket/prefix`.
    Location(String),
    Table(StoreTable),
}

/// `[store]`: docs/store.md.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct StoreTable {
    /// A local directory (relative to the policy) or `s3://bucket/prefix`.
    path: Option<String>,
    /// The key that signs manifests and journals (`guard key generate`).
    key_file: Option<String>,
    /// `"AES256"` or `"aws:kms"`: server-side encryption of every object of an `s3://` store.
    sse: Option<String>,
    /// The KMS key, with `sse = "aws:kms"`.
    kms_key_id: Option<String>,
}
