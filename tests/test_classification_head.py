"""Notebook 05 helpers: the classification head by hand, class token vs mean pooling."""
import pytest
import torch
from torch.testing import assert_close

from vit_inspect import (POOLINGS, VitInspectError, classify_by_hand, create_untrained, head_by_hand,
                         pool_tokens, preprocess, sample_images)
from vit_inspect import classification_head

from .mutation import fails, passes


@pytest.fixture(scope="module")
def images(tiny):
    return torch.cat([preprocess(path, tiny).tensor for path in sample_images()[:3]])


def test_class_token_head_by_hand_equals_the_model(tiny, images):
    with torch.no_grad():
        result = classify_by_hand(tiny, images)
        expected = tiny(images)
    assert result["logits"].shape == (3, 1000)
    assert_close(result["logits"], expected, rtol=1e-4, atol=1e-4)  # a chain through 12 blocks
    assert_close(result["probs"].sum(dim=-1), torch.ones(3))


def test_head_from_the_stream_equals_forward_head(tiny, images):
    with torch.no_grad():
        stream = tiny.blocks(tiny._pos_embed(tiny.patch_embed(images)))
        result = head_by_hand(tiny, stream)
        assert_close(result["normed"], tiny.norm(stream))
        assert_close(result["logits"], tiny.forward_head(tiny.norm(stream)))


def test_mean_pooling_is_timm_avg_and_not_the_trained_head(tiny, images):
    with torch.no_grad():
        stream = tiny.blocks(tiny._pos_embed(tiny.patch_embed(images)))
        avg = head_by_hand(tiny, stream, "avg")
        assert_close(avg["pooled"], tiny.pool(tiny.norm(stream), pool_type="avg"))
        avg_all = head_by_hand(tiny, stream, "avg_all")
        assert_close(avg_all["pooled"], tiny.norm(stream).mean(dim=1))
        for wrong in (avg, avg_all):
            with pytest.raises(AssertionError):
                assert_close(wrong["logits"], tiny(images))


def test_a_batch_gives_the_same_logits_as_one_image_at_a_time(tiny, images):
    with torch.no_grad():
        batch = classify_by_hand(tiny, images)["logits"]
        single = torch.cat([classify_by_hand(tiny, images[i:i + 1])["logits"] for i in range(3)])
    assert_close(batch, single, rtol=1e-4, atol=1e-5)


def test_pool_tokens_and_unknown_pooling():
    tokens = torch.arange(12.0).reshape(1, 3, 4)
    assert set(POOLINGS) == {"token", "avg", "avg_all"}
    assert_close(pool_tokens(tokens, 1, "token"), tokens[:, 0])
    assert_close(pool_tokens(tokens, 1, "avg"), torch.tensor([[6.0, 7.0, 8.0, 9.0]]))
    assert_close(pool_tokens(tokens, 1, "avg_all"), torch.tensor([[4.0, 5.0, 6.0, 7.0]]))
    with pytest.raises(VitInspectError, match="unknown pooling"):
        pool_tokens(tokens, 1, "max")


# ---------------------------------------------------------------- mutation tests

def check_head(model, stream):
    with torch.no_grad():
        logits = classification_head.head_by_hand(model, stream)["logits"]
        assert_close(logits, model.forward_head(model.norm(stream)))


@pytest.mark.parametrize("name, bug", [
    ("linear_by_hand", lambda layer, x: x @ layer.weight.T),
    ("pool_tokens", lambda tokens, num_prefix_tokens, pool="token": tokens.mean(dim=1)),
    ("pool_tokens", lambda tokens, num_prefix_tokens, pool="token": tokens[:, num_prefix_tokens]),
    ("final_norm_by_hand", lambda model, z: z),
], ids=["head bias dropped", "mean pooling", "first patch instead of the class token", "final norm dropped"])
def test_mutation_in_the_head_is_caught(tiny, images, monkeypatch, name, bug):
    with torch.no_grad():
        stream = tiny.blocks(tiny._pos_embed(tiny.patch_embed(images)))
    passes(check_head, tiny, stream)
    monkeypatch.setattr(classification_head, name, bug)
    fails(check_head, tiny, stream)
