//! log-sink: a metrics-sink plugin (the 0.1.1 interface, `metrics-sink-v2`) that writes one log
//! line per sample, with the sandbox's network traffic when it has a network, and warns when a
//! sandbox uses more than `warn-percent` (default 90) of its memory limit.

use orchestrator_plugin_sdk::metrics_sink_v2::{self as metrics_sink, Sample};
use orchestrator_plugin_sdk::{log, Level};

pub fn line(sample: &Sample, warn_percent: u64) -> (Level, String) {
    let mut level = Level::Info;
    let mut text = format!("{} cpu={}us memory={}B pids={}", sample.sandbox, sample.cpu_usage_us, sample.memory_bytes, sample.pids);
    if let Some(limit) = sample.memory_limit_bytes.filter(|l| *l > 0) {
        let percent = sample.memory_bytes.saturating_mul(100) / limit;
        text.push_str(&format!(" ({percent}% of the limit)"));
        if percent >= warn_percent {
            level = Level::Warn;
        }
    }
    if let Some(n) = &sample.network {
        text.push_str(&format!(" rx={}B tx={}B flows={} denied={}", n.rx_bytes, n.tx_bytes, n.open_flows, n.flows_denied));
    }
    (level, text)
}

struct LogSink;

impl metrics_sink::Guest for LogSink {
    fn receive(samples: Vec<Sample>) -> Result<(), String> {
        let warn_percent = orchestrator_plugin_sdk::config().get("warn-percent").and_then(|v| v.parse().ok()).unwrap_or(90);
        for s in &samples {
            let (level, text) = line(s, warn_percent);
            log(level, &text);
        }
        Ok(())
    }
}

orchestrator_plugin_sdk::export_metrics_sink_v2!(LogSink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_the_limit_warns() {
        let s = Sample {
            sandbox: "a".into(),
            labels: vec![],
            isolation: "namespace".into(),
            timestamp_ms: 1,
            cpu_usage_us: 5,
            memory_bytes: 95,
            memory_limit_bytes: Some(100),
            memory_peak_bytes: None,
            pids: 3,
            disk: None,
            network: None,
        };
        let (level, text) = line(&s, 90);
        assert_eq!(level, Level::Warn);
        assert_eq!(text, "a cpu=5us memory=95B pids=3 (95% of the limit)");
        assert_eq!(line(&Sample { memory_limit_bytes: None, ..s.clone() }, 90).0, Level::Info);
    }

    #[test]
    fn network_traffic_is_shown_when_the_sandbox_has_a_network() {
        let network = metrics_sink::NetworkCounters { rx_bytes: 10, rx_packets: 1, tx_bytes: 20, tx_packets: 2, open_flows: 3, flows_allowed: 4, flows_denied: 5, dns_queries: 6, dns_nxdomain: 1 };
        let s = Sample {
            sandbox: "a".into(),
            labels: vec![],
            isolation: "microvm".into(),
            timestamp_ms: 1,
            cpu_usage_us: 5,
            memory_bytes: 50,
            memory_limit_bytes: None,
            memory_peak_bytes: Some(60),
            pids: 3,
            disk: None,
            network: Some(network),
        };
        assert_eq!(line(&s, 90).1, "a cpu=5us memory=50B pids=3 rx=10B tx=20B flows=3 denied=5");
    }
}
