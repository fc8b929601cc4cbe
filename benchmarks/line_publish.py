"""The line interfaces' targets (issue 29), measured on one machine in one run:

1. inspect latency without a line interface, with ``--publish`` and with the OPC UA and Modbus servers
   (``deploy serve`` in a subprocess, one client, sequential requests, two alternating rounds each so a drift of
   the machine's load hits all);
2. the broker stopped for ``--outage-s`` in the middle of ``--requests`` decisions, then restarted: how many
   arrive (after de-duplication by ``event_id``: exactly as many as answered?), the inspect p95 before and during
   the outage, how long the backlog takes after the restart;
3. the station killed with -9 while publishing, restarted: is any answered decision missing from the broker?
4. ``--handshakes`` OPC UA and Modbus handshakes over loopback (``deploy.line.line_test``, each result checked
   against the bundle's own decision on that image): lost, mismatched, p50/p95/max handshake time.

A real mosquitto on 127.0.0.1 (``tests/line_servers.py``); the subscriber has a persistent session, as a plant's
historian would.

    python benchmarks/line_publish.py runs/sample_line/RUN/bundle --images sample_data/sample_line/ok
"""

from __future__ import annotations

import argparse
import http.client
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import append_results, markdown_table  # noqa: E402
from tests.line_servers import Mosquitto, Subscriber, free_port, wait_until  # noqa: E402


