"""Homework self-check, kernel side: each task's reference and the mistakes it recognises.

Shared tooling, not a notebook module. It serves ``vit-inspect check`` (see
:mod:`vit_inspect.homework`), which executes a student's notebook and, right after each
task cell, calls :func:`report_task` inside the student's own kernel. The reference is
computed there with the package's helpers, from the same model and image the notebook
uses (the kernel's ``model`` and ``image_path``), so it holds for any weights, trained or
not. When a task fails, the student's tensor is compared with what each of the course's
classic mistakes would give (qkv without norm1, no 1/sqrt(d), patches from the
un-resized image, ...), and the advice names the first one that matches. A failed task's
variables are then replaced by the reference, so each later task is checked on its own.

A right value is not enough: the cell's source, read against the kernel's objects, must not
call what computes the answer (the model's own forward or module, torch's ready-made op, the
package's helper under any name, the checker) nor read a variable that already holds it or
type it in (:func:`cheats`). The notebooks' graded check cells call :func:`check_answer`,
which runs the same check in the student's own kernel and raises with the advice: the
reference never appears in the notebook, where the student's code could read it.

A new task (an exercise with a reference) is one :class:`Task` entry in :data:`TASKS`.
"""
from __future__ import annotations

import ast
import math
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import to_tensor

from .attention_by_hand import self_attention_by_hand
from .attention_maps import attention_rollout, mean_attention_distance, patch_distances
from .classification_head import head_by_hand
from .encoder_stack import gelu_exact, gelu_tanh, linear_by_hand, run_blocks_one_at_a_time
from .images import data_config_of, load_image, preprocess
from .model_info import grid_size_of, num_prefix_tokens_of, patch_size_of
from .patches import patchify
from .position_embeddings import patch_pos_embed, pos_embed_similarity, tokens_with_position

RESULT_MIME = "application/vnd.vit-inspect.check+json"
RELATIVE_TOLERANCE = 1e-4  # ||student - reference|| / ||reference||: float32 round-off, not a mistake
AFFINE_TOLERANCE = 0.05    # residual of a per-channel a * x + b fit: "the same pixels, scaled otherwise"

Tensors = dict[str, torch.Tensor]
_MISSING = object()  # a variable the student's cell did not assign


class MissingGiven(Exception):
    """The notebook did not define a variable the reference needs (``model``, ``image_path``)."""


# ---------------------------------------------------------------- context

def variable(name: str, params: dict[str, Any]) -> str:
    """The notebook's name for ``name``: an exercise may rename (``{"names": {"patches": "patches_32"}}``)."""
    return params.get("names", {}).get(name, name)


class Context:
    """What the notebook gave the task: its model and image, and the reference inputs built from them.

    ``params`` come from the task cell's metadata: ``block`` (default 0), ``patch_size``
    (default the model's) and ``names`` (the notebook's names for the model, the image
    and the task's variables, where an exercise uses others).
    """

    def __init__(self, namespace: dict[str, Any], params: dict[str, Any]):
        self.namespace, self.params = namespace, params

    def given(self, name: str) -> Any:
        name = variable(name, self.params)
        if name not in self.namespace:
            raise MissingGiven(name)
        return self.namespace[name]

    @property
    def model(self) -> nn.Module:
        return self.given("model")

    @cached_property
    def pre(self):
        return preprocess(self.given("image_path"), self.model)

    @property
    def x(self) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype  # a notebook may run its model in float64
        return self.pre.tensor.to(dtype)  # (B, C, H, W)

    @property
    def P(self) -> int:
        return self.params.get("patch_size") or patch_size_of(self.model)

    @property
    def block(self) -> nn.Module:
        return self.model.blocks[self.params.get("block", 0)]

    @cached_property
    def block_input(self) -> torch.Tensor:
        z = tokens_with_position(self.model, self.model.patch_embed(self.x))  # (B, N, D)
        return self.model.blocks[:self.params.get("block", 0)](self.model.norm_pre(z))  # (B, N, D)

    def attention(self, mistake: str | None = None) -> Tensors:
        return self_attention_by_hand(self.block, self.block_input, mistake)

    @cached_property
    def stream(self) -> torch.Tensor:
        return run_blocks_one_at_a_time(self.model, self.x)["stream"][-1]  # (B, N, D)


# ---------------------------------------------------------------- comparing

def as_tensor(value: Any) -> torch.Tensor | None:
    """The student's value as a tensor (numbers, lists and arrays too); None if it is not one."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def batch_views(expected: torch.Tensor) -> list[torch.Tensor]:
    """Shapes a student may use: as is, or without a leading batch of 1 ((197, 3, 12, 64))."""
    views = [expected]
    if expected.ndim > 1 and expected.shape[0] == 1:
        views.append(expected[0])
    return views


def grid_views(expected: torch.Tensor) -> list[torch.Tensor]:
    """(gh, gw, gh, gw) similarity tiles, or the same as one (gh*gw, gh*gw) matrix (either way round)."""
    if expected.ndim == 4:
        gh, gw = expected.shape[:2]
        return [expected, expected.reshape(gh * gw, gh * gw)]  # (gh*gw, gh*gw)
    side = math.isqrt(expected.shape[-1])
    if expected.ndim == 2 and side * side == expected.shape[-1]:
        return [expected, expected.reshape(side, side, side, side)]  # (gh, gw, gh, gw), square grids
    return [expected]


def fitted(student: torch.Tensor, expected: torch.Tensor, views: Callable) -> torch.Tensor | None:
    """The view of ``expected`` with the student's shape, or None."""
    return next((view for view in views(expected) if view.shape == student.shape), None)


