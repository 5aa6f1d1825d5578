import json
import subprocess
import sys

import pytest
import torch

from backdoorlab.io import (ModelFileError, load_ground_truth, load_model, read_state_dict, save_ground_truth,
                            save_model, truth_path)
from backdoorlab.models import build
from backdoorlab.triggers import BlendTrigger, PatchTrigger
from backdoorlab.types import InstanceGoal, TriggerGoal


def _model():
    return build("digits-cnn", input_shape=(1, 8, 8), num_classes=10, mean=[0.3], std=[0.4])


def _rewrite_meta(path, edit):
    """Edit a saved model's description in BOTH places (sidecar and the copy in the weights file),
    as an attacker who controls the files would."""
    from safetensors.torch import load, save

    meta = json.loads(path.with_suffix(".json").read_text())
    edit(meta)
    tensors = load(path.read_bytes())
    path.write_bytes(save(tensors, metadata={"format": "backdoorlab-model", "meta": json.dumps(meta)}))
    path.with_suffix(".json").write_text(json.dumps(meta))


def test_model_roundtrip_is_exact(tmp_path):
    m = _model()
    p = save_model(tmp_path / "m.safetensors", m, dataset={"name": "digits", "num_classes": 10})
    back, meta = load_model(p)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(m(x), back(x))
    assert meta["arch"] == "digits-cnn" and meta["dataset"]["name"] == "digits"
    assert json.loads((tmp_path / "m.json").read_text())["arch_kwargs"]["mean"] == [pytest.approx(0.3)]


def test_truncated_safetensors_named_and_previous_file_kept(tmp_path):
    p = save_model(tmp_path / "m.safetensors", _model())
    good = p.read_bytes()
    (tmp_path / "bad.safetensors").write_bytes(good[: len(good) // 2])
    (tmp_path / "bad.json").write_text((tmp_path / "m.json").read_text())
    with pytest.raises(ModelFileError, match=r"bad.safetensors: corrupt or truncated safetensors file"):
        load_model(tmp_path / "bad.safetensors")
    assert p.read_bytes() == good


def test_wrong_number_of_classes(tmp_path):
    p = save_model(tmp_path / "m.safetensors", _model())
    _rewrite_meta(p, lambda meta: meta["arch_kwargs"].update(num_classes=43))
    with pytest.raises(ModelFileError, match=r"tensor head\.bias has shape \(10,\), architecture expects \(43,\) — wrong number of classes"):
        load_model(p)


def test_missing_sidecar(tmp_path):
    """A weights file without its own description (written by other tools, or before the copy
    existed) needs the sidecar; ours still loads without it."""
    from safetensors.torch import load, save

    p = save_model(tmp_path / "m.safetensors", _model())
    (tmp_path / "m.json").unlink()
    assert load_model(p)[1]["arch"] == "digits-cnn"
    p.write_bytes(save(load(p.read_bytes()), metadata={"format": "backdoorlab-model"}))
    with pytest.raises(ModelFileError, match="sidecar m.json .* is missing"):
        load_model(p)


def test_interrupted_save_between_weights_and_sidecar(tmp_path, monkeypatch):
    """save_model writes the weights first; if it dies before the sidecar, the new weights still load
    as what they are (with a warning that the old sidecar disagrees), never as the old architecture."""
    import backdoorlab.io as bio

    p = save_model(tmp_path / "m.safetensors", _model())
    wide = build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[7])

    def die(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bio, "save_json", die)
    with pytest.raises(KeyboardInterrupt):
        save_model(p, wide)
    monkeypatch.undo()
    assert json.loads((tmp_path / "m.json").read_text())["arch"] == "digits-cnn"    # the old sidecar
    with pytest.warns(UserWarning, match="disagrees"):
        back, meta = load_model(p)
    x = torch.rand(2, 1, 8, 8)
    assert meta["arch"] == "mlp" and torch.equal(back(x), wide(x))


def test_atomic_write_leaves_no_temp_files(tmp_path):
    save_model(tmp_path / "m.safetensors", _model())
    save_model(tmp_path / "m.safetensors", _model())
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


class _Payload:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_refused_and_payload_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "x": _Payload(marker)}, evil)
    with pytest.raises(ModelFileError, match="refused — the pickle would construct objects other than tensors"):
        read_state_dict(evil)
    assert not marker.exists()
    # control: the payload is live — plain unpickling in a child process does create the file
    code = f"import pickle,zipfile; z=zipfile.ZipFile({str(evil)!r}); n=[f for f in z.namelist() if f.endswith('data.pkl')][0]\n" \
           f"import torch; torch.load({str(evil)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert marker.exists()


def test_plain_state_dict_pt_loads(tmp_path):
    sd = {"a": torch.ones(3)}
    torch.save(sd, tmp_path / "ok.pt")
    assert torch.equal(read_state_dict(tmp_path / "ok.pt")["a"], torch.ones(3))


def test_ground_truth_roundtrip(tmp_path):
    t = PatchTrigger.badnets_pattern((1, 8, 8))
    p = save_ground_truth(truth_path(tmp_path / "m.safetensors"), TriggerGoal(trigger=t, target=3),
                          torch.tensor([1, 5, 9]))
    goal, idx, _ = load_ground_truth(p)
    assert goal.target == 3 and torch.equal(goal.trigger.mask, t.mask) and idx.tolist() == [1, 5, 9]
    b = BlendTrigger(pattern=torch.rand(1, 8, 8), alpha=0.1)
    save_ground_truth(tmp_path / "b.truth.safetensors", TriggerGoal.all_to_all(b, 10))
    g2, idx2, _ = load_ground_truth(tmp_path / "b.truth.safetensors")
    assert g2.mapping == tuple((i + 1) % 10 for i in range(10)) and g2.trigger.alpha == pytest.approx(0.1)
    assert idx2 is None
    save_ground_truth(tmp_path / "i.truth.safetensors", InstanceGoal(x=torch.rand(1, 8, 8), target=2))
    g3, _, _ = load_ground_truth(tmp_path / "i.truth.safetensors")
    assert g3.target == 2 and g3.x.shape == (1, 1, 8, 8)


def test_hostile_sidecar_sizes_do_not_allocate(tmp_path):
    p = save_model(tmp_path / "m.safetensors", build("mlp", input_shape=(1, 8, 8), hidden=[10]))
    # 64e9 + 1e10 floats if it were built for real
    _rewrite_meta(p, lambda meta: meta["arch_kwargs"].update(hidden=[10**9]))
    with pytest.raises(ModelFileError, match="architecture expects"):
        load_model(p)
