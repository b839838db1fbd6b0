"""Notebook 08_huggingface: the same ViT in Hugging Face transformers, through one key mapping, both ways.

:data:`HF_KEY_MAP` is the whole correspondence, one row per module: timm's fused qkv
(3D, D) is split into query / key / value, norm1 is ``layernorm_before``, norm2
``layernorm_after``, and so on. Each row names the module in transformers >= 5 and the
tensor names in the checkpoint files on the Hub (which are transformers 4's module names,
e.g. ``intermediate.dense`` for ``mlp.fc1``; transformers 5 renames them on load and back
on save). :func:`timm_to_hf` and :func:`hf_to_timm` both read that table.

transformers (>= 5) is an optional extra (``pip install -e '.[hf]'`` in a checkout); this module
imports it only inside its functions, and :func:`require_transformers` says how to get it.
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .errors import VitInspectError
from .from_scratch import ScratchConfig, scratch_config_of
from .images import load_image, preprocess
from .labels import class_name

if TYPE_CHECKING:
    import os
    from types import ModuleType

    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

HF_CHECKPOINT = "google/vit-base-patch16-224"
TIMM_TWIN = "vit_base_patch16_224.orig_in21k_ft_in1k"  # the timm weights HF_CHECKPOINT was converted from
# what hf_to_timm takes over from timm's data config of TIMM_TWIN (not its url or hub id)
DATA_CONFIG_KEYS = ("interpolation", "crop_pct", "crop_mode", "mean", "std", "first_conv", "classifier")
HF_INSTALL = "pip install 'transformers>=5' (in a checkout of vit-inspect: pip install -e '.[hf]')"
# preprocessor_config.json of google/vit-base-patch16-224 (written by the ViTFeatureExtractor of
# 2021): resize straight to 224 x 224 with PIL resample 2 (bilinear), then the processor's default
# rescale by 1/255, then (x - 0.5) / 0.5. No centre crop.
HF_PREPROCESSOR_CONFIG = {"do_resize": True, "size": 224, "resample": 2, "do_normalize": True,
                          "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}

# transformers' eager attention takes the softmax in float32 even in a float64 model, so the two
# libraries agree to float32 precision: assert_close's float32 tolerances
HF_TOLERANCE = {"rtol": 1.3e-6, "atol": 1e-5}


class KeyRow(NamedTuple):
    """One module of the mapping; "{i}" runs over the blocks."""

    timm: str               # module (or bare parameter) in timm
    hf: tuple[str, ...]     # in transformers >= 5; three modules (query, key, value) for the fused qkv
    hub: tuple[str, ...]    # the same tensors' names in the Hub's checkpoint files (transformers 4 modules)
    params: tuple[str, ...] = ("weight", "bias")  # () for a bare parameter


HF_KEY_MAP: tuple[KeyRow, ...] = (
    KeyRow("cls_token", ("vit.embeddings.cls_token",), ("vit.embeddings.cls_token",), ()),
    KeyRow("pos_embed", ("vit.embeddings.position_embeddings",), ("vit.embeddings.position_embeddings",), ()),
    KeyRow("patch_embed.proj", ("vit.embeddings.patch_embeddings.projection",),
           ("vit.embeddings.patch_embeddings.projection",)),
    KeyRow("blocks.{i}.norm1", ("vit.layers.{i}.layernorm_before",), ("vit.encoder.layer.{i}.layernorm_before",)),
    KeyRow("blocks.{i}.attn.qkv",
           ("vit.layers.{i}.attention.q_proj", "vit.layers.{i}.attention.k_proj", "vit.layers.{i}.attention.v_proj"),
           ("vit.encoder.layer.{i}.attention.attention.query", "vit.encoder.layer.{i}.attention.attention.key",
            "vit.encoder.layer.{i}.attention.attention.value")),
    KeyRow("blocks.{i}.attn.proj", ("vit.layers.{i}.attention.o_proj",),
           ("vit.encoder.layer.{i}.attention.output.dense",)),
    KeyRow("blocks.{i}.norm2", ("vit.layers.{i}.layernorm_after",), ("vit.encoder.layer.{i}.layernorm_after",)),
    KeyRow("blocks.{i}.mlp.fc1", ("vit.layers.{i}.mlp.fc1",), ("vit.encoder.layer.{i}.intermediate.dense",)),
    KeyRow("blocks.{i}.mlp.fc2", ("vit.layers.{i}.mlp.fc2",), ("vit.encoder.layer.{i}.output.dense",)),
    KeyRow("norm", ("vit.layernorm",), ("vit.layernorm",)),
    KeyRow("head", ("classifier",), ("classifier",)),
)


def require_transformers() -> ModuleType:
    """The ``transformers`` module (>= 5), or a :class:`VitInspectError` saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise VitInspectError(f"this needs Hugging Face transformers >= 5, which is not installed: "
                              f"{HF_INSTALL}") from None
    if int(transformers.__version__.split(".")[0]) < 5:
        raise VitInspectError(f"transformers {transformers.__version__} is too old (its ViT names its modules "
                              f"differently): {HF_INSTALL}")
    return transformers