def relative_error(student: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return float((student.double() - expected).norm() / expected.norm().clamp_min(1e-12))


def same(student: torch.Tensor, expected: torch.Tensor, views: Callable = batch_views,
         tolerance: float = RELATIVE_TOLERANCE) -> bool:
    """Same shape (up to the allowed views) and the same values up to float32 round-off."""
    view = fitted(student, expected, views)
    if view is None:
        return False
    if not (view.is_floating_point() or student.is_floating_point()):
        return torch.equal(student.long(), view.long())
    return relative_error(student, view) <= tolerance


def same_shape(student: torch.Tensor, expected: torch.Tensor, views: Callable = batch_views) -> bool:
    return fitted(student, expected, views) is not None


def same_up_to_channel_affine(student: torch.Tensor, expected: torch.Tensor, views: Callable = batch_views) -> bool:
    """Patches (..., C*P*P) in (c s1 s2) order equal per channel up to a * x + b: other normalisation."""
    view = fitted(student, expected, views)
    if view is None or not student.is_floating_point():
        return False
    C = 3
    s = student.double().reshape(-1, C, view.shape[-1] // C).transpose(0, 1).reshape(C, -1)  # (C, values)
    e = view.double().reshape(-1, C, view.shape[-1] // C).transpose(0, 1).reshape(C, -1)  # (C, values)
    design = torch.stack([e, torch.ones_like(e)], dim=-1)  # (C, values, 2)
    coef = torch.linalg.lstsq(design, s.unsqueeze(-1)).solution  # (C, 2, 1)
    residual = (design @ coef).squeeze(-1) - s  # (C, values)
    return float(residual.norm() / s.norm().clamp_min(1e-12)) <= AFFINE_TOLERANCE


# ---------------------------------------------------------------- tasks

@dataclass(frozen=True)
class Mistake:
    """A classic mistake: what it would give (some of the task's outputs) and the advice that names it."""

    name: str
    advice: str
    outputs: Callable[[Context], Tensors]
    match: Callable[..., bool] = same


@dataclass(frozen=True)
class Task:
    """One homework task: the variables the student's cell must assign, and how to check them."""

    name: str
    title: str
    outputs: dict[str, str]                 # variable -> its shape in the legend's letters
    reference: Callable[[Context], Tensors]
    hint: str                               # one line: how to get it right
    mistakes: tuple[Mistake, ...] = ()
    by_hand: tuple[str, ...] = ()           # helpers whose call would be the answer itself
    views: Callable = batch_views
    comparators: dict[str, Callable] = field(default_factory=dict)
    tolerance: float = RELATIVE_TOLERANCE   # tighter where a mistake differs by less than 1e-4 (tanh GELU)
    forbidden: Callable[[Context], list[tuple[str, Any]]] = lambda ctx: []  # (what, object) whose call is the answer
    forbidden_methods: tuple[str, ...] = ()  # method names whose call reads the answer off the model (numel)


def _patch_reference(ctx: Context) -> Tensors:
    return {"patches": patchify(ctx.x, ctx.P)}  # (B, N, C*P*P)


def _normalised(ctx: Context, image) -> torch.Tensor:
    """A PIL image as the model's normalised input, whatever its size: (B, C, H, W)."""
    config = data_config_of(ctx.model)
    mean, std = (torch.tensor(config[key]).view(3, 1, 1) for key in ("mean", "std"))
    return ((to_tensor(image) - mean) / std).unsqueeze(0)  # (B, C, H, W)


def _original_patches(ctx: Context) -> Tensors:
    image = load_image(ctx.given("image_path"))
    P = ctx.P
    cropped = image.crop((0, 0, image.width // P * P, image.height // P * P))  # whole patches only
    return {"patches": patchify(_normalised(ctx, cropped), P)}  # (B, N_photo, C*P*P)


def _squashed_patches(ctx: Context) -> Tensors:
    from PIL import Image

    _, H, W = ctx.model.pretrained_cfg.get("input_size", (3, 224, 224))
    squashed = load_image(ctx.given("image_path")).resize((W, H), Image.BICUBIC)
    return {"patches": patchify(_normalised(ctx, squashed), ctx.P)}  # (B, N, C*P*P)


def _column_major(ctx: Context) -> Tensors:
    gh, gw = ctx.x.shape[-2] // ctx.P, ctx.x.shape[-1] // ctx.P
    patches = patchify(ctx.x, ctx.P)  # (B, N, C*P*P)
    B, N, V = patches.shape
    return {"patches": patches.reshape(B, gh, gw, V).transpose(1, 2).reshape(B, N, V)}  # (B, N, C*P*P)


def _patches_of_the_photo(student: torch.Tensor, expected: torch.Tensor, views: Callable = batch_views) -> bool:
    """Same number of values per patch, but as many patches as the un-resized photo has."""
    return student.shape[-1] == expected.shape[-1] and student.ndim >= 2 and student.shape[-2] == expected.shape[-2]


PATCH_SPLIT = Task(
    name="patch_split", title="patch split",
    outputs={"patches": "(B, N, C*P*P)"},
    reference=_patch_reference,
    hint="reshape x (B, C, H, W) to (B, C, gh, P, gw, P), permute to (B, gh, gw, C, P, P), flatten each patch",
    mistakes=(
        Mistake("channels_last", "each patch is flattened channels last (s1 s2 c), but the conv weight "
                "(D, C, P, P) reads channel first (c s1 s2)",
                lambda ctx: {"patches": patchify(ctx.x, ctx.P, "s1 s2 c")}),
        Mistake("column_major", "the patches are listed column by column; timm numbers them row by row "
                "(patch n = row * gw + col)", _column_major),
        Mistake("other_normalisation", "the pixels are scaled differently from x: cut the tensor that "
                "preprocess returns (the model's own mean/std), not to_tensor alone or hand-copied constants",
                _patch_reference, same_up_to_channel_affine),
        Mistake("squashed_image", "patches from the photo resized to 224x224 as a whole: the model sees its "
                "own resize + centre crop; cut x, the input preprocess returns",
                _squashed_patches, same_up_to_channel_affine),
        Mistake("original_image", "patches from the un-resized photo: cut the 224x224 input the model "
                "receives (x from preprocess), not the original image", _original_patches,
                _patches_of_the_photo),
    ),
    by_hand=("patchify", "patchify_einops", "patch_embed_by_hand"),
)


def _qkv_outputs(steps: Tensors, H: int, d: int) -> Tensors:
    B, N, _ = steps["qkv"].shape
    return {"qkv_heads": steps["qkv"].reshape(B, N, 3, H, d),  # (B, N, 3, H, d)
            "q": steps["q"], "k": steps["k"], "v": steps["v"]}  # each (B, H, N, d)


def _qkv_reference(ctx: Context, mistake: str | None = None) -> Tensors:
    return _qkv_outputs(ctx.attention(mistake), ctx.block.attn.num_heads, ctx.block.attn.head_dim)


def _heads_then_three(ctx: Context) -> Tensors:
    qkv = ctx.attention()["qkv"]  # (B, N, 3*H*d)
    B, N, _ = qkv.shape
    heads = qkv.reshape(B, N, ctx.block.attn.num_heads, 3, ctx.block.attn.head_dim)  # (B, N, H, 3, d)
    q, k, v = heads.permute(3, 0, 2, 1, 4)  # each (B, H, N, d)
    return {"qkv_heads": heads, "q": q, "k": k, "v": v}


def _no_permute(ctx: Context) -> Tensors:
    heads = _qkv_reference(ctx)["qkv_heads"]  # (B, N, 3, H, d)
    q, k, v = heads.unbind(2)  # each (B, N, H, d)
    return {"q": q, "k": k, "v": v}


QKV_SPLIT = Task(
    name="qkv_split", title="qkv reshape and split",
    outputs={"qkv_heads": "(B, N, 3, H, d)", "q": "(B, H, N, d)", "k": "(B, H, N, d)", "v": "(B, H, N, d)"},
    reference=_qkv_reference,
    hint="qkv = attn.qkv(block.norm1(z)); reshape to (B, N, 3, H, d); permute(2, 0, 3, 1, 4) gives q, k, v",
    mistakes=(
        Mistake("skip_norm1", "qkv was applied to z directly, skipping the block's LayerNorm: "
                "the block computes MSA(LN(z)), so use block.norm1(z) first",
                lambda ctx: _qkv_reference(ctx, "skip_norm1")),
        Mistake("heads_then_three", "reshaped to (B, N, H, 3, d): the 3*D outputs hold all of q, then all of "
                "k, then all of v, so reshape to (B, N, 3, H, d)", _heads_then_three),
        Mistake("q_k_swapped", "q and k are swapped: the first third of the qkv output is q",
                lambda ctx: {"q": ctx.attention()["k"], "k": ctx.attention()["q"]}),
        Mistake("no_permute", "q, k, v are (B, N, H, d): permute so that the heads come before the tokens, "
                "(B, H, N, d)", _no_permute, same_shape),
    ),
    by_hand=("self_attention_by_hand",),
)


def _attention_from(q: torch.Tensor, k: torch.Tensor, scale: float, dim: int = -1) -> Tensors:
    scores = q @ k.transpose(-2, -1) * scale  # (B, H, N, N)
    return {"scores": scores, "A": scores.softmax(dim=dim)}  # (B, H, N, N)


def _attention_reference(ctx: Context) -> Tensors:
    steps = ctx.attention()
    return {"scores": steps["scores"], "A": steps["attn"]}  # (B, H, N, N)


def _attention_mistake(ctx: Context, scale: Callable[[int, int], float], dim: int = -1) -> Tensors:
    steps = ctx.attention()
    B, N, D = ctx.block_input.shape
    return _attention_from(steps["q"], steps["k"], scale(D, steps["q"].shape[-1]), dim)


def _divide_after_softmax(ctx: Context) -> Tensors:
    D = ctx.block_input.shape[-1]
    wrong = _attention_mistake(ctx, lambda D, d: 1.0)
    return {"scores": wrong["scores"], "A": wrong["A"] / math.sqrt(D)}  # (B, H, N, N)


def _skip_norm1_attention(ctx: Context) -> Tensors:
    steps = ctx.attention("skip_norm1")
    return {"scores": steps["scores"], "A": steps["attn"]}  # (B, H, N, N)


ATTENTION = Task(
    name="attention", title="scaled softmax attention",
    outputs={"scores": "(B, H, N, N)", "A": "(B, H, N, N)"},
    reference=_attention_reference,
    hint="scores = q @ k.transpose(-2, -1) / sqrt(d) with d = 64 per head; A = scores.softmax(dim=-1)",
    mistakes=(
        Mistake("divide_after_softmax", "divided by sqrt(D) after the softmax: scale the scores by 1/sqrt(d) "
                "before it", _divide_after_softmax),
        Mistake("no_scale", "the scores are not scaled by 1/sqrt(d) = 1/sqrt(64) before the softmax, which "
                "makes it far too peaked", lambda ctx: _attention_mistake(ctx, lambda D, d: 1.0)),
        Mistake("scale_by_sqrt_D", "scaled by 1/sqrt(D), the model width, instead of 1/sqrt(d), the size of "
                "one head (64)", lambda ctx: _attention_mistake(ctx, lambda D, d: D ** -0.5)),
        Mistake("no_softmax", "no softmax: A must be softmax(scores), each row a distribution over the keys",
                lambda ctx: {"A": _attention_reference(ctx)["scores"]}),
        Mistake("softmax_over_queries", "softmax over the wrong axis: each query's row over the keys must sum "
                "to 1 (dim=-1)", lambda ctx: _attention_mistake(ctx, lambda D, d: d ** -0.5, dim=-2)),
        Mistake("skip_norm1", "q and k come from z without the block's LayerNorm: use the q, k of "
                "attn.qkv(block.norm1(z))", _skip_norm1_attention),
    ),
    by_hand=("self_attention_by_hand", "timm_attention_weights", "scaled_dot_product_attention", "capture"),
)


def _cosine(embeddings: torch.Tensor, dim: int = -1) -> torch.Tensor:
    unit = F.normalize(embeddings.double(), dim=dim)  # (N, D)
    return (unit @ unit.T).float()  # (N, N)


POS_SIMILARITY = Task(
    name="pos_similarity", title="position-embedding similarity",
    outputs={"similarity": "(gh, gw, gh, gw)"},
    reference=lambda ctx: {"similarity": pos_embed_similarity(ctx.model)},  # (gh, gw, gh, gw)
    hint="take pos_embed[0, 1:] (the patches), normalise each row to length 1, multiply by its transpose, "
         "reshape to (gh, gw, gh, gw)",
    mistakes=(
        Mistake("with_class_token", "the class token's embedding (row 0 of pos_embed) is included: keep the "
                "patches only, pos_embed[0, 1:]",
                lambda ctx: {"similarity": _cosine(ctx.model.pos_embed.detach()[0])}, same_shape),
        Mistake("dot_product", "dot products, not cosine similarity: normalise each embedding to length 1 "
                "first", lambda ctx: {"similarity": (lambda e: e @ e.T)(patch_pos_embed(ctx.model))}),
        Mistake("normalised_over_positions", "normalised along the wrong axis: each embedding (a row of D "
                "numbers) must have length 1, F.normalize(..., dim=-1)",
                lambda ctx: {"similarity": _cosine(patch_pos_embed(ctx.model), dim=0)}),
    ),
    by_hand=("pos_embed_similarity",),
    views=grid_views,
)


def _head_outputs(logits: torch.Tensor) -> Tensors:
    probs = logits.softmax(dim=-1)  # (B, C)
    top = probs.topk(5, dim=-1)
    return {"logits": logits, "probs": probs, "top5_probs": top.values, "top5_indices": top.indices}


def _head_mistake(ctx: Context, pool: str) -> Tensors:
    return _head_outputs(head_by_hand(ctx.model, ctx.stream, pool)["logits"])  # (B, C)


def _same_ranking(student: torch.Tensor, expected: torch.Tensor, reference: Tensors,
                  views: Callable = batch_views) -> bool:
    """The same top-5 classes in order, up to classes whose probabilities tie to round-off."""
    if fitted(student, expected, views) is None or student.is_floating_point():
        return False
    if same(student, expected, views):
        return True
    probs = reference["probs"].reshape(-1, reference["probs"].shape[-1])  # (B, C)
    taken = probs.gather(1, student.reshape(probs.shape[0], -1).long())  # (B, 5)
    return relative_error(taken, reference["top5_probs"].reshape(taken.shape)) <= RELATIVE_TOLERANCE


TOP5 = Task(
    name="top5", title="classification head and top-5",
    outputs={"logits": "(B, C)", "probs": "(B, C)", "top5_probs": "(B, 5)", "top5_indices": "(B, 5)"},
    reference=lambda ctx: _head_mistake(ctx, "token"),
    hint="final norm on the stream, take the class token (index 0), apply the head, softmax, topk(5)",
    mistakes=(
        Mistake("mean_pooling", "mean pooling over the patch tokens: ViT-B/16 classifies from the class token "
                "(index 0) after the final norm", lambda ctx: _head_mistake(ctx, "avg")),
        Mistake("mean_pooling_all", "mean over all tokens (class token included), like a from-scratch course "
                "head: ViT-B/16 uses the class token alone", lambda ctx: _head_mistake(ctx, "avg_all")),
        Mistake("no_final_norm", "the class token went into the head without the final LayerNorm (model.norm): "
                "y = LN(z_L^0)", lambda ctx: _head_outputs(linear_by_hand(ctx.model.head, ctx.stream[:, 0]))),
        Mistake("first_patch", "token 1 is the first patch: the class token is token 0",
                lambda ctx: _head_outputs(linear_by_hand(ctx.model.head, ctx.model.norm(ctx.stream)[:, 1]))),
        Mistake("probs_are_logits", "top5_probs holds logits: take the top 5 of the softmax probabilities",
                lambda ctx: {"top5_probs": _head_mistake(ctx, "token")["logits"].topk(5, dim=-1).values}),
    ),
    by_hand=("head_by_hand", "classify_by_hand", "top_k"),
    comparators={"top5_indices": _same_ranking},
    forbidden=lambda ctx: [("the model's own forward", ctx.model), ("the model's own head module", ctx.model.head)],
)

def _layer_norm(z: torch.Tensor, norm: nn.LayerNorm, eps: float | None = None, dim: int = -1,
                unbiased: bool = False, affine: bool = True) -> torch.Tensor:
    """LayerNorm written out, with the knobs the classic mistakes turn: z's shape."""
    mean = z.mean(dim=dim, keepdim=True)
    var = z.var(dim=dim, keepdim=True, unbiased=unbiased)
    standardised = (z - mean) / torch.sqrt(var + (norm.eps if eps is None else eps))  # z's shape
    return standardised * norm.weight + norm.bias if affine else standardised


def _norm1_mistake(ctx: Context, norm: nn.LayerNorm | None = None, **knobs) -> Tensors:
    return {"normed": _layer_norm(ctx.block_input, norm or ctx.block.norm1, **knobs)}  # (B, N, D)


def _layer_norms(model: nn.Module) -> list[tuple[str, Any]]:
    """The model's own LayerNorm modules and torch's ready-made LayerNorm: calling any of them is the answer."""
    own = [(f"the model's own LayerNorm `{name}`", module) for name, module in model.named_modules()
           if isinstance(module, nn.LayerNorm)]
    return own + [("torch's LayerNorm", op) for op in (F.layer_norm, torch.layer_norm, nn.LayerNorm)]


LAYER_NORM = Task(
    name="layer_norm", title="LayerNorm by hand",
    outputs={"normed": "(B, N, D)"},
    reference=lambda ctx: {"normed": ctx.block.norm1(ctx.block_input)},  # (B, N, D)
    hint="per token, over its D numbers: (z - mean) / sqrt(biased variance + norm.eps), times gamma (norm.weight) "
         "plus beta (norm.bias)",
    mistakes=(
        Mistake("unbiased_variance", "the unbiased variance (divided by D - 1): LayerNorm divides by D, "
                "var(..., unbiased=False)", lambda ctx: _norm1_mistake(ctx, unbiased=True)),
        Mistake("default_eps", "eps = 1e-5 is PyTorch's default: use the module's own, norm.eps (1e-6 in timm's ViT)",
                lambda ctx: _norm1_mistake(ctx, eps=1e-5)),
        Mistake("no_gamma_beta", "gamma and beta are missing: LayerNorm ends with * norm.weight + norm.bias",
                lambda ctx: _norm1_mistake(ctx, affine=False)),
        Mistake("over_tokens", "normalised over the tokens (dim=-2): LayerNorm normalises each token over its own "
                "D features (dim=-1)", lambda ctx: _norm1_mistake(ctx, dim=-2)),
        Mistake("norm2_parameters", "gamma and beta of norm2: the block's first LayerNorm is norm1, MSA(LN1(z))",
                lambda ctx: _norm1_mistake(ctx, ctx.block.norm2)),
    ),
    by_hand=("layer_norm_by_hand", "layer_norm"),
    tolerance=1e-5,  # PyTorch's default eps changes ViT-B's LayerNorm by about 1e-4
    forbidden=lambda ctx: _layer_norms(ctx.model),
)


def _mlp_steps(ctx: Context, act: Callable | None = None, act_after_fc2: bool = False) -> Tensors:
    mlp = ctx.block.mlp
    act = act or mlp.act  # the module in hand: nn.GELU() (exact, erf) in timm's ViT-B/16
    hidden = act(mlp.fc1(ctx.block.norm2(ctx.block_input)))  # (B, N, 4D)
    out = mlp.fc2(mlp.norm(hidden))  # (B, N, D)
    return {"hidden": hidden, "mlp_out": act(out) if act_after_fc2 else out}


def _other_gelu(ctx: Context) -> Tensors:
    """The GELU form the model does not use: tanh where its act is exact, exact where it is the tanh one."""
    tanh = getattr(ctx.block.mlp.act, "approximate", "none") == "tanh"
    return _mlp_steps(ctx, gelu_exact if tanh else gelu_tanh)


def _mlp_modules(ctx: Context) -> list[tuple[str, Any]]:
    mlp = ctx.block.mlp
    return [("the model's own MLP module", mlp), ("the MLP's own fc1 module", mlp.fc1),
            ("the MLP's own fc2 module", mlp.fc2), ("the model's own block", ctx.block)]


MLP = Task(
    name="mlp", title="MLP by hand",
    outputs={"hidden": "(B, N, 4*D)", "mlp_out": "(B, N, D)"},
    reference=_mlp_steps,
    hint="hidden = GELU(x @ fc1.weight.T + fc1.bias) in the form the module uses (mlp.act.approximate: 'none' is "
         "the exact x Phi(x), 'tanh' the tanh approximation); mlp_out = hidden @ fc2.weight.T + fc2.bias",
    mistakes=(
        Mistake("other_gelu", "the other form of GELU than this model's: timm's ViT-B/16 uses nn.GELU() (approximate="
                "'none'), the exact x Phi(x) with erf, while the original JAX ViT calls flax's nn.gelu, whose default "
                "is the tanh approximation; use the form of the module in hand (read mlp.act.approximate)",
                _other_gelu),
        Mistake("relu", "ReLU instead of GELU: the ViT MLP uses GELU, x Phi(x), smooth and negative just below 0",
                lambda ctx: _mlp_steps(ctx, F.relu)),
        Mistake("no_activation", "no non-linearity between fc1 and fc2: two linear layers in a row are just one "
                "linear layer", lambda ctx: _mlp_steps(ctx, nn.Identity())),
        Mistake("activation_after_fc2", "GELU after fc2 as well: the MLP is fc2(GELU(fc1(x))), nothing after fc2",
                lambda ctx: _mlp_steps(ctx, act_after_fc2=True)),
    ),
    by_hand=("mlp_by_hand",),
    tolerance=1e-5,  # the tanh GELU changes ViT-B's MLP by about 2e-4, a ViT-Ti's by less than 1e-4
    forbidden=_mlp_modules,
)


def _captured(ctx: Context) -> torch.Tensor:
    """The notebook's captured attention (B, L, H, N, N), as a tensor."""
    attention = as_tensor(ctx.given("attention"))
    if attention is None or attention.ndim != 5:
        raise ValueError("`attention` should be the (B, L, H, N, N) tensor that capture returns")
    return attention


def _rollout_mistake(ctx: Context, identity: bool = True, renormalise: bool = True,
                     later_on_left: bool = True) -> Tensors:
    attention = _captured(ctx)
    B, L, H, N, _ = attention.shape
    mixed = attention.mean(dim=2)  # (B, L, N, N)
    if identity:
        mixed = mixed + torch.eye(N, dtype=mixed.dtype)  # (B, L, N, N)
    if renormalise:
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
    rollout = mixed[:, 0]  # (B, N, N)
    for layer in range(1, L):
        rollout = mixed[:, layer] @ rollout if later_on_left else rollout @ mixed[:, layer]  # (B, N, N)
    return {"rollout": rollout}


ROLLOUT = Task(
    name="rollout", title="attention rollout",
    outputs={"rollout": "(B, N, N)"},
    reference=lambda ctx: {"rollout": attention_rollout(_captured(ctx))},  # (B, N, N)
    hint="at every layer: mean over the heads, add the identity, renormalise each row to 1; then multiply the "
         "layers with later layers on the left, R = A'_11 ... A'_0",
    mistakes=(
        Mistake("no_identity", "no identity added: the residual connection carries each token past every "
                "attention layer, so each layer is normalise(A + I)", lambda ctx: _rollout_mistake(ctx, identity=False)),
        Mistake("not_renormalised", "the rows of A + I were not renormalised: they sum to 2, so the product grows "
                "2x per layer", lambda ctx: _rollout_mistake(ctx, renormalise=False)),
        Mistake("earlier_layers_on_the_left", "the layers are multiplied in the wrong order: the output token draws "
                "on the last layer first, R = A'_11 ... A'_0 (later layers on the left)",
                lambda ctx: _rollout_mistake(ctx, later_on_left=False)),
    ),
    by_hand=("attention_rollout",),
)


def _distances(ctx: Context) -> torch.Tensor:
    attention = _captured(ctx)
    grid, P = grid_size_of(ctx.model), ctx.P
    return mean_attention_distance(attention, grid, num_prefix_tokens_of(ctx.model), P)  # (B, L, H)


ATTENTION_DISTANCE = Task(
    name="attention_distance", title="mean attention distance",
    outputs={"distances": "(B, L, H)"},
    reference=lambda ctx: {"distances": _distances(ctx)},
    hint="drop the prefix tokens as queries and keys, renormalise each patch query's row over the patch keys, "
         "weight the pixel distances between patch centres, sum over the keys, mean over the query patches",
    mistakes=(
        Mistake("not_renormalised", "the rows were not renormalised over the patch keys: without the class token's "
                "column each row sums to less than 1 (or the class token was counted at distance 0)",
                lambda ctx: {"distances": _unrenormalised_distances(ctx)}),
        Mistake("in_patches", "distances in patches, not pixels: neighbouring patch centres are P = 16 px apart",
                lambda ctx: {"distances": _distances(ctx) / ctx.P}),
        Mistake("mean_over_keys", "the weighted distances were averaged over the keys: the attention weights already "
                "average them, so sum over the keys (then take the mean over the queries)",
                lambda ctx: {"distances": _distances(ctx) / math.prod(grid_size_of(ctx.model))}),
    ),
    by_hand=("mean_attention_distance", "average_attention_distance"),
)


def _unrenormalised_distances(ctx: Context) -> torch.Tensor:
    p = num_prefix_tokens_of(ctx.model)
    gaps = patch_distances(grid_size_of(ctx.model), ctx.P).to(torch.float64)  # (gh*gw, gh*gw)
    weights = _captured(ctx)[..., p:, p:].double()  # (B, L, H, gh*gw, gh*gw)
    return (weights * gaps).sum(dim=-1).mean(dim=-1)  # (B, L, H)


def _count(ctx: Context, left_out: Callable[[str, nn.Parameter], bool] = lambda name, param: False) -> Tensors:
    params = ctx.model.named_parameters()
    return {"num_params": torch.tensor(sum(p.numel() for name, p in params if not left_out(name, p)))}


def _layer_norm_params(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}


PARAM_COUNT = Task(
    name="param_count", title="parameter count",
    outputs={"num_params": "a number"},
    reference=_count,
    hint="patch embedding C*P*P*D + D, class token D, position embedding (1 + gh*gw)*D, per block two LayerNorms "
         "(2D each), qkv, proj, fc1, fc2 (weights and biases), the final LayerNorm 2D, the head D*C + C",
    mistakes=(
        Mistake("no_head", "the head is left out (D x 1000 weights + 1000 biases): the model's count includes it",
                lambda ctx: _count(ctx, lambda name, p: name.startswith("head."))),
        Mistake("no_tokens", "the class token and the position embedding are left out, as torchsummary does (it "
                "counts only the weights and biases of layers)",
                lambda ctx: _count(ctx, lambda name, p: name in ("cls_token", "pos_embed"))),
        Mistake("no_biases", "the biases are left out: every Linear, the patch-embedding conv and every LayerNorm "
                "(its beta) has one", lambda ctx: _count(ctx, lambda name, p: name.endswith("bias"))),
        Mistake("no_layer_norms", "the LayerNorms are left out: gamma and beta, D each, in the two of every block "
                "and the final one", lambda ctx: _count(ctx, lambda name, p: id(p) in _layer_norm_params(ctx.model))),
        Mistake("class_token_row", "D parameters short: the class token (1, 1, D), or the position embedding's row "
                "for it (1 + gh*gw rows, not gh*gw)",
                lambda ctx: {"num_params": _count(ctx)["num_params"] - ctx.model.cls_token.numel()}),
    ),
    by_hand=("parameter_table", "parameter_groups"),
    forbidden_methods=("numel", "parameters", "named_parameters", "state_dict", "nelement"),
)


def _weight_split(weight: torch.Tensor, order: tuple[int, int, int] = (0, 1, 2)) -> Tensors:
    D = weight.shape[1]
    parts = weight.reshape(3, D, D)  # (3, D, D): the rows of q, then of k, then of v
    return {name: parts[index] for name, index in zip(("W_q", "W_k", "W_v"), order)}  # each (D, D)


def _qkv_weight(ctx: Context) -> torch.Tensor:
    return ctx.block.attn.qkv.weight.detach()  # (3*D, D)


def _heads_then_three_rows(ctx: Context) -> Tensors:
    weight = _qkv_weight(ctx)
    D, H = weight.shape[1], ctx.block.attn.num_heads
    rows = weight.reshape(H, 3, D // H, D)  # (H, 3, d, D): rows read head by head
    return {name: rows[:, i].reshape(D, D) for i, name in enumerate(("W_q", "W_k", "W_v"))}  # each (D, D)


QKV_WEIGHT_SPLIT = Task(
    name="qkv_weight_split", title="qkv weight split",
    outputs={"W_q": "(D, D)", "W_k": "(D, D)", "W_v": "(D, D)"},
    reference=lambda ctx: _weight_split(_qkv_weight(ctx)),
    hint="the (3D, D) weight holds the rows of q, then of k, then of v: W_q = weight[:D], W_k = weight[D:2*D], "
         "W_v = weight[2*D:]",
    mistakes=(
        Mistake("q_k_swapped", "q and k are swapped: the first D rows of the qkv weight are the query's",
                lambda ctx: _weight_split(_qkv_weight(ctx), (1, 0, 2))),
        Mistake("transposed", "transposed: a Linear's weight is (out, in) in timm and transformers alike, so take "
                "the rows as they are", lambda ctx: {n: w.T for n, w in _weight_split(_qkv_weight(ctx)).items()}),
        Mistake("heads_then_three", "rows read head by head, as (H, 3, d): the qkv output is (3, H, d), all of q, "
                "then all of k, then all of v, so take blocks of D rows", _heads_then_three_rows),
        Mistake("split_columns", "split along the columns (the D inputs): the three blocks are of output rows, "
                "dim=0", lambda ctx: dict(zip(("W_q", "W_k", "W_v"), _qkv_weight(ctx).chunk(3, dim=1)))),
    ),
    by_hand=("split_qkv",),
)

TASKS: dict[str, Task] = {task.name: task for task in (
    PATCH_SPLIT, QKV_SPLIT, ATTENTION, POS_SIMILARITY, TOP5, LAYER_NORM, MLP, ROLLOUT, ATTENTION_DISTANCE,
    PARAM_COUNT, QKV_WEIGHT_SPLIT)}


# ---------------------------------------------------------------- checking one task

def forget_outputs(name: str, namespace: dict[str, Any], params: dict[str, Any] | None = None) -> None:
    """Drop the task's variables before its cell runs, so a stale value cannot pass for the student's."""
    for output in getattr(TASKS.get(name), "outputs", ()):
        namespace.pop(variable(output, params or {}), None)


def compare_output(task: Task, name: str, value: Any, reference: Tensors, label: str | None = None) -> dict[str, Any]:
    """Output ``name`` (the notebook's variable ``label``) against the reference.

    Status: match | missing | not_tensor | shape | values.
    """
    expected = reference[name]
    result = {"name": label or name, "output": name, "expected_shape": list(expected.shape)}
    if value is _MISSING:
        return {**result, "status": "missing"}
    student = as_tensor(value)
    if student is None:
        return {**result, "status": "not_tensor", "type": type(value).__name__}
    result["shape"] = list(student.shape)
    view = fitted(student, expected, task.views)
    if view is None:
        return {**result, "status": "shape"}
    comparator = task.comparators.get(name)
    ok = (comparator(student, expected, reference, task.views) if comparator
          else same(student, expected, task.views, task.tolerance))
    if not ok and view.is_floating_point():
        result["max_difference"] = float((student.double() - view.double()).abs().max())
    return {**result, "status": "match" if ok else "values"}


def find_mistake(task: Task, ctx: Context, students: dict[str, Any], failing: list[str]) -> Mistake | None:
    """The first mistake that gives every failing variable it covers (and covers at least one)."""
    tensors = {name: as_tensor(students[name]) for name in failing if students[name] is not _MISSING}
    tensors = {name: t for name, t in tensors.items() if t is not None}
    if not tensors:  # nothing to compare (an unsolved cell): no mistake needs computing
        return None
    for mistake in task.mistakes:
        try:
            candidate = mistake.outputs(ctx)
        except Exception:  # a mistake that cannot be reproduced on this model is simply not it
            continue
        covered = [name for name in tensors if name in candidate]
        if covered and all(mistake.match(tensors[n], candidate[n], task.views) for n in covered):
            return mistake
    return None


def parse_cell(source: str) -> ast.Module | None:
    """The cell's code as a tree, IPython magics and shell escapes blanked; None if it does not parse."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    try:
        return ast.parse(code)
    except SyntaxError:
        return None


def helpers_called(task: Task, source: str) -> list[str]:
    """Helpers from ``task.by_hand`` called on the right of an assignment in the cell (the answer itself)."""
    tree = parse_cell(source)
    called = set()
    for node in ast.walk(tree) if tree else ():
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value is not None:
            for call in ast.walk(node.value):
                if isinstance(call, ast.Call):
                    function = call.func
                    name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", None)
                    if name in task.by_hand:
                        called.add(name)
    return sorted(called)


# ---------------------------------------------------------------- answers that are not the student's own work

CHECKER_MODULES = ("vit_inspect.homework_tasks", "vit_inspect.homework")
FORWARD_METHODS = ("forward", "forward_features", "forward_head", "forward_intermediates", "__call__")
_UNRESOLVED = object()


def stored_names(tree: ast.AST) -> set[str]:
    """Every name the cell assigns (targets, loop variables, imports)."""
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    return names | {(alias.asname or alias.name).split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}


def resolve(node: ast.AST, namespace: dict[str, Any]) -> Any:
    """What a plain name, attribute or constant subscript (``model.blocks[0].mlp``) denotes now; no call is made."""
    try:
        if isinstance(node, ast.Name):
            builtins = namespace.get("__builtins__", {})
            builtins = builtins if isinstance(builtins, dict) else vars(builtins)
            return namespace[node.id] if node.id in namespace else builtins.get(node.id, _UNRESOLVED)
        if isinstance(node, ast.Attribute):
            owner = resolve(node.value, namespace)
            return _UNRESOLVED if owner is _UNRESOLVED else getattr(owner, node.attr)
        if isinstance(node, ast.Subscript):
            owner, key = resolve(node.value, namespace), _index(node.slice, namespace)
            return _UNRESOLVED if _UNRESOLVED in (owner, key) else owner[key]
        if isinstance(node, ast.Constant):
            return node.value
    except Exception:  # a name the cell deleted, an index out of range: simply not resolved
        pass
    return _UNRESOLVED


def _index(node: ast.AST, namespace: dict[str, Any]) -> Any:
    if isinstance(node, ast.Slice):
        parts = [None if part is None else resolve(part, namespace) for part in (node.lower, node.upper, node.step)]
        return _UNRESOLVED if _UNRESOLVED in parts else slice(*parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = resolve(node.operand, namespace)
        return -value if isinstance(value, int) else _UNRESOLVED
    value = resolve(node, namespace)
    return value if isinstance(value, (int, str)) else _UNRESOLVED


def _is_checker(target: Any) -> bool:
    name = getattr(target, "__name__", "") if isinstance(target, type(ast)) else getattr(target, "__module__", "")
    return isinstance(name, str) and name in CHECKER_MODULES


def _forbidden_call(task: Task, target: Any, forbidden: list[tuple[str, Any]]) -> str | None:
    """What a call of ``target`` is, if the task forbids it: the model's module, torch's own op, the checker."""
    owner = getattr(target, "__self__", None)
    if getattr(target, "__name__", None) in FORWARD_METHODS and owner is not None:
        target = owner  # model.forward(x), model.forward_head(z): the module's own forward
    for what, thing in forbidden:
        if target is thing or (isinstance(thing, type) and isinstance(target, type) and issubclass(target, thing)):
            return what
    module = getattr(target, "__module__", "") or ""
    if getattr(target, "__name__", None) in task.by_hand and module.startswith(("vit_inspect", "torch", "timm")):
        return f"the package's {target.__name__}"  # under whatever name the cell gave it
    return "the self-check itself" if _is_checker(target) else None


def forbidden_calls(task: Task, tree: ast.AST, namespace: dict[str, Any],
                    forbidden: list[tuple[str, Any]]) -> list[str]:
    """Advice for each call in the cell that computes the answer instead of the student: resolved by object."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(module in CHECKER_MODULES for module in modules):
                found.append("your cell imports the self-check's own module: compute the answer yourself")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and any(
                module in node.value for module in CHECKER_MODULES):
            found.append("your cell reaches into the self-check's own module: compute the answer yourself")
        if not isinstance(node, ast.Call):
            continue
        code = ast.unparse(node.func)
        if isinstance(node.func, ast.Attribute) and node.func.attr in task.forbidden_methods:
            found.append(f"your cell calls `{code}()`, which reads the answer off the model: "
                         "compute it from the configuration")
            continue
        what = _forbidden_call(task, resolve(node.func, namespace), forbidden)
        if what:
            found.append(f"your cell calls {what} (`{code}(...)`), which computes the answer for you: "
                         "compute it by hand")
    return list(dict.fromkeys(found))


def copied_answers(task: Task, tree: ast.Module, namespace: dict[str, Any], reference: Tensors) -> list[str]:
    """Advice for values the cell reads from outside that already are the answer, and for the answer typed in.

    A name is read from outside where a statement uses it before the cell has assigned it
    (``similarity = similarity * 1`` included: the right side runs first).
    """
    defined, found = set(), []
    for statement in tree.body:
        for node in ast.walk(statement):
            found += _typed_answer(node, reference) + _read_answer(task, node, namespace, defined, reference)
        defined |= stored_names(statement)
    return list(dict.fromkeys(found))


def _typed_answer(node: ast.AST, reference: Tensors) -> list[str]:
    if not isinstance(node, ast.Constant) or not _is_value(node.value):
        return []
    return [f"your cell types the answer ({node.value:,}) as a number: compute `{name}`"
            for name, expected in reference.items()
            if expected.ndim == 0 and abs(node.value) > 1 and same(torch.tensor(node.value), expected)]


def _read_answer(task: Task, node: ast.AST, namespace: dict[str, Any], defined: set[str],
                 reference: Tensors) -> list[str]:
    if not isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)) or not isinstance(node.ctx, ast.Load):
        return []
    if isinstance(node, ast.Subscript) and not _is_key(node.slice):
        return []  # weight[:D] is a computation, results["logits"] a look-up
    root = node
    while isinstance(root, (ast.Attribute, ast.Subscript)):
        root = root.value
    if not isinstance(root, ast.Name) or root.id in defined:
        return []
    value = resolve(node, namespace)
    value = as_tensor(value) if _is_value(value) else None
    if value is None:
        return []
    return [f"your cell reads `{ast.unparse(node)}`, which already holds the answer (`{name}`): compute it in "
            "this cell" for name, expected in reference.items()
            if (value.numel() > 1 if expected.ndim else value.ndim == 0) and same(value, expected, task.views)]


def _is_key(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _is_value(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, int, float)) and not isinstance(value, bool)


def cheats(task: Task, ctx: Context, source: str, reference: Tensors) -> list[str]:
    """Why the cell's answer is not the student's own work (empty if it is): its source read against the kernel."""
    tree = parse_cell(source)
    if tree is None:
        return []
    found = forbidden_calls(task, tree, ctx.namespace, task.forbidden(ctx))
    return found + copied_answers(task, tree, ctx.namespace, reference)


def generic_advice(task: Task, check: dict[str, Any]) -> str:
    name, shape = check["name"], tuple(check["expected_shape"])
    legend = task.outputs[check["output"]]
    expected = f"{legend} = {shape}" if shape else f"({legend})"  # a number has no shape to show
    if check["status"] == "missing":
        return f"assign `{name}` {expected}: {task.hint}"
    if check["status"] == "not_tensor":
        return f"`{name}` is a {check['type']}, expected a tensor {expected}"
    if check["status"] == "shape":
        return f"`{name}` should be {expected}, not {tuple(check['shape'])}: {task.hint}"
    return f"`{name}` has the right shape but other values: {task.hint}"


def where(task: Task, params: dict[str, Any]) -> str:
    """What tells an exercise's row from the walk-through's: " (block 8)", " (patch_size 32)", " (similarity_384)"."""
    settings = [f"{key} {params[key]}" for key in ("block", "patch_size") if key in params]
    renamed = [variable(output, params) for output in task.outputs if variable(output, params) != output]
    return f" ({', '.join(settings or renamed)})" if settings or renamed else ""


def check_task(name: str, namespace: dict[str, Any], source: str = "", params: dict[str, Any] | None = None,
               substitute: bool = False) -> dict[str, Any]:
    """Check the variables of task ``name`` in ``namespace`` against the reference; a JSON-ready dict.

    Keys: task, title, status ("pass" | "fail"), checks (one dict per variable: name,
    status, shape, expected_shape, max_difference), mistake and advice (for a failure),
    helpers (package helpers the cell called instead of doing the task by hand),
    cheats (why the answer is not the cell's own work: the model's own forward or module called,
    the package's helper under any name, a variable that already held the answer read, the
    answer typed in), substituted (variables replaced by the reference, only with
    ``substitute``: ``vit-inspect check`` does, the in-notebook self-check does not). Never raises: a problem of the
    checker itself comes back as a failure whose advice says so.
    """
    task = TASKS.get(name)
    if task is None:
        return {"task": name, "title": name, "status": "fail", "checks": [],
                "advice": f"unknown task {name!r}: this vit-inspect checks {', '.join(TASKS)}"}
    result = {"task": name, "title": task.title + where(task, params or {}), "checks": [], "substituted": []}
    try:
        with torch.no_grad():
            return {**result, **_evaluate(task, Context(namespace, params or {}), namespace, source, substitute)}
    except MissingGiven as missing:
        return {**result, "status": "fail", "advice": f"the notebook defines no `{missing}` before this cell; "
                "the checker needs it for the reference (run the given cells unchanged)"}
    except Exception as error:  # the checker must report, never crash the student's notebook
        return {**result, "status": "fail",
                "advice": f"the checker could not compute the reference ({type(error).__name__}: {error})"}


def _evaluate(task: Task, ctx: Context, namespace: dict[str, Any], source: str, substitute: bool) -> dict[str, Any]:
    reference = task.reference(ctx)
    names = {output: variable(output, ctx.params) for output in task.outputs}
    students = {output: namespace.get(names[output], _MISSING) for output in task.outputs}
    checks = [compare_output(task, output, students[output], reference, names[output]) for output in task.outputs]
    failing = [check for check in checks if check["status"] != "match"]
    helpers = helpers_called(task, source)
    found = cheats(task, ctx, source, reference)
    mistake = find_mistake(task, ctx, students, [check["output"] for check in failing]) if failing else None
    if found:
        advice = found[0]
    elif mistake:
        advice = mistake.advice
    elif failing:
        advice = generic_advice(task, failing[0])
    else:
        advice = f"write it by hand: calling {', '.join(helpers)} is what the walk-through does" if helpers else None
    substituted = [check["output"] for check in failing] if substitute else []
    for output in substituted:  # later tasks are then checked on their own, not on this one's error
        namespace[names[output]] = reference[output].clone()
    substituted = [names[output] for output in substituted]
    return {"status": "fail" if failing or helpers or found else "pass", "checks": checks, "helpers": helpers,
            "cheats": found, "mistake": mistake.name if mistake else None, "advice": advice,
            "substituted": substituted}


def report_task(name: str, namespace: dict[str, Any], source: str = "", params: dict[str, Any] | None = None) -> None:
    """:func:`check_task`, shown as a JSON display bundle that ``vit-inspect check`` reads back."""
    from IPython.display import display

    result = check_task(name, namespace, source, params, substitute=True)
    provenance = namespace.get("provenance")
    result["weights"] = getattr(provenance, "label", None)
    display({RESULT_MIME: result}, raw=True)


def task_source(task: Task, namespace: dict[str, Any], params: dict[str, Any]) -> str:
    """The last cell run in this kernel (IPython's ``In``) that assigns one of the task's variables, or ""."""
    wanted = {variable(output, params) for output in task.outputs}
    for source in reversed(namespace.get("In", []) or []):
        tree = parse_cell(source) if isinstance(source, str) else None
        if tree is not None and wanted & stored_names(tree):
            return source
    return ""


def check_answer(name: str, namespace: dict[str, Any] | None = None, **params: Any) -> None:
    """The notebook's self-check of task ``name``: raises AssertionError with the advice unless it passes.

    Called in the graded cell after a task cell (``check_answer("top5")``). It reads the
    notebook's variables (the caller's globals unless ``namespace`` is given) and the last
    cell that assigned them, computes the reference here - never in the notebook, where the
    student's code could read it - and fails a right value that the cell did not compute
    itself. ``params`` as in the task cell's metadata (``block``, ``patch_size``, ``names``).
    Changes nothing in the notebook.
    """
    namespace = sys._getframe(1).f_globals if namespace is None else namespace
    task = TASKS.get(name)
    source = task_source(task, namespace, params) if task else ""
    result = check_task(name, namespace, source, params)
    if result["status"] != "pass":
        raise AssertionError(f"{result['title']}: {result['advice']}")
    print(f"self-check passed: {result['title']}")
