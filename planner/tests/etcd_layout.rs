//! Every layer of the demo config written as an etcd value and read back compiles to the same
//! routes and the same effective values.
#![allow(clippy::expect_used)]

use microstax_config::{parse_sources, read_sources, Config, LayerKind};
use microstax_planner::etcd::layout::{decode, encode, Layout};

fn without_files(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("file");
            m.remove("line");
            // prose that names file:line
            m.remove("text");
            m.remove("reason");
            for (_, x) in m.iter_mut() {
                without_files(x);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(without_files),
        _ => {}
    }
}

#[test]
fn the_demo_config_reads_back_from_its_etcd_values_unchanged() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo");
    let docs = parse_sources(&read_sources(&dir).expect("read")).expect("parse");
    let layout = Layout::new("/p");
    let back: Vec<_> = docs
        .iter()
        .map(|d| {
            let name = if d.kind() == LayerKind::Org {
                ""
            } else {
                d.name()
            };
            let key = layout.layer_key(d.kind(), name);
            decode(&key, d.kind(), name, &encode(d)).expect("reads back")
        })
        .collect();
    let a = Config::build(docs).expect("valid");
    let b = Config::build(back).expect("valid after the round trip");
    let mut ta = microstax_planner::admin::json::table_json(&microstax_planner::compile(&a, 1));
    let mut tb = microstax_planner::admin::json::table_json(&microstax_planner::compile(&b, 1));
    without_files(&mut ta);
    without_files(&mut tb);
    assert_eq!(ta, tb);
    for l in a.layers() {
        for s in a.services().iter().map(|s| s.name.as_str()) {
            let mut ea = microstax_planner::explain(&a, &l.name, s)
                .expect("explain")
                .to_json();
            let mut eb = microstax_planner::explain(&b, &l.name, s)
                .expect("explain")
                .to_json();
            without_files(&mut ea);
            without_files(&mut eb);
            assert_eq!(ea, eb, "{} {s}", l.name);
        }
    }
}
