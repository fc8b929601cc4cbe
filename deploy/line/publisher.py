"""The MQTT sink in a process of its own, so publishing never competes with an inspection for the interpreter.

Measured (benchmarks/line_publish.py): a follower thread inside the station raised the lone client's inspect
p95 from 1.6 to 4.8 ms on 2 cores, because Python hands the interpreter lock to a busy thread only every 5 ms; the
operating system preempts a separate, niced process at once. So ``deploy serve --publish`` and ``deploy watch
--publish`` start ``python -m deploy.line.publisher`` (``PublisherProcess``):

* it follows the decision log through its durable cursor and publishes (``deploy.line.follower``,
  ``deploy.line.mqtt``), niced, holding the cursor's lock (one publisher per cursor, even across a restart);
* the station writes its status (ready, model id) to the child's stdin as one JSON line when it changes; the end
  of stdin (the station stopped, or was killed with -9) makes the child say offline and leave, so a publisher
  never outlives its station;
* a child that dies is started again with back-off: a sink's trouble never stops the line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from deploy.line.config import LineConfig
from deploy.line.events import Source
from deploy.line.follower import StationStatus

STATUS_EVERY_S = 0.5
RESTART_S = (1.0, 30.0)
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def endpoint_url(config: LineConfig) -> str:
    e = config.publish
    host = f"[{e.host}]" if ":" in e.host else e.host
    return f"{e.scheme}://{host}:{e.port}/{e.path}"


class PublisherProcess:
    """The child publisher of one station (``start``, ``stop``); ``status()`` is read every ``STATUS_EVERY_S``."""

    def __init__(self, log_dir: Path, config: LineConfig, source: Source, status: Callable[[], StationStatus],
                 err: Callable[[str], None] | None = None) -> None:
        self.log_dir, self.config, self.source, self.status = Path(log_dir), config, source, status
        self.err = err or (lambda line: print(line, file=sys.stderr, flush=True))
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", "deploy.line.publisher", "--log-dir", str(self.log_dir), "--publish",
               endpoint_url(self.config), "--station-id", self.source.station, "--line", self.source.line or ""]
        if self.config.publish_credentials:
            cmd += ["--publish-credentials", str(self.config.publish_credentials)]
        if self.config.publish_ca:
            cmd += ["--publish-ca", str(self.config.publish_ca)]
        return cmd

    def _spawn(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                          os.environ.get("PYTHONPATH")]))}
        return subprocess.Popen(self._command(), stdin=subprocess.PIPE, env=env, text=True)

    def start(self) -> "PublisherProcess":
        """Before the first part: a new cursor is made here, at the log's end now, so nothing the station answers
        while the child starts is skipped."""
        from deploy.errors import DeployError
        from deploy.line.cursor import LogCursor

        try:
            LogCursor(self.log_dir, "mqtt").close()
        except DeployError as exc:  # a cursor spoilt by hand: publishing waits for it, the station does not
            self.err(f"# line mqtt: {exc} (the station decides and logs as always; publishing waits for the cursor)")
        self.proc = self._spawn()
        self._thread = threading.Thread(target=self._run, name="line-publisher", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        last: StationStatus | None = None
        backoff = RESTART_S[0]
        while not self._stop.is_set():
            if self.proc.poll() is not None:  # the child died: start it again, later each time
                self.err(f"# line mqtt: the publisher exited ({self.proc.returncode}); starting it again in "
                         f"{backoff:g} s (the station keeps deciding; nothing is lost)")
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, RESTART_S[1])
                self.proc, last = self._spawn(), None
                self.restarts += 1
            status = _safe(self.status)
            if status != last:
                try:
                    self.proc.stdin.write(json.dumps({"ready": status.ready, "model_id": status.model_id}) + "\n")
                    self.proc.stdin.flush()
                    last = status
                except (BrokenPipeError, OSError, ValueError):
                    pass  # it died; the next round starts it again
            self._stop.wait(STATUS_EVERY_S)

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until the child has delivered everything in the log (a command that exits: ``deploy watch --once``)."""
        from deploy.line.cursor import LogCursor

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            cursor = LogCursor.existing(self.log_dir, "mqtt")
            if cursor is not None and not cursor.read(1).records:
                return True
            time.sleep(0.1)
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close its stdin: it publishes the offline status and leaves (killed after ``timeout_s``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _safe(status: Callable[[], StationStatus]) -> StationStatus:
    try:
        return status()
    except Exception:
        return StationStatus(False, None)


def _read_status(holder: list, first: threading.Event, ended: threading.Event) -> None:
    """The station's status lines from stdin; the end of stdin is the station's end."""
    for line in sys.stdin:
        try:
            d = json.loads(line)
            holder[0] = StationStatus(bool(d.get("ready")), d.get("model_id"))
        except (ValueError, AttributeError):
            continue
        first.set()
    first.set()
    ended.set()


def main(argv: list[str] | None = None) -> int:
    from deploy.errors import DeployError
    from deploy.line.config import build_line_config
    from deploy.line.follower import lower_priority
    from deploy.line.mqtt import start_mqtt_follower

    parser = argparse.ArgumentParser(prog="python -m deploy.line.publisher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--publish", required=True)
    parser.add_argument("--station-id", required=True)
    parser.add_argument("--line", default="")
    parser.add_argument("--publish-credentials", type=Path)
    parser.add_argument("--publish-ca", type=Path)
    args = parser.parse_args(argv)
    lower_priority()
    # Ctrl-C reaches the whole process group: the station stops, and the end of stdin stops this process in
    # order; SIGTERM (systemd stops the whole unit) says offline and leaves the same way
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    holder: list[Any] = [StationStatus(False, None)]
    first, ended = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: ended.set())
    threading.Thread(target=_read_status, args=(holder, first, ended), daemon=True).start()
    first.wait(10)
    try:
        config = build_line_config(args.publish, args.publish_credentials, args.publish_ca, args.station_id)
        follower = start_mqtt_follower(args.log_dir, config, Source(args.station_id, args.line or None),
                                       lambda: holder[0], exclusive=True)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    while not ended.wait(1.0):  # a timed wait, so SIGTERM's handler runs promptly
        pass
    follower.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
