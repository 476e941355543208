//! The policy's TOML shape, as serde reads it. Every table denies unknown fields so a typo is an
//! error with a line number; a `[[target]]` table keeps its kind's keys as a table for the
//! kind's own `config.rs`, which denies the keys it does not know (serde cannot combine
//! `flatten` with `deny_unknown_fields`: serde-rs/serde#1600).

use serde::Deserialize;
use toml::Spanned;

use crate::parse_ctx::{line_of, ParseCtx};

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// `store = "DIR|s3://…"`, or a `[store]` table (`path`, `key_file`, `sse`, `kms_key_id`):
    /// [`super::sections::store_parts`].
    #[schemars(with = "Option<super::schema::StoreSchema>")]
    pub store: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub confirm: bool,
    pub retention: Option<RawRetention>,
    pub compression: Option<RawCompression>,
    #[serde(default)]
    #[schemars(with = "Vec<super::schema::TargetSchema>")]
    pub target: Vec<Spanned<RawTarget>>,
    pub hooks: Option<RawHooks>,
    #[serde(default)]
    #[schemars(with = "Vec<RawCheck>")]
    pub check: Vec<Spanned<RawCheck>>,
    pub drill: Option<RawDrill>,
    #[schemars(with = "Option<RawEncryption>")]
    pub encryption: Option<Spanned<RawEncryption>>,
}

/// `[encryption]`: age recipients (`recipients`, `recipients_file`) and the identity for reads.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEncryption {
    #[serde(default)]
    pub recipients: Vec<String>,
    pub recipients_file: Option<String>,
    pub identity_file: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDrill {
    #[schemars(with = "Option<String>")]
    pub max_age: Option<Spanned<String>>,
    pub on_failure: Option<String>,
    #[serde(default)]
    #[schemars(with = "Vec<RawCheck>")]
    pub check: Vec<Spanned<RawCheck>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    #[schemars(with = "Option<String>")]
    pub keep_within: Option<Spanned<String>>,
    #[schemars(with = "Option<usize>")]
    pub keep_last: Option<Spanned<usize>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    #[schemars(with = "Option<u32>")]
    pub level: Option<Spanned<u32>>,
    #[schemars(with = "Option<usize>")]
    pub threads: Option<Spanned<usize>>,
}

/// `[[target]]`: `name`, `kind`, and the kind's own keys.
#[derive(Deserialize)]
pub struct RawTarget {
    pub name: String,
    pub kind: String,
    #[serde(flatten)]
    pub keys: toml::Table,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    #[serde(default)]
    pub before: Vec<String>,
    #[serde(default)]
    pub after: Vec<String>,
    /// How long each hook may run (`"10m"`); a hook still running then is killed.
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: String,
    pub target: Option<String>,
    pub untouched: Option<Vec<String>>,
    /// The strict form of `untouched`: whole rows (every column, added ones too) unchanged.
    pub identical: Option<Vec<String>>,
    pub sql: Option<String>,
    pub expect: Option<RawExpect>,
    pub command: Option<String>,
    /// s3 targets: count of objects / total bytes under this key prefix.
    pub objects: Option<String>,
    pub bytes: Option<String>,
    /// `command` checks: how long the command may run (`"5m"`).
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
}

/// A check's `expect`: words (`">= 1"`, `"unchanged"`, a literal) or `{ text = "…" }`, a
/// literal compared as it is even when it starts like a comparison.
pub enum RawExpect {
    Words(String),
    Text(String),
}

impl<'de> Deserialize<'de> for RawExpect {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawExpect;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string such as \">= 1\" or \"unchanged\", or { text = \"…\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawExpect, E> {
                Ok(RawExpect::Words(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<RawExpect, A::Error> {
                use serde::de::Error;
                let mut text = None;
                while let Some(k) = m.next_key::<String>()? {
                    if k != "text" {
                        return Err(A::Error::unknown_field(&k, &["text"]));
                    }
                    text = Some(m.next_value::<String>()?);
                }
                text.map(RawExpect::Text).ok_or_else(|| A::Error::missing_field("text"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Read the TOML; a syntax or shape error names its line.
pub fn from_str(text: &str, cx: &ParseCtx) -> anyhow::Result<RawPolicy> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
        cx.err_line(line, e.message().trim())
    })
}
