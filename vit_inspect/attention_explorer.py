"""Notebook 10_attention_explorer: click a patch, see where every head of a layer looks.

The lecture demo. :func:`explorer` shows ipywidgets controls beside the query's attention
per head, the class token's attention rollout and the top-5 classes:

- an image (the bundled photos or an upload), or two images / two layers side by side;
- a layer (a slider, a Play button with its speed, the arrow keys on the picture), one
  head or all heads (the up and down arrows step through them);
- the query: a patch (click on the picture, or the row and column sliders) or the class
  token; every panel says how much of the query's attention goes to the prefix tokens
  ("31% on [CLS]"), which the patch map cannot show;
- one colour scale shared by all panels (default) or one per panel, stated in the title;
- for the back of the room: a size control, the overlay's opacity; the rollout's head
  fusion and discard ratio;
- a methods menu: instead of the query's attention, one of
  :func:`~vit_inspect.explanations.explain`'s maps (attention, rollout, Chefer, Grad-CAM,
  input x gradient, integrated gradients, the brightness / edges / random baselines) for a
  class of the image's top-5.

One forward pass (:func:`~vit_inspect.recorder.capture`) per image, cached: every other
control only redraws from the cached (L, H, N, N) attention. An explanation map is
computed once per image, method and class (the gradient methods run the model forwards and
backwards then) and cached, so that redrawing it costs no forward pass either.

The click and the keys come from a small anywidget: an ``<img>`` whose click the browser
turns into a patch (row, col) from the picture's displayed size, and whose arrow keys
(once the picture has focus) it sends to Python. anywidget ships front ends for
JupyterLab, Notebook 7 and the classic notebook; in Colab the notebook's setup cell
enables Colab's custom widget manager. Wherever the click cannot reach Python, the
sliders still do.
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

from .attention_maps import HEAD_FUSIONS, attention_rollout, rollout_to_grid
from .errors import ImageError, VitInspectError
from .explanations import METHODS as EXPLANATION_METHODS
from .explanations import explain
from .images import load_image, preprocess, sample_images
from .labels import TopK, top_k
from .model_info import DEFAULT_MODEL, grid_size_of, num_prefix_tokens_of, token_index, tokens_to_grid
from .plotting import draw_head_panels, figure_bytes, image_bytes, patch_picker_image, plot_explorer_summary
from .recorder import capture
from .weights import LoadedViT, Provenance, load_vit

ImageSource = Union[str, os.PathLike, Image.Image]
ALL_HEADS = -1
PATCH_QUERY = -1  # the query menu's "a patch"; other entries are prefix-token indices
CACHED_IMAGES = 8  # each ViT-B/16 image's attention is 12 x 12 x 197 x 197 floats, about 22 MB
# The size menu: (panel width with all heads, with one head, font size), in picture pixels. The browser
# scales the picture to the notebook's width, so what reads from the back of a room is type large for its panel;
# more pixels mostly cost PNG encoding time.
SIZES = {"small": (192, 384, 15), "large": (224, 448, 20), "huge": (288, 576, 26)}
DEFAULT_SIZE = "large"  # the panels of the first version, with type a quarter larger
PLAY_SPEEDS = {"slow: 2 s a block": 2000, "1 s a block": 1000, "fast: 0.4 s a block": 400}
SCALES = {"one scale for all panels": "shared", "a scale per panel": "per panel"}
COMPARE = {"one view": "off", "two images": "image", "two layers": "layer"}
QUERY_ATTENTION = "query attention"  # the methods menu's first entry: the query's attention per head
PICKER_PATCH_PX = 24  # pixels per patch in the picture one clicks on


# ---------------- compute: once per image, then only indexing


class ImageAnalysis(NamedTuple):
    """Everything the explorer shows about one image, from one forward pass."""
    crop: Image.Image          # the H x W input the model saw
    attention: torch.Tensor    # (L, H, N, N): every layer's attention
    topk: TopK                 # the top-5 classes
    pixels: torch.Tensor       # (1, 3, H, W): the normalised input, for the explanation methods


def analyse_image(model: nn.Module, image: ImageSource) -> ImageAnalysis:
    """Run ``model`` once on ``image``: crop, every layer's attention (L, H, N, N), top-5, the input."""
    pre = preprocess(image, model)
    out = capture(model, pre.tensor)  # logits (1, C), attention (1, L, H, N, N)
    return ImageAnalysis(pre.crop, out["attention"][0], top_k(out["logits"]), pre.tensor)