def key_map(config: ScratchConfig, column: str = "hf") -> list[tuple[str, tuple[str, ...]]]:
    """:data:`HF_KEY_MAP` spelled out for ``config``: (timm key, its 1 or 3 keys in ``column``) per tensor.

    ``column``: "hf" (transformers >= 5 modules) or "hub" (names in the Hub's checkpoint files).
    """
    pairs = []
    for row in HF_KEY_MAP:
        targets = getattr(row, column)
        for i in range(config.depth) if "{i}" in row.timm else [None]:
            for param in _params_of(row, config):
                suffix = f".{param}" if param else ""
                pairs.append((row.timm.format(i=i) + suffix, tuple(t.format(i=i) + suffix for t in targets)))
    return pairs


def _params_of(row: KeyRow, config: ScratchConfig) -> tuple[str, ...]:
    if row.timm == "head" and not config.num_classes:
        return ()
    if row.timm == "blocks.{i}.attn.qkv" and not config.qkv_bias:
        return ("weight",)
    return row.params or ("",)


def split_qkv(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm's fused qkv weight (3D, D) or bias (3D,) -> query, key, value, each (D, D) or (D,).

    The qkv linear's output rows are [q (all heads) | k | v], as its reshape to (B, N, 3, H, d) reads them.
    """
    query, key, value = tensor.chunk(3, dim=0)  # 3 x (D, ...)
    return query, key, value


def merge_qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`split_qkv`: three (D, ...) -> (3D, ...)."""
    return torch.cat([query, key, value], dim=0)  # (3D, ...)


def timm_to_hf_state_dict(state: dict[str, torch.Tensor], config: ScratchConfig,
                          column: str = "hf") -> dict[str, torch.Tensor]:
    """A timm ViT's state dict under Hugging Face's keys (``column`` as in :func:`key_map`); copies."""
    converted = {}
    for timm_key, hf_keys in key_map(config, column):
        pieces = split_qkv(state[timm_key]) if len(hf_keys) == 3 else (state[timm_key],)
        converted.update({key: piece.clone() for key, piece in zip(hf_keys, pieces)})
    return converted


def hf_to_timm_state_dict(state: dict[str, torch.Tensor], config: ScratchConfig,
                          column: str = "hf") -> dict[str, torch.Tensor]:
    """The inverse of :func:`timm_to_hf_state_dict`: timm's keys and fused qkv; copies."""
    return {timm_key: merge_qkv(*(state[k] for k in hf_keys)) if len(hf_keys) == 3 else state[hf_keys[0]].clone()
            for timm_key, hf_keys in key_map(config, column)}


def hf_config_of(config: ScratchConfig, attn_implementation: str = "eager") -> ViTConfig:
    """The transformers ``ViTConfig`` of the same network (LayerNorm eps included)."""
    transformers = require_transformers()
    size = config.img_size[0] if config.img_size[0] == config.img_size[1] else list(config.img_size)
    labels = {i: class_name(i) for i in range(config.num_classes)} if config.num_classes == 1000 else None
    return transformers.ViTConfig(
        hidden_size=config.dim, num_hidden_layers=config.depth, num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_dim, hidden_act="gelu", layer_norm_eps=config.eps, image_size=size,
        patch_size=config.patch_size, num_channels=config.in_chans, qkv_bias=config.qkv_bias,
        num_labels=config.num_classes, id2label=labels, attn_implementation=attn_implementation)


def timm_to_hf(model: nn.Module, attn_implementation: str = "eager") -> ViTForImageClassification:
    """A transformers ``ViTForImageClassification`` (eval mode) with a copy of the timm ViT's weights.

    Raises :class:`VitInspectError` for timm models a plain ViT cannot hold (see
    :func:`vit_inspect.from_timm`). ``attn_implementation="eager"`` forms the attention
    weights, so ``output_attentions=True`` returns them.
    """
    transformers = require_transformers()
    config = scratch_config_of(model)
    with torch.device("meta"):  # no memory, no random init: every tensor is replaced below
        hf_model = transformers.ViTForImageClassification(hf_config_of(config, attn_implementation))
    hf_model.load_state_dict(timm_to_hf_state_dict(model.state_dict(), config), assign=True)
    return hf_model.eval()


def hf_to_timm(hf_model: nn.Module) -> nn.Module:
    """A timm ``VisionTransformer`` (eval mode) with a copy of a ``ViTForImageClassification``'s weights.

    The LayerNorm eps comes from the Hugging Face config (1e-12 in google's checkpoints,
    1e-6 in timm). The data config is that of timm's ViT-B/16 weights (:data:`TIMM_TWIN`)
    at the model's input size.
    """
    config = scratch_config_of_hf(hf_model)
    with torch.device("meta"):
        model = VisionTransformer(img_size=config.img_size, patch_size=config.patch_size, in_chans=config.in_chans,
                                  num_classes=config.num_classes, embed_dim=config.dim, depth=config.depth,
                                  num_heads=config.num_heads, mlp_ratio=config.mlp_dim / config.dim,
                                  qkv_bias=config.qkv_bias, norm_layer=partial(nn.LayerNorm, eps=config.eps))
    model.load_state_dict(hf_to_timm_state_dict(hf_model.state_dict(), config), assign=True)
    twin = timm.models.get_pretrained_cfg(TIMM_TWIN).to_dict()
    model.pretrained_cfg = {**{key: twin[key] for key in DATA_CONFIG_KEYS}, "num_classes": config.num_classes,
                            "input_size": (config.in_chans, *config.img_size),
                            "architecture": "vit (from transformers)"}
    return model.eval()


def scratch_config_of_hf(hf_model: nn.Module) -> ScratchConfig:
    """The :class:`ScratchConfig` of a ``ViTForImageClassification``; a :class:`VitInspectError` if none fits."""
    transformers = require_transformers()
    if not isinstance(hf_model, transformers.ViTForImageClassification):
        raise VitInspectError(f"expected a transformers ViTForImageClassification, got {type(hf_model).__name__}")
    c = hf_model.config
    _check_hf_keys(hf_model, c)
    if c.hidden_act != "gelu" or getattr(c, "head_dim", None) not in (None, c.hidden_size // c.num_attention_heads):
        raise VitInspectError(f"a plain ViT has the exact GELU and head_dim = D / H; this config has "
                              f"hidden_act={c.hidden_act!r}, head_dim={getattr(c, 'head_dim', None)}")
    size, patch = (tuple(v) if isinstance(v, (list, tuple)) else (v, v) for v in (c.image_size, c.patch_size))
    if patch[0] != patch[1]:
        raise VitInspectError(f"patch_size {c.patch_size}: only square patches have a timm equivalent here")
    return ScratchConfig(img_size=size, patch_size=patch[0], in_chans=c.num_channels, dim=c.hidden_size,
                         depth=c.num_hidden_layers, num_heads=c.num_attention_heads, mlp_dim=c.intermediate_size,
                         num_classes=c.num_labels if isinstance(hf_model.classifier, nn.Linear) else 0,
                         qkv_bias=c.qkv_bias, eps=c.layer_norm_eps)


def _check_hf_keys(hf_model: nn.Module, c: ViTConfig) -> None:
    """The model's tensors must be exactly the table's: nothing left behind, nothing missing."""
    config = ScratchConfig(depth=c.num_hidden_layers, qkv_bias=c.qkv_bias,
                           num_classes=c.num_labels if isinstance(hf_model.classifier, nn.Linear) else 0)
    expected = {key for _, keys in key_map(config) for key in keys}
    extra, missing = sorted(set(hf_model.state_dict()) - expected), sorted(expected - set(hf_model.state_dict()))
    if extra or missing:
        raise VitInspectError(f"{type(hf_model).__name__} does not fit the ViT key table: keys with no place in "
                              f"timm {extra[:4]}, keys missing {missing[:4]}")


def hf_steps(hf_model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a ``ViTForImageClassification`` computes at each stage, keyed like :func:`vit_inspect.timm_steps`.

    patches (B, gh*gw, D), tokens (B, N, D) (the embeddings), blocks (B, L, N, D) (each
    layer's output), attention (B, L, H, N, N), normed (B, N, D), logits (B, C). Needs the
    model loaded with ``attn_implementation="eager"``.
    """
    if hf_model.config._attn_implementation != "eager":
        raise VitInspectError(f"attention weights need attn_implementation='eager', this model uses "
                              f"{hf_model.config._attn_implementation!r} (it never forms them)")
    with torch.no_grad():
        out = hf_model(pixel_values=images, output_attentions=True, output_hidden_states=True)
        hidden = out.hidden_states  # L + 1 times (B, N, D): the embeddings, then each layer's output
        return {"patches": hf_model.vit.embeddings.patch_embeddings(images), "tokens": hidden[0],  # (B, gh*gw, D)
                "blocks": torch.stack(hidden[1:], dim=1), "attention": torch.stack(out.attentions, dim=1),
                "normed": hf_model.vit.layernorm(hidden[-1]), "logits": out.logits}  # (B, L, ...), (B, C)


def hf_image_processor() -> ViTImageProcessor:
    """The image processor of google/vit-base-patch16-224, built offline from :data:`HF_PREPROCESSOR_CONFIG`."""
    return require_transformers().ViTImageProcessor(**HF_PREPROCESSOR_CONFIG)


def compare_preprocessing(image: str | os.PathLike | Image.Image, model: nn.Module,
                          processor: ViTImageProcessor) -> dict[str, torch.Tensor]:
    """Both libraries' model input for one image: timm (B=1, 3, H, W), hf (1, 3, H, W), difference = hf - timm.

    timm: the model's data config (resize the shorter side to H / crop_pct, centre crop);
    Hugging Face: ``processor`` (resize straight to H x W, squashing the aspect ratio).
    """
    timm_input = preprocess(image, model).tensor  # (1, 3, H, W)
    hf_input = processor(images=load_image(image), return_tensors="pt")["pixel_values"]  # (1, 3, H, W)
    if hf_input.shape != timm_input.shape:
        raise VitInspectError(f"the processor makes {tuple(hf_input.shape)}, the timm model takes "
                              f"{tuple(timm_input.shape)}")
    return {"timm": timm_input, "hf": hf_input, "difference": hf_input - timm_input}


def checkpoint_differences(hf_model: nn.Module, model: nn.Module) -> dict[str, torch.Tensor]:
    """max |hf - timm| per timm tensor (0-dim), after mapping the Hugging Face weights to timm's keys."""
    mapped = hf_to_timm_state_dict(hf_model.state_dict(), scratch_config_of_hf(hf_model))
    state = model.state_dict()
    if mapped.keys() != state.keys() or any(mapped[k].shape != state[k].shape for k in state):
        raise VitInspectError("the two checkpoints hold different architectures: keys or shapes differ")
    return {key: (mapped[key].double() - state[key].double()).abs().max() for key in state}


def hf_checkpoint_cached(name: str = HF_CHECKPOINT) -> bool:
    """True if the Hugging Face cache holds ``name``'s config and weights (no network)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(name, filename), str)
    return cached("config.json") and (cached("model.safetensors") or cached("pytorch_model.bin"))


def twin_checkpoints_cached() -> bool:
    """True if the Hugging Face cache holds both :data:`HF_CHECKPOINT` and timm's :data:`TIMM_TWIN` (no network)."""
    from .weights import find_in_hub_cache

    return hf_checkpoint_cached(HF_CHECKPOINT) and find_in_hub_cache(TIMM_TWIN) is not None


def load_hf_checkpoint(name: str = HF_CHECKPOINT) -> ViTForImageClassification:
    """``ViTForImageClassification.from_pretrained(name)`` with eager attention, in eval mode."""
    transformers = require_transformers()
    return transformers.ViTForImageClassification.from_pretrained(name, attn_implementation="eager").eval()
