"""systemd's readiness and watchdog protocol (``sd_notify(3)``) in a few lines of the standard library, for
``Type=notify`` units (``deploy/systemd/inspection-station.service``).

systemd passes ``NOTIFY_SOCKET`` (a unix datagram socket; a leading ``@`` is the abstract namespace) and, with
``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). The station sends ``READY=1`` once the model is loaded
and warmed up and the socket listens, ``WATCHDOG=1`` every half watchdog interval from its event loop (a loop that
hangs stops the pings, and systemd restarts the service), and ``STOPPING=1`` when it shuts down. Without
``NOTIFY_SOCKET`` (not under systemd, or Windows) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Callable, Mapping


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one notification (``READY=1``, ``WATCHDOG=1``, ``STATUS=...``); False when there is no socket."""
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError:
        return False
    return True


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Half of systemd's ``WatchdogSec`` (its advice), or None when no watchdog is asked for this process."""
    env = env if env is not None else os.environ
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or not (usec.isascii() and usec.isdigit()) or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


class Notifier:
    """READY=1 at ``start``, WATCHDOG=1 from the event loop while ``healthy()``, STOPPING=1 at ``stop``."""

    def __init__(self, healthy: Callable[[], bool] = lambda: True) -> None:
        self.healthy = healthy
        self._task: asyncio.Task | None = None

    def start(self, status: str = "") -> None:
        """Call on the running event loop, once the station can answer."""
        notify("READY=1" + (f"\nSTATUS={status}" if status else ""))
        interval = watchdog_interval_s()
        if interval is not None:
            self._task = asyncio.get_running_loop().create_task(self._keep_alive(interval))

    async def _keep_alive(self, interval_s: float) -> None:
        while True:
            if self.healthy():
                notify("WATCHDOG=1")
            await asyncio.sleep(interval_s)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        notify("STOPPING=1")