def class_token_rollout(attention: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int,
                        head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """The class token's attention rollout of one image's (L, H, N, N) attention -> (gh, gw)."""
    rollout = attention_rollout(attention[None], head_fusion, discard_ratio)  # (1, N, N)
    return rollout_to_grid(rollout, grid, num_prefix_tokens)[0]  # (gh, gw)


def query_rows(attention: torch.Tensor, layer: int, query: int, head: int | None = None) -> torch.Tensor:
    """Token ``query``'s attention over all N tokens at ``layer``: (L, H, N, N) -> (K, N).

    K = H (every head) when ``head`` is None, else 1 (that head).
    """
    rows = attention[layer, :, query]  # (H, N)
    return rows if head is None else rows[head:head + 1]  # (K, N)


def prefix_share(rows: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """How much of each row (..., N) goes to the prefix tokens (class token, registers): (...,), in [0, 1]."""
    return rows[..., :num_prefix_tokens].sum(dim=-1)


def query_maps(attention: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int, layer: int,
               query_cell: tuple[int, int], head: int | None = None) -> torch.Tensor:
    """The query patch's attention over the patches at ``layer``: (L, H, N, N) -> (K, gh, gw).

    K = H (every head) when ``head`` is None, else 1 (that head).
    """
    token = token_index(*query_cell, grid, num_prefix_tokens)
    return tokens_to_grid(query_rows(attention, layer, token, head), grid, num_prefix_tokens)  # (K, gh, gw)


def prefix_names(model: nn.Module) -> list[str]:
    """What each prefix token is: "[CLS]" first when the model has a class token, then "prefix i"."""
    names = [f"prefix {i}" for i in range(num_prefix_tokens_of(model))]
    if names and getattr(model, "cls_token", None) is not None:
        names[0] = "[CLS]"
    return names


def share_note(share: float, names: Sequence[str]) -> str:
    """'31% on [CLS]' (or 'on the prefix tokens' when there are several)."""
    where = names[0] if len(names) == 1 else "the prefix tokens"
    percent = f"{100 * share:.1f}" if share < 0.1 else f"{100 * share:.0f}"  # 0.4%, not a flat 0%
    return f"{percent}% on {where}"


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


# ---------------- the click and the keys: an <img> that reports the patch under the pointer

_PICKER_ESM = """
const KEYS = ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"];
function render({ model, el }) {
  const img = document.createElement("img");
  img.style.cursor = "crosshair";
  img.style.maxWidth = "100%";
  img.title = "click a patch to make it the query; then the arrow keys: left/right a block, up/down a head";
  const show = () => { img.src = model.get("src"); };
  img.addEventListener("click", (event) => {
    const box = img.getBoundingClientRect();
    const [rows, cols] = model.get("grid");
    const clamp = (value, count) => Math.min(Math.max(value, 0), count - 1);
    const row = clamp(Math.floor((event.clientY - box.top) / box.height * rows), rows);
    const col = clamp(Math.floor((event.clientX - box.left) / box.width * cols), cols);
    model.set("cell", [row, col]);
    model.save_changes();
    el.focus();
  });
  el.tabIndex = 0;  // focusable, so that it receives the arrow keys after a click
  el.addEventListener("keydown", (event) => {
    if (!KEYS.includes(event.key)) return;
    event.preventDefault();  // the page and the notebook do not scroll or move between cells
    model.send({ key: event.key });
  });
  model.on("change:src", show);
  show();
  el.appendChild(img);
}
export default { render };
"""


class PatchPicker(anywidget.AnyWidget):
    """The crop with its patch grid; a click sets ``cell`` to [row, col] (0-based); arrow keys arrive as messages."""
    _esm = _PICKER_ESM
    src = traitlets.Unicode("").tag(sync=True)         # data URL of the picture
    grid = traitlets.List([14, 14]).tag(sync=True)     # [gh, gw]
    cell = traitlets.List([7, 7]).tag(sync=True)       # [row, col] of the query patch


# ---------------- the explorer


class Drawn(NamedTuple):
    """What the attention view shows now."""
    image: str
    layer: int
    head: int | None                      # None: all heads
    query: int                            # the query's token index
    query_cell: tuple[int, int] | None    # its (row, col); None for a prefix token
    maps: torch.Tensor                    # (K, gh, gw), as drawn: view A's panels, then view B's
    prefix_share: torch.Tensor            # (K,): each panel's share of attention on the prefix tokens
    vmax: list[float]                     # each panel's colour-scale top (all equal on the shared scale)
    views: list[tuple[str, int]]          # (image, layer) of view A and, when comparing, view B
    title: str
    method: str = QUERY_ATTENTION         # or an explain() method, whose maps are (K, gh, gw) too
    target: int | None = None             # the class an explanation is for


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
        self.prefix_names = prefix_names(model)
        self.warning = weights_warning(provenance)
        self.cache: OrderedDict[str, ImageAnalysis] = OrderedDict()
        self.explanations: dict[tuple[str, str, int], torch.Tensor] = {}  # (image, method, class) -> (gh, gw)
        self.captures = self.redraws = self.explained = 0
        self.drawn: Drawn | None = None
        self._holding = False
        self._picker_shows: tuple[str, tuple[int, int] | None] | None = None  # (image, query cell) on the picker
        self._build_widgets(len(model.blocks), model.blocks[0].attn.num_heads)
        self._select(self.image.value)

    # -- widgets

    def _build_widgets(self, depth: int, num_heads: int) -> None:
        self._build_view_controls(depth, num_heads)
        self._build_query_controls()
        self._build_display_controls()
        self._build_outputs()
        self._observe()
        row = widgets.HBox
        self.widget = widgets.VBox([
            row([self.image, self.upload, self.compare, self.image_b, self.layer_b]),
            row([self.layer, self.play, self.speed, self.head]),
            row([self.query, self.row, self.col]),
            row([self.method, self.target]),
            row([self.scale, self.size, self.opacity, self.fusion, self.discard]),
            self.status, row([self.picker, self.view]), self.summary])

    def _build_view_controls(self, depth: int, num_heads: int) -> None:
        wide = {"description_width": "initial"}
        self.image = widgets.Dropdown(options=list(self.sources), description="image", style=wide)
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload")
        self.compare = widgets.Dropdown(options=COMPARE, value="off", description="compare", style=wide)
        self.image_b = widgets.Dropdown(options=list(self.sources), description="image B", style=wide,
                                        value=list(self.sources)[min(1, len(self.sources) - 1)])
        self.layer = widgets.IntSlider(0, min=0, max=depth - 1, description="layer", style=wide)
        self.layer_b = widgets.IntSlider(depth - 1, min=0, max=depth - 1, description="layer B", style=wide)
        self.play = widgets.Play(0, min=0, max=depth - 1, interval=PLAY_SPEEDS["1 s a block"],
                                 description="play through the blocks")
        self.speed = widgets.Dropdown(options=PLAY_SPEEDS, value=PLAY_SPEEDS["1 s a block"], description="speed")
        self.head = widgets.Dropdown(options=[("all heads", ALL_HEADS)] + [(f"head {h}", h) for h in range(num_heads)],
                                     value=ALL_HEADS, description="head", style=wide)

    def _build_query_controls(self) -> None:
        gh, gw = self.grid
        wide = {"description_width": "initial"}
        options = [("a patch (click the picture)", PATCH_QUERY)]
        options += [(f"{name} token" if name == "[CLS]" else name, i) for i, name in enumerate(self.prefix_names)]
        self.query = widgets.Dropdown(options=options, value=PATCH_QUERY, description="query", style=wide)
        self.row = widgets.IntSlider(gh // 2, min=0, max=gh - 1, description="query row", style=wide)
        self.col = widgets.IntSlider(gw // 2, min=0, max=gw - 1, description="query column", style=wide)
        self.picker = PatchPicker(grid=[gh, gw], cell=[gh // 2, gw // 2],  # full size: a target to click
                                  layout=widgets.Layout(min_width=f"{PICKER_PATCH_PX * gw}px", flex="0 0 auto"))

    def _build_display_controls(self) -> None:
        wide = {"description_width": "initial"}
        self.scale = widgets.ToggleButtons(options=SCALES, value="shared", description="colour scale", style=wide)
        self.size = widgets.Dropdown(options=list(SIZES), value=DEFAULT_SIZE, description="size", style=wide)
        self.opacity = widgets.FloatSlider(0.55, min=0.0, max=1.0, step=0.05, description="overlay opacity",
                                           style=wide)
        self.fusion = widgets.Dropdown(options=HEAD_FUSIONS, value="mean", description="rollout: heads fused by",
                                       style=wide)
        self.discard = widgets.FloatSlider(0.0, min=0.0, max=0.95, step=0.05, description="discard ratio",
                                           style=wide)
        methods = [("attention of the query, per head", QUERY_ATTENTION)] + [(m, m) for m in EXPLANATION_METHODS]
        self.method = widgets.Dropdown(options=methods, value=QUERY_ATTENTION, description="method", style=wide)
        self.target = widgets.Dropdown(options=[], description="explained class", style=wide)

    def _build_outputs(self) -> None:
        self.view = widgets.Image(format="png", layout=widgets.Layout(flex="1 1 0%", min_width="0",  # PNG: sharp text
                                                                      height="auto", object_fit="contain"))
        self.summary = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.status = widgets.HTML()

    def _observe(self) -> None:
        self.image.observe(lambda change: self._select(change["new"]), "value")
        self.upload.observe(lambda change: self._uploaded(change["new"]), "value")
        widgets.link((self.play, "value"), (self.layer, "value"))
        widgets.link((self.speed, "value"), (self.play, "interval"))
        for control in (self.layer, self.head, self.query, self.compare, self.image_b, self.layer_b,
                        self.scale, self.size, self.opacity, self.method, self.target):
            control.observe(lambda change: self._changed(), "value")
        for control in (self.row, self.col):
            control.observe(lambda change: self._patch_moved(), "value")
        for control in (self.fusion, self.discard):
            control.observe(lambda change: self._summarise(self.image.value), "value")
        self.picker.observe(lambda change: self._clicked(change["new"]), "cell")
        self.picker.on_msg(lambda widget, content, buffers: self._key(content.get("key", "")))

    def _ipython_display_(self) -> None:
        display(self.widget)

    # -- events

    def _select(self, name: str) -> None:
        """A new image: one forward pass unless cached, then the summary and a redraw."""
        try:
            self._summarise(name)
        except VitInspectError as err:
            self._say(str(err), error=True)
            return
        label = self.provenance.label if self.provenance else "weights not loaded through load_vit"
        self._say(f"{name} - {label}")
        self._offer_classes(name)
        self._changed()

    def _offer_classes(self, name: str) -> None:
        """The explained-class menu: image ``name``'s top-5, its top class chosen."""
        topk = self.analysis_of(name).topk
        options = [(f"{label} ({index})", index) for label, index in zip(topk.names[0], topk.indices[0].tolist())]
        self._holding = True
        try:
            self.target.options = options
            self.target.value = options[0][1]
        finally:
            self._holding = False

    def _summarise(self, name: str) -> None:
        """The rollout (with the chosen head fusion and discard ratio) and the top-5 of image ``name``."""
        analysis = self.analysis_of(name)
        rollout = class_token_rollout(analysis.attention, self.grid, self.prefix, self.fusion.value,
                                      self.discard.value)  # (gh, gw)
        title = f"class-token rollout\n(heads: {self.fusion.value}, discard {self.discard.value:.0%})"
        self.rollout = rollout
        self.summary_figure = plot_explorer_summary(analysis.crop, rollout, analysis.topk, warning=self.warning,
                                                    title=name, rollout_title=title)
        self.summary.value = figure_bytes(self.summary_figure, "png")

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
            self._picker_shows = None
            self._holding = True
            try:
                self.image.options, self.image_b.options = list(self.sources), list(self.sources)
            finally:
                self._holding = False
            if self.image.value == key:  # already chosen: setting it again would not notify
                self._select(key)
            self.image.value = key

    def _clicked(self, cell: list[int]) -> None:
        """The browser reported a click on patch ``cell``: move both sliders, query that patch, redraw once."""
        self._holding = True
        try:
            self.row.value, self.col.value = int(cell[0]), int(cell[1])
        finally:
            self._holding = False
        self._patch_moved()

    def _patch_moved(self) -> None:
        """A patch was chosen (click or slider): it becomes the query."""
        if self._holding:
            return
        self._holding = True
        try:
            self.query.value = PATCH_QUERY
        finally:
            self._holding = False
        self._changed()

    def _key(self, key: str) -> None:
        """An arrow key on the picture: left/right the previous/next block, up/down the previous/next head."""
        if key in ("ArrowLeft", "ArrowRight"):
            step = 1 if key == "ArrowRight" else -1
            self.layer.value = min(max(self.layer.value + step, 0), self.layer.max)
        elif key in ("ArrowUp", "ArrowDown"):
            values = [value for _, value in self.head.options]
            step = 1 if key == "ArrowDown" else -1
            self.head.value = values[(values.index(self.head.value) + step) % len(values)]

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

    def views(self) -> list[tuple[str, int]]:
        """(image, layer) of each view drawn: one, or two side by side when comparing."""
        first = (self.image.value, self.layer.value)
        if self.compare.value == "image":
            return [first, (self.image_b.value, self.layer.value)]
        if self.compare.value == "layer":
            return [first, (self.image.value, self.layer_b.value)]
        return [first]

    def query_token(self) -> tuple[int, tuple[int, int] | None]:
        """The query's token index and, for a patch, its (row, col)."""
        if self.query.value != PATCH_QUERY:
            return self.query.value, None
        cell = (self.row.value, self.col.value)
        return token_index(*cell, self.grid, self.prefix), cell

    def explanation_of(self, name: str) -> torch.Tensor:
        """The chosen method's map (gh, gw) of image ``name`` for the chosen class, computed once and cached."""
        key = (name, self.method.value, self.target.value)
        if key not in self.explanations:
            pixels = self.analysis_of(name).pixels  # (1, 3, H, W)
            self.explanations[key] = explain(self.model, pixels, self.method.value, self.target.value)[0]  # (gh, gw)
            self.explained += 1
        return self.explanations[key]

    def redraw(self) -> None:
        """Draw the current views / head / query (or method and class) from the caches: no forward pass."""
        if self.method.value != QUERY_ATTENTION:
            self._redraw_explanation()
            return
        views, (token, cell) = self.views(), self.query_token()
        head = None if self.head.value == ALL_HEADS else self.head.value
        rows = torch.cat([query_rows(self.analysis_of(name).attention, layer, token, head)
                          for name, layer in views])  # (K, N), view A's heads then view B's
        maps, share = tokens_to_grid(rows, self.grid, self.prefix), prefix_share(rows, self.prefix)  # (K, gh, gw), (K,)
        title = self._title(views, head, token, cell)
        self.panels = self._draw(views, maps, share, head, cell, title)
        self.view.value = image_bytes(self.panels.picture, "png")
        self._show_picker(views[0][0], cell)
        self.drawn = Drawn(views[0][0], views[0][1], head, token, cell, maps, share, self.panels.vmax, views, title)
        self.redraws += 1

    def _draw(self, views: list[tuple[str, int]], maps: torch.Tensor, share: torch.Tensor, head: int | None,
              cell: tuple[int, int] | None, title: str):
        per_view = maps.shape[0] // len(views)
        heads = [head] if head is not None else list(range(per_view))
        tags = ["A ", "B "] if len(views) == 2 else [""]
        names = [f"{tag}head {h}" for tag in tags for h in heads]
        crops = [self.analysis_of(name).crop for name, _ in views for _ in heads]
        all_px, one_px, font_size = SIZES[self.size.value]
        ncols = 2 if head is not None else (per_view if per_view <= 6 else per_view // 2) if len(views) == 2 else 4
        if head is None and len(views) == 2:  # twice the panels in about the pixels of one view: a redraw as fast
            all_px = all_px * 2 // 3
        vmax = None if self.scale.value == "shared" else maps.flatten(1).amax(dim=1).tolist()
        notes = [share_note(float(value), self.prefix_names) for value in share] if self.prefix else None
        return draw_head_panels(crops, maps, cell, names, title=title, warning=self.warning,
                                panel_px=all_px if head is None else one_px, ncols=ncols, alpha=self.opacity.value,
                                vmax=vmax, notes=notes, font_size=font_size)

    def _title(self, views: list[tuple[str, int]], head: int | None, token: int, cell: tuple[int, int] | None) -> str:
        """Layer, head and query always; the views compared; the colour-scale rule."""
        query = f"patch (row {cell[0]}, col {cell[1]})" if cell else self.prefix_names[token]
        heads = "all heads" if head is None else f"head {head}"
        if len(views) == 1:
            what = f"{views[0][0]}: layer {views[0][1]}, {heads}, query {query}"
        elif self.compare.value == "image":
            what = f"A: {views[0][0]} | B: {views[1][0]}; layer {views[0][1]}, {heads}, query {query}"
        else:
            what = f"{views[0][0]}: A: layer {views[0][1]} | B: layer {views[1][1]}; {heads}, query {query}"
        scale = ("one colour scale for all panels, 0 to the largest weight" if self.scale.value == "shared"
                 else "each panel on its own colour scale, 0 to its largest weight")
        return f"{what}\n{scale}"

    def _redraw_explanation(self) -> None:
        """One panel per image (two when comparing images) of the chosen method's map, on one scale by default."""
        views, (token, cell) = self.views(), self.query_token()
        names = [views[0][0]] + ([views[1][0]] if self.compare.value == "image" else [])
        maps = torch.stack([self.explanation_of(name) for name in names])  # (K, gh, gw)
        _, one_px, font_size = SIZES[self.size.value]
        vmax = None if self.scale.value == "shared" else maps.flatten(1).amax(dim=1).tolist()
        title = self._explanation_title(names)
        self.panels = draw_head_panels([self.analysis_of(name).crop for name in names], maps, None, names,
                                       title=title, warning=self.warning, panel_px=one_px, ncols=2,
                                       alpha=self.opacity.value, vmax=vmax, font_size=font_size)
        self.view.value = image_bytes(self.panels.picture, "png")
        self._show_picker(names[0], cell)
        share = torch.full((len(names),), float("nan"))  # (K,): no query, no share on the prefix tokens
        self.drawn = Drawn(names[0], views[0][1], None, token, cell, maps, share, self.panels.vmax,
                           [(name, views[0][1]) for name in names], title, self.method.value, self.target.value)
        self.redraws += 1

    def _explanation_title(self, names: list[str]) -> str:
        label = next(text for text, value in self.target.options if value == self.target.value)
        scale = ("one colour scale for all panels, 0 to the largest value" if self.scale.value == "shared"
                 else "each panel on its own colour scale, 0 to its largest value")
        return (f"{' | '.join(names)}: {self.method.value} for class {label}\n"
                f"(layer, head and query do not apply to this method); {scale}")

    def _show_picker(self, name: str, cell: tuple[int, int] | None) -> None:
        """The picture to click on, drawn again only when the image or the query patch changed."""
        if cell is not None:
            self.picker.cell = list(cell)
        if self._picker_shows == (name, cell):
            return
        crop = self.analysis_of(name).crop
        self.picker.src = "data:image/png;base64," + base64.b64encode(
            image_bytes(patch_picker_image(crop, self.grid, cell, PICKER_PATCH_PX))).decode("ascii")
        self._picker_shows = (name, cell)


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
