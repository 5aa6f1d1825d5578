"""All file reading and writing (DESIGN section 2): safe model files, ground truth, PNG, JSON.

* A model is ``NAME.safetensors`` (weights) + ``NAME.json`` (architecture and kwargs, dataset,
  classes, input shape, normalization, training config).  Nothing here ever unpickles:
  ``.pt``/``.pth`` state dicts go through ``torch.load(weights_only=True)`` only, which refuses
  pickles that would construct arbitrary objects.
* Attack ground truth (goal, trigger, poison indices) is a separate ``NAME.truth.safetensors``,
  because an auditor's model does not come with it.
* Every write is atomic: a temp file in the same folder, then ``os.replace`` — a crash never
  leaves a half-written file or destroys the previous one.  A model is two files, so the weights
  file also carries a copy of the sidecar in its safetensors metadata and is written first: a crash
  between the two writes leaves new weights that still describe themselves, and ``load_model``
  trusts that copy (with a warning when the sidecar disagrees).
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .models import build
from .triggers import Trigger, trigger_from_tensors
from .types import Goal, InstanceGoal, TriggerGoal

FORMAT = "backdoorlab-model"
TRUTH_FORMAT = "backdoorlab-ground-truth"


class ModelFileError(ValueError):
    """A model, ground-truth or result file is missing, corrupt, pickled or mismatched."""


# ---- atomic writes ------------------------------------------------------------------------------
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def load_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: file not found.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path}: not valid JSON ({e}); the file is corrupt or truncated.") from None


# ---- model files --------------------------------------------------------------------------------
def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def truth_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.stem + ".truth.safetensors")


def save_model(path: str | Path, model: torch.nn.Module, *, dataset: dict | None = None,
               training: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``model`` as ``path`` (.safetensors) plus its JSON sidecar; return ``path``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"model path must end in .safetensors; got {str(path)!r}.")
    if not getattr(model, "arch", ""):
        raise TypeError("save_model needs a backdoorlab model (from backdoorlab.models.build).")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "version": 1, "arch": model.arch, "arch_kwargs": model.arch_kwargs,
            "dataset": dataset or {}, "training": training or {}, "extra": extra or {}}
    embedded = json.dumps(meta, default=_json_default, sort_keys=True)
    atomic_write_bytes(path, st_save(state, metadata={"format": FORMAT, "meta": embedded}))
    save_json(sidecar_path(path), meta)
    return path


def _safetensors_metadata(raw: bytes) -> dict:
    """The ``__metadata__`` map of a safetensors file already validated by ``st_load``."""
    (n,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8:8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a .pt/.pth state dict via weights_only loading."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: file not found.")
    if path.suffix in (".pt", ".pth", ".bin"):
        import pickle

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ModelFileError(
                f"{path}: refused — the pickle would construct objects other than tensors "
                f"({str(e).splitlines()[0][:200]}). backdoorlab never unpickles code; ask for a "
                "safetensors file or a plain state dict.") from None
        except Exception as e:
            raise ModelFileError(f"{path}: not a readable PyTorch state dict ({e}).") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ModelFileError(f"{path}: expected a dict of tensors (a state dict).")
        return obj
    return _read_safetensors(path)[0]


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    raw = path.read_bytes()
    try:
        return st_load(raw), _safetensors_metadata(raw)
    except (SafetensorError, Exception) as e:
        raise ModelFileError(f"{path}: corrupt or truncated safetensors file ({e}). "
                             "Re-export the model; nothing was loaded.") from None


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model saved at ``path`` from its sidecar and weights; return (model, metadata)."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: model file not found.")
    if path.suffix in (".pt", ".pth", ".bin"):
        state, embedded = read_state_dict(path), None
    else:
        state, file_meta = _read_safetensors(path)
        embedded = _embedded_meta(path, file_meta)
    meta = load_json(side) if side.exists() else None
    if meta is None and embedded is None:
        raise ModelFileError(f"{path}: its sidecar {side.name} (architecture, dataset, normalization) is "
                             "missing; a backdoorlab model file is NAME.safetensors + NAME.json.")
    if embedded is not None:
        if meta is not None and meta != embedded:
            warnings.warn(f"{side} disagrees with the copy of it stored in {path.name} (an interrupted save, "
                          "or an edited sidecar); using the weights file's copy.", stacklevel=2)
        meta = embedded
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "arch" not in meta:
        raise ModelFileError(f"{side}: not a backdoorlab model sidecar (format {FORMAT!r} with 'arch').")
    try:  # on the meta device nothing is allocated: a hostile sidecar (hidden=[10**9]) costs nothing
        with torch.device("meta"):
            skeleton = build(meta["arch"], **meta.get("arch_kwargs", {}))
    except (TypeError, ValueError, RuntimeError, MemoryError) as e:
        raise ModelFileError(f"{side}: cannot build architecture {meta.get('arch')!r} ({e}).") from None
    expected = skeleton.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise ModelFileError(f"{path}: weights do not match architecture {meta['arch']!r} "
                             f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}).")
    for k in sorted(state):
        v = state[k]
        if v.shape != expected[k].shape:
            raise ModelFileError(f"{path}: tensor {k} has shape {tuple(v.shape)}, architecture expects "
                                 f"{tuple(expected[k].shape)} — wrong number of classes or input size?")
        if torch.is_floating_point(v) and not torch.isfinite(v).all():
            raise ModelFileError(f"{path}: tensor {k} contains NaN or infinite values.")
    model = build(meta["arch"], **meta.get("arch_kwargs", {}))  # shapes now match the file's tensors
    model.load_state_dict(state)
    model.eval()
    return model.to(device), meta


def _embedded_meta(path: Path, file_meta: dict) -> dict | None:
    """The sidecar copy saved inside the weights file (files written before it existed: None)."""
    text = file_meta.get("meta")
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        raise ModelFileError(f"{path}: its embedded model description is not valid JSON; the file is corrupt.") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: its embedded model description is not a JSON object; the file is corrupt.")
    return meta


# ---- ground truth -------------------------------------------------------------------------------
def _goal_to_tensors(goal: Goal) -> tuple[dict[str, torch.Tensor], dict]:
    if isinstance(goal, TriggerGoal):
        tensors = {f"trigger.{k}": v for k, v in goal.trigger.tensors().items()}
        meta = {"goal": "trigger", "trigger_kind": goal.trigger.kind, "trigger_params": goal.trigger.params(),
                "target": goal.target, "mapping": list(goal.mapping) if goal.mapping else None}
        return tensors, meta
    if isinstance(goal, InstanceGoal):
        return {"instance.x": goal.x}, {"goal": "instance", "target": goal.target}
    raise TypeError(f"unknown goal type {type(goal).__name__}")


def save_ground_truth(path: str | Path, goal: Goal, poison_indices: torch.Tensor | None = None,
                      info: dict | None = None) -> Path:
    """Write the attacker's goal (+ poison indices) to ``path`` (.truth.safetensors)."""
    tensors, meta = _goal_to_tensors(goal)
    if poison_indices is not None:
        tensors["poison_indices"] = torch.as_tensor(poison_indices, dtype=torch.long)
    meta["info"] = info or {}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(path, st_save(tensors, metadata={"format": TRUTH_FORMAT, "meta": json.dumps(meta)}))


