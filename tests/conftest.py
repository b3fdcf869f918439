"""Shared fixtures: one tiny offline model per test session (built in about a second)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """Path of the tiny random Llama (``sso-tiny``) built once into a session temp dir."""
    from sso.models.tiny import ensure_tiny_model

    return str(ensure_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path):
    """The tiny model's tokenizer, loaded through the project's loader."""
    from sso.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_path)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path):
    """The tiny model in float32 on CPU, eval mode (tests must not modify its weights)."""
    from sso.models.loading import load_model

    return load_model(tiny_model_path, dtype="float32", device="cpu")


@pytest.fixture
def torch_single_thread():
    """Run a test on one intra-op thread (the tiny model gains nothing from more on a shared CPU)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole module: on a busy 2-core machine two threads made
    generation up to 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _restore_typing_patches() -> None:
    """Undo metaflow's vendored typing_extensions patches of ``typing``.

    ``metaflow.runner`` (the Runner API) imports an older, vendored typing_extensions that replaces
    ``typing._collect_parameters`` with a version checking its *own* ``NoDefault`` sentinel. Any
    generic class defined afterwards with the real typing_extensions' TypeVars (vLLM, parts of
    torch.distributed) then fails with "Type parameter ... without a default follows type
    parameter with a default". Flow task processes never import metaflow.runner; only a process
    that drives flows in-process (like this test session) is affected.
    """
    import sys
    import typing

    if "metaflow._vendor.typing_extensions" not in sys.modules:
        return
    import typing_extensions

    for name in ("_check_generic", "_collect_parameters"):
        if hasattr(typing_extensions, name):
            setattr(typing, name, getattr(typing_extensions, name))


@pytest.fixture(autouse=True)
def _real_typing_extensions():
    _restore_typing_patches()
    yield
    _restore_typing_patches()
