"""Frozen instruction encoders: shapes, pooled goal, T5 masks, per-instruction cache, offline tokenizers."""

import torch
from transformers import AutoTokenizer

from lerobot_defi.models.text import InstructionEncoders, build_byte_level_tokenizer, load_clip_text, load_t5
from lerobot_defi.policy.configuration_defi import load_preset


def tiny_encoders(cache_size=4096) -> InstructionEncoders:
    cfg = load_preset("tiny")
    torch.manual_seed(0)
    clip, clip_tok, _ = load_clip_text(None, cfg.clip_text_config)
    t5, t5_tok, _ = load_t5(None, cfg.t5_config)
    return InstructionEncoders(
        clip, clip_tok, t5, t5_tok, context_length=20, goal_length=77, cache_size=cache_size
    )


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
    assert (out.t5_hidden[~out.t5_mask] == 0).all()
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
