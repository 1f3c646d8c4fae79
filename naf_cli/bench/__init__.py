"""Speed and memory of upsamplers: cases, an analytic FLOP count, isolated measurements.

``naf bench`` is a thin layer over this package; ``benchmarks/`` and ``docs/benchmarks.md``
record its results.
"""

from naf_cli.bench.cases import BenchCase, expand_cases
from naf_cli.bench.machine import machine_report
from naf_cli.bench.measure import measure, measure_isolated

__all__ = ["BenchCase", "expand_cases", "machine_report", "measure", "measure_isolated"]
