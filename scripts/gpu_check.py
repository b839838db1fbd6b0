"""Run the inspection helpers on a CUDA device and compare with the CPU (not part of CI).

    python scripts/gpu_check.py      # needs a GPU; prints GPU CHECK OK
"""
import torch, timm
from vit_inspect import (attention_rollout, average_attention_distance, capture, create_untrained,
                         mean_attention_distance, pos_embed_similarity, run_blocks_one_at_a_time,
                         self_attention_by_hand, timm_attention_weights, tokens_with_position)
from vit_inspect.recorder import fused_attention_flags
print(torch.__version__, timm.__version__, torch.cuda.get_device_name(0))
m = create_untrained("vit_base_patch16_224")
x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
cpu = capture(m, x)
g = m.to("cuda"); xg = x.cuda()
flags = fused_attention_flags(g)
out = capture(g, xg)
assert out["attention"].is_cuda and fused_attention_flags(g) == flags
torch.testing.assert_close(out["attention"].cpu(), cpu["attention"], atol=2e-3, rtol=1e-2)
torch.testing.assert_close(out["logits"].cpu(), cpu["logits"], atol=2e-2, rtol=1e-2)
with torch.inference_mode():
    torch.testing.assert_close(out["logits"], g(xg))
r = attention_rollout(out["attention"]); d = mean_attention_distance(out["attention"], (14, 14), 1, 16)
torch.testing.assert_close(r.sum(-1), torch.ones(4, 197, device="cuda"))
print("rollout", r.shape, r.device, "distance", d.shape, d.device, float(d.mean()))
buf = torch.empty_like(out["attention"])
assert capture(g, xg, attention_out=buf)["attention"].data_ptr() == buf.data_ptr()
print("avg distance", average_attention_distance(g, [xg[:2], xg[2:]]).shape)
with torch.no_grad():
    z0 = tokens_with_position(g, g.patch_embed(xg))
    steps = self_attention_by_hand(g.blocks[0], z0)
    torch.testing.assert_close(steps["attn"], timm_attention_weights(g.blocks[0], z0))
    torch.testing.assert_close(steps["out"], g.blocks[0].attn(g.blocks[0].norm1(z0)))
    res = run_blocks_one_at_a_time(g, xg)
    print("run_blocks keys", list(res))
print("pos sim", pos_embed_similarity(g).device)
from vit_inspect import TrainConfig, build_vit, load_dataset, predict_logits, train_vit
digits = load_dataset("digits")
small = build_vit()
history = train_vit(small, digits, TrainConfig(epochs=3), progress=False)  # on the GPU: there is one
assert small.pos_embed.device.type == "cpu" and not small.training
torch.testing.assert_close(history["test_accuracy"][-1].double(),
                           (predict_logits(small, digits.test_images).argmax(-1) == digits.test_labels).double().mean(),
                           rtol=0, atol=2 / 360)  # GPU vs CPU numerics may flip a borderline image
print("train_vit on cuda, 3 epochs: test accuracy", [round(float(a), 3) for a in history["test_accuracy"]])
print("GPU CHECK OK")
