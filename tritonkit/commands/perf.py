"""`tritonkit perf` commands (click only; the work is in the library)."""

COMMANDS: list = []
