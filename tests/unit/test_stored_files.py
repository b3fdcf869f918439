"""Full-model files kept in the datastore (sso.training.stored): a small picklable reference that
reads like the ``dict[str, bytes]`` it replaces, content-addressed, checked when read."""

import os
import pickle

import pytest


@pytest.fixture
def storage(tmp_path):
    from metaflow.plugins.datastores.local_storage import LocalStorage

    return LocalStorage(str(tmp_path / "datastore"))


@pytest.fixture
def model_files(tiny_model_path, tmp_path):
    """The save_pretrained files of the tiny model (what a full fine-tuning run exports)."""
    from sso.models.loading import load_model
    from sso.training.policy import export_adapter

    return export_adapter(load_model(tiny_model_path, dtype="float32", device="cpu"))


def test_stored_model_files_read_back_as_the_files_and_reload_as_the_model(storage, model_files, tmp_path):
    from transformers import AutoModelForCausalLM

    from sso.training.policy import is_full_model, write_model_files
    from sso.training.probe import compute_logits_probe, probe_matches
    from sso.training.stored import StoredFiles, save_files

    stored = save_files(storage, "SSOFlow/sso-models", model_files)
    assert isinstance(stored, StoredFiles) and is_full_model(stored)
    assert sorted(stored) == sorted(model_files) and dict(stored.items()) == model_files
    weights = sum(len(v) for v in model_files.values())
    assert weights > 4_000_000 and len(pickle.dumps(stored)) < 2_000          # the artifact is the reference
    again = pickle.loads(pickle.dumps(stored))
    assert again == stored and again["config.json"] == model_files["config.json"]
    model = AutoModelForCausalLM.from_pretrained(str(write_model_files(again, tmp_path / "m")))
    original = AutoModelForCausalLM.from_pretrained(str(write_model_files(model_files, tmp_path / "o")))
    assert probe_matches(compute_logits_probe(original), compute_logits_probe(model), rtol=0, atol=0)


def test_the_same_files_are_stored_once_and_damage_is_detected(storage, model_files):
    from sso.training.stored import save_files

    first = save_files(storage, "SSOFlow/sso-models", model_files)
    weights = first.url("model.safetensors")
    mtime = os.stat(weights).st_mtime_ns
    second = save_files(storage, "SSOFlow/sso-models", model_files)
    assert second == first and os.stat(weights).st_mtime_ns == mtime     # not rewritten
    with open(weights, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(OSError, match="model.safetensors .* is damaged"):
        second["model.safetensors"]
    with pytest.raises(KeyError):
        second["missing.bin"]
