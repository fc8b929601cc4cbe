"""``deploy serve`` against ``deploy bench`` on the same bundle, images and machine, in one run.

1. ``deploy bench BUNDLE --runtime R --batch 1 --batch 8 --images DIR``: end-to-end figures (read,
   preprocess, infer, decide) with no server, the floor serving is measured against.
2. ``deploy serve BUNDLE --port 0`` in a subprocess (decision log on, as on a line), then 1, 4, 8 and 16
   concurrent clients (threads, one keep-alive HTTP connection each) POST the same images; latency is
   the client's round trip, p50/p95/p99, and images/s the requests answered per second of wall time.

Targets (issue 15): serving overhead at 1 client at most 1 ms p50 over ``deploy bench`` batch 1;
with 8 clients at least 70 % of ``deploy bench`` batch-8 images/s. Clients and server share the
machine's cores, so on a small box the clients' own CPU time counts against the server.

``--access plain,tokens,tls,tokens+tls`` (issue 27) starts one server per setting, the same bundle and clients:
``tokens`` with ``--tokens`` (every request carries an ``inspect`` key: one sha256 and a constant-time compare
after the first), ``tls`` with a self-signed certificate (made with the openssl binary; the clients keep their
connections, so the handshake is paid once per client), and the overhead of each against ``plain`` is stated.

    python benchmarks/serve_latency.py runs/sample_line/RUN/bundle --images sample_data/sample_line/ok
    python benchmarks/serve_latency.py BUNDLE --images DIR --access plain,tokens,tls,tokens+tls --clients 1,8 --requests 400
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import append_results, markdown_table  # noqa: E402


def deploy_bench(bundle: Path, images: Path, runtime: str, iters: int) -> dict[int, dict]:
    out = subprocess.run([sys.executable, "-m", "deploy", "bench", str(bundle), "--runtime", runtime, "--batch", "1",
                          "--batch", "8", "--images", str(images), "--iters", str(iters)],
                         capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {r["end_to_end"]["batch"]: r["end_to_end"] for r in rows}


def start_server(bundle: Path, runtime: str, log_dir: Path, max_batch: int, max_wait_ms: float,
                 extra: list[str] = ()) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "deploy", "serve", str(bundle), "--port", "0", "--runtime", runtime,
                             "--log-dir", str(log_dir), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
                             *extra], stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "://" not in line:
        proc.kill()
        raise SystemExit(f"deploy serve did not start: {line}{proc.stderr.read()}")
    return proc, int(line.split("://")[1].split()[0].rsplit(":", 1)[1])


class Access:
    """How the clients reach one server: plain HTTP or TLS, with or without an API key."""

    def __init__(self, setting: str, folder: Path) -> None:
        self.setting, self.args, self.headers, self.context = setting, [], {}, None
        if "tokens" in setting:
            from deploy.serve.auth import add_token

            key = add_token(folder / "tokens", "bench", ["admin"])
            self.args += ["--tokens", str(folder / "tokens")]
            self.headers["Authorization"] = f"Bearer {key}"
        if "tls" in setting:
            cert, key_file = folder / "cert.pem", folder / "key.pem"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key_file),
                            "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                            "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
            self.args += ["--tls-cert", str(cert), "--tls-key", str(key_file)]
            self.context = ssl.create_default_context(cafile=str(cert))

    def connect(self, port: int) -> http.client.HTTPConnection:
        if self.context is not None:
            return http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=self.context)
        return http.client.HTTPConnection("127.0.0.1", port, timeout=60)


def batch_stats(port: int, access: Access) -> tuple[float, float]:
    conn = access.connect(port)
    conn.request("GET", "/metrics", headers=access.headers)
    text = conn.getresponse().read().decode()
    conn.close()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("inspect_batch_size_sum", "inspect_batch_size_count"))}
    return values.get("inspect_batch_size_sum", 0.0), values.get("inspect_batch_size_count", 0.0)


def run_clients(port: int, bodies: list[bytes], clients: int, requests_per_client: int, warmup: int, access: Access) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        conn = access.connect(port)
        headers = {"Content-Type": "image/png", **access.headers}
        for i in range(warmup):
            conn.request("POST", "/v1/inspect", body=bodies[(k + i) % len(bodies)], headers=headers)
            conn.getresponse().read()
        barrier.wait()
        for i in range(requests_per_client):
            body = bodies[(k * 7 + i) % len(bodies)]
            start = time.perf_counter()
            conn.request("POST", "/v1/inspect", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            latencies[k].append((time.perf_counter() - start) * 1000.0)
            failures[k] += response.status != 200
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    before = batch_stats(port, access)
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    after = batch_stats(port, access)
    flat = np.array([x for per in latencies for x in per])
    p50, p95, p99 = np.percentile(flat, [50, 95, 99])
    batches = after[1] - before[1]
    return {"clients": clients, "requests": len(flat), "failed": sum(failures), "p50_ms": p50, "p95_ms": p95,
            "p99_ms": p99, "images_per_s": len(flat) / wall,
            "mean_batch": (after[0] - before[0]) / batches if batches else float("nan")}


def serve_rows(args: argparse.Namespace, bodies: list[bytes], setting: str) -> list[dict]:
    """One server with ``setting`` (plain, tokens, tls, tokens+tls), every client count against it."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        access = Access(setting, Path(folder))
        proc, port = start_server(args.bundle, args.runtime, Path(folder) / "log", args.max_batch, args.max_wait_ms,
                                  access.args)
        try:
            for clients in (int(c) for c in args.clients.split(",")):
                r = run_clients(port, bodies, clients, max(1, args.requests // clients), warmup=20, access=access)
                rows.append({"setup": "deploy serve" + ("" if setting == "plain" else f", {setting}"), **r})
                print(f"{setting:>10} {clients:>3} clients: p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms, "
                      f"{r['images_per_s']:.0f} images/s, mean batch {r['mean_batch']:.2f}, failed {r['failed']}", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    return rows


def access_verdicts(rows: list[dict]) -> list[str]:
    """Each access setting against plain serving at the same client count (the median of the plain runs)."""
    plain: dict[int, list[dict]] = {}
    for r in rows:
        if r["setup"] == "deploy serve":
            plain.setdefault(r["clients"], []).append(r)
    verdicts = []
    for r in rows:
        if not r["setup"].startswith("deploy serve, ") or r["clients"] not in plain:
            continue
        base_p50 = float(np.median([b["p50_ms"] for b in plain[r["clients"]]]))
        base_rate = float(np.median([b["images_per_s"] for b in plain[r["clients"]]]))
        verdicts.append(f"{r['setup'].removeprefix('deploy serve, ')} at {r['clients']} client(s): "
                        f"{r['p50_ms'] - base_p50:+.2f} ms p50 ({r['p50_ms'] / base_p50 - 1:+.0%}), "
                        f"{r['images_per_s'] / base_rate - 1:+.0%} images/s against plain serving")
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--images", type=Path, required=True, help="A folder of PNG images of the line.")
    parser.add_argument("--runtime", default="onnx")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--requests", type=int, default=1600, help="Requests per concurrency level (all clients).")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--iters", type=int, default=400, help="deploy bench --iters")
    parser.add_argument("--access", default="plain", help="Servers to run, in order: plain, tokens, tls, tokens+tls "
                        "(a setting may repeat: plain twice shows the run-to-run noise).")
    parser.add_argument("--note", default="", help="Added to the RESULTS.md notes (e.g. what else ran on the machine).")
    parser.add_argument("--no-append", action="store_true", help="Print the table only.")
    args = parser.parse_args()

    bodies = [p.read_bytes() for p in sorted(args.images.glob("*.png"))[:64]]
    bench = deploy_bench(args.bundle, args.images, args.runtime, args.iters)
    rows = [{"setup": f"deploy bench, batch {b}", "clients": "-", "requests": bench[b]["iters"] * b,
             "p50_ms": bench[b]["p50_ms"], "p95_ms": bench[b]["p95_ms"], "p99_ms": bench[b]["p99_ms"],
             "images_per_s": bench[b]["images_per_s"], "mean_batch": b} for b in (1, 8)]
    for setting in args.access.split(","):
        rows += serve_rows(args, bodies, setting.strip())
    serve = {r["clients"]: r for r in rows if r["setup"] == "deploy serve"}
    verdicts = []
    if 1 in serve:
        overhead = serve[1]["p50_ms"] - bench[1]["p50_ms"]
        verdicts.append(f"overhead at 1 client: {overhead:+.2f} ms p50 over deploy bench batch 1 "
                        f"(target <= 1 ms: {'met' if overhead <= 1.0 else 'MISSED'})")
    if 8 in serve:
        share = serve[8]["images_per_s"] / bench[8]["images_per_s"]
        verdicts.append(f"8 clients: {share:.0%} of deploy bench batch-8 images/s (target >= 70 %: "
                        f"{'met' if share >= 0.7 else 'MISSED'})")
    verdicts += access_verdicts(rows)
    columns = ["setup", "clients", "requests", "p50_ms", "p95_ms", "p99_ms", "images_per_s", "mean_batch"]
    table = markdown_table(rows, columns) + "\n\n" + "\n".join(f"- {v}" for v in verdicts)
    print(table)
    if not args.no_append:
        notes = (f"runtime {args.runtime}, --max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms}, decision log on; "
                 "clients are threads of the benchmark process on the same machine (one keep-alive connection each), "
                 "latency is their round trip; mean_batch = images per inference call from /metrics"
                 + (f"; access settings {args.access}" if args.access != "plain" else "")
                 + (f"; {args.note}" if args.note else ""))
        append_results(f"Serving: deploy serve vs deploy bench ({args.bundle})", table, notes)


if __name__ == "__main__":
    main()
