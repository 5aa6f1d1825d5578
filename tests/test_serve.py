"""Guarded prediction server: bad input -> 4xx (never 500), flagged inputs withheld, loopback load."""
import json
import socket
import threading
import time

import pytest
import torch

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from backdoorlab.defenses.filter import FILTERS, Guard  # noqa: E402
from backdoorlab.io import png_bytes  # noqa: E402
from backdoorlab.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def served(handwired, digits):
    bd, _, trig, target = handwired
    train, test = digits
    guard = Guard.calibrate(FILTERS["strip"](n_overlays=20), bd, train.x[:400], fpr=0.05)
    return create_app(bd, guard), bd, trig, test


def test_healthz(served):
    app, *_ = served
    r = TestClient(app).get("/healthz")
    assert r.status_code == 200 and r.json()["input_shape"] == [1, 8, 8] and r.json()["fpr"] == 0.05


def test_clean_json_and_png_predictions(served):
    app, bd, trig, test = served
    client = TestClient(app)
    x = test.x[:20]
    r = client.post("/predict", json={"inputs": x.tolist()})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    served_classes = [p["class"] for p in preds if not p["withheld"]]
    expected = bd(x).argmax(1)[[not p["withheld"] for p in preds]].tolist()
    assert served_classes == expected and len(served_classes) >= 15
    r = client.post("/predict", content=png_bytes(x[0]), headers={"content-type": "image/png"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def test_stamped_inputs_are_withheld(served):
    app, bd, trig, test = served
    x = trig.apply(test.x[:30])
    preds = TestClient(app).post("/predict", json={"inputs": x.tolist()}).json()["predictions"]
    withheld = sum(p["withheld"] for p in preds)
    assert withheld >= 27  # STRIP: the hand-wired trigger dominates every blend -> low entropy
    assert all(p["class"] is None for p in preds if p["withheld"])


@pytest.mark.parametrize("body, ctype, status, words", [
    (b"", "application/json", 400, "empty body"),
    (b"{not json", "application/json", 400, "not valid JSON"),
    (json.dumps({"x": 1}).encode(), "application/json", 422, "'inputs' array"),
    (json.dumps({"inputs": [[1, 2], [3]]}).encode(), "application/json", 422, "rectangular"),
    (json.dumps({"inputs": torch.zeros(1, 9, 9).tolist()}).encode(), "application/json", 422, "must have shape"),
    (json.dumps({"inputs": torch.full((1, 8, 8), 2.0).tolist()}).encode(), "application/json", 422, "[0, 1]"),
    (b'{"inputs": [[[NaN, 0, 0, 0, 0, 0, 0, 0]]]}', "application/json", 422, "must have shape"),
    (b"\x89PNG\r\n\x1a\ngarbage", "image/png", 415, "not a usable PNG"),
    (json.dumps({"inputs": torch.zeros(65, 1, 8, 8).tolist()}).encode(), "application/json", 413, "1 to 64"),
])
def test_bad_input_is_4xx_with_message(served, body, ctype, status, words):
    app, *_ = served
    r = TestClient(app, raise_server_exceptions=False).post("/predict", content=body,
                                                              headers={"content-type": ctype})
    assert r.status_code == status and words in r.json()["error"]


def test_nan_values_rejected(served):
    app, *_ = served
    x = torch.zeros(1, 1, 8, 8)
    body = json.dumps({"inputs": x.tolist()}).replace("0.0", "NaN", 1).encode()
    r = TestClient(app).post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "NaN" in r.json()["error"]


def test_wrong_png_size_and_oversized_body(served):
    app, *_ = served
    client = TestClient(app)
    r = client.post("/predict", content=png_bytes(torch.zeros(1, 16, 16)), headers={"content-type": "image/png"})
    assert r.status_code == 422 and "8x8 pixels" in r.json()["error"]
    r = client.post("/predict", content=b"0" * (2 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_loopback_load_no_server_errors(served):
    """A bounded load test on 127.0.0.1: 120 requests from 4 threads; no 5xx."""
    uvicorn = pytest.importorskip("uvicorn")
    import httpx

    app, _, _, test = served
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    bodies = [json.dumps({"inputs": test.x[i % 100].tolist()}).encode() for i in range(120)]
    statuses, lat = [], []

    def worker(chunk):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as cl:
            for b in chunk:
                t = time.perf_counter()
                statuses.append(cl.post("/predict", content=b, headers={"content-type": "application/json"}).status_code)
                lat.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(bodies[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    server.should_exit = True
    th.join(timeout=10)
    assert len(statuses) == 120 and all(s == 200 for s in statuses)


def test_deeply_nested_json_and_huge_png_are_4xx(served):
    app, *_ = served
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/predict", content=b"[" * 200_000, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    big = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4096, 4096, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x04" + b"\x00" * 4096)) + chunk(b"IEND", b""))
    r = client.post("/predict", content=big, headers={"content-type": "image/png"})
    assert r.status_code == 415 and "exceeds the limit" in r.json()["error"]
