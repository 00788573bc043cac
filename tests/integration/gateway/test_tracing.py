"""The tracing the gateway configures at start (protocol/tracing.py's `configure`), in a process
of its own: OpenTelemetry takes one tracer provider per process, and the unit tests' is
installed already (tests/unit/app/observability/test_tracing.py)."""

import subprocess
import sys

from harness.servers import ROOT


def test_configure_samples_the_given_share_of_traces() -> None:
    script = (
        "from opentelemetry import trace; from protocol import tracing; "
        "tracing.configure('switchyard-gateway', 'http://127.0.0.1:9', 0.25); "
        "print(tracing.enabled(), trace.get_tracer_provider().sampler.get_description(), "
        "sum(tracing.root_sampled() for _ in range(20000)))"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    enabled, sampler, kept = run.stdout.split()
    assert enabled == "True"
    # The gateway decides a root's sampling before its span is begun; the provider follows
    # callers' flags and records the roots it is asked for.
    assert sampler.startswith("ParentBased{root:AlwaysOnSampler,remoteParentSampled:AlwaysOnSampler,")
    assert 4_500 < int(kept) < 5_500  # a quarter of 20,000