def load_ground_truth(path: str | Path) -> tuple[Goal, torch.Tensor | None, dict]:
    """Read a ground-truth file; return (goal, poison_indices or None, info)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: ground-truth file not found.")
    try:
        raw = path.read_bytes()
        tensors = st_load(raw)
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        meta = json.loads(header["__metadata__"]["meta"])
    except Exception as e:
        raise ModelFileError(f"{path}: corrupt or truncated ground-truth file ({e}).") from None
    if meta.get("goal") == "trigger":
        trig: Trigger = trigger_from_tensors(
            meta["trigger_kind"], {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("trigger.")},
            meta.get("trigger_params", {}))
        goal: Goal = TriggerGoal(trigger=trig, target=meta["target"],
                                 mapping=tuple(meta["mapping"]) if meta.get("mapping") else None)
    elif meta.get("goal") == "instance":
        goal = InstanceGoal(x=tensors["instance.x"], target=int(meta["target"]))
    else:
        raise ModelFileError(f"{path}: unknown goal kind {meta.get('goal')!r}.")
    return goal, tensors.get("poison_indices"), meta.get("info", {})


# ---- PNG (no Pillow needed) ---------------------------------------------------------------------
def png_bytes(img: torch.Tensor) -> bytes:
    """Encode a (C, H, W) or (H, W) image in [0,1] (C = 1, 3 or 4) as PNG."""
    if img.dim() == 2:
        img = img.unsqueeze(0)
    C, H, W = img.shape
    if C not in (1, 3, 4):
        raise ValueError(f"png image must have 1, 3 or 4 channels; got shape {tuple(img.shape)!r}.")
    a = (img.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(H))
    ctype = {1: 0, 3: 2, 4: 6}[C]

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_png(path: str | Path, img: torch.Tensor, scale: int = 1) -> Path:
    """Write an image in [0,1] as PNG, optionally upscaled ``scale`` times (nearest)."""
    if scale > 1:
        img = img.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    return atomic_write_bytes(path, png_bytes(img))


def read_png(path: str | Path) -> torch.Tensor:
    """Read an 8-bit, non-interlaced PNG file into (C, H, W) float in [0,1]."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: file not found.") from None
    try:
        return decode_png(data)
    except ValueError as e:
        raise ModelFileError(f"{path}: {e}") from None


