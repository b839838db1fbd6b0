"""Notebook 07_from_scratch: a Vision Transformer written out in plain PyTorch that runs timm's weights.

:class:`ScratchViT` is the paper's ViT in short modules: :class:`PatchEmbedding` (cut
P x P patches with einops, flatten, multiply by E), the class token, the learned position
embedding, L pre-norm :class:`Block` s (:class:`MultiHeadAttention` written out:
qkv -> (B, N, 3, H, d) -> softmax(q k^T / sqrt(d)) -> A v -> proj; :class:`MLP` with GELU),
the final LayerNorm and the head on the class token.

:func:`from_timm` copies the weights of a timm ``VisionTransformer`` into it through one
documented key mapping (:data:`SCRATCH_FROM_TIMM`) and refuses, naming the keys or the
setting, any architecture it cannot hold (registers, no class token, gated attention,
LayerScale, ...); :meth:`ScratchViT.to_timm_state_dict` goes back. :func:`timm_steps`
records what timm computes at each stage of one forward pass, so the two models can be
compared module by module (:func:`step_differences`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn

from .errors import VitInspectError
from .recorder import capture

# scratch parameter <- timm parameter; "{i}" runs over the blocks. Every tensor is copied as it
# is, except E: timm keeps it as a Conv2d kernel (D, C, P, P), the scratch model as the Linear
# it is, (D, P*P*C), flattened in the order PatchEmbedding cuts the patches (p1 p2 c).
SCRATCH_FROM_TIMM: tuple[tuple[str, str], ...] = (
    ("patch_embedding.projection.weight", "patch_embed.proj.weight"),
    ("patch_embedding.projection.bias", "patch_embed.proj.bias"),
    ("class_token", "cls_token"),
    ("position_embedding", "pos_embed"),
    ("blocks.{i}.norm1.weight", "blocks.{i}.norm1.weight"),
    ("blocks.{i}.norm1.bias", "blocks.{i}.norm1.bias"),
    ("blocks.{i}.attention.qkv.weight", "blocks.{i}.attn.qkv.weight"),
    ("blocks.{i}.attention.qkv.bias", "blocks.{i}.attn.qkv.bias"),
    ("blocks.{i}.attention.proj.weight", "blocks.{i}.attn.proj.weight"),
    ("blocks.{i}.attention.proj.bias", "blocks.{i}.attn.proj.bias"),
    ("blocks.{i}.norm2.weight", "blocks.{i}.norm2.weight"),
    ("blocks.{i}.norm2.bias", "blocks.{i}.norm2.bias"),
    ("blocks.{i}.mlp.fc1.weight", "blocks.{i}.mlp.fc1.weight"),
    ("blocks.{i}.mlp.fc1.bias", "blocks.{i}.mlp.fc1.bias"),
    ("blocks.{i}.mlp.fc2.weight", "blocks.{i}.mlp.fc2.weight"),
    ("blocks.{i}.mlp.fc2.bias", "blocks.{i}.mlp.fc2.bias"),
    ("final_norm.weight", "norm.weight"),
    ("final_norm.bias", "norm.bias"),
    ("head.weight", "head.weight"),
    ("head.bias", "head.bias"),
)
PATCH_WEIGHT = "patch_embedding.projection.weight"


@dataclass(frozen=True)
class ScratchConfig:
    """The numbers that define a plain ViT; the defaults are ViT-B/16 at 224 x 224 with 1000 classes."""

    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    dim: int = 768          # D
    depth: int = 12         # L
    num_heads: int = 12     # H; d = D / H
    mlp_dim: int = 3072     # 4 D
    num_classes: int = 1000  # 0: no head, the model returns the class token's features
    qkv_bias: bool = True
    eps: float = 1e-6       # LayerNorm epsilon (timm's; the Hugging Face checkpoints say 1e-12)

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size


class PatchEmbedding(nn.Module):
    """Cut P x P patches, flatten each to P*P*C numbers, multiply by E: (B, C, H, W) -> (B, gh*gw, D)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Linear(patch_size * patch_size * in_chans, dim)  # E and its bias

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        P = self.patch_size
        patches = rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=P, p2=P)  # (B, gh*gw, P*P*C)
        return self.projection(patches)  # (B, gh*gw, D)