def start_station(bundle: Path, log_dir: Path, extra: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "deploy", "serve", str(bundle), "--port", "0", "--runtime", "onnx",
                             "--log-dir", str(log_dir), *extra], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("# deploy serve: http://"):
            return proc, int(line.split("://")[1].split()[0].rsplit(":", 1)[1])
    raise SystemExit(f"deploy serve did not start: {proc.stderr.read()}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def inspect(self, data: bytes, part_id: str) -> tuple[str, float]:
        """(decision id, round trip ms)."""
        import json

        started = time.perf_counter()
        self.conn.request("POST", f"/v1/inspect?part_id={part_id}", body=data, headers={"Content-Type": "image/png"})
        response = self.conn.getresponse()
        body = json.loads(response.read())
        if response.status != 200:
            raise SystemExit(f"inspect answered {response.status}: {body}")
        return body["decision_id"], (time.perf_counter() - started) * 1000.0


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def latency_rounds(bundle: Path, images: list[bytes], broker: Mosquitto, n: int, work: Path) -> list[dict]:
    times: dict[str, list[float]] = {"off": [], "on": [], "plc": []}
    for round_ in range(2):
        for mode in times:
            extra = {"off": [], "on": ["--publish", f"mqtt://127.0.0.1:{broker.port}/bench/latency"],
                     "plc": ["--opcua", f"opc.tcp://127.0.0.1:{free_port()}", "--modbus",
                             f"modbus://127.0.0.1:{free_port()}"]}[mode]
            proc, port = start_station(bundle, work / f"lat-{mode}-{round_}", extra)
            try:
                client = Client(port)
                for i in range(50):  # warm-up
                    client.inspect(images[i % len(images)], f"w{i}")
                times[mode] += [client.inspect(images[i % len(images)], f"{mode}{round_}-{i}")[1] for i in range(n)]
            finally:
                stop(proc)
    names = {"off": "inspect, no line interface", "on": "inspect, --publish (MQTT)",
             "plc": "inspect, --opcua and --modbus servers (no PLC connected)"}
    return [{"run": names[mode], "count": len(t), "p50_ms": p(t, 50), "p95_ms": p(t, 95),
             "p99_ms": p(t, 99)} for mode, t in times.items()]


def outage(bundle: Path, images: list[bytes], broker: Mosquitto, n: int, outage_s: float, work: Path) -> list[dict]:
    sub = Subscriber(broker.port, "bench/outage", client_id="bench-outage")
    proc, port = start_station(bundle, work / "outage", ["--publish", f"mqtt://127.0.0.1:{broker.port}/bench/outage"])
    answered, before, during = [], [], []
    try:
        client = Client(port)
        for i in range(50):  # warm-up
            client.inspect(images[i % len(images)], f"w{i}")
        wait_until(lambda: len(sub.decision_ids()) >= 50, "the warm-up decisions", 60)
        first, down = int(n * 0.3), int(n * 0.4)
        for i in range(first):
            ident, ms = client.inspect(images[i % len(images)], f"o{i}")
            answered.append(ident)
            before.append(ms)
        broker.stop()
        stopped = time.monotonic()
        for i in range(first, first + down):
            ident, ms = client.inspect(images[i % len(images)], f"o{i}")
            answered.append(ident)
            during.append(ms)
            time.sleep(max(0.0, (stopped + outage_s * (i - first + 1) / down) - time.monotonic()))
        broker.start()
        restarted = time.monotonic()
        for i in range(first + down, n):
            answered.append(client.inspect(images[i % len(images)], f"o{i}")[0])
        wait_until(lambda: set(answered) <= set(sub.decision_ids()), "every decision on the broker", 300, 0.05)
        caught_up_s = time.monotonic() - restarted
        ids = [i for i in sub.decision_ids() if i in set(answered)]  # not the warm-up's
    finally:
        stop(proc)
        sub.close()
    return [{"run": f"broker stopped {outage_s:g} s mid-{n}", "count": n, "p50_ms": p(before, 50),
             "p95_ms": p(before, 95), "p99_ms": p(before, 99), "note": "inspect before the outage"},
            {"run": "", "count": len(during), "p50_ms": p(during, 50), "p95_ms": p(during, 95), "p99_ms": p(during, 99),
             "note": "inspect while the broker is down"},
            {"run": "", "count": len(ids), "note": f"received: {len(set(ids))} distinct of {n} answered, "
             f"{len(set(answered) - set(ids))} missing, {len(ids) - len(set(ids))} repeats; all in "
             f"{caught_up_s:.1f} s after the restart"}]


def kill9(bundle: Path, images: list[bytes], broker: Mosquitto, n: int, work: Path) -> list[dict]:
    sub = Subscriber(broker.port, "bench/kill", client_id="bench-kill")
    url = f"mqtt://127.0.0.1:{broker.port}/bench/kill"
    answered = []
    proc, port = start_station(bundle, work / "kill", ["--publish", url])
    client = Client(port)
    for i in range(n):
        answered.append(client.inspect(images[i % len(images)], f"k{i}")[0])
    stop(proc, signal.SIGKILL)
    at_kill = len(set(sub.decision_ids()) & set(answered))
    proc, port = start_station(bundle, work / "kill", ["--publish", url])
    try:
        client = Client(port)
        for i in range(n // 5):
            answered.append(client.inspect(images[i % len(images)], f"r{i}")[0])
        wait_until(lambda: set(answered) <= set(sub.decision_ids()), "every decision after the restart", 120, 0.05)
        ids = sub.decision_ids()
    finally:
        stop(proc)
        sub.close()
    return [{"run": "station killed -9 mid-stream", "count": len(answered),
             "note": f"{at_kill} of {n} on the broker at the kill; after the restart {len(set(ids) & set(answered))} "
             f"of {len(answered)} answered, {len(set(answered) - set(ids))} missing, {len(ids) - len(set(ids))} repeats"}]


def handshakes(bundle: Path, image_dir: Path, n: int, work: Path) -> list[dict]:
    from deploy.line.line_test import ModbusPlc, OpcUaPlc, bundle_expectation, drop_image, run_line_test
    from deploy.preprocess import IMAGE_SUFFIXES

    folder = work / "triggered"
    folder.mkdir()
    opcua, modbus = f"opc.tcp://127.0.0.1:{free_port()}", free_port()
    proc, _ = start_station(bundle, work / "plc", ["--opcua", opcua, "--modbus", f"modbus://127.0.0.1:{modbus}",
                                                   "--handshake-images", str(folder)])
    images = sorted(q for q in image_dir.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
    expect = bundle_expectation(bundle)
    rows = []
    try:
        for name, plc in (("OPC UA", OpcUaPlc(opcua)), ("Modbus TCP", ModbusPlc("127.0.0.1", modbus))):
            try:
                report = run_line_test(plc, images, n, lambda src, part: drop_image(src, folder, part), expect,
                                       first_part=1 if name == "OPC UA" else 100_001)
            finally:
                plc.close()
            s = report.summary()
            rows.append({"run": f"{name} handshakes (image dropped as a file)", "count": s["handshakes"],
                         "p50_ms": s["p50_ms"], "p95_ms": s["p95_ms"], "p99_ms": report.percentile_ms(99),
                         "note": f"lost {s['lost']}, mismatched {s['mismatched']}, max {s['max_ms']} ms"})
    finally:
        stop(proc)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--handshakes", type=int, default=200)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    images = [q.read_bytes() for q in sorted(args.images.glob("*.png"))[:20]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Mosquitto(work / "broker").start()
        try:
            rows = latency_rounds(args.bundle, images, broker, args.requests, work)
            print(markdown_table(rows, ["run", "count", "p50_ms", "p95_ms", "p99_ms"]), flush=True)
            rows += outage(args.bundle, images, broker, args.requests, args.outage_s, work)
            rows += kill9(args.bundle, images, broker, 300, work)
        finally:
            broker.stop()
        rows += handshakes(args.bundle, args.images, args.handshakes, work)
    table = markdown_table(rows, ["run", "count", "p50_ms", "p95_ms", "p99_ms", "note"])
    print(table)
    append_results(f"Line interfaces: publishing, broker outage, kill -9, PLC handshakes ({args.bundle})", table,
                   "runtime onnx, one client (sequential requests, one keep-alive connection), latency is its round "
                   "trip; mosquitto, the station, the subscriber and the PLC client share the machine"
                   + (f"; {args.note}" if args.note else ""))


if __name__ == "__main__":
    main()
