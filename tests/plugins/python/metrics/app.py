"""Test plugin (world `metrics-sink-plugin`): logs every sample it receives.

Built by plugins/build.sh into test-metrics-py.wasm. One info line per sample:
  sample sandbox=NAME cpu_us=N memory=N pids=N
Config `fail` = "true": receive returns the error "sink unavailable" (and logs nothing).
"""

from typing import List

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.metrics_sink import Sample
from wit_world.imports import host


class MetricsSink(exports.MetricsSink):
    def receive(self, samples: List[Sample]) -> None:
        if dict(host.config()).get("fail") == "true":
            raise Err("sink unavailable")
        for s in samples:
            host.log(
                host.Level.INFO,
                f"sample sandbox={s.sandbox} cpu_us={s.cpu_usage_us} memory={s.memory_bytes} pids={s.pids}",
            )
