"""tritonkit perf: streaming load generation, metrics, cost and reports.

Pure modules (no I/O): schedules (when to send), records (raw timestamps -> per-request metrics),
stats (percentiles), aggregate (a step's numbers), slo, cost. The rest does I/O: workload (prompts),
server_metrics (Prometheus scrape), runner (asyncio), live (progress), report (files).
"""
