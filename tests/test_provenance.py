"""Untrained weights where no parameter is a constant, so a hand computation that misuses one shows."""
from __future__ import annotations

import timm
import torch
import pytest

from vit_inspect.provenance import create_untrained

TAGGED_TINY = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"


torch.manual_seed(0)
PIXELS = torch.randn(2, 3, 224, 224)


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(PIXELS)


# ---------------------------------------------------------------- untrained weights that cannot hide a bug

def constant_at_timm_init(name: str) -> bool:
    """Parameters timm initialises to a constant: norm gamma/beta, linear biases, prefix tokens (~1e-6)."""
    kind = name.rsplit(".", 1)[-1]
    return name in ("cls_token", "reg_token", "dist_token") or (
        kind in ("weight", "bias") and ("norm" in name or kind == "bias") and "patch_embed" not in name)


@pytest.mark.parametrize("name, options", [
    ("vit_tiny_patch16_224", {}),
    ("vit_tiny_patch16_224", {"qk_norm": True, "init_values": 0.1, "reg_tokens": 2}),
    ("deit_tiny_distilled_patch16_224", {}),
])
def test_untrained_weights_have_no_constant_parameter(name, options):
    model = create_untrained(name, seed=0, **options)
    for key, param in model.named_parameters():
        assert float(param.detach().std()) > 0.01, f"{key} is (nearly) constant: a bug that misuses it would go unseen"
    with torch.no_grad():
        assert 0.2 < float(model.cls_token.std()) < 0.4, "the class token weighs like a patch token"
        assert 0.05 < float(model.pos_embed.std()) < 0.15
        gamma = model.blocks[0].norm1.weight
        assert 0.5 <= float(gamma.min()) and float(gamma.max()) <= 1.5


def test_timm_init_is_what_made_bugs_invisible():
    """The reason for randomise_constant_init: on timm's own init, swapping norm1 and norm2 changes nothing."""
    torch.manual_seed(0)
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    assert all(bool((p == p.flatten()[0]).all()) for n, p in plain.named_parameters() if n.endswith("norm1.weight"))
    before = logits(plain)
    with torch.no_grad():
        for block in plain.blocks:
            block.norm1, block.norm2 = block.norm2, block.norm1
    torch.testing.assert_close(logits(plain), before, rtol=0, atol=0)


def test_untrained_weights_are_seeded_and_leave_the_callers_random_state_alone():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    first, second = create_untrained(TAGGED_TINY, seed=2), create_untrained(TAGGED_TINY, seed=2)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)
    torch.testing.assert_close(first.state_dict(), second.state_dict(), rtol=0, atol=0)
    assert not torch.equal(first.cls_token, create_untrained(TAGGED_TINY, seed=3).cls_token)


def relative_change(wrong: torch.Tensor, right: torch.Tensor) -> float:
    return float((wrong - right).norm() / right.norm())


def one_image_logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(PIXELS[:1])


@pytest.fixture(scope="module")
def copy_of_tiny(tiny):
    import copy
    return copy.deepcopy(tiny)


def test_dropping_any_parameter_timm_sets_to_a_constant_changes_the_output(copy_of_tiny):
    """Each norm gamma (-> 1), norm beta and linear bias (-> 0), the class token (-> 0): one at a time."""
    model = copy_of_tiny
    right = one_image_logits(model)
    dropped = [name for name, _ in model.named_parameters() if constant_at_timm_init(name)]
    assert len(dropped) == 12 * 8 + 4  # per block: norm1 w/b, qkv b, proj b, norm2 w/b, fc1 b, fc2 b
    for name in dropped:
        param = model.get_parameter(name)
        saved = param.detach().clone()
        with torch.no_grad():
            param.fill_(1.0 if name.endswith("weight") else 0.0)  # only norms' weights are in the list
        change = relative_change(one_image_logits(model), right)
        with torch.no_grad():
            param.copy_(saved)
        assert change > 1e-3, f"dropping {name} changes the logits by only {change:.1e}"
    torch.testing.assert_close(one_image_logits(model), right, rtol=0, atol=0)


@pytest.mark.parametrize("misuse", ["norm2 for norm1", "norm1 for norm2", "position embedding shifted by one",
                                    "position embedding dropped"])
def test_using_a_parameter_in_the_wrong_place_changes_the_output(copy_of_tiny, misuse):
    model = copy_of_tiny
    right = one_image_logits(model)
    saved = [(block.norm1, block.norm2) for block in model.blocks]
    pos = model.pos_embed.detach().clone()
    with torch.no_grad():
        for block in model.blocks:
            if misuse == "norm2 for norm1":
                block.norm1 = block.norm2
            elif misuse == "norm1 for norm2":
                block.norm2 = block.norm1
        if misuse == "position embedding shifted by one":
            model.pos_embed.copy_(pos.roll(1, dims=1))
        elif misuse == "position embedding dropped":
            model.pos_embed.zero_()
    try:
        change = relative_change(one_image_logits(model), right)
    finally:
        with torch.no_grad():
            for block, (norm1, norm2) in zip(model.blocks, saved):
                block.norm1, block.norm2 = norm1, norm2
            model.pos_embed.copy_(pos)
    assert change > 1e-3, f"{misuse}: logits change by only {change:.1e}"
