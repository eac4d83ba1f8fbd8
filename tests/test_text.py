"""Frozen instruction encoders: shapes, pooled goal, T5 masks, per-instruction cache, offline tokenizers, and
the original's text function (docs/method.md §2.2, §3.1, §5.4, §8.26): CLIP context with the attention mask,
T5 padded slots of the batch padded to its longest, T5 dropout in training."""

import pytest
import torch
from transformers import AutoTokenizer

from lerobot_defi.models.text import (
    T5_CACHE_LENGTH,
    InstructionEncoders,
    build_byte_level_tokenizer,
    load_clip_text,
    load_t5,
)
from lerobot_defi.policy.configuration_defi import load_preset


def tiny_encoders(cache_size=4096, dtype=torch.float32) -> InstructionEncoders:
    cfg = load_preset("tiny")
    torch.manual_seed(0)
    clip, clip_tok, _ = load_clip_text(None, cfg.clip_text_config)
    t5, t5_tok, _ = load_t5(None, cfg.t5_config)
    return InstructionEncoders(
        clip, clip_tok, t5, t5_tok, context_length=20, goal_length=77, cache_size=cache_size
    ).to(dtype)


# Byte-level tiny tokenizers: one token per byte, plus <|startoftext|> and <|endoftext|> (CLIP) or </s> (T5).
MIXED = ["lift", "open the drawer", "push the red block to the left side of the table"]


def clip_context_reference(encoders: InstructionEncoders, texts: list[str], use_mask: bool = True):
    """The original's CLIP call: ids padded/truncated to 20 with the attention mask (1 on start, text, end)."""
    ids = encoders.clip_tokenizer(
        texts, padding="max_length", max_length=20, truncation=True, return_tensors="pt"
    ).input_ids
    lengths = torch.tensor([min(len(t.encode()) + 2, 20) for t in texts])
    mask = (torch.arange(20)[None] < lengths[:, None]).long()
    with torch.no_grad():
        return encoders.clip(input_ids=ids, attention_mask=mask if use_mask else None).last_hidden_state, mask


def t5_batch_reference(encoders: InstructionEncoders, texts: list[str]):
    """The original's T5 call: the batch padded to its longest, ids and mask into T5."""
    lengths = torch.tensor([len(t.encode()) + 1 for t in texts])
    longest = int(lengths.max())
    pad = encoders.t5_tokenizer.pad_token_id
    ids = torch.full((len(texts), longest), pad)
    for i, text in enumerate(texts):
        ids[i, : lengths[i]] = torch.tensor(encoders.t5_tokenizer(text).input_ids)
    mask = (torch.arange(longest)[None] < lengths[:, None]).long()
    with torch.no_grad():
        return encoders.t5(input_ids=ids, attention_mask=mask).last_hidden_state, mask.bool()


def test_byte_level_tokenizers_round_trip(tmp_path):
    clip = build_byte_level_tokenizer("clip")
    ids = clip("Open the drawer").input_ids
    assert ids[0] == 0 and ids[-1] == 1 and len(ids) == len("open the drawer") + 2
    assert clip.decode(ids, skip_special_tokens=True) == "open the drawer"
    t5 = build_byte_level_tokenizer("t5")
    assert t5("ab").input_ids == [t5.convert_tokens_to_ids("a"), t5.convert_tokens_to_ids("b"), 1]
    clip.save_pretrained(tmp_path / "clip")
    assert AutoTokenizer.from_pretrained(tmp_path / "clip")("Open the drawer").input_ids == ids


