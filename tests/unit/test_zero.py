"""``strategy = "zero2" / "zero3"`` (DeepSpeed ZeRO, sso.training.zero) on 2 gloo processes under
torchrun, against the one-process run of the same data: loss curves and gradient norms, exports
that reload; and what is refused before any model loads."""

from __future__ import annotations

import sys

import pytest

from sso.training.distributed import check_strategy
from sso.training.probe import probe_matches
from sso.training.trainer import train_dpo
from test_fsdp import MODEL_CFG, _losses, _torchrun, cfg, check_export, pairs  # noqa: F401  (the same data and run)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.parametrize("strategy, finetuning, lr, grad_ckpt", [
    ("zero2", "lora", 5e-3, False),     # ZeRO-2 for LoRA, ZeRO-3 for full fine-tuning (the paper's)
    ("zero3", "full", 1e-3, False),
    ("zero3", "lora", 5e-3, True),
])
def test_zero_on_two_processes_gives_the_one_process_curve_and_an_export_that_reloads(
        tiny_model_path, pairs, tmp_path, strategy, finetuning, lr, grad_ckpt):  # noqa: F811
    c = cfg(strategy=strategy, finetuning=finetuning, learning_rate=lr, grad_accum=2, batch_size=2,
            gradient_checkpointing=grad_ckpt, max_grad_norm=1.0)
    single = train_dpo(tiny_model_path, pairs, c, MODEL_CFG, seed=0, progress=False)
    main, other = _torchrun(tiny_model_path, pairs, c)
    print(strategy, finetuning, "loss, 1 process:", _losses(single), f"\n2 processes ({strategy}):", _losses(main),
          "\ngrad norm:", single.history["grad_norm"].tolist(), main.history["grad_norm"].tolist())
    assert len(_losses(main)) == 3
    assert _losses(main) == pytest.approx(_losses(single), rel=1e-5)
    # DeepSpeed's global norm (its own reduction over the flat partitions) is not torch's
    # clip_grad_norm_: 1e-7 apart for LoRA; for full fine-tuning 7e-5 higher already at step 0
    # (same weights, same loss), under both stages: the difference of the squares, 0.0126, is the
    # sum of four of the five RMSNorm weights' squared gradient norms (measured in one process),
    # as if those were counted twice; the updates agree (the loss curves to 2e-6)
    norm_rel = 1e-4 if finetuning == "lora" else 2e-4
    assert main.history["grad_norm"].tolist() == pytest.approx(single.history["grad_norm"].tolist(), rel=norm_rel)
    assert main.history["learning_rate"].tolist() == single.history["learning_rate"].tolist()
    assert not _losses(single)[-1] == pytest.approx(_losses(single)[0], rel=1e-4)      # it trained
    assert main.summary["world_size"] == 2 and other.summary == {"rank": 1, "exported": False}
    assert main.summary["strategy"] == strategy and single.summary["strategy"] == "one process"
    check_export(main, single, finetuning, tiny_model_path, tmp_path)


@pytest.mark.parametrize("strategy, finetuning, lr", [("zero3", "full", 1e-3), ("zero2", "lora", 5e-3)])
def test_zero_resumes_from_the_checkpoint_its_partitions_were_gathered_into(tiny_model_path, pairs, tmp_path,  # noqa: F811
                                                                            strategy, finetuning, lr):
    import torch

    c = cfg(strategy=strategy, finetuning=finetuning, learning_rate=lr, checkpoint_every=2, max_grad_norm=1.0)
    first, _ = _torchrun(tiny_model_path, pairs, c, checkpoint_dir=str(tmp_path))
    (state,) = [p for d in tmp_path.iterdir() if not d.name.startswith(".") for p in d.glob("step-*/state.pt")]
    ckpt = torch.load(state, weights_only=True)
    assert ckpt["step"] == 2 and len(ckpt["optimizer"]["zero_partitions"]) == 2      # one per rank
    again, _ = _torchrun(tiny_model_path, pairs, c, checkpoint_dir=str(tmp_path))
    assert again.summary["resumed_from_step"] == 2 and again.summary["steps_run"] == 1
    print(strategy, "uninterrupted:", _losses(first), "resumed:", _losses(again))
    assert _losses(again) == pytest.approx(_losses(first), rel=1e-6)
    assert probe_matches(first.summary["logits_probe"], again.summary["logits_probe"], rtol=1e-5)


def test_what_is_refused_before_any_model_loads(monkeypatch):
    for strategy in ("ddp", "fsdp", "zero2", "zero3"):
        check_strategy(strategy)                        # DeepSpeed is installed here
    with pytest.raises(ValueError, match="strategy must be one of"):
        check_strategy("zero1")
    monkeypatch.setitem(sys.modules, "deepspeed", None)     # as if it were not installed
    with pytest.raises(ImportError, match=r"strategy 'zero2' needs DeepSpeed: pip install 'sso-flow\[deepspeed\]'"):
        check_strategy("zero2")
    check_strategy("fsdp")
