"""A guarded prediction server: a model behind a calibrated ``Guard`` over HTTP (FastAPI).

``create_app(model, guard)`` returns a FastAPI app with

* ``GET /healthz`` -> model, input shape, guard, calibrated threshold and FPR;
* ``POST /predict`` -> body is a PNG (``Content-Type: image/png``) or JSON
  ``{"inputs": [...]}`` holding one image (C, H, W) or a batch (N, C, H, W) with values in [0, 1].
  The answer has one entry per input: ``{"class": k, "withheld": false, "score": s,
  "probabilities": [...]}``, or ``{"class": null, "withheld": true, ...}`` when the guard flags it.

Malformed input (not an image, wrong size, NaN, values outside [0, 1], too large a body or batch)
gets a 4xx with a message saying what is wrong and how to fix it; the server never answers 500 to
bad input.  FastAPI and uvicorn are the optional extra ``serve``.
"""

import json
import math
from typing import Any

import torch

from ._torch import predict_logits
from .defenses.filter.guard import Guard
from .io import decode_png

MAX_BODY_BYTES = 1 << 20
MAX_BATCH = 64


class BadInput(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _parse_json(body: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(400, f"body is not valid JSON ({getattr(e, 'msg', e)}); send {{\"inputs\": [...]}} or a PNG.") from None
    except (RecursionError, MemoryError):
        raise BadInput(400, "JSON body is nested too deeply; send {\"inputs\": [...]} of shape (N, C, H, W).") from None
    data = obj.get("inputs") if isinstance(obj, dict) else obj
    if data is None:
        raise BadInput(422, "JSON body must hold an 'inputs' array of shape (C, H, W) or (N, C, H, W).")
    try:
        x = torch.tensor(data, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise BadInput(422, "inputs must be a rectangular array of numbers.") from None
    if x.dim() == len(shape):
        x = x.unsqueeze(0)
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise BadInput(422, f"inputs must have shape {list(shape)} or [N, {', '.join(map(str, shape))}]; "
                            f"got {list(x.shape)}.")
    return x


def _parse_png(body: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    try:
        img = decode_png(body, max_pixels=4 * shape[1] * shape[2])  # refuse big images before decoding
    except ValueError as e:
        raise BadInput(415, f"body is not a usable PNG: {e}") from None
    if img.shape[0] in (2, 4):
        img = img[:-1]  # drop alpha
    C = shape[0]
    if img.shape[0] != C:
        img = img.mean(0, keepdim=True) if C == 1 else img.expand(C, *img.shape[1:])
    if tuple(img.shape) != shape:
        raise BadInput(422, f"image must be {shape[2]}x{shape[1]} pixels; got {img.shape[2]}x{img.shape[1]}.")
    return img.unsqueeze(0)


def parse_inputs(body: bytes, content_type: str, shape: tuple[int, ...], max_batch: int = MAX_BATCH) -> torch.Tensor:
    """Turn a request body into a checked (N, C, H, W) batch, or raise ``BadInput`` with a 4xx."""
    if not body:
        raise BadInput(400, "empty body; send a PNG or {\"inputs\": [...]}.")
    is_png = content_type.startswith("image/png") or body[:8] == b"\x89PNG\r\n\x1a\n"
    x = _parse_png(body, shape) if is_png else _parse_json(body, shape)
    if len(x) == 0 or len(x) > max_batch:
        raise BadInput(413 if len(x) else 422, f"batch must hold 1 to {max_batch} images; got {len(x)}.")
    if torch.isnan(x).any() or torch.isinf(x).any():
        raise BadInput(422, "inputs must not contain NaN or infinite values.")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise BadInput(422, f"inputs must lie in [0, 1]; got min={lo:.4g}, max={hi:.4g}. "
                            "Send pixel values scaled to [0, 1]; the model normalizes itself.")
    return x


def answer(model: torch.nn.Module, guard: Guard, x: torch.Tensor) -> dict[str, Any]:
    screened = guard(x)
    probs = predict_logits(model, x).softmax(1)
    out = []
    for i in range(len(x)):
        withheld = bool(screened.flagged[i])
        score = float(screened.scores[i])
        out.append({"class": None if withheld else int(screened.predictions[i]), "withheld": withheld,
                    "score": score if math.isfinite(score) else None,
                    "probabilities": [round(float(p), 6) for p in probs[i]]})
    return {"predictions": out, "threshold": guard.threshold}


def create_app(model: torch.nn.Module, guard: Guard, *, name: str = "model",
               max_body_bytes: int = MAX_BODY_BYTES, max_batch: int = MAX_BATCH):
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
    except ImportError as e:  # pragma: no cover
        raise ImportError("backdoorlab serve needs the 'serve' extra: pip install 'backdoorlab[serve]'") from e

    shape = tuple(int(s) for s in model.input_shape)
    app = FastAPI(title="backdoorlab guarded prediction server")
    filt = type(guard.filter).__name__

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": name, "input_shape": list(shape), "guard": filt,
                "fpr": guard.fpr, "threshold": guard.threshold}

    @app.post("/predict")
    async def predict(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return JSONResponse({"error": f"body of {declared} bytes exceeds the limit of {max_body_bytes}."},
                                status_code=413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return JSONResponse({"error": f"body exceeds the limit of {max_body_bytes} bytes."}, status_code=413)
        from starlette.concurrency import run_in_threadpool

        try:  # parsing and inference run in a worker thread: one slow request never blocks the loop
            x = await run_in_threadpool(parse_inputs, body, request.headers.get("content-type", ""), shape, max_batch)
        except BadInput as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        return await run_in_threadpool(answer, model, guard, x)

    return app
