"""`tritonkit serve` commands (click only; the work is in the library)."""

COMMANDS: list = []