class MultiHeadAttention(nn.Module):
    """softmax(q k^T / sqrt(d)) v for H heads of d = D / H, heads side by side, then proj: (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5  # 1/sqrt(d) = 1/8 for ViT-B: the per-head size, not D
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the output (B, N, D) and the attention weights A (B, H, N, N), rows summing to 1."""
        B, N, D = x.shape
        H, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(B, N, 3, H, d)  # (B, N, 3, H, d): q | k | v, each H heads of d
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, d)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N), scaled before the softmax
        attn = scores.softmax(dim=-1)  # (B, H, N, N)
        return self.proj(self.merge_heads(attn @ v)), attn  # (B, N, D)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        """[SA_1; ...; SA_H]: the heads' outputs side by side, head after head: (B, H, N, d) -> (B, N, H*d)."""
        return rearrange(x, "b h n d -> b n (h d)")  # (B, N, H*d)


class MLP(nn.Module):
    """fc2(GELU(fc1(x))): (B, N, D) -> (B, N, D) via (B, N, mlp_dim)."""

    def __init__(self, dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.act = nn.GELU()  # exact: x * Phi(x)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, N, D)


class Block(nn.Module):
    """One pre-norm encoder block: z' = MSA(LN(z)) + z, then z'' = MLP(LN(z')) + z'."""

    def __init__(self, config: ScratchConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim, eps=config.eps)
        self.attention = MultiHeadAttention(config.dim, config.num_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(config.dim, eps=config.eps)
        self.mlp = MLP(config.dim, config.mlp_dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the block's output (B, N, D) and its attention weights (B, H, N, N)."""
        attended, attn = self.attention(self.norm1(z))  # (B, N, D), (B, H, N, N)
        z = z + attended  # first residual
        return z + self.mlp(self.norm2(z)), attn  # second residual: (B, N, D)


class ScratchViT(nn.Module):
    """Patch embedding, class token, position embedding, L blocks, final LayerNorm, head on the class token."""

    def __init__(self, config: ScratchConfig = ScratchConfig()) -> None:
        super().__init__()
        gh, gw = config.grid
        D = config.dim
        self.config = config
        self.patch_embedding = PatchEmbedding(config.patch_size, config.in_chans, D)
        self.class_token = nn.Parameter(torch.zeros(1, 1, D))  # x_class, the same for every image
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + gh * gw, D))  # E_pos, one row per token
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(D, eps=config.eps)
        self.head = nn.Linear(D, config.num_classes) if config.num_classes else nn.Identity()
        nn.init.trunc_normal_(self.class_token, std=0.02)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)

    def tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """z0 = [x_class; patches] + E_pos: (B, gh*gw, D) -> (B, N, D), the class token at 0."""
        B = patches.shape[0]
        class_token = self.class_token.expand(B, -1, -1)  # (B, 1, D)
        return torch.cat([class_token, patches], dim=1) + self.position_embedding  # (B, N, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes) (features (B, D) without a head)."""
        z = self.tokens(self.patch_embedding(self._checked(images)))  # (B, N, D)
        for block in self.blocks:
            z, _ = block(z)  # (B, N, D)
        return self.head(self.final_norm(z)[:, 0])  # y = LN(z_L^0) -> head

    def forward_steps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage of one forward pass, keyed like :func:`timm_steps`.

        patches (B, gh*gw, D), tokens (B, N, D), blocks (B, L, N, D) (each block's output),
        attention (B, L, H, N, N), normed (B, N, D) (after the final norm), logits (B, C).
        """
        patches = self.patch_embedding(self._checked(images))  # (B, gh*gw, D)
        z = tokens = self.tokens(patches)  # (B, N, D)
        outputs, weights = [], []
        for block in self.blocks:
            z, attn = block(z)  # (B, N, D), (B, H, N, N)
            outputs.append(z)
            weights.append(attn)
        normed = self.final_norm(z)  # (B, N, D)
        return {"patches": patches, "tokens": tokens, "blocks": torch.stack(outputs, dim=1),  # (B, L, N, D)
                "attention": torch.stack(weights, dim=1), "normed": normed,  # (B, L, H, N, N)
                "logits": self.head(normed[:, 0])}  # (B, C)

    def _checked(self, images: torch.Tensor) -> torch.Tensor:
        expected = (self.config.in_chans, *self.config.img_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise VitInspectError(f"images of shape {tuple(images.shape)}: this model takes (B, {expected[0]}, "
                                  f"{expected[1]}, {expected[2]}); its position embedding has one row per "
                                  f"patch of a {self.config.grid[0]}x{self.config.grid[1]} grid")
        return images

    def to_timm_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under timm's keys and shapes; ``timm_model.load_state_dict`` takes it as it is."""
        state = self.state_dict()
        P, C = self.config.patch_size, self.config.in_chans
        return {timm_key: (_conv_kernel(state[key], P, C) if key == PATCH_WEIGHT else state[key]).clone()
                for key, timm_key in key_pairs(self.config)}


def key_pairs(config: ScratchConfig) -> list[tuple[str, str]]:
    """:data:`SCRATCH_FROM_TIMM` spelled out for ``config``: (scratch key, timm key) for every tensor."""
    absent = set() if config.qkv_bias else {"blocks.{i}.attention.qkv.bias"}
    if not config.num_classes:  # no head: the model returns the class token's features
        absent |= {"head.weight", "head.bias"}
    pairs = []
    for scratch_key, timm_key in SCRATCH_FROM_TIMM:
        if scratch_key not in absent:
            blocks = range(config.depth) if "{i}" in scratch_key else [None]
            pairs += [(scratch_key.format(i=i), timm_key.format(i=i)) for i in blocks]
    return pairs


def _linear_weight(kernel: torch.Tensor) -> torch.Tensor:
    """E as timm's Conv2d kernel (D, C, P, P) -> the Linear weight (D, P*P*C), in the order patches are cut."""
    return rearrange(kernel, "d c p1 p2 -> d (p1 p2 c)")  # (D, P*P*C)


def _conv_kernel(weight: torch.Tensor, patch_size: int, in_chans: int) -> torch.Tensor:
    """The inverse of :func:`_linear_weight`: (D, P*P*C) -> (D, C, P, P)."""
    return rearrange(weight, "d (p1 p2 c) -> d c p1 p2", p1=patch_size, p2=patch_size, c=in_chans)


def from_timm(model: nn.Module) -> ScratchViT:
    """A :class:`ScratchViT` (eval mode) holding a copy of the timm ViT ``model``'s weights.

    Keys follow :data:`SCRATCH_FROM_TIMM`. Raises :class:`VitInspectError`, naming the keys
    or the setting, for anything the plain ViT cannot hold: no class token, registers or a
    distillation token, no learned position embedding, pooling other than the class token,
    gated attention, LayerScale, q/k norms, another activation or norm, extra modules.
    """
    config = scratch_config_of(model)
    state = model.state_dict()
    with torch.device("meta"):  # no memory, no random init: every tensor is replaced by a copy below
        scratch = ScratchViT(config)
    scratch.load_state_dict({key: (_linear_weight(state[timm_key]) if key == PATCH_WEIGHT else state[timm_key]).clone()
                             for key, timm_key in key_pairs(config)}, assign=True)
    return scratch.eval()


def scratch_config_of(model: nn.Module) -> ScratchConfig:
    """The :class:`ScratchConfig` of a timm ViT that a plain ViT can hold exactly.

    Raises :class:`VitInspectError` naming the setting or the keys otherwise (see :func:`from_timm`).
    """
    _check_architecture(model)
    block = model.blocks[0]
    config = ScratchConfig(img_size=tuple(int(s) for s in model.patch_embed.img_size),
                           patch_size=int(model.patch_embed.patch_size[0]),
                           in_chans=model.patch_embed.proj.in_channels, dim=model.embed_dim,
                           depth=len(model.blocks), num_heads=block.attn.num_heads,
                           mlp_dim=block.mlp.fc1.out_features, num_classes=model.num_classes,
                           qkv_bias=block.attn.qkv.bias is not None, eps=block.norm1.eps)
    _check_keys(model, model.state_dict(), [timm_key for _, timm_key in key_pairs(config)])
    return config


def _cannot_hold(model: nn.Module, reason: str) -> VitInspectError:
    name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
    return VitInspectError(f"{name} is not a plain ViT (what ScratchViT and Hugging Face's ViT hold): {reason}")


def _check_architecture(model: nn.Module) -> None:
    """Settings that change the computation without showing in the keys."""
    if not all(hasattr(model, name) for name in ("patch_embed", "blocks", "pos_embed", "global_pool")):
        raise _cannot_hold(model, "not a timm VisionTransformer (needs patch_embed, blocks, pos_embed)")
    problems = _prefix_problems(model) + _layout_problems(model) + _block_problems(model)
    if problems:
        raise _cannot_hold(model, "; ".join(problems))


def _prefix_problems(model: nn.Module) -> list[str]:
    problems = []
    if getattr(model, "cls_token", None) is None:
        problems.append("no class token (key cls_token missing)")
    if getattr(model, "reg_token", None) is not None:
        count = model.reg_token.shape[1]
        problems.append(f"{count} register token{'s' if count != 1 else ''} (key reg_token)")
    if getattr(model, "dist_token", None) is not None:
        problems.append("a distillation token (key dist_token)")
    if model.pos_embed is None:
        problems.append("no learned absolute position embedding (key pos_embed missing)")
    elif getattr(model, "no_embed_class", False):
        problems.append("pos_embed has no row for the class token (no_embed_class=True)")
    return problems


def _layout_problems(model: nn.Module) -> list[str]:
    problems = []
    if model.global_pool != "token":
        problems.append(f"global_pool={model.global_pool!r}, the head does not read the class token")
    proj = model.patch_embed.proj
    if not isinstance(proj, nn.Conv2d) or proj.kernel_size != proj.stride:
        problems.append("patch_embed.proj is not a Conv2d with kernel = stride = patch size")
    return problems


def _block_problems(model: nn.Module) -> list[str]:
    from timm.layers import Attention, Mlp
    from timm.models.vision_transformer import Block as TimmBlock

    expected = {"blocks": TimmBlock, "blocks.*.attn": Attention, "blocks.*.mlp": Mlp}
    found = {"blocks": {type(b) for b in model.blocks},
             "blocks.*.attn": {type(getattr(b, "attn", None)) for b in model.blocks},
             "blocks.*.mlp": {type(getattr(b, "mlp", None)) for b in model.blocks}}
    problems = [f"{where} is {', '.join(sorted(t.__name__ for t in found[where]))}, not timm's {kind.__name__}"
                for where, kind in expected.items() if found[where] != {kind}]
    if problems:
        return problems
    block = model.blocks[0]
    if block.attn.qkv.out_features != 3 * model.embed_dim:
        problems.append(f"attention width {block.attn.qkv.out_features // 3} differs from D = {model.embed_dim}")
    if any(getattr(b.attn, "gate", None) is not None for b in model.blocks):
        problems.append("gated attention (keys blocks.*.attn.gate.*)")
    act = block.mlp.act
    if type(act) is not nn.GELU or act.approximate != "none":
        problems.append(f"blocks.*.mlp.act is {act!r}, not the exact GELU")
    return problems + _norm_problems(model)


def _norm_problems(model: nn.Module) -> list[str]:
    norms = {"norm": model.norm, **{f"blocks.{i}.{n}": getattr(b, n) for i, b in enumerate(model.blocks)
                                     for n in ("norm1", "norm2")}}
    odd = sorted(name for name, norm in norms.items() if not isinstance(norm, nn.LayerNorm))
    if odd:
        return [f"{', '.join(odd[:3])} {'is' if len(odd) == 1 else 'are'} not LayerNorm"]
    eps = {norm.eps for norm in norms.values()}
    return [] if len(eps) == 1 else [f"LayerNorms with different eps {sorted(eps)}"]


def _check_keys(model: nn.Module, state: dict[str, torch.Tensor], expected: list[str]) -> None:
    """Every timm tensor must have a place in the scratch model, and every place a tensor."""
    extra = sorted(set(state) - set(expected), key=_natural)
    missing = sorted(set(expected) - set(state), key=_natural)
    parts = [f"{label} ({_preview(keys)})" for label, keys in
             (("keys it has no place for", extra), ("keys it needs but the model lacks", missing)) if keys]
    if parts:
        raise _cannot_hold(model, "; ".join(parts))


def _natural(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _preview(keys: list[str], limit: int = 4) -> str:
    more = f", ... {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def timm_steps(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the timm ViT ``model`` computes at each stage of ONE forward pass of ``images``.

    Same keys and shapes as :meth:`ScratchViT.forward_steps`: patches (B, gh*gw, D) from
    ``patch_embed``, tokens (B, N, D) after ``_pos_embed`` (the output of ``pos_drop``),
    blocks (B, L, N, D) and attention (B, L, H, N, N) from :func:`capture`, normed (B, N, D)
    from ``norm``, logits (B, C). Model in eval mode; its hooks and flags are restored.
    """
    seen: dict[str, torch.Tensor] = {}
    hooks = [getattr(model, module).register_forward_hook(_keep(seen, key))
             for key, module in (("patches", "patch_embed"), ("tokens", "pos_drop"), ("normed", "norm"))]
    try:
        out = capture(model, images, blocks=True)
    finally:
        for hook in hooks:
            hook.remove()
    B, D = images.shape[0], seen["tokens"].shape[-1]
    recorded = {key: value.clone() for key, value in seen.items()}  # normal tensors, not inference-mode ones
    recorded["patches"] = recorded["patches"].reshape(B, -1, D)  # (B, gh*gw, D), also for dynamic_img_size
    return {**recorded, "blocks": out["blocks"], "attention": out["attention"], "logits": out["logits"]}


def _keep(seen: dict[str, torch.Tensor], key: str):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen[key] = output
    return hook


def step_differences(steps: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """max |steps - reference| per stage; "blocks" and "attention" per block: (L,), the others 0-dim."""
    differences = {}
    for key, expected in reference.items():
        if steps[key].shape != expected.shape:
            raise VitInspectError(f"{key}: shape {tuple(steps[key].shape)} vs {tuple(expected.shape)}")
        gap = (steps[key].detach() - expected.detach()).abs()  # same shape as the stage
        differences[key] = gap.transpose(0, 1).flatten(1).amax(dim=1) if key in ("blocks", "attention") else gap.max()
    return differences


class ParameterRow(NamedTuple):
    module: str   # "blocks.0.attention.qkv"; a bare parameter is its own row ("class_token")
    shapes: str   # "(2304, 768) + (2304,)": weight, then bias
    count: int


def parameter_table(model: nn.Module) -> list[ParameterRow]:
    """One row per module that holds parameters itself (bare parameters one row each), in model order."""
    rows = []
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not name:  # the model's own tensors: class token, position embedding
            rows += [ParameterRow(key, str(tuple(p.shape)), p.numel()) for key, p in own]
        elif own:
            rows.append(ParameterRow(name, " + ".join(str(tuple(p.shape)) for _, p in own),
                                     sum(p.numel() for _, p in own)))
    return rows


def parameter_groups(rows: list[ParameterRow]) -> dict[str, int]:
    """Parameters per top-level part (patch embedding, class token, ..., blocks, head) and the "total"."""
    groups: dict[str, int] = {}
    for row in rows:
        part = row.module.split(".")[0]
        groups[part] = groups.get(part, 0) + row.count
    return {**groups, "total": sum(groups.values())}


def perturb_parameters(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Add seeded N(0, std^2) noise to every parameter of ``model``, in place; returns ``model``.

    A freshly initialised timm ViT has every LayerNorm at gain 1 / bias 0, every bias 0
    and a class token near 0: a model that mixed up norm1 and norm2, or dropped a bias,
    would still agree with it. After this, every parameter matters. The weights stay
    untrained; the caller's random state is untouched.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)  # parameter's shape
            parameter.add_(noise.to(parameter.device) * std)
    return model
