"""ImageNet names and top-k predictions."""
import torch

from vit_inspect import top_k


def test_top_k_names_and_order():
    logits = torch.zeros(2, 1000)
    logits[0, 538], logits[0, 7], logits[1, 3] = 9.0, 5.0, 4.0
    result = top_k(logits, k=3)
    assert result.indices[0, :2].tolist() == [538, 7] and result.indices[1, 0] == 3
    assert result.names[0][0] == "dome"
    assert torch.all(result.probs[:, :-1] >= result.probs[:, 1:])
    torch.testing.assert_close(result.probs[0, 0], logits[0].softmax(-1)[538])
