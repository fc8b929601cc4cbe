"""``deploy``: the edge command, torch-free.

``deploy predict BUNDLE IMAGE_OR_DIR...`` prints one JSON line per image; ``deploy bench`` times the
runtimes; ``deploy monitor`` checks recent images for drift against the bundle's reference profile.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional

import typer

from deploy.errors import DeployError
from deploy.preprocess import IMAGE_SUFFIXES

if TYPE_CHECKING:  # deploy.monitor pulls in scipy: only the monitor command pays for it
    from deploy.monitor import MonitorFiles

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Edge runtime of the inspection kit (no torch needed).")


@app.callback()
def _root() -> None:
    """Edge runtime of the inspection kit (no torch needed)."""


def _one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """``DeployError`` -> ``error: ...`` on stderr and exit 1: the user gets what to fix, not a
    traceback. Every command uses it, so they fail the same way; other exceptions are bugs and keep
    their traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DeployError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _expand(inputs: list[Path]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths


@app.command()
@_one_line_errors
def predict(
    bundle: Path = typer.Argument(..., help="An exported bundle folder (RUN_DIR/bundle)."),
    inputs: List[Path] = typer.Argument(..., help="Image files or folders of images."),
    runtime: str = typer.Option("auto", "--runtime", help="auto | onnx | onnx-int8 | tensorrt | tensorrt-fp16 | tensorrt-int8"),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for ONNX Runtime (0: its default)."),
    heatmaps: Optional[Path] = typer.Option(None, "--heatmaps", help="Folder for one heatmap overlay PNG per image."),
    heatmap_class: Optional[str] = typer.Option(None, "--heatmap-class", help="Map this class instead of the predicted one (with --heatmaps)."),
) -> None:
    """Classify images with a bundle; one JSON line per image. With --heatmaps, also where the
    model saw its class: an overlay PNG per image (map, peak, label, confidence) and the peak in
    the JSON line.

    Example: deploy predict runs/sample_line/RUN/bundle part_0001.png --heatmaps overlays/
    """
    from deploy.predictor import Predictor

    if heatmap_class is not None and heatmaps is None:
        raise DeployError("--heatmap-class needs --heatmaps OUT_DIR")
    predictor = Predictor.from_bundle(bundle, runtime, intra_op_threads=threads or None)
    typer.echo(f"# {predictor.describe()}", err=True)
    paths = _expand(inputs)
    if heatmaps is None:
        for decision in predictor.predict_paths(paths):
            typer.echo(_json_line(decision.to_dict()))
        return
    from deploy.heatmap import heatmap_method
    from deploy.overlay import overlay_caption, write_overlay
    from deploy.preprocess import read_image

    typer.echo(f"# heatmaps: {heatmap_method(predictor)} -> {heatmaps}", err=True)
    channels, taken = predictor.manifest.preprocess.channels, set()
    for start in range(0, len(paths), 32):  # one batch of images in memory at a time
        chunk = paths[start : start + 32]
        images = [read_image(p, channels) for p in chunk]
        for path, image, decision in zip(chunk, images, predictor.predict(images, heatmap=True, heatmap_class=heatmap_class)):
            decision.path = str(path)
            name = _overlay_name(path, taken)
            caption = overlay_caption(decision.label, decision.confidence, decision.action, decision.heatmap.label,
                                      decision.score)
            write_overlay(heatmaps / name, image, decision.heatmap, caption, channels=channels)
            row = decision.to_dict()
            row["heatmap"]["overlay"] = str(heatmaps / name)
            typer.echo(_json_line(row))


def _json_line(row: dict) -> str:
    """One JSON line of valid UTF-8: a path that is not (a file name from a non-UTF-8 share) in its readable form."""
    from deploy.filenames import readable

    def clean(value):
        if isinstance(value, str):
            return readable(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return [clean(v) for v in value] if isinstance(value, list) else value

    return json.dumps(clean(row), ensure_ascii=False)


def _overlay_name(path: Path, taken: set[str]) -> str:
    """``<stem>.png``, or ``<stem>-2.png`` ... when another input had the same stem."""
    name, k = f"{path.stem}.png", 1
    while name in taken:
        k += 1
        name = f"{path.stem}-{k}.png"
    taken.add(name)
    return name


@app.command()
@_one_line_errors
def bench(
    bundle: Path = typer.Argument(..., help="An exported bundle folder."),
    runtime: List[str] = typer.Option(["onnx", "onnx-int8"], "--runtime", help="Runtimes to time (repeat the option)."),
    batch: List[int] = typer.Option([1], "--batch", help="Batch sizes (repeat the option)."),
    images: List[Path] = typer.Option([], "--images", help="Images for the end-to-end timing (files or folders)."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for ONNX Runtime (0: its default)."),
    iters: int = typer.Option(100, "--iters", min=5),
    heatmap: bool = typer.Option(False, "--heatmap", help="Also time decisions with a heatmap (and report the added latency)."),
) -> None:
    """Latency p50/p95/p99 and throughput per runtime and batch size; JSON lines. With --heatmap,
    the same timings with the heatmap computed too, and what it adds.

    Example: deploy bench runs/sample_line/RUN/bundle --runtime onnx --runtime onnx-int8 --batch 1 --batch 32
    Example: deploy bench runs/sample_line/RUN/bundle --runtime onnx --heatmap --images sample_data/sample_line/scratch
    """
    from deploy.bench import bench_end_to_end, bench_heatmap, bench_model
    from deploy.predictor import Predictor

    paths = _expand(images)
    for name in runtime:
        predictor = Predictor.from_bundle(bundle, name, intra_op_threads=threads or None)
        for b in batch:
            row = {"runtime": name, "providers": predictor.describe(), "threads": threads or "default",
                   "model_only": bench_model(predictor, b, iters=iters)}
            if paths:
                row["end_to_end"] = bench_end_to_end(predictor, paths, b, iters=max(5, iters // 2))
            if heatmap:
                row["heatmap"] = bench_heatmap(predictor, paths, b, iters=max(5, iters // 2))
            typer.echo(json.dumps(row))


@app.command()
@_one_line_errors
def monitor(
    bundle: Path = typer.Argument(..., help="The deployed bundle folder."),
    inputs: List[Path] = typer.Argument(..., help="Recent images from the line (files or folders), or decision logs "
                                        "(decisions-*.jsonl files or their folder, from deploy serve / watch)."),
    out: Path = typer.Option(Path("monitor"), "--out", help="Folder for drift.json and drift.png."),
    runtime: str = typer.Option("auto", "--runtime", help="auto | onnx | onnx-int8 | tensorrt ..."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for ONNX Runtime (0: its default)."),
    publish: Optional[str] = typer.Option(None, "--publish", help="Also publish the verdict as a drift event to MQTT: "
                                          "mqtt://HOST:1883/TOPIC/PREFIX (the line extra; docs/line.md)."),
    publish_credentials: Optional[Path] = typer.Option(None, "--publish-credentials", help="File: MQTT user name "
                                                       "(line 1) and password (line 2)."),
    station_id: Optional[str] = typer.Option(None, "--station-id", help="This station's name in events (default: the host name)."),
) -> None:
    """Compare recent line images with the bundle's reference profile: imaging statistics
    (brightness, contrast, illumination, sharpness, noise, orientation), model confidence,
    abstain rate and class mix. Prints ok / watch / drift per check; exits 2 on drift.
    Given decision logs, confidence, abstain rate and class mix come from the log alone (the
    imaging statistics too where the logged images were kept, as deploy watch keeps them).

    Example: deploy monitor runs/sample_line/RUN/bundle /data/line7/today --out monitor/today
    Example: deploy monitor runs/sample_line/RUN/bundle decisions/ --out monitor/today
    """
    from deploy.decision_log import is_decision_log
    from deploy.monitor import monitor as run_monitor
    from deploy.monitor import monitor_log, write_monitor_report

    logs = [p for p in inputs if is_decision_log(p)]
    if logs and len(logs) != len(inputs):
        others = [str(p) for p in inputs if p not in logs]
        raise DeployError(f"monitor takes images or decision logs, not both in one call (not a log: {', '.join(others[:3])})")
    if logs:
        report = monitor_log(bundle, logs)
    else:
        report = run_monitor(bundle, _expand(inputs), runtime=runtime, intra_op_threads=threads or None)
    files = write_monitor_report(report, out)
    for line in _monitor_lines(report, files):
        typer.echo(line)
    if publish:
        _publish_drift(bundle, report, publish, publish_credentials, station_id)
    if report["status"] == "drift":
        raise typer.Exit(2)


def _publish_drift(bundle: Path, report: dict[str, Any], publish: str, credentials: Path | None,
                   station_id: str | None) -> None:
    """``deploy monitor --publish``: the verdict as one drift event; a broker that does not take it is one warning
    line (the report is written either way)."""
    from deploy.line.config import build_line_config
    from deploy.line.events import Source, drift_event
    from deploy.line.mqtt import MqttSink, publish_once
    from deploy.manifest import read_manifest

    line = build_line_config(publish, credentials, station_id=station_id)
    source = Source(line.station_id, read_manifest(bundle).extra.get("line"))
    sink = MqttSink(line.publish, client_id=f"inspection-kit-monitor-{line.station_id}"[:64], credentials=credentials)
    if publish_once(sink, drift_event(report, source)):
        typer.echo(f"# drift verdict published to {publish}/drift", err=True)
    else:
        typer.echo(f"# warning: the broker at {publish} did not acknowledge the drift verdict", err=True)


def _monitor_lines(report: dict[str, Any], files: MonitorFiles) -> list[str]:
    """The human summary of a monitor report: one line per check, then the verdict and where it went."""
    lines = []
    for r in report["checks"]:
        test = "chi2" if r["check"] == "predicted_classes" else "KS"
        p = "" if r["ks_p_value"] is None else f"  {test} p={r['ks_p_value']:.2g}"
        med = "" if r["reference_median"] is None else f"  median {r['reference_median']:.3g} -> {r['new_median']:.3g}"
        lines.append(f"{r['status']:>5}  {r['check']:<18} PSI {r['psi']:.3f}{p}{med}")
    if report["abstain"]:
        a = report["abstain"]
        bar = f"review band {a['band'][0]:g} to {a['band'][1]:g}" if "band" in a else f"threshold {a['threshold']:.3f}"
        lines.append(f"abstain rate {a['reference_rate']:.1%} -> {a['new_rate']:.1%} ({bar})")
    lines += [f"note: {note}" for note in report["notes"]]
    if files.drift_png is None:
        lines.append('note: drift.png not written: matplotlib is not installed (pip install "inspection-kit[plot]")')
    lines.append(f"{report['status'].upper()}: {report['images']} images vs {report['reference_images']} reference; "
                 f"{files.drift_json}{' and drift.png' if files.drift_png else ''}")
    return lines


@app.command()
@_one_line_errors
def serve(
    bundle: Path = typer.Argument(..., help="An exported bundle folder (RUN_DIR/bundle)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free port, printed at start)."),
    runtime: str = typer.Option("auto", "--runtime", help="auto | onnx | onnx-int8 | tensorrt | tensorrt-fp16 | tensorrt-int8"),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Most images per inference call (micro-batching)."),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0, help="Longest a request waits for company."),
    max_bytes: int = typer.Option(32 * 1024 * 1024, "--max-bytes", min=1, help="Largest request body (larger: 413)."),
    max_queue: int = typer.Option(1024, "--max-queue", min=1, help="Requests queued for inference before 503."),
    log_dir: Path = typer.Option(Path("decisions"), "--log-dir", help="Folder of the decision log (one file per UTC day)."),
    no_log: bool = typer.Option(False, "--no-log", help="Do not write the decision log (benchmarks only)."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for ONNX Runtime (0: its default)."),
    reload_root: Optional[Path] = typer.Option(None, "--reload-root", help="POST /v1/reload loads bundles inside this "
                                               "folder only (default: the folder holding BUNDLE)."),
    read_timeout: float = typer.Option(10.0, "--read-timeout-s", min=0.1, help="A request body must arrive within this (else 408)."),
    max_pixels: int = typer.Option(200_000_000, "--max-pixels", min=1, help="Largest image decoded, width x height "
                                   "(else 413); its decoded bytes at most 3 per pixel (a 16-bit RGBA image: 3/8 of it)."),
    # -- access and what integrators expect on day one (AccessConfig) --
    tokens: Optional[Path] = typer.Option(None, "--tokens", help="File of hashed API keys (deploy token add): every "
                                          "route but health, ready and openapi.json then needs 'Authorization: Bearer KEY'."),
    no_reload: bool = typer.Option(False, "--no-reload", help="POST /v1/reload answers 403 (SIGHUP still reloads)."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="PEM certificate (chain): serve HTTPS (with --tls-key)."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="The certificate's unencrypted PEM key."),
    keep_images: Optional[Path] = typer.Option(None, "--keep-images", help="Keep every decided image here by sha256 "
                                               "(for review-queue and monitor); the log names the file."),
    keep_images_max_count: int = typer.Option(100_000, "--keep-images-max-count", min=0, help="Oldest kept images go "
                                              "beyond this many (0: no limit)."),
    keep_images_max_gb: float = typer.Option(0.0, "--keep-images-max-gb", min=0, help="... or beyond this many GB (0: no limit)."),
    idempotency_ttl: float = typer.Option(86400.0, "--idempotency-ttl-s", min=1, help="How long an Idempotency-Key "
                                          "is remembered."),
    # -- the line interfaces (the line extra; docs/line.md) --
    publish: Optional[str] = typer.Option(None, "--publish", help="Publish every decision, model change and the "
                                          "station's status to MQTT: mqtt://HOST:1883/TOPIC/PREFIX (mqtts:// for TLS)."),
    publish_credentials: Optional[Path] = typer.Option(None, "--publish-credentials", help="File: MQTT user name "
                                                       "(line 1) and password (line 2)."),
    publish_ca: Optional[Path] = typer.Option(None, "--publish-ca", help="CA certificate (PEM) of an mqtts:// broker."),
    station_id: Optional[str] = typer.Option(None, "--station-id", help="This station's name in events (default: the host name)."),
    opcua: Optional[str] = typer.Option(None, "--opcua", help="Serve OPC UA (status, counters, last result, the PLC "
                                        "handshake) at opc.tcp://HOST:4840."),
    opcua_users: Optional[Path] = typer.Option(None, "--opcua-users", help="File of NAME:PASSWORD lines: OPC UA "
                                               "sessions then need one of them."),
    opcua_cert: Optional[Path] = typer.Option(None, "--opcua-cert", help="OPC UA server certificate: Basic256Sha256 "
                                              "sign & encrypt only (with --opcua-key)."),
    opcua_key: Optional[Path] = typer.Option(None, "--opcua-key", help="The OPC UA certificate's private key."),
    modbus: Optional[str] = typer.Option(None, "--modbus", help="Serve the PLC handshake on Modbus TCP at modbus://HOST:502."),
    handshake_images: Optional[Path] = typer.Option(None, "--handshake-images", help="Folder a triggered part's image "
                                                    "is dropped into as PART_ID.png (or sent over HTTP with its part_id)."),
    image_timeout: float = typer.Option(5.0, "--image-timeout-s", min=0.01, help="Handshake: a triggered part's "
                                        "image must arrive within this."),
    ack_timeout: float = typer.Option(10.0, "--ack-timeout-s", min=0.01, help="Handshake: the PLC must acknowledge "
                                      "a result within this."),
) -> None:
    """Serve a bundle over HTTP: POST /v1/inspect (image as the body or multipart), GET /v1/health,
    /v1/ready, /v1/model, /v1/decisions, /metrics, /openapi.json; POST /v1/reload (or SIGHUP) swaps in a bundle
    without downtime. Every decision goes to the decision log, every request to the access log, every model change
    to the audit record (all in --log-dir). Needs the serve extra (FastAPI, uvicorn, prometheus-client).

    Example: deploy serve runs/sample_line/RUN/bundle --port 8000 --log-dir /var/log/line7
    Example: curl --data-binary @part_0001.png -H "Content-Type: image/png" "http://127.0.0.1:8000/v1/inspect?part_id=0001"
    Example: deploy serve BUNDLE --host 0.0.0.0 --tokens /etc/line7/tokens --tls-cert cert.pem --tls-key key.pem
    Example: deploy serve BUNDLE --publish mqtt://127.0.0.1:1883/plant/line7 --opcua opc.tcp://0.0.0.0:4840
    """
    from deploy.line.config import build_line_config
    from deploy.serve import ServeConfig, build_station
    from deploy.serve.config import AccessConfig

    line = build_line_config(publish, publish_credentials, publish_ca, station_id, opcua, opcua_users, opcua_cert,
                             opcua_key, modbus, handshake_images, image_timeout, ack_timeout)

    access = AccessConfig(tokens_file=tokens, allow_reload=not no_reload, tls_cert=tls_cert, tls_key=tls_key,
                          keep_images=keep_images, keep_images_max_count=keep_images_max_count,
                          keep_images_max_bytes=int(keep_images_max_gb * 1e9), idempotency_ttl_s=idempotency_ttl)
    config = ServeConfig(bundle=bundle, runtime=runtime, max_batch=max_batch, max_wait_ms=max_wait_ms,
                         max_bytes=max_bytes, max_queue=max_queue, log_dir=None if no_log else log_dir,
                         threads=threads or None, reload_root=reload_root, read_timeout_s=read_timeout,
                         access=access, line=line)
    config.max_pixels = max_pixels
    station = build_station(config, host, port)
    summary = station.app.state.host.current.summary()
    typer.echo(f"# deploy serve: {station.url} model {summary['model_id'][:12]} ({summary['line']}, {summary['providers']}); "
               f"decision log: {log_dir if not no_log else 'off'}", err=True)
    from deploy.serve.auth import access_warnings

    for warning in access_warnings(host, access):
        typer.echo(f"# warning: {warning}", err=True)
    for what, value in (("publishing to", publish), ("OPC UA at", opcua), ("Modbus TCP at", modbus)):
        if value:
            typer.echo(f"# line: {what} {value}", err=True)
    if opcua:
        from deploy.line.opcua import opcua_warnings

        for warning in opcua_warnings(line):
            typer.echo(f"# warning: {warning}", err=True)
    station.run()


@app.command()
@_one_line_errors
def watch(
    in_dir: Path = typer.Argument(..., help="The folder the camera software drops images into."),
    bundle: Path = typer.Option(..., "--bundle", help="An exported bundle folder."),
    done: Path = typer.Option(..., "--done", help="Where decided files go: DONE/accept, DONE/reject, DONE/review, DONE/error."),
    log_dir: Optional[Path] = typer.Option(None, "--log-dir", help="Folder of the decision log (default: DONE/decisions)."),
    runtime: str = typer.Option("auto", "--runtime", help="auto | onnx | onnx-int8 | tensorrt ..."),
    settle_ms: float = typer.Option(500.0, "--settle-ms", min=0, help="A file written in place is taken once unchanged this long."),
    poll_ms: float = typer.Option(100.0, "--poll-ms", min=1, help="How often the folder is scanned."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Most files per inference call."),
    broken_after_s: float = typer.Option(10.0, "--broken-after-s", min=0, help="A file that still ends early after this long goes to DONE/error."),
    once: bool = typer.Option(False, "--once", help="Decide what is in the folder, then exit."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for ONNX Runtime (0: its default)."),
    max_pixels: int = typer.Option(200_000_000, "--max-pixels", min=1, help="Largest image decoded, width x height "
                                   "(else DONE/error); its decoded bytes at most 3 per pixel."),
    publish: Optional[str] = typer.Option(None, "--publish", help="Publish every decision and the watcher's status "
                                          "to MQTT: mqtt://HOST:1883/TOPIC/PREFIX (the line extra; docs/line.md)."),
    publish_credentials: Optional[Path] = typer.Option(None, "--publish-credentials", help="File: MQTT user name "
                                                       "(line 1) and password (line 2)."),
    publish_ca: Optional[Path] = typer.Option(None, "--publish-ca", help="CA certificate (PEM) of an mqtts:// broker."),
    station_id: Optional[str] = typer.Option(None, "--station-id", help="This station's name in events (default: the host name)."),
) -> None:
    """Watch a folder: decide every image once it is completely written (write NAME.tmp and rename,
    or write in place and let it settle), log the decision, move the file to DONE/<action>/.
    Survives SIGKILL: on restart nothing is lost and nothing is decided twice (a small journal in DONE).

    Example: deploy watch /data/line7/incoming --bundle runs/line7/RUN/bundle --done /data/line7/done
    """
    import signal
    import threading

    from deploy.watch import WatchConfig, run_watch

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    config = WatchConfig(in_dir=in_dir, bundle=bundle, done_dir=done, log_dir=log_dir, runtime=runtime,
                         threads=threads or None, settle_ms=settle_ms, poll_ms=poll_ms, max_batch=max_batch,
                         broken_after_s=broken_after_s, max_pixels=max_pixels)
    follower = _watch_publisher(config, publish, publish_credentials, publish_ca, station_id)
    try:
        watcher = run_watch(config, stop, once=once, out=lambda line: typer.echo(line))
    finally:
        if follower is not None:
            follower.drain(10.0 if once else 2.0)
            follower.stop()
    typer.echo(f"# watch stopped: {watcher.decided} decided, {watcher.errors} to {done / 'error'}", err=True)


def _watch_publisher(config: Any, publish: str | None, credentials: Path | None, ca: Path | None,
                     station_id: str | None):
    """``deploy watch --publish``: the MQTT sink following the watcher's decision log (None without --publish)."""
    if not publish:
        return None
    from deploy.decision_log import check_log_folder
    from deploy.line.config import build_line_config
    from deploy.line.events import Source
    from deploy.line.follower import StationStatus
    from deploy.line.publisher import PublisherProcess
    from deploy.manifest import model_id, read_manifest

    line = build_line_config(publish, credentials, ca, station_id)
    log_dir = check_log_folder(config.log_dir or config.done_dir / "decisions")
    identity, line_name = model_id(config.bundle), read_manifest(config.bundle).extra.get("line")
    return PublisherProcess(log_dir, line, Source(line.station_id, line_name),
                            lambda: StationStatus(True, identity)).start()


@app.command("line-test")
@_one_line_errors
def line_test(
    station: str = typer.Argument(..., help="The station's PLC interface: opc.tcp://HOST:4840 or modbus://HOST:502."),
    images: Path = typer.Option(..., "--images", help="A folder of part images, played in turn."),
    n: int = typer.Option(200, "-n", "--count", min=1, help="How many handshakes."),
    drop_into: Optional[Path] = typer.Option(None, "--drop-into", help="The station's --handshake-images folder: each "
                                             "part's image is dropped there as PART_ID.png after the trigger."),
    http: Optional[str] = typer.Option(None, "--http", help="Or send each image over HTTP: the station's URL "
                                       "(POST /v1/inspect?part_id=PART_ID after the trigger)."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Check every result against this bundle's decision "
                                          "on the same image here (a result that differs counts as mismatched)."),
    user: Optional[str] = typer.Option(None, "--user", help="OPC UA user name (with --password-file)."),
    password_file: Optional[Path] = typer.Option(None, "--password-file", help="File holding the OPC UA password."),
    opcua_security: Optional[str] = typer.Option(None, "--opcua-security", help="For a station with --opcua-cert: "
                                                 "Basic256Sha256,SignAndEncrypt,CLIENT_CERT,CLIENT_KEY."),
    first_part: int = typer.Option(1, "--first-part", min=1, help="The first part number (then +1 each)."),
    timeout: float = typer.Option(10.0, "--timeout-s", min=0.1, help="Longest wait for TriggerReady or ResultReady."),
) -> None:
    """Play a PLC against a running station on commissioning day: N handshakes (trigger, image, result,
    acknowledge), then one JSON line: handshakes, lost, mismatched, p50/p95/max handshake ms. Exit 1 when a
    result was lost or mismatched.

    Example: deploy line-test opc.tcp://127.0.0.1:4840 --images parts/ -n 200 --drop-into /data/line7/triggered
    Example: deploy line-test modbus://10.0.0.5:502 --images parts/ --http http://10.0.0.5:8000 --bundle BUNDLE
    """
    from deploy.line.line_test import bundle_expectation, connect_plc, drop_image, post_image, run_line_test

    if (drop_into is None) == (http is None):
        raise DeployError("give one of --drop-into FOLDER (the station's --handshake-images) or --http URL")
    try:
        password = password_file.read_text(encoding="utf-8").strip() if password_file else None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"--password-file {password_file}: cannot read it ({exc})") from None
    paths = _expand([images]) if images.is_dir() else []
    if not paths:
        raise DeployError(f"--images {images}: no image files there")
    deliver = (lambda src, part: drop_image(src, drop_into, part)) if drop_into else \
        (lambda src, part: post_image(http, src, part))
    expected = bundle_expectation(bundle) if bundle else None
    plc = connect_plc(station, user, password, opcua_security)
    try:
        report = run_line_test(plc, paths, n, deliver, expected, first_part, timeout)
    finally:
        plc.close()
    for cycle in report.lost + report.mismatched:
        typer.echo(f"# part {cycle.part_id} ({cycle.image}): {cycle.problem}", err=True)
    typer.echo(_json_line(report.summary()))
    if report.lost or report.mismatched:
        raise typer.Exit(1)


@app.command("review-queue")
@_one_line_errors
def review_queue(
    log: List[Path] = typer.Option(..., "--log", help="Decision log files or folders (repeat the option)."),
    images: Path = typer.Option(None, "--images", help="Where the logged images are kept (searched by name, then by sha256)."),
    out: Path = typer.Option(..., "--out", help="QUEUE_DIR: queue.csv, images/ and the state that keeps parts from being queued twice."),
    abstained: bool = typer.Option(True, "--abstained/--no-abstained", help="Queue the parts the model sent to a person."),
    lowest: int = typer.Option(0, "--lowest", min=0, help="Also queue the N least confident parts decided alone, per day."),
    audit_rate: float = typer.Option(0.01, "--audit-rate", min=0.0, max=1.0, help="Random share of the parts decided alone, per class and day."),
    max_per_day: int = typer.Option(None, "--max-per-day", min=1, help="At most N parts per day of the log (earlier runs count)."),
    classes: List[str] = typer.Option([], "--classes", help="Only parts the model labelled with these classes (repeat the option)."),
    drift_day: List[str] = typer.Option([], "--drift-day", help="A day deploy monitor flagged (YYYY-MM-DD): its parts decided alone are queued, least confident first."),
    seed: int = typer.Option(0, "--seed", help="Seed of the audit sample."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Also write a heatmap overlay beside each queued image (from this bundle)."),
) -> None:
    """Copy the images that need a person (abstained, audit sample, drift days, least confident) into
    QUEUE_DIR and add their rows to QUEUE_DIR/queue.csv, with an empty `label` column for the reviewer.
    A part is never queued twice, across runs.

    Example: deploy review-queue --log /var/log/line7 --images /data/line7/images --out review/ --lowest 20 --max-per-day 200
    """
    from deploy.review_queue import ReviewPolicy, build_review_queue

    policy = ReviewPolicy(abstained=abstained, lowest=lowest, audit_rate=audit_rate, max_per_day=max_per_day,
                          classes=tuple(classes), drift_days=tuple(drift_day), seed=seed)
    result = build_review_queue(log, images, out, policy, bundle=bundle)
    reasons = ", ".join(f"{k} {v}" for k, v in result.by_reason.items())
    typer.echo(f"queued {len(result.added)} parts ({reasons}); already queued before {result.already_queued}; "
               f"over the daily cap {result.over_cap}; image not found {len(result.missing_images)}")
    for key in result.missing_images[:20]:
        typer.echo(f"image not found: {key}", err=True)
    if result.skipped_log_lines:
        typer.echo(f"note: {result.skipped_log_lines} unreadable log line(s) skipped", err=True)
    typer.echo(str(result.queue_csv))


@app.command("review")
@_one_line_errors
def review(
    queue_dir: Path = typer.Argument(..., help="A QUEUE_DIR made by deploy review-queue (queue.csv and images/)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port (0: any free port, printed at start)."),
    classes: List[str] = typer.Option([], "--classes", help="The classes to label with, in key order 1-9 (repeat the "
                                      "option; default: the classes deploy review-queue saw in the decision log)."),
    tokens: Optional[Path] = typer.Option(None, "--tokens", help="The station's file of API keys (deploy token add): "
                                          "the page then asks for a key of scope inspect."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="PEM certificate (chain): serve HTTPS (with --tls-key)."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="The certificate's unencrypted PEM key."),
) -> None:
    """Label a review queue in the browser: each part with its image and heatmap, the model's label and
    confidence and why it was queued; keys 1-9 for classes, a to agree with the model, u to undo, s to skip.
    Labels go to QUEUE_DIR/labels.jsonl (with the inspector and the time) and QUEUE_DIR/queue.csv, what
    kit ingest reads; two inspectors can label at once.

    Example: deploy review review/ --port 8080, then open http://127.0.0.1:8080/
    Example: deploy review review/ --host 0.0.0.0 --tokens /etc/line7/tokens --tls-cert cert.pem --tls-key key.pem
    """
    from deploy.review import ReviewQueue
    from deploy.review_app import ReviewAccess, ReviewServer, create_review_app, review_warnings
    from deploy.serve.station import check_tls_files

    queue = ReviewQueue.open(queue_dir, list(classes))
    check_tls_files(tls_cert, tls_key)
    tls = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)} if tls_cert else {}
    server = ReviewServer(create_review_app(queue, ReviewAccess(tokens)), host, port, tls=tls)
    summary = queue.summary()
    typer.echo(f"# deploy review: {server.url}/ queue {queue_dir} ({summary['parts']} parts, {summary['labelled']} "
               f"labelled; classes {', '.join(queue.classes)})", err=True)
    for warning in review_warnings(host, tokens, tls_cert):
        typer.echo(f"# warning: {warning}", err=True)
    server.run()


token_app = typer.Typer(add_completion=False, no_args_is_help=True, help="API keys of deploy serve --tokens FILE.")
app.add_typer(token_app, name="token")


@token_app.callback()
def _token_root() -> None:
    """API keys of deploy serve --tokens FILE: add (prints the key once), list, revoke.

    Example: deploy token add --file /etc/line7/tokens --name cell-7 --scope inspect
    """


@token_app.command("add")
@_one_line_errors
def token_add(
    file: Path = typer.Option(..., "--file", help="The token file (created if missing; holds salted hashes only)."),
    name: str = typer.Option(..., "--name", help="Who uses the key (the access log and the audit record name it)."),
    scope: List[str] = typer.Option(..., "--scope", help="metrics | inspect | admin (admin includes inspect, "
                                    "inspect includes metrics)."),
) -> None:
    """Add an API key and print it once: it is stored nowhere, only its salted hash (scrypt). A running
    station takes it within a second.

    Example: deploy token add --file /etc/line7/tokens --name cell-7 --scope inspect
    Example: curl -H "Authorization: Bearer $KEY" --data-binary @part.png http://station:8000/v1/inspect
    """
    from deploy.serve.auth import add_token

    key = add_token(file, name, scope)
    typer.echo(key)
    typer.echo(f"# key {name!r} ({', '.join(scope)}) added to {file}; this is the only time it is shown", err=True)


@token_app.command("list")
@_one_line_errors
def token_list(file: Path = typer.Option(..., "--file", help="The token file.")) -> None:
    """The keys of a token file: name, scopes, key id, when added (never a key).

    Example: deploy token list --file /etc/line7/tokens
    """
    from deploy.serve.auth import read_token_file

    for key in read_token_file(file).values():
        typer.echo(f"{key.name}\t{','.join(key.scopes)}\t{key.key_id}\t{key.created_at}")


@token_app.command("revoke")
@_one_line_errors
def token_revoke(
    file: Path = typer.Option(..., "--file", help="The token file."),
    name: str = typer.Option(..., "--name", help="The key to remove."),
) -> None:
    """Remove a key; a running station refuses it within a second.

    Example: deploy token revoke --file /etc/line7/tokens --name cell-7
    """
    from deploy.serve.auth import revoke_token

    revoke_token(file, name)
    typer.echo(f"# key {name!r} revoked in {file}", err=True)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
