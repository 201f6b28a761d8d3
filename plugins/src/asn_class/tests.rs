//! `asn_class` over the MaxMind ASN test database, behind an `asn` stage
//! whose output is renamed: the class is found through the AS number fact.

use std::path::Path;

use enrichd_engine::{Chain, Config, Registry};
use serde_json::{json, Value};

use crate::test_support::{data, event, run};

fn chain(toml: &str) -> Chain {
    let config = Config::parse(toml, Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../enrichd.toml"))).unwrap();
    let mut registry = Registry::new();
    registry.register(Box::new(crate::asn::AsnFactory));
    registry.register(Box::new(super::AsnClassFactory));
    Chain::build(&config.chain, &registry, &config.base_dir).unwrap()
}

fn asn_entry(targets: &str) -> String {
    format!("[[chain]]\nplugin = \"asn\"\ndatabase = \"{}\"\ntargets = {targets}\n", data("GeoLite2-ASN-Test.mmdb"))
}

#[test]
fn classifies_by_the_as_fact_whatever_its_output_is_called() {
    let toml = format!(
        "{}\n[[chain]]\nplugin = \"asn_class\"\n",
        asn_entry("[{ address = \"source\", output = \"a\" }, { address = \"destination\", output = \"b\" }]")
    );
    let chain = chain(&toml);
    let recs: Vec<Value> = run(
        &chain,
        vec![
            event(Some("10.0.0.1"), Some("1.128.0.1")), // Telstra: isp
            event(Some("1.128.0.1"), None),             // source only
            event(Some("10.0.0.1"), Some("10.0.0.2")),  // unknown
        ],
    )
    .into_iter()
    .map(|(v, _)| v)
    .collect();
    assert_eq!(recs[0]["b"]["org"], "Telstra Pty Ltd");
    assert_eq!(recs[0]["asn_class"], "isp");
    assert_eq!(recs[1]["asn_class"], "isp", "no destination: the source's AS");
    assert_eq!(recs[2]["asn_class"], Value::Null);
    let fact = chain.fact_named("asn_class").unwrap();
    assert_eq!(fact.decl.kind, enrichd_engine::FactKind::Label);
    assert!(fact.decl.top_values);
    assert_eq!(fact.render_key(1), "isp");
}

#[test]
fn keywords_are_options_and_order_matters() {
    let toml = format!(
        "{}\n[[chain]]\nplugin = \"asn_class\"\noutput = \"net\"\naddress = \"destination\"\nhosting = [\"TELSTRA\"]\n",
        asn_entry("[{ address = \"destination\", output = \"asn\" }]")
    );
    let chain = chain(&toml);
    let recs = run(&chain, vec![event(None, Some("1.128.0.1")), event(Some("1.128.0.1"), None)]);
    assert_eq!(recs[0].0["net"], json!("hosting"), "hosting keywords are checked first, case-insensitively");
    assert_eq!(recs[1].0["net"], Value::Null, "only the destination is classified");
}

#[test]
fn without_an_as_number_stage_it_says_so() {
    let chain = chain("[[chain]]\nplugin = \"asn_class\"\n");
    let report = &chain.reports()[0];
    assert_eq!(report.status.state, enrichd_engine::PluginState::Error);
    assert!(report.status.error.as_deref().unwrap().contains("AS number"), "{:?}", report.status.error);
    let recs = run(&chain, vec![event(None, Some("1.128.0.1"))]);
    assert_eq!(recs[0].0["asn_class"], Value::Null);
}
