"""Notebook 10_attention_explorer: click a patch, see where every head of a layer looks.

The lecture demo. :func:`explorer` shows ipywidgets controls - an image (the bundled
photos or an upload), a layer, one head or all heads, a query patch (click on the
picture, or the row and column sliders) - beside the query's attention per head, the
class token's attention rollout and the top-5 classes.

One forward pass (:func:`~vit_inspect.recorder.capture`) per image, cached: a change of
layer, head or query only redraws from the cached (L, H, N, N) attention.

The click comes from a small anywidget: an ``<img>`` whose click the browser turns into a
patch (row, col) from the picture's displayed size. anywidget ships front ends for
JupyterLab, Notebook 7 and the classic notebook, and in Colab it switches Colab's custom
widget manager on itself. Wherever the click cannot reach Python, the sliders still do.
"""
from __future__ import annotations

import base64
import io
import os
import warnings
from collections import OrderedDict
from typing import Mapping, NamedTuple, Sequence, Union

import anywidget
import ipywidgets as widgets
import torch
import traitlets
from IPython.display import display
from PIL import Image, UnidentifiedImageError
from torch import nn

from .attention_maps import attention_rollout, rollout_to_grid
from .errors import ImageError, VitInspectError
from .images import load_image, preprocess, sample_images
from .labels import TopK, top_k
from .model_info import DEFAULT_MODEL, grid_size_of, num_prefix_tokens_of, token_index, tokens_to_grid
from .plotting import draw_head_panels, figure_bytes, image_bytes, patch_picker_image, plot_explorer_summary
from .recorder import capture
from .weights import LoadedViT, Provenance, load_vit

ImageSource = Union[str, os.PathLike, Image.Image]
ALL_HEADS = -1
CACHED_IMAGES = 8  # each ViT-B/16 image's attention is 12 x 12 x 197 x 197 floats, about 22 MB
PANEL_PX = {"all": 224, "one": 448}  # a panel's width on screen, all heads / one head
PICKER_PATCH_PX = 24  # pixels per patch in the picture one clicks on


# ---------------- compute: once per image, then only indexing


class ImageAnalysis(NamedTuple):
    """Everything the explorer shows about one image, from one forward pass."""
    crop: Image.Image          # the H x W input the model saw
    attention: torch.Tensor    # (L, H, N, N): every layer's attention
    rollout: torch.Tensor      # (gh, gw): the class token's attention rollout over the patches
    topk: TopK                 # the top-5 classes


def analyse_image(model: nn.Module, image: ImageSource) -> ImageAnalysis:
    """Run ``model`` once on ``image``: crop, every layer's attention (L, H, N, N), rollout (gh, gw), top-5."""
    pre = preprocess(image, model)
    out = capture(model, pre.tensor)  # logits (1, C), attention (1, L, H, N, N)
    grid, prefix = grid_size_of(model, pre.tensor), num_prefix_tokens_of(model)
    rollout = rollout_to_grid(attention_rollout(out["attention"]), grid, prefix)[0]  # (gh, gw)
    return ImageAnalysis(pre.crop, out["attention"][0], rollout, top_k(out["logits"]))


def query_maps(attention: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int, layer: int,
               query_cell: tuple[int, int], head: int | None = None) -> torch.Tensor:
    """The query patch's attention over the patches at ``layer``: (L, H, N, N) -> (K, gh, gw).

    K = H (every head) when ``head`` is None, else 1 (that head).
    """
    token = token_index(*query_cell, grid, num_prefix_tokens)
    rows = attention[layer, :, token]  # (H, N)
    if head is not None:
        rows = rows[head:head + 1]  # (1, N)
    return tokens_to_grid(rows, grid, num_prefix_tokens)  # (K, gh, gw)


def uploaded_files(value: Sequence | Mapping) -> dict[str, bytes]:
    """A FileUpload's value as {file name: content}: ipywidgets 8 gives a tuple of dicts, 7 a dict by name."""
    if isinstance(value, Mapping):
        return {name: bytes(item["content"]) for name, item in value.items()}
    return {item["name"]: bytes(item["content"]) for item in value}