def test_shapes_pooled_goal_and_padding_mask():
    encoders = tiny_encoders()
    texts = ["open the drawer", "push the red block to the left side of the table", ""]
    out = encoders(texts)
    assert out.clip_hidden.shape == (3, 20, 32)
    assert out.clip_pooled.shape == (3, 32)
    lengths = [len(t) + 1 for t in texts]  # bytes + </s>
    assert out.t5_hidden.shape == (3, max(lengths), 32)
    assert out.t5_mask.sum(-1).tolist() == lengths
    # The goal is CLIP's projected end-of-text embedding of the 77-token input (OpenAI encode_text).
    ids = encoders.clip_tokenizer(
        texts[:1], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        ref = encoders.clip(input_ids=ids).text_embeds
    torch.testing.assert_close(out.clip_pooled[:1], ref)


def test_each_instruction_is_encoded_once_and_batches_match_single_calls():
    encoders = tiny_encoders()
    calls = []
    encoders.clip.register_forward_hook(lambda m, a, o: calls.append(a))
    first = encoders(["open the drawer", "close the drawer", "open the drawer"])
    assert len(calls) == 2  # context pass + goal pass over the two distinct strings
    again = encoders(["close the drawer", "open the drawer"])
    assert len(calls) == 2
    torch.testing.assert_close(again.clip_hidden[1], first.clip_hidden[0])
    fresh = tiny_encoders()
    single = fresh(["close the drawer"])
    torch.testing.assert_close(again.clip_pooled[0], single.clip_pooled[0])
    torch.testing.assert_close(
        again.t5_hidden[0, : single.t5_hidden.shape[1]], single.t5_hidden[0], rtol=1e-5, atol=1e-6
    )


def test_cache_is_bounded_and_dropped_on_move():
    encoders = tiny_encoders(cache_size=2)
    encoders(["a", "b", "c"])
    assert len(encoders._cache) == 2 and "a" not in encoders._cache and "c" in encoders._cache
    encoders.to(torch.float64)
    assert len(encoders._cache) == 0
    assert not encoders.train().training  # frozen encoders stay in eval mode


def test_clip_context_is_computed_with_the_attention_mask():
    encoders = tiny_encoders(dtype=torch.float64)
    expected, mask = clip_context_reference(encoders, MIXED)
    out = encoders(MIXED).clip_hidden
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # Real tokens do not depend on the mask (causal attention); the padded slots the UNet reads do.
    unmasked, _ = clip_context_reference(encoders, MIXED, use_mask=False)
    real = mask.bool()
    torch.testing.assert_close(out[real], unmasked[real], rtol=1e-12, atol=1e-12)
    assert (out[~real] - unmasked[~real]).abs().amax() > 1e-2


def test_t5_padded_slots_are_the_outputs_of_the_batch_padded_to_its_longest():
    encoders = tiny_encoders(dtype=torch.float64)
    expected, mask = t5_batch_reference(encoders, MIXED)
    assert expected.shape[1] > T5_CACHE_LENGTH  # the cached 32-slot entries must be re-encoded longer
    out = encoders(MIXED)
    assert torch.equal(out.t5_mask, mask)
    torch.testing.assert_close(out.t5_hidden, expected, rtol=1e-12, atol=1e-12)
    assert out.t5_hidden[~mask].abs().amin() > 0  # T5 outputs, not zeros
    # Shorter batches are slices of the (now longer) cached entries.
    short, _ = t5_batch_reference(encoders, MIXED[:2])
    torch.testing.assert_close(encoders(MIXED[:2]).t5_hidden, short, rtol=1e-12, atol=1e-12)
    # A padded slot's output depends only on its instruction and position: padded to 40 or to the longest.
    ids = encoders.t5_tokenizer(MIXED[:1], padding="max_length", max_length=40, return_tensors="pt")
    with torch.no_grad():
        longer = encoders.t5(**ids).last_hidden_state
    torch.testing.assert_close(longer[:, : short.shape[1]], short[:1], rtol=1e-12, atol=1e-12)
    # Compiled code pads to a multiple of 16: slots past the longest are masked for every sample.
    encoders.pad_to_multiple_of = 16
    bucketed = encoders(MIXED[:2])
    assert bucketed.t5_hidden.shape[1] == 16 and not bucketed.t5_mask[:, short.shape[1] :].any()
    torch.testing.assert_close(bucketed.t5_hidden[:, : short.shape[1]], short, rtol=1e-12, atol=1e-12)


def test_t5_dropout_runs_the_batch_in_training_mode_and_leaves_the_cache_alone():
    encoders = tiny_encoders(dtype=torch.float64)
    assert encoders.t5.config.dropout_rate == pytest.approx(0.1)
    eval_states, mask = t5_batch_reference(encoders, MIXED)
    torch.manual_seed(3)
    out = encoders(MIXED, t5_dropout=True)
    encoders.t5.train()
    torch.manual_seed(3)
    expected, _ = t5_batch_reference(encoders, MIXED)
    encoders.t5.eval()
    assert torch.equal(out.t5_mask, mask)
    torch.testing.assert_close(out.t5_hidden, expected, rtol=1e-12, atol=1e-12)
    assert (out.t5_hidden - eval_states).abs().amax() > 1e-2
    assert not encoders.t5.training and len(encoders._t5_cache) == 0
    torch.testing.assert_close(encoders(MIXED).t5_hidden, eval_states, rtol=1e-12, atol=1e-12)
