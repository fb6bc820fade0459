//! log-sink: a metrics-sink plugin that writes one log line per sample and warns when a
//! sandbox uses more than `warn-percent` (default 90) of its memory limit.

use orchestrator_plugin_sdk::metrics_sink::{self, Sample};
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

orchestrator_plugin_sdk::export_metrics_sink!(LogSink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_the_limit_warns() {
        let s = Sample { sandbox: "a".into(), labels: vec![], timestamp_ms: 1, cpu_usage_us: 5, memory_bytes: 95, memory_limit_bytes: Some(100), pids: 3 };
        let (level, text) = line(&s, 90);
        assert_eq!(level, Level::Warn);
        assert_eq!(text, "a cpu=5us memory=95B pids=3 (95% of the limit)");
        assert_eq!(line(&Sample { memory_limit_bytes: None, ..s }, 90).0, Level::Info);
    }
}
