"""End-to-end RPC benchmark harness (issue 3): systems side by side, C physical limit first.

Layout: ``workloads`` (what is measured), ``systems/`` (one adapter per RPC system, servers
run in pinned child processes via ``serve``), ``timing`` and ``stats`` (bounded timed loops,
nearest-rank percentiles), ``affinity`` and ``proc`` (CPU placement, child processes),
``cbuild`` (compiles benchmarks/c/), ``runner`` (one matrix run), ``report`` (markdown).
Used by ``benchmarks/bench_rpc.py`` and ``python benchmarks/rpc/report.py``; see
docs/benchmarks-method.md.
"""