def image_from_bytes(name: str, content: bytes) -> Image.Image:
    """An uploaded file as an RGB image, or an ImageError naming the file."""
    if not content:
        raise ImageError(f"{name}: file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content)) as image:
                image.seek(0)
                image.load()
                return load_image(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image is too large, refused as a possible decompression bomb") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file that Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"{name}: truncated or corrupt image ({err})") from None


def image_sources(images: Mapping[str, ImageSource] | Sequence[ImageSource] | None) -> dict[str, ImageSource]:
    """{name shown in the menu: image}; None means the bundled photos."""
    if images is None:
        return {path.name: path for path in sample_images()}
    if isinstance(images, Mapping):
        named = dict(images)
    else:
        named = {f"image {i}" if isinstance(image, Image.Image) else os.path.basename(os.fspath(image)): image
                 for i, image in enumerate(images)}
    if not named:
        raise VitInspectError("explorer: images is empty; pass paths or PIL images, or None for the bundled photos")
    return named


def weights_warning(provenance: Provenance | None) -> str | None:
    """The red label for figures: None for trained weights."""
    if provenance is None:
        return "UNVERIFIED weights"
    return None if provenance.trained else "UNTRAINED"


# ---------------- the click: an <img> that reports the patch under the pointer

_PICKER_ESM = """
function render({ model, el }) {
  const img = document.createElement("img");
  img.style.cursor = "crosshair";
  img.style.maxWidth = "100%";
  img.title = "click a patch to make it the query";
  const show = () => { img.src = model.get("src"); };
  img.addEventListener("click", (event) => {
    const box = img.getBoundingClientRect();
    const [rows, cols] = model.get("grid");
    const clamp = (value, count) => Math.min(Math.max(value, 0), count - 1);
    const row = clamp(Math.floor((event.clientY - box.top) / box.height * rows), rows);
    const col = clamp(Math.floor((event.clientX - box.left) / box.width * cols), cols);
    model.set("cell", [row, col]);
    model.save_changes();
  });
  model.on("change:src", show);
  show();
  el.appendChild(img);
}
export default { render };
"""


class PatchPicker(anywidget.AnyWidget):
    """The crop with its patch grid; a click sets ``cell`` to [row, col] (0-based)."""
    _esm = _PICKER_ESM
    src = traitlets.Unicode("").tag(sync=True)         # data URL of the picture
    grid = traitlets.List([14, 14]).tag(sync=True)     # [gh, gw]
    cell = traitlets.List([7, 7]).tag(sync=True)       # [row, col] of the query patch


# ---------------- the explorer


class Drawn(NamedTuple):
    """What the attention view shows now."""
    image: str
    layer: int
    head: int | None               # None: all heads
    query_cell: tuple[int, int]
    maps: torch.Tensor             # (K, gh, gw), as drawn


class AttentionExplorer:
    """The explorer's widgets, its per-image cache and its redraw; display it in a notebook.

    ``captures`` counts the forward passes it ran, ``redraws`` the pictures it drew;
    ``drawn`` says what is on screen;
    ``panels`` is the head-panel picture (``plot_head_panels(explorer.panels)`` shows it
    as a Figure) and ``summary_figure`` the rollout and top-5 Figure.
    """

    def __init__(self, model: nn.Module, provenance: Provenance | None, images: dict[str, ImageSource]) -> None:
        self.model, self.provenance, self.sources = model, provenance, dict(images)
        self.grid, self.prefix = grid_size_of(model), num_prefix_tokens_of(model)
        self.warning = weights_warning(provenance)
        self.cache: OrderedDict[str, ImageAnalysis] = OrderedDict()
        self.captures = self.redraws = 0
        self.drawn: Drawn | None = None
        self._holding = False
        self._build_widgets(len(model.blocks), model.blocks[0].attn.num_heads)
        self._select(self.image.value)

    def _build_widgets(self, depth: int, num_heads: int) -> None:
        gh, gw = self.grid
        wide = {"description_width": "initial"}
        self.image = widgets.Dropdown(options=list(self.sources), description="image", style=wide)
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload")
        self.layer = widgets.IntSlider(0, min=0, max=depth - 1, description="layer", style=wide)
        self.head = widgets.Dropdown(options=[("all heads", ALL_HEADS)] + [(f"head {h}", h) for h in range(num_heads)],
                                     value=ALL_HEADS, description="head", style=wide)
        self.row = widgets.IntSlider(gh // 2, min=0, max=gh - 1, description="query row", style=wide)
        self.col = widgets.IntSlider(gw // 2, min=0, max=gw - 1, description="query column", style=wide)
        self.picker = PatchPicker(grid=[gh, gw], cell=[gh // 2, gw // 2],  # full size: a target to click
                                  layout=widgets.Layout(min_width=f"{PICKER_PATCH_PX * gw}px", flex="0 0 auto"))
        self.view = widgets.Image(format="jpeg", layout=widgets.Layout(flex="1 1 0%", min_width="0",
                                                                        height="auto", object_fit="contain"))
        self.summary = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.status = widgets.HTML()
        self.image.observe(lambda change: self._select(change["new"]), "value")
        self.upload.observe(lambda change: self._uploaded(change["new"]), "value")
        for control in (self.layer, self.head, self.row, self.col):
            control.observe(lambda change: self._changed(), "value")
        self.picker.observe(lambda change: self._clicked(change["new"]), "cell")
        self.widget = widgets.VBox([
            widgets.HBox([self.image, self.upload, self.layer, self.head]),
            widgets.HBox([self.row, self.col]), self.status,
            widgets.HBox([self.picker, self.view]), self.summary])

    def _ipython_display_(self) -> None:
        display(self.widget)

    # -- events

    def _select(self, name: str) -> None:
        """A new image: one forward pass unless cached, then the summary and a redraw."""
        try:
            analysis = self.analysis_of(name)
        except VitInspectError as err:
            self._say(str(err), error=True)
            return
        self.summary_figure = plot_explorer_summary(analysis.crop, analysis.rollout, analysis.topk,
                                                    warning=self.warning, title=name)
        self.summary.value = figure_bytes(self.summary_figure, "png")
        label = self.provenance.label if self.provenance else "weights not loaded through load_vit"
        self._say(f"{name} - {label}")
        self.redraw()

    def _uploaded(self, value: Sequence | Mapping) -> None:
        for name, content in uploaded_files(value).items():
            try:
                image = image_from_bytes(name, content)
            except ImageError as err:
                self._say(str(err), error=True)
                continue
            key = f"upload: {name}"
            self.sources[key] = image
            self.cache.pop(key, None)  # a new file under an old name
            self.image.options = list(self.sources)
            if self.image.value == key:  # already chosen: setting it again would not notify
                self._select(key)
            self.image.value = key

    def _clicked(self, cell: list[int]) -> None:
        """The browser reported a click on patch ``cell``: move both sliders, redraw once."""
        self._holding = True
        try:
            self.row.value, self.col.value = int(cell[0]), int(cell[1])
        finally:
            self._holding = False
        self._changed()

    def _changed(self) -> None:
        if self._holding:
            return
        try:
            self.redraw()
        except VitInspectError as err:  # e.g. the chosen image could not be read: say so, keep the widgets
            self._say(str(err), error=True)

    def _say(self, text: str, error: bool = False) -> None:
        colour = "red" if error else "black"
        self.status.value = f'<span style="font-size: 16px; color: {colour}">{text}</span>'

    # -- compute and draw

    def analysis_of(self, name: str) -> ImageAnalysis:
        """The cached analysis of image ``name``; the forward pass runs only on a miss."""
        if name not in self.cache:
            self.cache[name] = analyse_image(self.model, self.sources[name])
            self.captures += 1
            while len(self.cache) > CACHED_IMAGES:
                self.cache.popitem(last=False)
        self.cache.move_to_end(name)
        return self.cache[name]

    def redraw(self) -> None:
        """Draw the current layer / head / query from the cache: no forward pass."""
        name = self.image.value
        analysis = self.analysis_of(name)
        cell = (self.row.value, self.col.value)
        head = None if self.head.value == ALL_HEADS else self.head.value
        maps = query_maps(analysis.attention, self.grid, self.prefix, self.layer.value, cell, head)  # (K, gh, gw)
        heads = range(maps.shape[0]) if head is None else [head]
        title = f"layer {self.layer.value}: attention of patch (row {cell[0]}, col {cell[1]})"
        self.panels = draw_head_panels(analysis.crop, maps, cell, heads, title=title, warning=self.warning,
                                       panel_px=PANEL_PX["all" if head is None else "one"])
        self.view.value = image_bytes(self.panels.picture, "jpeg")
        self.picker.cell = list(cell)
        self.picker.src = "data:image/png;base64," + base64.b64encode(
            image_bytes(patch_picker_image(analysis.crop, self.grid, cell, PICKER_PATCH_PX))).decode("ascii")
        self.drawn = Drawn(name, self.layer.value, head, cell, maps)
        self.redraws += 1


def explorer(model: nn.Module | LoadedViT | None = None,
             images: Mapping[str, ImageSource] | Sequence[ImageSource] | None = None) -> AttentionExplorer:
    """The interactive attention explorer for a lecture; display the result in a notebook.

    ``model``: a ``load_vit(...)`` result (model and provenance, so figures say whether the
    weights are trained), a bare timm ViT in eval mode (labelled "UNVERIFIED weights"), or
    None for ``load_vit(DEFAULT_MODEL)``. ``images``: paths or PIL images (a list, or a dict
    {name: image}); None for the bundled photos. Uploads are added to the menu.
    """
    if model is None:
        model = load_vit(DEFAULT_MODEL)
    model, provenance = model if isinstance(model, tuple) else (model, None)
    return AttentionExplorer(model, provenance, image_sources(images))
