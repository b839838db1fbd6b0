"""Model facts and the one token -> grid layout that every heatmap goes through."""
import itertools

import pytest
import torch

from vit_inspect import (VitInspectError, create_untrained, grid_size_of, num_prefix_tokens_of, patch_size_of,
                         token_index, tokens_to_grid)


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_tokens_to_grid_drops_the_prefix_and_lays_patches_out_row_major(prefix):
    gh, gw = 3, 4  # not square: a transposed layout cannot pass
    values = torch.full((2, 6, prefix + gh * gw), -1.0)  # (..., N)
    for row, col in itertools.product(range(gh), range(gw)):
        values[..., token_index(row, col, (gh, gw), prefix)] = 10 * row + col
    grid = tokens_to_grid(values, (gh, gw), prefix)
    assert grid.shape == (2, 6, gh, gw)
    assert grid[1, 5, 2, 3] == 23 and grid[0, 0, 1, 0] == 10 and grid[0, 0, 0, 3] == 3
    assert (grid >= 0).all(), "a prefix token leaked into the grid"


def test_token_index_counts_the_prefix_first():
    assert token_index(0, 0, (14, 14), 1) == 1
    assert token_index(2, 5, (14, 14), 1) == 1 + 2 * 14 + 5
    assert token_index(1, 0, (3, 4), 5) == 5 + 4
    with pytest.raises(VitInspectError, match="rows 0..13"):
        token_index(14, 0, (14, 14), 1)


def test_a_grid_that_does_not_fit_the_tokens_is_a_one_line_error():
    with pytest.raises(VitInspectError, match="197 tokens do not match 1 prefix \\+ 14x15 patches"):
        tokens_to_grid(torch.zeros(197), (14, 15), 1)


def test_facts_of_models_and_inputs():
    registers = create_untrained("vit_small_patch14_reg4_dinov2", img_size=224)
    assert (patch_size_of(registers), grid_size_of(registers), num_prefix_tokens_of(registers)) == (14, (16, 16), 5)
    tiny32 = create_untrained("vit_base_patch32_224", depth=1)
    assert grid_size_of(tiny32, torch.zeros(1, 3, 160, 224)) == (5, 7)
