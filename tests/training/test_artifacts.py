import json

import pytest
import torch

from recsys_moe.config import ModelConfig, TasksConfig
from recsys_moe.models import build_model
from recsys_moe.training.artifacts import ModelLoadError, load_model, save_model


def test_round_trip_and_bad_folders(small_features, tmp_path):
    _, spec = small_features
    model = build_model(ModelConfig(), TasksConfig(), spec)
    folder = save_model(tmp_path / "model", model, ModelConfig(), TasksConfig(), spec)
    loaded, loaded_spec, meta = load_model(folder)
    assert meta["spec_hash"] == loaded_spec.content_hash == spec.content_hash
    want, got = model.state_dict(), loaded.state_dict()
    assert set(want) == set(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k

    with pytest.raises(ModelLoadError, match="model.json missing"):
        load_model(tmp_path / "nowhere")
    (folder / "state_dict.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot load weights"):
        load_model(folder)
    meta_path = folder / "model.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format_version": 99}))
    with pytest.raises(ModelLoadError, match="format version 99"):
        load_model(folder)
