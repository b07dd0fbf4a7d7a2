//! `docs/API.md` is the reference users read, so it is held to what the service is:
//!
//! - the proto descriptor set: every service and RPC has its section, with its signature; every
//!   request and response field, message field and enum value is in its table with its type
//!   (or number); and the document has no section, field or value the proto does not;
//! - the reason codes (`kms_types::error::REASON_CODES`, `kms_runtime::status::EDGE_REASON_CODES`):
//!   the status table has every one, once, under the gRPC code it comes with, and no other; the
//!   errors listed under each RPC are known reasons under their own code;
//! - and those two lists are held to the sources that make reason codes: every field an
//!   `InvalidParameter.<Field>` can name (the first argument of every `DomainError::invalid`,
//!   followed back to its literals) and every reason the edge answers with (`edge_status`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kms_types::DomainError;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::Code;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test package sits in the workspace")
        .to_path_buf()
}

fn api_md() -> String {
    let path = workspace_root().join("docs/API.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Fails with every problem at once, one per line.
fn assert_none(problems: Vec<String>, what: &str) {
    assert!(
        problems.is_empty(),
        "{what}:\n{}",
        problems
            .iter()
            .map(|p| format!("- {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ------------------------------------------------------------------------------------------
// The document

/// `docs/API.md` cut at its `##` and `###` headings.
#[derive(Debug)]
struct Section {
    title: String,
    level: usize,
    lines: Vec<String>,
}

/// A Markdown table: its header cells and rows, backticks kept.
#[derive(Debug)]
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn sections(doc: &str) -> Vec<Section> {
    let mut out = Vec::new();
    let mut current = Section {
        title: String::new(),
        level: 1,
        lines: Vec::new(),
    };
    for line in doc.lines() {
        let level = line.chars().take_while(|&c| c == '#').count();
        if (2..=3).contains(&level) && line[level..].starts_with(' ') {
            out.push(current);
            current = Section {
                title: line[level..].trim().trim_matches('`').to_string(),
                level,
                lines: Vec::new(),
            };
        } else {
            current.lines.push(line.to_string());
        }
    }
    out.push(current);
    out
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut escaped = false;
    for c in inner.chars() {
        match c {
            '|' if !escaped => out.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
        escaped = c == '\\';
    }
    out.push(cell.trim().to_string());
    out
}

fn tables(lines: &[String]) -> Vec<Table> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < lines.len() {
        if lines[i].starts_with('|') && lines[i + 1].starts_with("|---") {
            let header = cells(&lines[i]).iter().map(|c| c.to_lowercase()).collect();
            let mut rows = Vec::new();
            i += 2;
            while i < lines.len() && lines[i].starts_with('|') {
                rows.push(cells(&lines[i]));
                i += 1;
            }
            out.push(Table { header, rows });
        } else {
            i += 1;
        }
    }
    out
}

/// The text inside backticks in `text`, in order.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// The cell as plain text: backticks removed.
fn plain(cell: &str) -> String {
    cell.replace('`', "").trim().to_string()
}

/// The paragraphs starting with `Errors:`, joined into one line each.
fn errors_paragraphs(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in lines {
        match &mut current {
            Some(p) if !line.trim().is_empty() => {
                p.push(' ');
                p.push_str(line.trim());
            }
            Some(_) => out.extend(current.take()),
            None if line.starts_with("Errors:") => current = Some(line.clone()),
            None => {}
        }
    }
    out.extend(current);
    out
}

// ------------------------------------------------------------------------------------------
// The proto

/// What the descriptor set says the document must show.
struct Proto {
    /// Service full name → (method, signature, input full name, output full name).
    services: BTreeMap<String, Vec<(String, String, String, String)>>,
    /// Message full name → (package, descriptor).
    messages: BTreeMap<String, (String, DescriptorProto)>,
    /// Enum full name → (value, number).
    enums: BTreeMap<String, Vec<(String, i32)>>,
}

fn proto() -> Proto {
    let set = FileDescriptorSet::decode(kms_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut p = Proto {
        services: BTreeMap::new(),
        messages: BTreeMap::new(),
        enums: BTreeMap::new(),
    };
    for file in &set.file {
        let package = file.package().to_string();
        if !package.starts_with("kms.") {
            continue;
        }
        for service in &file.service {
            let methods = service
                .method
                .iter()
                .map(|m| {
                    let input = m.input_type().trim_start_matches('.').to_string();
                    let output = m.output_type().trim_start_matches('.').to_string();
                    let stream = |on: bool| if on { "stream " } else { "" };
                    let signature = format!(
                        "rpc {}({}{}) returns ({}{})",
                        m.name(),
                        stream(m.client_streaming()),
                        short(&package, &input),
                        stream(m.server_streaming()),
                        short(&package, &output)
                    );
                    (m.name().to_string(), signature, input, output)
                })
                .collect();
            p.services
                .insert(format!("{package}.{}", service.name()), methods);
        }
        for m in &file.message_type {
            add_message(&mut p, &package, &format!("{package}.{}", m.name()), m);
        }
        for e in &file.enum_type {
            let values = e
                .value
                .iter()
                .map(|v| (v.name().to_string(), v.number()))
                .collect();
            p.enums.insert(format!("{package}.{}", e.name()), values);
        }
    }
    p
}

fn add_message(p: &mut Proto, package: &str, name: &str, m: &DescriptorProto) {
    for nested in &m.nested_type {
        add_message(p, package, &format!("{name}.{}", nested.name()), nested);
    }
    assert!(
        m.enum_type.is_empty(),
        "{name}: nested enums are not read here"
    );
    p.messages
        .insert(name.to_string(), (package.to_string(), m.clone()));
}

/// A type name as the document writes it: short within its own package, full otherwise.
fn short(package: &str, full: &str) -> String {
    full.strip_prefix(package)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or(full)
        .to_string()
}

fn is_map_entry(m: &DescriptorProto) -> bool {
    m.options.as_ref().is_some_and(|o| o.map_entry())
}

impl Proto {
    /// A field's type as the document writes it: `string`, `repeated Tag`,
    /// `optional int32`, `map<string, string>`, `kms.v1.KeySpec`, `google.protobuf.Timestamp`.
    fn field_type(&self, package: &str, f: &prost_types::FieldDescriptorProto) -> String {
        let named = |f: &prost_types::FieldDescriptorProto| match f.r#type() {
            Type::Message | Type::Enum => short(package, f.type_name().trim_start_matches('.')),
            other => other
                .as_str_name()
                .trim_start_matches("TYPE_")
                .to_lowercase(),
        };
        if f.r#type() == Type::Message
            && let Some((_, entry)) = self.messages.get(f.type_name().trim_start_matches('.'))
            && is_map_entry(entry)
        {
            return format!(
                "map<{}, {}>",
                named(&entry.field[0]),
                named(&entry.field[1])
            );
        }
        if f.label() == Label::Repeated {
            format!("repeated {}", named(f))
        } else if f.proto3_optional() {
            format!("optional {}", named(f))
        } else {
            named(f)
        }
    }

    /// The fields of a message, name → type as written.
    fn fields(&self, full: &str) -> BTreeMap<String, String> {
        let (package, m) = &self.messages[full];
        m.field
            .iter()
            .map(|f| (f.name().to_string(), self.field_type(package, f)))
            .collect()
    }
}

/// The rows of the first table in `lines` whose header starts with `kind`, as first cell →
/// second cell, plain; `None` when there is no such table. Duplicate rows are reported.
fn table_of(
    lines: &[String],
    kind: &str,
    place: &str,
    problems: &mut Vec<String>,
) -> Option<BTreeMap<String, String>> {
    let found: Vec<Table> = tables(lines)
        .into_iter()
        .filter(|t| t.header.first().map(String::as_str) == Some(kind))
        .collect();
    if found.len() > 1 {
        problems.push(format!("{place}: more than one `{kind}` table"));
    }
    let table = found.into_iter().next()?;
    let mut out = BTreeMap::new();
    for row in &table.rows {
        let name = plain(&row[0]);
        let second = row.get(1).map(|c| plain(c)).unwrap_or_default();
        if out.insert(name.clone(), second).is_some() {
            problems.push(format!("{place}: `{name}` is in its `{kind}` table twice"));
        }
    }
    Some(out)
}

/// Compares a documented table (name → type) with what the proto has.
fn compare(
    place: &str,
    documented: Option<BTreeMap<String, String>>,
    expected: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) {
    let documented = documented.unwrap_or_default();
    for (name, ty) in expected {
        match documented.get(name) {
            None => problems.push(format!("{place}: `{name}` ({ty}) is not documented")),
            Some(doc) if doc != ty => problems.push(format!(
                "{place}: `{name}` is documented as {doc}, the proto has {ty}"
            )),
            Some(_) => {}
        }
    }
    for name in documented.keys() {
        if !expected.contains_key(name) {
            problems.push(format!(
                "{place}: `{name}` is documented but not in the proto"
            ));
        }
    }
}

#[test]
fn every_service_rpc_field_and_enum_value_is_documented_and_nothing_else() {
    let doc = api_md();
    let proto = proto();
    let sections = sections(&doc);
    let by_title: BTreeMap<&str, &Section> =
        sections.iter().map(|s| (s.title.as_str(), s)).collect();
    let mut problems = Vec::new();

    let mut io_types = BTreeSet::new();
    let mut expected_titles = BTreeSet::new();
    for (service, methods) in &proto.services {
        expected_titles.insert(service.clone());
        match by_title.get(service.as_str()) {
            Some(s) if s.level == 2 => {}
            _ => problems.push(format!("no `## {service}` section")),
        }
        for (method, signature, input, output) in methods {
            io_types.insert(input.clone());
            io_types.insert(output.clone());
            let title = format!("{service}/{method}");
            expected_titles.insert(title.clone());
            let Some(s) = by_title.get(title.as_str()).filter(|s| s.level == 3) else {
                problems.push(format!("no `### {title}` section"));
                continue;
            };
            let text = s.lines.join("\n");
            if !code_spans(&text).iter().any(|span| span == signature) {
                problems.push(format!("{title}: the signature `{signature}` is not shown"));
            }
            let request = table_of(&s.lines, "request field", &title, &mut problems);
            compare(&title, request, &proto.fields(input), &mut problems);
            let response = table_of(&s.lines, "response field", &title, &mut problems);
            compare(&title, response, &proto.fields(output), &mut problems);
            if errors_paragraphs(&s.lines).is_empty() {
                problems.push(format!("{title}: no `Errors:` paragraph"));
            }
        }
    }
    for (name, (_, m)) in &proto.messages {
        if io_types.contains(name) || is_map_entry(m) {
            continue;
        }
        expected_titles.insert(name.clone());
        let Some(s) = by_title.get(name.as_str()).filter(|s| s.level == 3) else {
            problems.push(format!("no `### {name}` section for the message"));
            continue;
        };
        let fields = table_of(&s.lines, "field", name, &mut problems);
        compare(name, fields, &proto.fields(name), &mut problems);
    }
    for (name, values) in &proto.enums {
        expected_titles.insert(name.clone());
        let Some(s) = by_title.get(name.as_str()).filter(|s| s.level == 3) else {
            problems.push(format!("no `### {name}` section for the enum"));
            continue;
        };
        let expected = values
            .iter()
            .map(|(v, n)| (v.clone(), n.to_string()))
            .collect();
        let documented = table_of(&s.lines, "value", name, &mut problems);
        compare(name, documented, &expected, &mut problems);
    }
    for s in &sections {
        if s.title.starts_with("kms.") && !expected_titles.contains(&s.title) {
            problems.push(format!(
                "`{}` has a section but is no service, RPC, message or enum of the proto",
                s.title
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for s in &sections {
        if s.title.starts_with("kms.") && !seen.insert(&s.title) {
            problems.push(format!("`{}` has two sections", s.title));
        }
    }
    assert_none(problems, "docs/API.md and the proto disagree");
}

// ------------------------------------------------------------------------------------------
// Reason codes

/// One error of every kind whose reason names no request field; `kms-types` makes sure the
/// list has every variant.
fn one_of_each() -> Vec<DomainError> {
    DomainError::examples()
}

fn code_by_name(name: &str) -> Option<Code> {
    (0..=16)
        .map(Code::from_i32)
        .find(|c| format!("{c:?}") == name || kms_runtime::audit::code_name(*c) == name)
}

/// Every reason the service answers with, and its code: domain errors through the one mapping
/// (`to_status`), `InvalidParameter.<Field>` for every listed field, and the edge's own.
fn answered() -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    let mut add = |e: DomainError| {
        let status = kms_runtime::status::to_status(e);
        let reason = kms_runtime::status::reason_of(&status).unwrap();
        out.insert(reason, kms_runtime::audit::code_name(status.code()));
    };
    for e in one_of_each() {
        add(e);
    }
    for reason in kms_types::error::REASON_CODES {
        if let Some(field) = reason.strip_prefix("InvalidParameter.") {
            add(DomainError::invalid(field, "x"));
        }
    }
    let sources = scan::serving_sources(&workspace_root());
    let (edge, _) = scan::edge_reasons(&sources);
    for (code, reason) in edge {
        let code = code_by_name(&code).unwrap_or_else(|| panic!("{code} is no gRPC code"));
        out.insert(reason, kms_runtime::audit::code_name(code));
    }
    out
}

/// The lists of reason codes hold every reason the sources make, and nothing else.
#[test]
fn the_reason_lists_hold_every_reason_the_sources_make() {
    let sources = scan::serving_sources(&workspace_root());
    let mut problems = Vec::new();

    let (fields, unresolved) = scan::invalid_parameter_fields(&sources);
    for place in unresolved {
        problems.push(format!(
            "{place}: a field this test cannot follow back to its literals; teach `scan` the \
             construct"
        ));
    }
    let made: BTreeSet<String> = one_of_each().iter().map(DomainError::reason_code).collect();
    let mut expected: BTreeMap<String, String> = made
        .iter()
        .map(|r| (r.clone(), "made by a domain error".to_string()))
        .collect();
    for (field, places) in &fields {
        let at = places.iter().next().cloned().unwrap_or_default();
        expected.insert(format!("InvalidParameter.{field}"), at);
    }
    let listed: BTreeSet<&str> = kms_types::error::REASON_CODES.iter().copied().collect();
    for (reason, at) in &expected {
        if !listed.contains(reason.as_str()) {
            problems.push(format!(
                "{reason} ({at}) is missing from kms_types::error::REASON_CODES"
            ));
        }
    }
    for reason in &listed {
        if !expected.contains_key(*reason) {
            problems.push(format!(
                "{reason} is in kms_types::error::REASON_CODES but nothing makes it"
            ));
        }
    }

    let (edge, unresolved) = scan::edge_reasons(&sources);
    for place in unresolved {
        problems.push(format!(
            "{place}: an edge_status call without a literal reason"
        ));
    }
    let edge: BTreeSet<&str> = edge.iter().map(|(_, r)| r.as_str()).collect();
    let edge_listed: BTreeSet<&str> = kms_runtime::status::EDGE_REASON_CODES
        .iter()
        .copied()
        .collect();
    if edge != edge_listed {
        problems.push(format!(
            "edge_status answers {edge:?}, kms_runtime::status::EDGE_REASON_CODES lists \
             {edge_listed:?}"
        ));
    }
    for reason in edge.intersection(&listed) {
        problems.push(format!("{reason} is both an edge and a domain reason"));
    }

    // Nothing else builds an ErrorInfo, so nothing else puts a reason on the wire.
    for s in &sources {
        if s.path.ends_with("kms-runtime/src/status.rs") {
            continue;
        }
        if scan::find(&s.code, b"with_error_info", 0).is_some() {
            problems.push(format!(
                "{} builds an ErrorInfo of its own; reasons come from status.rs only",
                s.path.display()
            ));
        }
    }
    assert_none(problems, "the reason lists and the sources disagree");
}

/// Backticked text that names a reason code: a family prefix, or one of the reasons without one.
fn reason_like(token: &str, known: &BTreeMap<String, &'static str>) -> bool {
    let families = ["Forbidden.", "Rejected.", "InvalidParameter."];
    let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric());
    families
        .iter()
        .any(|f| token.strip_prefix(f).is_some_and(word))
        || (known.contains_key(token) && !token.contains('.'))
}

#[test]
fn the_status_table_has_every_reason_under_its_code_and_no_other() {
    let doc = api_md();
    let known = answered();
    let codes: BTreeSet<&str> = (0..=16)
        .map(|i| kms_runtime::audit::code_name(Code::from_i32(i)))
        .collect();
    let mut problems = Vec::new();

    let sections = sections(&doc);
    let tables: Vec<Table> = sections
        .iter()
        .filter(|s| s.title == "Status codes and reasons")
        .flat_map(|s| tables(&s.lines))
        .filter(|t| t.header.first().map(String::as_str) == Some("code"))
        .collect();
    assert_eq!(
        tables.len(),
        1,
        "one status table under `## Status codes and reasons`"
    );
    let mut documented: BTreeMap<String, String> = BTreeMap::new();
    for row in &tables[0].rows {
        let code = plain(&row[0]);
        if !codes.contains(code.as_str()) {
            problems.push(format!("status table: {code} is no gRPC code"));
        }
        let reason = plain(row.get(1).map_or("", String::as_str));
        if reason == "—" {
            continue;
        }
        if documented.insert(reason.clone(), code).is_some() {
            problems.push(format!("status table: {reason} has two rows"));
        }
    }
    for (reason, code) in &known {
        match documented.get(reason) {
            None => problems.push(format!("status table: no row for {code} {reason}")),
            Some(doc) if doc != code => problems.push(format!(
                "status table: {reason} is documented under {doc}, it is answered with {code}"
            )),
            Some(_) => {}
        }
    }
    for reason in documented.keys() {
        if !known.contains_key(reason) {
            problems.push(format!(
                "status table: {reason} is no reason the service answers"
            ));
        }
    }

    // Every `Errors:` paragraph: each reason known and under its own code.
    for s in &sections {
        for paragraph in errors_paragraphs(&s.lines) {
            let mut code: Option<String> = None;
            for token in code_spans(&paragraph) {
                if codes.contains(token.as_str()) {
                    code = Some(token);
                } else if reason_like(&token, &known) {
                    match (known.get(&token), &code) {
                        (None, _) => problems.push(format!(
                            "{}: {token} is no reason the service answers",
                            s.title
                        )),
                        (Some(want), Some(got)) if want != got => problems.push(format!(
                            "{}: {token} is listed under {got}, it is answered with {want}",
                            s.title
                        )),
                        (Some(_), None) => problems.push(format!(
                            "{}: {token} is listed before any status code",
                            s.title
                        )),
                        _ => {}
                    }
                }
            }
        }
    }
    // And every reason named anywhere in the text is one.
    for token in code_spans(&doc) {
        if reason_like(&token, &known) && !known.contains_key(&token) {
            problems.push(format!(
                "{token} is named but is no reason the service answers"
            ));
        }
    }
    assert_none(problems, "docs/API.md and the reason codes disagree");
}

// ------------------------------------------------------------------------------------------
// The sources

/// Reading the sources that make reason codes, with no parser beyond what this needs: a
/// file's text with comments and the insides of literals blanked (`code`), so structure can be
/// searched in it, and literals read at the same offsets in the original (`text`).
mod scan {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    /// Crates whose code answers calls; the clients (`kms-cli`, `kms-bench`) make errors of
    /// their own that never reach the wire.
    const SERVING_CRATES: &[&str] = &[
        "kms-types",
        "kms-proto",
        "kms-store",
        "kms-backend",
        "kms-backend-soft",
        "kms-backend-pkcs11",
        "kms-runtime",
        "kms-control",
        "kms-data",
    ];

    #[derive(Debug)]
    pub(crate) struct Source {
        pub(crate) path: PathBuf,
        pub(crate) text: String,
        pub(crate) code: Vec<u8>,
    }

    impl Source {
        fn line(&self, at: usize) -> String {
            format!(
                "{}:{}",
                self.path.display(),
                self.text[..at].matches('\n').count() + 1
            )
        }

        fn word(&self, (a, b): (usize, usize)) -> String {
            String::from_utf8_lossy(&self.code[a..b]).to_string()
        }

        /// The string literal spanning `range`, if it is one.
        fn literal(&self, (a, b): (usize, usize)) -> Option<String> {
            (b > a + 1 && self.code[a] == b'"' && self.code[b - 1] == b'"')
                .then(|| self.text[a + 1..b - 1].to_string())
        }

        /// The string literals between `from` and `to` that look like field names, with
        /// their offsets.
        fn field_literals(&self, from: usize, to: usize) -> Vec<(usize, String)> {
            let mut out = Vec::new();
            let mut i = from;
            while i < to {
                if self.code[i] == b'"' {
                    let end = (i + 1..to).find(|&j| self.code[j] == b'"').unwrap_or(to);
                    let lit = &self.text[i + 1..end];
                    if is_field_name(lit) {
                        out.push((i, lit.to_string()));
                    }
                    i = end + 1;
                } else {
                    i += 1;
                }
            }
            out
        }
    }

    /// Every `.rs` file under `crates/<name>/src` of the serving crates, test code blanked and
    /// `#[cfg(test)] mod name;` files left out.
    pub(crate) fn serving_sources(root: &Path) -> Vec<Source> {
        let mut out = Vec::new();
        for name in SERVING_CRATES {
            let mut files = Vec::new();
            collect_rs(&root.join("crates").join(name).join("src"), &mut files);
            let mut sources: Vec<Source> = files
                .into_iter()
                .map(|path| {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let code = mask(&text);
                    Source { path, text, code }
                })
                .collect();
            let mut test_modules = BTreeSet::new();
            for s in &mut sources {
                test_modules.extend(strip_test_items(&mut s.code));
            }
            sources.retain(|s| {
                let stem = s.path.file_stem().and_then(|x| x.to_str()).unwrap_or("");
                !test_modules.contains(stem)
            });
            out.extend(sources);
        }
        assert!(
            out.len() > 50,
            "the serving crates' sources are where they were"
        );
        out
    }

    fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                collect_rs(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }

    fn is_ident(c: u8) -> bool {
        c.is_ascii_alphanumeric() || c == b'_'
    }

    fn is_field_name(s: &str) -> bool {
        s.starts_with(|c: char| c.is_ascii_uppercase())
            && s.chars().all(|c| c.is_ascii_alphanumeric())
    }

    fn blank(out: &mut [u8], from: usize, to: usize) {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    }

    /// The text with comments, and the insides of string and char literals, blanked byte
    /// for byte (newlines kept).
    pub(crate) fn mask(text: &str) -> Vec<u8> {
        let b = text.as_bytes();
        let mut out = b.to_vec();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'/' if b.get(i + 1) == Some(&b'/') => {
                    let end = b[i..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(b.len(), |p| i + p);
                    blank(&mut out, i, end);
                    i = end;
                }
                b'/' if b.get(i + 1) == Some(&b'*') => {
                    let mut depth = 0;
                    let mut j = i;
                    while j < b.len() {
                        if b[j..].starts_with(b"/*") {
                            depth += 1;
                            j += 2;
                        } else if b[j..].starts_with(b"*/") {
                            depth -= 1;
                            j += 2;
                            if depth == 0 {
                                break;
                            }
                        } else {
                            j += 1;
                        }
                    }
                    blank(&mut out, i, j);
                    i = j;
                }
                b'r' if (i == 0 || !is_ident(b[i - 1]) || b[i - 1] == b'b')
                    && matches!(b.get(i + 1), Some(b'"' | b'#')) =>
                {
                    let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                    let open = i + 1 + hashes;
                    if b.get(open) != Some(&b'"') {
                        i += 1;
                        continue;
                    }
                    let closing: Vec<u8> = std::iter::once(b'"')
                        .chain(std::iter::repeat_n(b'#', hashes))
                        .collect();
                    let end = b[open + 1..]
                        .windows(closing.len())
                        .position(|w| w == closing.as_slice())
                        .map_or(b.len(), |p| open + 1 + p);
                    blank(&mut out, open + 1, end);
                    i = end + closing.len();
                }
                b'"' => {
                    let mut j = i + 1;
                    while j < b.len() && b[j] != b'"' {
                        j += if b[j] == b'\\' { 2 } else { 1 };
                    }
                    let j = j.min(b.len());
                    blank(&mut out, i + 1, j);
                    i = j + 1;
                }
                b'\'' => {
                    // A char literal ('x', '\n', '\u{7f}', '"'), or a lifetime ('a).
                    let end = if b.get(i + 1) == Some(&b'\\') {
                        b[i + 2..]
                            .iter()
                            .position(|&c| c == b'\'')
                            .map(|p| i + 2 + p)
                    } else {
                        let len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                        (b.get(i + 1 + len) == Some(&b'\'')).then_some(i + 1 + len)
                    };
                    match end {
                        Some(end) => {
                            blank(&mut out, i + 1, end);
                            i = end + 1;
                        }
                        None => i += 1,
                    }
                }
                _ => i += 1,
            }
        }
        out
    }

    /// The index just past the bracket that closes the one at `open`.
    fn close_of(code: &[u8], open: usize) -> usize {
        let mut depth = 0i32;
        for (i, &c) in code.iter().enumerate().skip(open) {
            match c {
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
        }
        code.len()
    }

    pub(crate) fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| from + p)
    }

    /// Blanks every `#[cfg(test)]` item; returns the names of `#[cfg(test)] mod name;` files.
    fn strip_test_items(code: &mut [u8]) -> Vec<String> {
        let mut files = Vec::new();
        let marker = b"#[cfg(test)]";
        let mut from = 0;
        while let Some(p) = find(code, marker, from) {
            let mut i = p + marker.len();
            loop {
                while i < code.len() && code[i].is_ascii_whitespace() {
                    i += 1;
                }
                if code[i..].starts_with(b"#[") {
                    i = close_of(code, i + 1);
                } else {
                    break;
                }
            }
            let mut j = i;
            let end = loop {
                match code.get(j) {
                    None => break code.len(),
                    Some(b';') => {
                        let item = String::from_utf8_lossy(&code[i..j]).to_string();
                        if let Some(name) = item.trim().strip_prefix("mod ") {
                            files.push(name.trim().to_string());
                        }
                        break j + 1;
                    }
                    Some(b'{') => break close_of(code, j),
                    Some(b'(' | b'[') => j = close_of(code, j),
                    Some(_) => j += 1,
                }
            };
            blank(code, p, end);
            from = end;
        }
        files
    }

    /// The opening brackets of the calls `name(..)`, or of the invocations `name!(..)`;
    /// definitions are no calls.
    fn calls(code: &[u8], name: &str, bang: bool) -> Vec<usize> {
        let needle = if bang {
            format!("{name}!")
        } else {
            name.to_string()
        };
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(p) = find(code, needle.as_bytes(), from) {
            from = p + needle.len();
            if (p > 0 && is_ident(code[p - 1])) || (!bang && code.get(from) == Some(&b'!')) {
                continue;
            }
            let mut q = from;
            while q < code.len() && code[q].is_ascii_whitespace() {
                q += 1;
            }
            let opens = if bang { &b"([{"[..] } else { &b"("[..] };
            if !code.get(q).is_some_and(|c| opens.contains(c)) {
                continue;
            }
            let before = String::from_utf8_lossy(&code[p.saturating_sub(16)..p]).to_string();
            let before = before.trim_end();
            if before.ends_with("fn") || before.ends_with("macro_rules!") {
                continue;
            }
            out.push(q);
        }
        out
    }

    /// The top-level arguments in the brackets at `open`, as trimmed byte ranges; with
    /// `angles`, `<..>` nests too (a parameter list's types).
    fn args(code: &[u8], open: usize, angles: bool) -> Vec<(usize, usize)> {
        let close = close_of(code, open) - 1;
        let mut out = Vec::new();
        let mut start = open + 1;
        let mut angle = 0i32;
        let mut i = open + 1;
        while i < close {
            match code[i] {
                b'(' | b'[' | b'{' => i = close_of(code, i),
                b'<' if angles => {
                    angle += 1;
                    i += 1;
                }
                b'>' if angles && code[i - 1] != b'-' => {
                    angle -= 1;
                    i += 1;
                }
                b',' if angle == 0 => {
                    out.push(trim(code, start, i));
                    start = i + 1;
                    i += 1;
                }
                _ => i += 1,
            }
        }
        let last = trim(code, start, close);
        if last.0 < last.1 {
            out.push(last);
        }
        out
    }

    fn trim(code: &[u8], mut a: usize, mut b: usize) -> (usize, usize) {
        while a < b && code[a].is_ascii_whitespace() {
            a += 1;
        }
        while b > a && code[b - 1].is_ascii_whitespace() {
            b -= 1;
        }
        (a, b)
    }

    /// A function around a site: its name, parameter names and body.
    struct Function {
        name: String,
        params: Vec<String>,
        body: (usize, usize),
    }

    /// The innermost `fn` whose body holds `at`.
    fn enclosing_fn(s: &Source, at: usize) -> Option<Function> {
        let mut best: Option<Function> = None;
        let mut from = 0;
        while let Some(p) = find(&s.code, b"fn ", from) {
            from = p + 3;
            if p > 0 && is_ident(s.code[p - 1]) {
                continue;
            }
            let name_start = from;
            let mut i = from;
            while i < s.code.len() && is_ident(s.code[i]) {
                i += 1;
            }
            let name = s.word((name_start, i));
            let Some(open) = s.code[i..].iter().position(|&c| c == b'(').map(|x| i + x) else {
                continue;
            };
            let params = args(&s.code, open, true)
                .into_iter()
                .map(|r| {
                    let p = s.word(r);
                    let p = p.split(':').next().unwrap_or("").trim().to_string();
                    p.trim_start_matches("mut ").trim().to_string()
                })
                .collect();
            let after = close_of(&s.code, open);
            let Some(body_open) = s.code[after..]
                .iter()
                .position(|&c| c == b'{' || c == b';')
                .map(|x| after + x)
                .filter(|&x| s.code[x] == b'{')
            else {
                continue;
            };
            let body = (body_open, close_of(&s.code, body_open));
            if body.0 < at
                && at < body.1
                && best
                    .as_ref()
                    .is_none_or(|b| body.1 - body.0 < b.body.1 - b.body.0)
            {
                best = Some(Function { name, params, body });
            }
        }
        best
    }

    /// The name of the innermost `macro_rules!` whose body holds `at`.
    fn enclosing_macro(s: &Source, at: usize) -> Option<String> {
        let mut best: Option<(String, usize)> = None;
        let mut from = 0;
        while let Some(p) = find(&s.code, b"macro_rules!", from) {
            from = p + "macro_rules!".len();
            let mut i = from;
            while i < s.code.len() && s.code[i].is_ascii_whitespace() {
                i += 1;
            }
            let start = i;
            while i < s.code.len() && is_ident(s.code[i]) {
                i += 1;
            }
            let name = s.word((start, i));
            let Some(open) = s.code[i..].iter().position(|&c| c == b'{').map(|x| i + x) else {
                continue;
            };
            let close = close_of(&s.code, open);
            if open < at && at < close && best.as_ref().is_none_or(|b| close - open < b.1) {
                best = Some((name, close - open));
            }
        }
        best.map(|(name, _)| name)
    }

    /// Follows values passed as a field back to their literals: a literal is one; a parameter
    /// of the enclosing function is whatever every call of it passes; a macro's `$parameter`
    /// the first field-like literal of every invocation; a constant its literal; a local the
    /// field-like literals of its function. A value that cannot be followed is reported.
    struct Resolver<'a> {
        sources: &'a [Source],
        found: BTreeMap<String, BTreeSet<String>>,
        unresolved: Vec<String>,
        seen: BTreeSet<(usize, usize)>,
    }

    impl Resolver<'_> {
        fn note(&mut self, value: String, si: usize, at: usize) {
            let place = self.sources[si].line(at);
            self.found.entry(value).or_default().insert(place);
        }

        fn resolve(&mut self, si: usize, range: (usize, usize)) {
            if !self.seen.insert((si, range.0)) {
                return;
            }
            let sources = self.sources;
            let s = &sources[si];
            if let Some(lit) = s.literal(range) {
                self.note(lit, si, range.0);
                return;
            }
            let name = s.word(range);
            let place = format!("{} (`{name}`)", s.line(range.0));
            let bare = name.trim_start_matches('$');
            if bare.is_empty() || !bare.bytes().all(is_ident) {
                self.unresolved.push(place);
                return;
            }
            if name.starts_with('$') {
                let Some(m) = enclosing_macro(s, range.0) else {
                    self.unresolved.push(place);
                    return;
                };
                let mut any = false;
                for (ti, t) in sources.iter().enumerate() {
                    for open in calls(&t.code, &m, true) {
                        let close = close_of(&t.code, open);
                        if let Some((at, lit)) = t.field_literals(open, close).into_iter().next() {
                            any = true;
                            self.note(lit, ti, at);
                        }
                    }
                }
                if !any {
                    self.unresolved.push(place);
                }
                return;
            }
            let function = enclosing_fn(s, range.0);
            if let Some(f) = function.as_ref().filter(|f| f.params.contains(&name)) {
                let index = f.params.iter().position(|p| *p == name).unwrap_or(0);
                let has_self = f.params.first().is_some_and(|p| p.ends_with("self"));
                let mut sites = Vec::new();
                for (ti, t) in sources.iter().enumerate() {
                    for open in calls(&t.code, &f.name, false) {
                        // A method called as `x.name(..)` takes no `self` argument.
                        let dotted = t.code[..open - f.name.len()].ends_with(b".");
                        let i = if has_self && dotted { index - 1 } else { index };
                        if let Some(&r) = args(&t.code, open, false).get(i) {
                            sites.push((ti, r));
                        }
                    }
                }
                if sites.is_empty() {
                    self.unresolved.push(place);
                }
                for (ti, r) in sites {
                    self.resolve(ti, r);
                }
                return;
            }
            if bare.bytes().all(|c| c.is_ascii_uppercase() || c == b'_') {
                let decl = format!("const {bare}: &str =");
                let lit = find(&s.code, decl.as_bytes(), 0).and_then(|p| {
                    let start = p + decl.len();
                    let end = (start..s.code.len()).find(|&j| s.code[j] == b';')?;
                    s.literal(trim(&s.code, start, end))
                });
                match lit {
                    Some(lit) => self.note(lit, si, range.0),
                    None => self.unresolved.push(place),
                }
                return;
            }
            let literals = function
                .map(|f| s.field_literals(f.body.0, f.body.1))
                .unwrap_or_default();
            if literals.is_empty() {
                self.unresolved.push(place);
            }
            for (at, lit) in literals {
                self.note(lit, si, at);
            }
        }
    }

    /// Every field an `InvalidParameter.<Field>` reason can name, with where it comes from:
    /// the first argument of every `invalid(..)` call, and the `field` of every
    /// `::InvalidParameter { .. }` built. Second: what could not be followed.
    pub(crate) fn invalid_parameter_fields(
        sources: &[Source],
    ) -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
        let mut r = Resolver {
            sources,
            found: BTreeMap::new(),
            unresolved: Vec::new(),
            seen: BTreeSet::new(),
        };
        for (si, s) in sources.iter().enumerate() {
            for open in calls(&s.code, "invalid", false) {
                if let Some(&first) = args(&s.code, open, false).first() {
                    r.resolve(si, first);
                }
            }
            let mut from = 0;
            while let Some(p) = find(&s.code, b"::InvalidParameter {", from) {
                let open = p + "::InvalidParameter ".len();
                let close = close_of(&s.code, open);
                from = close;
                let fields = args(&s.code, open, false);
                if fields.iter().any(|&f| s.word(f) == "..") {
                    continue; // a pattern
                }
                for f in fields {
                    let text = s.word(f);
                    if text == "field" {
                        r.resolve(si, f);
                    } else if let Some(value) = text.strip_prefix("field:") {
                        let start = f.1 - value.len();
                        r.resolve(si, trim(&s.code, start, f.1));
                    }
                }
            }
        }
        (r.found, r.unresolved)
    }

    /// Every (gRPC code, reason) the edge answers with: the arguments of `edge_status(..)`.
    /// Second: the calls whose reason is no literal.
    pub(crate) fn edge_reasons(sources: &[Source]) -> (BTreeSet<(String, String)>, Vec<String>) {
        let mut found = BTreeSet::new();
        let mut unresolved = Vec::new();
        for s in sources {
            for open in calls(&s.code, "edge_status", false) {
                let a = args(&s.code, open, false);
                let code = a.first().map(|&r| s.word(r)).unwrap_or_default();
                let code = code.rsplit("::").next().unwrap_or("").to_string();
                match a.get(1).and_then(|&r| s.literal(r)) {
                    Some(reason) if !code.is_empty() => {
                        found.insert((code, reason));
                    }
                    _ => unresolved.push(s.line(open)),
                }
            }
        }
        (found, unresolved)
    }
}
