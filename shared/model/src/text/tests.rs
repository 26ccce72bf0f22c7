use serde_json::json;

use super::*;

fn yaml(text: &str) -> Value {
    let mut docs = yaml_values(text).expect("valid");
    assert_eq!(docs.len(), 1, "{docs:?}");
    docs.remove(0)
}

#[test]
fn yaml_scalars_resolve_as_yaml_1_2_core() {
    let v = yaml(
        "a: 1\nb: -2\nc: 1.5\nd: true\ne: ~\nf: '1'\ng: \"true\"\nh: 10s\ni: 0x1f\nj: 1e3\nk: .5\nl: yes\nm: !!str 5\nn: |\n  line\no: 18446744073709551615\np: 1.2.3\nq: 127.0.0.1:80\nr: null\ns:\n",
    );
    assert_eq!(
        v,
        json!({"a": 1, "b": -2, "c": 1.5, "d": true, "e": null, "f": "1", "g": "true", "h": "10s",
               "i": 31, "j": 1000.0, "k": 0.5, "l": "yes", "m": "5", "n": "line\n",
               "o": 18446744073709551615u64, "p": "1.2.3", "q": "127.0.0.1:80", "r": null, "s": null})
    );
}

#[test]
fn yaml_documents_anchors_and_keys() {
    let docs = yaml_values("---\na: &x [1, 2]\nb: *x\n---\n---\n- {k: v}\n").expect("valid");
    assert_eq!(docs, vec![json!({"a": [1, 2], "b": [1, 2]}), json!([{"k": "v"}])]);
    assert_eq!(yaml("1: one\ntrue: yes\n"), json!({"1": "one", "true": "yes"}));
    assert!(yaml_values("").expect("empty").is_empty());
}

#[test]
fn duplicate_keys_are_refused_with_the_key_and_where() {
    let e = yaml_values("a: 1\nb:\n  c: 1\n  c: 2\n").expect_err("duplicate");
    assert!(e.message.contains("duplicate key \"c\""), "{e:?}");
    assert_eq!(e.line, 4);
    let e = json_values(r#"{"a": 1, "a": 2}"#).expect_err("duplicate");
    assert!(e.message.contains("duplicate key \"a\""), "{e:?}");
}

#[test]
fn tags_other_than_yamls_own_are_refused() {
    assert!(yaml_values("a: !Ref x\n").is_err());
    assert!(yaml_values("a: !!binary aGk=\n").is_err());
    assert_eq!(yaml("a: !!map {b: 1}\n"), json!({"a": {"b": 1}}));
}

#[test]
fn hostile_nesting_is_refused_at_once() {
    for n in [MAX_DEPTH + 1, 60_000] {
        let flow = format!("a: {}{}", "[".repeat(n), "]".repeat(n));
        let json = format!("{}{}", "[".repeat(n), "]".repeat(n));
        let e = yaml_values(&flow).expect_err("too deep");
        assert!(e.message.contains("nested more than"), "{e:?}");
        let e = json_values(&json).expect_err("too deep");
        assert!(e.message.contains("nested more than"), "{e:?}");
    }
    let ok = format!("{}1{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
    assert!(json_values(&ok).is_ok());
    assert!(yaml_values(&format!("a: {ok}")).is_ok());
    // Strings hold brackets that do not nest.
    assert!(json_values(&format!("[\"{}\"]", "[".repeat(1000))).is_ok());
    assert!(yaml_values(&format!("a: '{}'\n", "[".repeat(1000))).is_ok());
    let block = (0..MAX_DEPTH + 2)
        .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
        .collect::<String>();
    assert!(yaml_values(&block).is_err(), "block nesting counts too");
}

#[test]
fn a_yaml_bomb_is_refused_not_built() {
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let e = yaml_values(&bomb).expect_err("bomb");
    assert!(e.message.contains("aliases expand"), "{e:?}");
}

#[test]
fn aliases_are_charged_by_size_and_nest_no_deeper_than_the_limit() {
    // Found in review: one big string named many times is charged by its bytes, not as a node.
    let big = "x".repeat(100_000);
    let refs = vec!["*s"; 200].join(", ");
    let e = yaml_values(&format!("a: &s \"{big}\"\nb: [{refs}]\n")).expect_err("a string bomb");
    assert!(e.message.contains("aliases expand"), "{e:?}");
    // A deep value named deep down would nest past the limit.
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let e = yaml_values(&format!(
        "a: &d {deep}\nb: {}*d{}\n",
        "[".repeat(40),
        "]".repeat(40)
    ))
    .expect_err("too deep");
    assert!(e.message.contains("nested more than"), "{e:?}");
    assert_eq!(
        yaml("a: &x {k: [1]}\nb: *x\n"),
        json!({"a": {"k": [1]}, "b": {"k": [1]}})
    );
}

#[test]
fn integers_take_one_sign() {
    assert_eq!(
        yaml("a: -0x-8000000000000000\nb: 0x-5\nc: -0x10\n"),
        json!({"a": "-0x-8000000000000000", "b": "0x-5", "c": -16})
    );
}

#[test]
fn yaml_written_reads_back_the_same() {
    let v = json!({
        "type": "MeshTrace", "name": "t", "labels": {"kuma.io/zone": "zone-1"},
        "spec": {"tricky": ["true", "1", "", " x", "a: b", "#c", "- d", "null", "~", "ok value", "x #y", "é", "\"q\"", "multi\nline", 1, 2.5, false, null, [], {}],
                 "empty": {}, "nested": [[1, [2]], {"k": [{"a": 1}]}]}
    });
    let text = to_yaml(&v);
    assert_eq!(yaml(&text), v, "{text}");
    assert!(
        text.contains("type: MeshTrace"),
        "plain where unambiguous: {text}"
    );
}
