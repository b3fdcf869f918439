"""Test helper: a padded batch from strings, the way the trainer builds one."""

from sso.training.scoring import collate, encode_pairs, pad_token_id


def build_batch(tokenizer, prompts, responses, max_length, *, finished=None):
    """``collate(encode_pairs(...))``: input_ids, attention_mask, loss_mask, truncated."""
    return collate(encode_pairs(tokenizer, prompts, responses, finished), max_length, pad_token_id(tokenizer))
