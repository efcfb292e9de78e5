"""Load a model again once Triton has unloaded it: the second half of an engine restart.

The backend's stub cannot reload its own model (the unload ends the stub), so before unloading
it starts this helper, which waits for the model to leave READY in Triton's repository index,
then asks Triton to load it (explicit model control). It does not wait for the unload to finish:
Triton keeps an unloading model alive while any client's gRPC stream that used it stays open
(the soak's perf held its streams for the whole hour, and the model stayed UNLOADING until they
closed), and it loads a model that is still UNLOADING beside it, the old one finishing in the
background. The new stub decides whether a restart is still within budget; when it is not, the
load fails with the reason, and Triton's repository index shows it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

POLL_S = 0.1


def model_state(url: str, model: str) -> str | None:
    req = urllib.request.Request(f"{url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        index = json.load(resp)
    states = [entry.get("state") for entry in index if entry.get("name") == model]
    return states[0] if states else None


def wait_while(url: str, model: str, states: set[str], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if model_state(url, model) not in states:
            return True
        time.sleep(POLL_S)
    return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="Triton's HTTP endpoint, http://host:port")
    parser.add_argument("--model", required=True)
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the unload to start")
    args = parser.parse_args(argv)
    say = lambda msg: print(f"tritonkit reloader: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        deadline = time.monotonic() + args.timeout
        # READY until Triton takes the unload request (it was only just asked for).
        if not wait_while(args.url, args.model, {"READY"}, deadline):
            say(f"{args.model} was not unloaded within {args.timeout:.0f} s; not reloading it")
            return 1
        say(f"loading {args.model} again")
        req = urllib.request.Request(f"{args.url}/v2/repository/models/{args.model}/load", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=3600):  # returns once loaded (or failed)
            pass
    except urllib.error.HTTPError as err:
        say(f"Triton did not load {args.model}: {err.read().decode(errors='replace')}")
        return 1
    except (urllib.error.URLError, OSError) as err:
        say(f"the server went away ({err}); nothing to reload")
        return 1
    say(f"{args.model} is loaded again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
