"""Test plugin (world `metrics-sink-v2-plugin`, WIT 0.1.1): logs every sample it receives.

Built by plugins/build.sh into test-metrics-v2-py.wasm. One info line per sample:
  sample-v2 sandbox=NAME isolation=KIND cpu_us=N memory=N peak=N|- pids=N net=RX_BYTES/TX_BYTES/DNS_QUERIES/NXDOMAIN|-
"""

from typing import List

from wit_world import exports
from wit_world.exports.metrics_sink_v2 import Sample
from wit_world.imports import host


class MetricsSinkV2(exports.MetricsSinkV2):
    def receive(self, samples: List[Sample]) -> None:
        for s in samples:
            peak = "-" if s.memory_peak_bytes is None else str(s.memory_peak_bytes)
            n = s.network
            net = "-" if n is None else f"{n.rx_bytes}/{n.tx_bytes}/{n.dns_queries}/{n.dns_nxdomain}"
            host.log(
                host.Level.INFO,
                f"sample-v2 sandbox={s.sandbox} isolation={s.isolation} cpu_us={s.cpu_usage_us} "
                f"memory={s.memory_bytes} peak={peak} pids={s.pids} net={net}",
            )
