"""The local judge: the same judge prompt, decided by a local transformers model.

The model reads the judgment's parts (instruction, reply A, reply B) rendered as the judge prompt's
system and user turns in its own chat template (``sso.generation.chat.render_prompt``, ending with
the assistant header), and the verdict is the label whose token has the larger
next-token log-probability: a forced choice between ``A`` and ``B``, so every verdict is parsable
(for the random ``sso-tiny`` model it is arbitrary, which is all a smoke test needs). The raw output
kept with each judgment is the chosen label, both label log-probs and their total probability mass
(``label_mass``: how much the model wanted to answer with a label at all).

Prompts longer than the model's context are shortened by truncating both replies (taken from the
parts, never parsed back out of a rendered prompt) to an equal token budget (the instruction and the
question are kept whole); such records carry ``truncated: true``.
Batches are left-padded with explicit position ids, so a batched score equals the unbatched one.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

from sso.judge.prompts import LABELS, JudgeParts, render_judge_turns

log = logging.getLogger("sso.judge")


def local_judge_id(model_name: str, dtype: str, revision: str = "") -> str:
    """Cache identity of a local judge: model (recipe version of a built-in model), revision, dtype."""
    from sso.models.smollm2 import SMOLLM2_NAME, SMOLLM2_VERSION
    from sso.models.tiny import TINY_NAME, TINY_VERSION

    recipes = {TINY_NAME: TINY_VERSION, SMOLLM2_NAME: SMOLLM2_VERSION}
    name = f"{model_name}-v{recipes[model_name]}" if model_name in recipes else model_name
    rev = f"@{revision}" if revision else ""
    return f"local:{name}{rev}:{dtype}"


class LocalJudge:
    """A :class:`~sso.judge.protocol.JudgeBackend` backed by a local causal LM."""

    def __init__(self, model_name: str, *, dtype: str = "float32", device: str = "auto",
                 revision: str = "", trust_remote_code: bool = False, batch_size: int = 8,
                 tokenizer=None, model=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = model_name
        self.judge_id = local_judge_id(model_name, dtype, revision)
        self.batch_size = batch_size
        self._load_kwargs = {"dtype": dtype, "device": device, "revision": revision,
                             "trust_remote_code": trust_remote_code}
        self.tokenizer = tokenizer
        self.model = model
        self.label_ids: list[int] = []
        self._requests = 0
        self._prompt_tokens = 0

    def load(self) -> "LocalJudge":
        """Load the model and tokenizer (once; a run whose judgments are all cached never does)."""
        if self.tokenizer is None or self.model is None:
            from sso.models.loading import load_model, load_tokenizer, resolve_model_path

            kw = self._load_kwargs
            path = resolve_model_path(self.model_name)
            if self.tokenizer is None:
                self.tokenizer = load_tokenizer(path, revision=kw["revision"],
                                                trust_remote_code=kw["trust_remote_code"])
            if self.model is None:
                self.model = load_model(path, **kw)
        if not self.label_ids:
            self.label_ids = [self._label_token_id(lab) for lab in LABELS]
        return self

    def __repr__(self) -> str:
        return f"LocalJudge({self.judge_id!r})"

    def _label_token_id(self, label: str) -> int:
        ids = self.tokenizer(label, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"local judge model {self.model_name!r}: label {label!r} is not a single "
                             f"token (ids {ids}); the local judge compares single label tokens")
        return int(ids[0])

    def _context_limit(self) -> int:
        limits = [getattr(self.model.config, "max_position_embeddings", None),
                  getattr(self.tokenizer, "model_max_length", None)]
        limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]
        return min(limits) if limits else 4096

    def render(self, parts: JudgeParts) -> str:
        """The judge prompt for ``parts`` in this model's chat template, ending with the assistant
        header (a template that refuses a system turn gets the system text folded into the user's)."""
        from sso.generation.chat import render_prompt

        system, user = render_judge_turns(*parts)
        try:
            return render_prompt(self.tokenizer, user, system)
        except Exception:  # some templates refuse a system turn: fold it into the user turn
            return render_prompt(self.tokenizer, f"{system}\n\n{user}" if system else user)

    def encode(self, parts: JudgeParts) -> tuple[list[int], bool]:
        """Prompt ids (replies truncated to fit the context if needed) and whether we truncated."""
        from sso.generation.chat import encode_prompt

        ids = encode_prompt(self.tokenizer, self.render(parts))
        limit = self._context_limit()
        if len(ids) <= limit:
            return ids, False
        return self._encode_truncated(JudgeParts(*parts), limit), True

    def _encode_truncated(self, parts: JudgeParts, limit: int) -> list[int]:
        """Both replies cut to one equal token budget so that the prompt fits ``limit`` tokens."""
        from sso.generation.chat import encode_prompt

        bare = encode_prompt(self.tokenizer, self.render(parts._replace(output_a="", output_b="")))
        budget = (limit - len(bare) - 8) // 2
        if budget < 1:
            raise ValueError(f"the instruction alone exceeds the local judge's context ({limit} tokens)")
        cut = parts._replace(output_a=self._cut(parts.output_a, budget),
                             output_b=self._cut(parts.output_b, budget))
        ids = encode_prompt(self.tokenizer, self.render(cut))
        return ids[-limit:] if len(ids) > limit else ids

    def _cut(self, text: str, budget: int) -> str:
        """``text`` shortened to its first ``budget`` tokens (unchanged if it is not longer)."""
        toks = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer.decode(toks[:budget]) if len(toks) > budget else text

    def _label_logprobs(self, batch: list[list[int]]):
        """[len(batch), 2] log-probs of the two label tokens after each prompt (left-padded batch)."""
        import torch

        device = next(self.model.parameters()).device
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):       # left padding
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                position_ids=positions.to(device)).logits[:, -1, :]
        return torch.log_softmax(logits.float(), dim=-1)[:, self.label_ids].cpu()  # [B, 2]

    def complete_many(self, jobs: list[tuple[str, JudgeParts]],
                      on_done: Callable[[str, dict[str, Any]], None],
                      on_failed: Callable[[str, str], None] | None = None) -> None:
        self.load()
        encoded = [(key, *self.encode(parts)) for key, parts in jobs]
        encoded.sort(key=lambda item: len(item[1]))          # less padding per batch
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start:start + self.batch_size]
            logprobs = self._label_logprobs([ids for _, ids, _ in batch])
            for row, (key, ids, truncated) in enumerate(batch):
                lp = {lab: float(logprobs[row, j]) for j, lab in enumerate(LABELS)}
                best = max(LABELS, key=lambda lab: lp[lab])
                record = {
                    "text": best,
                    "label_logprobs": lp,
                    "label_mass": float(sum(math.exp(v) for v in lp.values())),
                    "forced": True,
                    "prompt_tokens": len(ids),
                    "completion_tokens": 0,
                    "truncated": truncated,
                }
                self._requests += 1
                self._prompt_tokens += len(ids)
                on_done(key, record)

    def usage(self) -> dict[str, Any]:
        return {"requests": self._requests, "prompt_tokens": self._prompt_tokens,
                "completion_tokens": 0, "est_cost_usd": 0.0}

