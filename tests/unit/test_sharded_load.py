"""Sharded loading (sso.training.sharded_load): the weightless skeleton has the architecture the
one-process loader returns, for every start (fresh or starting LoRA adapter, full model, merged
adapter, full-model files); on 2 gloo processes under torchrun, rank 0 alone reads the weights,
every rank's shards hold them (the scorer gives the whole model's log-probs), the tied LM head and
the float32 rotary frequencies survive, and the reference is scored through the sharded scorer
with the same batches as one process (an odd batch count: rank 1 runs a discarded forward)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from sso.config import LoraConfig, ModelConfig, TrainConfig
from sso.training.policy import export_adapter, load_policy_model
from sso.training.sharded_load import skeleton

pytestmark = pytest.mark.usefixtures("torch_single_thread")

MODEL_CFG = ModelConfig(name="sso-tiny", dtype="float32", device="cpu", max_length=64)


def _lora_files(path) -> dict[str, bytes]:
    """A starting LoRA adapter with a rank and targets unlike the config's (the skeleton must take
    the adapter's own)."""
    c = TrainConfig(lora=LoraConfig(r=2, alpha=4, target_modules=("q_proj",)))
    return export_adapter(load_policy_model(path, c, MODEL_CFG, 1, None))


def _layout(model) -> dict:
    return {"tensors": {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()},
            "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
            "buffers": sorted(n for n, _ in model.named_buffers())}


@pytest.mark.parametrize("finetuning, start", [("lora", None), ("lora", "adapter"), ("full", None),
                                               ("full", "adapter"), ("full", "full")])
def test_the_skeleton_has_the_architecture_the_loader_returns(tiny_model_path, finetuning, start):
    c = TrainConfig(finetuning=finetuning, gradient_checkpointing=True)
    init = {"adapter": lambda: _lora_files(tiny_model_path), None: lambda: None,
            "full": lambda: export_adapter(load_policy_model(tiny_model_path, c, MODEL_CFG, 0, None))}[start]()
    loaded = load_policy_model(tiny_model_path, c, MODEL_CFG, 0, init)
    with torch.device("meta"):
        empty = skeleton(tiny_model_path, c, MODEL_CFG, init, torch.float32)
    assert all(p.is_meta for p in empty.parameters())                      # nothing was read
    assert _layout(empty) == _layout(loaded)
    assert len(_layout(loaded)["trainable"]) > 0
    base = empty.get_base_model() if finetuning == "lora" else empty
    assert base.lm_head.weight is base.model.embed_tokens.weight            # tied, as loaded
    assert base.is_gradient_checkpointing and not base.config.use_cache


WORKER = textwrap.dedent('''
    import json, sys
    import torch
    import torch.distributed as dist
    import sso.training.policy as policy
    from sso.config import ModelConfig, TrainConfig
    from sso.generation.chat import encode_prompt, encode_response
    from sso.models.loading import load_tokenizer
    from sso.training.distributed import init_distributed, score_reference
    from sso.training.reference import score_all
    from sso.training.scoring import collate, sequence_logps
    from sso.training.sharded_load import load_for_training
    from sso.training.zero import zero_engine

    path, out = sys.argv[1:3]
    torch.set_num_threads(1)
    init_distributed()
    rank = dist.get_rank()
    mcfg = ModelConfig(name="sso-tiny", dtype="float32", device="cpu", max_length=64)
    tok = load_tokenizer(path)
    texts = ["a b c", "the cat sat on the mat", "x", "one two three four five six", "hello there"]
    encoded = [[(encode_prompt(tok, t), encode_response(tok, t[::-1])) for t in texts]]   # 5 sequences
    batch = collate(encoded[0], 64, 0)
    report, whole_loads = {}, []
    real_load = policy.load_policy_model
    for strategy in ("fsdp", "zero3"):
        for finetuning in ("lora", "full"):
            cfg = TrainConfig(finetuning=finetuning, strategy=strategy)
            whole = real_load(path, cfg, mcfg, 0, None)       # the one-process model, for comparison
            whole_loads.clear()
            policy.load_policy_model = lambda *a, **k: whole_loads.append(1) or real_load(*a, **k)
            model, root = load_for_training(path, cfg, mcfg, 0, None, strategy)
            policy.load_policy_model = real_load
            local = sum(getattr(p, "ds_tensor", p.to_local() if hasattr(p, "to_local") else p).numel()
                        for p in model.parameters())      # before a forward unshards the FSDP root
            if strategy == "zero3":
                opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
                root = zero_engine(model, opt, strategy, "float32", 1.0)
            root.eval()
            with torch.no_grad():
                diff = float((root(batch)[0] - sequence_logps(whole, batch)[0]).abs().max())
                ref, ntok, _ = score_reference(model, encoded, 64, 0, 2, scorer=root)    # 3 batches
                one, one_ntok, _ = score_all(whole, encoded, 64, 0, 2)
            base = model.get_base_model() if finetuning == "lora" else model
            report[f"{strategy}-{finetuning}"] = {
                "whole_loads": len(whole_loads), "logps_diff": diff,
                "reference_diff": float((ref - one).abs().max()), "ntok_equal": bool(torch.equal(ntok, one_ntok)),
                "tied": base.lm_head.weight is base.model.embed_tokens.weight,
                "inv_freq": str(dict(model.named_buffers())[next(n for n, _ in model.named_buffers()
                                                                if n.endswith("inv_freq"))].dtype),
                "local_fraction": local / sum(p.numel() for p in whole.parameters())}
            del model, root
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump(report, fh)
    dist.destroy_process_group()
''')


def test_two_ranks_load_their_shards_from_rank_0_alone(tiny_model_path, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(script), tiny_model_path, str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    print(json.dumps(ranks, indent=1))
    for rank, report in enumerate(ranks):
        assert sorted(report) == ["fsdp-full", "fsdp-lora", "zero3-full", "zero3-lora"]
        for name, r in report.items():
            assert r["whole_loads"] == (1 if rank == 0 else 0), (rank, name)   # rank 1 never held the model
            assert r["logps_diff"] <= 1e-6 and r["reference_diff"] <= 1e-6 and r["ntok_equal"], (rank, name)
            assert r["tied"] and r["inv_freq"] == "torch.float32", (rank, name)
            # each rank's shards: about half of the weights (ZeRO-3 pads partitions; LoRA's
            # adapter is partitioned by the engine too)
            assert 0.4 < r["local_fraction"] < 0.6, (rank, name, r["local_fraction"])
