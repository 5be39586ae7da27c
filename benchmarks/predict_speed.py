"""Prediction speed on this machine: ``harness predict``'s per-image work and the API's latency.

    python benchmarks/predict_speed.py [--backbone resnet18] [--size 224] [--images 20]
                                       [--requests 32] [--out FILE]

A bundle of ``--backbone`` (random weights: speed does not depend on them) decoding at 256 px
and predicting at ``--size``, on the pydicom-data chest radiograph (1841 x 1955, 15-bit):

- predict: ``read_image`` (decoding included) + ``Bundle.predict`` per image, once from the
  DICOM and once from a 16-bit PNG of its pixels; images/s over ``--images`` images, after
  one warm-up image;
- Grad-CAM: ``Bundle.saliency`` (every finding in one batched backward) per image, as a
  ratio to the prediction alone;
- API: ``harness serve``'s app under uvicorn on localhost, ``POST /api/predict`` of the PNG
  with 1 client and with 8 concurrent clients (``--requests`` each); the mean latency at 8
  over the mean at 1 (the app runs one model call at a time, so up to ~8x is queueing).

Absolute times depend on the machine and its load; the ratios are of one run.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from deepchest import inference as inf
from deepchest.findings import FINDINGS
from deepchest.models import MultiTaskNet


def make_bundle(folder: Path, backbone: str, size: int) -> Path:
    torch.manual_seed(0)
    net = MultiTaskNet(backbone, len(FINDINGS)).eval()
    features = np.random.default_rng(0).normal(size=(64, net.representation_dim))
    card = {
        "backbone": backbone,
        "in_channels": 1,
        "findings": list(FINDINGS),
        "preprocessing": {"decode_size": 256, "input_size": size},
        "training": {"dataset": "synthetic"},
        "metrics": {},
        "thresholds": {"rule": "youden_j", "values": dict.fromkeys(FINDINGS, 0.5)},
        "ood": {"threshold": 1.0e12},
        "harness": {},
    }
    return inf.write_bundle(folder, net, card, *inf.fit_ood(features))


def images_per_second(bundle: inf.Bundle, data: bytes, n: int) -> float:
    bundle.predict(inf.read_image(data, bundle.decode_size)[None])  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        bundle.predict(inf.read_image(data, bundle.decode_size)[None])
    return n / (time.perf_counter() - start)


def saliency_ratio(bundle: inf.Bundle, data: bytes, n: int) -> float:
    image = inf.read_image(data, bundle.decode_size)
    bundle.saliency(image)  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        bundle.predict(image[None])
    predict = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n):
        bundle.saliency(image)
    return (time.perf_counter() - start) / predict


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latencies(url: str, data: bytes, clients: int, requests: int) -> tuple[list[float], float]:
    """Each request's latency (s) and the wall time (s) of them all."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def one(_: int) -> float:
        request = urllib.request.Request(url, data=body, headers=headers)
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=300) as response:
            assert response.status == 200
            response.read()
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        times = list(pool.map(one, range(clients * requests)))
    return times, time.perf_counter() - start


def main() -> None:
    import uvicorn

    from harness.serve.app import create_app

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--requests", type=int, default=8, help="per client")
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args()

    dicom = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()
    buffer = io.BytesIO()
    Image.fromarray(inf.dicom_pixels(dicom)).save(buffer, format="PNG")
    png = buffer.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = inf.load_bundle(make_bundle(Path(tmp) / "model", args.backbone, args.size))
    result = {
        "machine": platform.node(),
        "threads": torch.get_num_threads(),
        "backbone": args.backbone,
        "input_size": args.size,
        "predict_images_per_second_dicom": images_per_second(bundle, dicom, args.images),
        "predict_images_per_second_png16": images_per_second(bundle, png, args.images),
        "saliency_over_predict": saliency_ratio(bundle, png, max(2, args.images // 4)),
    }
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(bundle), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port}/api/predict"
    latencies(url, png, 1, 2)  # warm-up
    one, wall_one = latencies(url, png, 1, args.requests)
    eight, wall_eight = latencies(url, png, 8, args.requests)
    server.should_exit = True
    thread.join()
    result |= {
        "api_mean_latency_1_client_s": statistics.mean(one),
        "api_mean_latency_8_clients_s": statistics.mean(eight),
        "api_latency_8_over_1": statistics.mean(eight) / statistics.mean(one),
        "api_throughput_8_over_1": (len(eight) / wall_eight) / (len(one) / wall_one),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
