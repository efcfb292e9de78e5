"""The restart budget of a model's vLLM engine, kept across the stubs of one Triton server.

A restart under explicit model control unloads the model and loads it again, which starts a new
stub: the count of engine deaths therefore lives in a file, not in the stub. Copied beside
model.py into the server's backend folder; standard library only.
"""

import json
import os
import shutil
import tempfile
import time

MAX_RESTARTS = int(os.environ.get("TRITONKIT_ENGINE_MAX_RESTARTS", "3"))
RESTART_WINDOW_S = 600.0


class RestartLedger:
    """The engine deaths of one model in this server, in a file: a reload starts a new stub, and
    the restart budget must survive it. A load that is not a restart starts a fresh ledger."""

    PREFIX = "tritonkit-engines-"

    def __init__(self, model_name):
        self.folder = os.path.join(tempfile.gettempdir(), f"{self.PREFIX}{os.getppid()}")  # per server
        self.remove_stale()
        os.makedirs(self.folder, exist_ok=True)
        self.path = os.path.join(self.folder, f"{model_name}.json")

    @classmethod
    def remove_stale(cls):
        """The folders of servers that are gone (killed before their models were finalized)."""
        root = tempfile.gettempdir()
        for name in os.listdir(root):
            pid = name[len(cls.PREFIX):]
            if name.startswith(cls.PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    def forget(self):
        """The model is gone for good (not unloaded for a restart): its file goes, and the
        server's folder with its last file."""
        if self._read().get("restart_pending"):
            return
        for remove, path in ((os.unlink, self.path), (os.rmdir, self.folder)):
            try:
                remove(path)
            except OSError:
                pass

    def _read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _write(self, data):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)

    def record_death(self, cause):
        """Note a death; return how many happened within the window."""
        now = time.time()
        deaths = [t for t in self._read().get("deaths", []) if now - t < RESTART_WINDOW_S] + [now]
        self._write({"deaths": deaths, "last_cause": cause, "restart_pending": True})
        return len(deaths)

    def check_load(self):
        """None, or why this (re)load must not start another engine."""
        data = self._read()
        if not data.get("restart_pending"):
            self._write({"deaths": []})
            return None
        self._write({**data, "restart_pending": False})
        if len(data["deaths"]) > MAX_RESTARTS:
            return over_budget(len(data["deaths"]), data.get("last_cause", "?"))
        return None


def over_budget(deaths, cause):
    return (f"its vLLM engine died {deaths} times within {RESTART_WINDOW_S / 60:.0f} minutes, so it is not "
            f"restarted again; the last time it {cause}. Fix the cause, then load the model again "
            f"or restart the server")
