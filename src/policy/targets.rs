//! `[[target]]`: each table's `name` (valid, unique) and `kind`; the kind's own keys are
//! parsed by its `config.rs` through [`crate::targets::parse_spec`].

use std::collections::BTreeSet;

use anyhow::Result;
use toml::Spanned;

use super::raw::RawTarget;
use super::valid_name;
use crate::parse_ctx::fail;
use crate::parse_ctx::{ParseCtx, Scope, Seg};
use crate::targets::{self, TargetSpec};

pub fn parse(raw: Vec<Spanned<RawTarget>>, cx: &mut ParseCtx) -> Result<Vec<TargetSpec>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, t) in raw.into_iter().enumerate() {
        let span = t.span();
        let RawTarget { name, kind, keys } = t.into_inner();
        let name = cx
            .expand_at(&[Seg::Key("target"), Seg::Index(i), Seg::Key("name")], &name)?
            .text;
        if !valid_name(&name) {
            fail!(
                cx,
                @span,
                "target name {name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
            );
        }
        if !seen.insert(name.clone()) {
            fail!(cx, @span, "target {name:?} is defined twice");
        }
        let scope = Scope {
            kind: Some(kind.clone()),
            ..Scope::new(
                format!("target {name:?}"),
                span.clone(),
                vec![Seg::Key("target"), Seg::Index(i)],
            )
        };
        let mark = cx.unresolved_len();
        let spec = cx.within(scope, |cx| targets::parse_spec(&kind, keys, cx))?;
        out.push(TargetSpec {
            line: cx.line(span.start),
            unresolved: cx.unresolved_since(mark).to_vec(),
            ..TargetSpec::new(name, spec)
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::raw;
    use super::*;
    use crate::targets::{KindSpec, PgFormat, S3Tags, Sessions, TursoRestore};

    fn targets(text: &str) -> Result<Vec<TargetSpec>> {
        let mut cx = ParseCtx::new(text, Path::new("/nonexistent-guard-t/policy.toml"));
        let raw = raw::from_str(text, &cx)?;
        parse(raw.target, &mut cx)
    }

    fn err(text: &str) -> String {
        format!("{:#}", targets(text).unwrap_err())
    }

    #[test]
    fn every_kind_parses_with_its_defaults() {
        let got = targets(concat!(
            "name = \"p\"\n",
            "[[target]]\nname = \"a\"\nkind = \"sqlite\"\npath = \"a.db\"\n",
            "[[target]]\nname = \"d\"\nkind = \"dir\"\npath = \"/srv/d\"\n",
            "[[target]]\nname = \"pg\"\nkind = \"postgres\"\nurl = \"postgres://h/x\"\ncsv_tables = [\"t\"]\n",
            "[[target]]\nname = \"img\"\nkind = \"s3\"\nbucket = \"b\"\nclone_bucket = \"c\"\n",
            "[[target]]\nname = \"t\"\nkind = \"turso\"\norganization = \"o\"\ndatabase = \"d\"\napi_token = \"tok-1234\"\n",
        ))
        .unwrap();
        let kinds: Vec<&str> = got.iter().map(|t| t.kind.as_str()).collect();
        assert_eq!(kinds, ["sqlite", "dir", "postgres", "s3", "turso"]);
        assert_eq!(got.iter().map(|t| t.line).collect::<Vec<_>>(), [2, 6, 10, 15, 20]);
        match &got[0].kind {
            KindSpec::Sqlite(s) => assert_eq!(s.path, PathBuf::from("/nonexistent-guard-t/a.db")),
            k => panic!("{k:?}"),
        }
        match &got[2].kind {
            KindSpec::Postgres(p) => {
                assert_eq!((p.format, p.sessions), (PgFormat::Custom, Sessions::Refuse));
                assert_eq!(p.csv_tables, ["t"]);
            }
            k => panic!("{k:?}"),
        }
        match &got[3].kind {
            KindSpec::S3(s) => assert_eq!((s.prefix.as_str(), s.tags), ("", S3Tags::Exact)),
            k => panic!("{k:?}"),
        }
        match &got[4].kind {
            KindSpec::Turso(t) => {
                assert_eq!(
                    (t.group.as_str(), t.api_url.as_str()),
                    ("default", "https://api.turso.tech")
                );
                assert_eq!((t.export, t.restore), (true, TursoRestore::Reload));
            }
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn names_kinds_and_required_keys_are_checked_at_the_tables_line() {
        let e = err("name = \"p\"\n[[target]]\nname = \"a b\"\nkind = \"dir\"\npath = \"x\"\n");
        assert!(e.contains("policy.toml:2: target name \"a b\""), "{e}");
        let t = "[[target]]\nname = \"a\"\nkind = \"dir\"\npath = \"x\"\n";
        let e = err(&format!("name = \"p\"\n{t}{t}"));
        assert!(e.contains("policy.toml:6: target \"a\" is defined twice"), "{e}");
        let e = err("name = \"p\"\n[[target]]\nname = \"a\"\nkind = \"mysql\"\n");
        assert!(
            e.contains("policy.toml:2: target \"a\": unknown kind \"mysql\" (known: sqlite, dir, postgres, s3, turso)"),
            "{e}"
        );
        let e = err("name = \"p\"\n[[target]]\nname = \"a\"\nkind = \"postgres\"\nformat = \"plain\"\n");
        assert!(
            e.contains("policy.toml:2: target \"a\" of kind \"postgres\" needs `url`"),
            "{e}"
        );
        let e = err("name = \"p\"\n[[target]]\nname = \"a\"\nkind = \"sqlite\"\npath = \"  \"\n");
        assert!(
            e.contains("policy.toml:2: target \"a\" of kind \"sqlite\" needs `path`"),
            "{e}"
        );
    }

    #[test]
    fn a_kinds_unknown_or_mistyped_key_names_its_line_and_the_valid_keys() {
        let e = err("name = \"p\"\n[[target]]\nname = \"a\"\nkind = \"sqlite\"\npath = \"a.db\"\nbucket = \"b\"\n");
        assert!(
            e.contains("policy.toml:6: target \"a\" of kind \"sqlite\": unknown key `bucket`, expected `path`"),
            "{e}"
        );
        let e =
            err("name = \"p\"\n[[target]]\nname = \"t\"\nkind = \"turso\"\norganization = \"o\"\nexport = \"yes\"\n");
        assert!(
            e.contains("policy.toml:6: target \"t\" of kind \"turso\": invalid type"),
            "{e}"
        );
        let e = err(
            "name = \"p\"\n[[target]]\nname = \"a\"\nkind = \"postgres\"\nurl = \"postgres://h/x\"\nformat = \"tar\"\n",
        );
        assert!(
            e.contains("policy.toml:2: target \"a\": format \"tar\" must be \"custom\" or \"plain\""),
            "{e}"
        );
    }
}
