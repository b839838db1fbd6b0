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


def test_a_head_that_is_not_imagenet_gets_no_imagenet_names():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0, 0.5, 0.1, 0.2, 0.3, 0.4]])  # 10 classes, e.g. digits
    assert top_k(logits, k=3).names == [["1", "3", "2"]]
    assert top_k(torch.zeros(1, 1000).index_fill(1, torch.tensor([538]), 5.0)).names[0][0] == "dome"
