//! The Grafana dashboard only plots metrics a node or a gateway exports.

use pbft_host::metrics::NodeMetrics;

#[test]
fn every_metric_on_the_dashboard_is_exported() {
    let dashboard = include_str!("../grafana/pbft-dashboard.json");
    let metrics = NodeMetrics::new();
    // A family is exported once it has a member.
    metrics.reject("oversized_frame");
    let gateway = NodeMetrics::gateway();
    let mut counted = pbft_core::GatewayMetrics::default();
    counted.shed.insert("rate_limited", 1);
    gateway.update_gateway(&counted, (0, 0, 0, false));
    let exported = metrics.encode() + &gateway.encode();
    let mut checked = 0;
    for (at, _) in dashboard.match_indices("pbft_") {
        let name: String = dashboard[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .fold(name.as_str(), |name, suffix| {
                name.strip_suffix(suffix).unwrap_or(name)
            });
        if base == "pbft_validators" {
            continue; // the dashboard's own uid
        }
        assert!(
            exported.contains(&format!("# TYPE {base} ")),
            "{name} is not exported"
        );
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} metric references found");
}
