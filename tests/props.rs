//! Property tests of the pure core: for any trees, the structural diff of a tree with itself is empty, diffs are
//! empty exactly when the trees are equal, applying a diff to the expected side gives the actual side, and
//! normalizing the canonical text again gives the same tree.

use plumb::compare::{CompareOptions, compare};
use plumb::finding::Change;
use plumb::normalize::{self, Document, Format};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Scalars, arrays of scalars and nested objects with identifier keys.
fn tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1000i64..1000).prop_map(Value::from),
        "[a-z ]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z][a-z0-9_]{0,5}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Objects and scalars only: every difference is at a plain `$.a.b` path.
fn object_tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        (-1000i64..1000).prop_map(Value::from),
        "[a-z]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop::collection::btree_map("[a-z]{1,4}", inner, 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
    })
    .prop_map(|v| match v {
        Value::Object(_) => v,
        other => serde_json::json!({ "root": other }),
    })
}

fn segments(path: &str) -> Vec<String> {
    path.trim_start_matches('$')
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Apply one difference to `v` (object trees only).
fn apply(v: &mut Value, path: &str, change: Change, actual: Option<&Value>) {
    let segs = segments(path);
    let Some((last, parents)) = segs.split_last() else {
        if let Some(a) = actual {
            *v = a.clone();
        }
        return;
    };
    let mut cur = v;
    for s in parents {
        cur = cur
            .as_object_mut()
            .and_then(|o| o.get_mut(s))
            .expect("parent exists on the expected side");
    }
    let obj = cur.as_object_mut().expect("parent is an object");
    match change {
        Change::Removed => {
            obj.remove(last);
        }
        Change::Added | Change::Changed => {
            obj.insert(last.clone(), actual.cloned().unwrap_or(Value::Null));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn a_tree_never_differs_from_itself(a in tree()) {
        let c = compare(&Document::Tree(a.clone()), &Document::Tree(a), &CompareOptions::default());
        prop_assert!(c.differences.is_empty(), "{:?}", c.differences);
        prop_assert!(c.unified.is_empty());
    }

    #[test]
    fn differences_are_empty_exactly_when_trees_are_equal(a in tree(), b in tree()) {
        let c = compare(&Document::Tree(a.clone()), &Document::Tree(b.clone()), &CompareOptions::default());
        prop_assert_eq!(c.differences.is_empty(), a == b);
    }

    #[test]
    fn applying_the_diff_to_the_expected_side_gives_the_actual_side(a in object_tree(), b in object_tree()) {
        let c = compare(&Document::Tree(a.clone()), &Document::Tree(b.clone()), &CompareOptions::default());
        let mut patched = a.clone();
        for d in &c.differences {
            apply(&mut patched, &d.path, d.change, d.actual.as_ref());
        }
        prop_assert_eq!(patched, b);
    }

    #[test]
    fn normalizing_the_canonical_text_gives_the_same_tree(a in tree()) {
        let doc = Document::Tree(a);
        let again = normalize::parse(Format::Json, doc.canonical_text().as_bytes()).expect("canonical text parses");
        prop_assert_eq!(again, doc);
    }

    #[test]
    fn text_lines_round_trip(lines in prop::collection::vec("[ -~]{0,20}", 0..20)) {
        let doc = Document::Text(lines);
        let again = normalize::parse(Format::Text, doc.canonical_text().as_bytes()).expect("text parses");
        // A trailing empty line is not content: the canonical text ends every line with a newline.
        let mut want = match doc { Document::Text(l) => l, Document::Tree(_) => unreachable!() };
        while want.last().is_some_and(|l| l.is_empty()) { want.pop(); }
        let mut got = match again { Document::Text(l) => l, Document::Tree(_) => unreachable!() };
        while got.last().is_some_and(|l| l.is_empty()) { got.pop(); }
        prop_assert_eq!(got, want);
    }
}