MAX_PNG_PIXELS = 4096 * 4096
MAX_PNG_BYTES = 32 * 2**20


def read_png_bytes(path: str | Path) -> bytes:
    """The bytes of a PNG file to embed as is (reports): checked to be a PNG we can decode, under
    ``MAX_PNG_BYTES`` and ``MAX_PNG_PIXELS``, so a run folder cannot smuggle other content in."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found.")
    if path.stat().st_size > MAX_PNG_BYTES:
        raise ModelFileError(f"{path}: {path.stat().st_size} bytes is over the {MAX_PNG_BYTES}-byte limit for an image.")
    data = path.read_bytes()
    try:
        decode_png(data)
    except ValueError as e:
        raise ModelFileError(f"{path}: not a usable PNG ({e}).") from None
    return data


def decode_png(data: bytes, max_pixels: int | None = None) -> torch.Tensor:
    """Decode PNG bytes (8-bit, non-interlaced grey / grey+alpha / RGB / RGBA) into (C, H, W) in [0,1].
    Images above ``max_pixels`` (default ``MAX_PNG_PIXELS``) are refused before anything is decoded."""
    import numpy as np

    try:
        if data[:8] != b"\x89PNG\r\n\x1a\n":
            raise ValueError("missing PNG signature")
        pos, idat, hdr = 8, b"", None
        while pos < len(data):
            n = struct.unpack(">I", data[pos:pos + 4])[0]
            tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
            if tag == b"IHDR":
                hdr = struct.unpack(">IIBBBBB", body)
            elif tag == b"IDAT":
                idat += body
            elif tag == b"IEND":
                break
            pos += 12 + n
        W, H, depth, ctype, _, _, interlace = hdr
        if depth != 8 or interlace or ctype not in (0, 2, 4, 6):
            raise ValueError("only 8-bit non-interlaced grey/RGB/RGBA PNG is supported")
        C = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
        limit = MAX_PNG_PIXELS if max_pixels is None else max_pixels
        if W * H > limit:
            raise ValueError(f"image of {W}x{H} pixels exceeds the limit of {limit} pixels")
        expected = H * (1 + W * C)
        raw = zlib.decompressobj().decompress(idat, expected)  # bounded: no decompression bomb
        raw = np.frombuffer(raw, np.uint8).reshape(H, 1 + W * C)
        out = np.zeros((H, W * C), np.int32)
        for r in range(H):
            f, line = raw[r, 0], raw[r, 1:].astype(np.int32)
            prev = out[r - 1] if r else np.zeros(W * C, np.int32)
            if f == 0:
                cur = line
            elif f == 2:
                cur = (line + prev) % 256
            else:
                cur = np.zeros(W * C, np.int32)
                for i in range(W * C):
                    left = cur[i - C] if i >= C else 0
                    up, ul = prev[i], (prev[i - C] if i >= C else 0)
                    if f == 1:
                        pred = left
                    elif f == 3:
                        pred = (left + up) // 2
                    else:
                        p = left + up - ul
                        pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                        pred = left if pa <= pb and pa <= pc else (up if pb <= pc else ul)
                    cur[i] = (line[i] + pred) % 256
            out[r] = cur
        img = torch.from_numpy(out.reshape(H, W, C).astype(np.float32) / 255.0).permute(2, 0, 1)
        return img.contiguous()
    except Exception as e:
        raise ValueError(f"not a readable PNG ({e}).") from None
