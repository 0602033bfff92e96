"""Benchmark harness for issue 6: the engine side by side with raw runtimes, podman and docker.

Entry point: ``scripts/bench.sh`` (installs what it needs, then ``python -m bench.run``).
Not part of the engine package and not run by CI, except its ``--quick`` smoke mode.
"""
