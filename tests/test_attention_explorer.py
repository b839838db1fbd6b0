"""The lecture explorer, driven from Python as a browser would drive its widgets."""
import copy
import io

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from vit_inspect import capture, explorer, preprocess, sample_images
from vit_inspect import attention_explorer, plotting
from vit_inspect.attention_explorer import (ALL_HEADS, PATCH_QUERY, QUERY_ATTENTION, SIZES, image_from_bytes,
                                            prefix_share, query_maps, share_note, uploaded_files, weights_warning)
from vit_inspect.attention_maps import attention_rollout, rollout_to_grid
from vit_inspect.errors import ImageError, VitInspectError
from vit_inspect.explanations import explain
from vit_inspect.plotting import draw_head_panels, plot_head_panels
from tests.mutation import fails, passes
from vit_inspect.weights import Provenance

TRAINED = Provenance("vit_tiny_patch16_224", "local file", True, "/x.safetensors")
UNTRAINED = Provenance("vit_tiny_patch16_224", "random", False, None, 0)


@pytest.fixture()
def model(tiny):
    return copy.deepcopy(tiny)


@pytest.fixture()
def forwards(model):
    """How many times the model ran (a forward hook on the whole model)."""
    count = [0]
    handle = model.register_forward_hook(lambda *args: count.__setitem__(0, count[0] + 1))
    yield count
    handle.remove()


@pytest.fixture()
def photos():
    first, second = sample_images()[:2]
    return {"rgb": first, "gray": second}


def png_bytes(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def test_query_maps_take_the_query_row_of_the_chosen_layer_and_head():
    L, H, gh, gw, prefix = 3, 4, 2, 5, 2
    attention = torch.rand(L, H, prefix + gh * gw, prefix + gh * gw)
    maps = query_maps(attention, (gh, gw), prefix, layer=1, query_cell=(1, 3))
    token = prefix + 1 * gw + 3
    assert maps.shape == (H, gh, gw)
    assert torch.equal(maps[2, 0, 4], attention[1, 2, token, prefix + 4])
    assert torch.equal(maps[2, 1, 0], attention[1, 2, token, prefix + gw])
    one = query_maps(attention, (gh, gw), prefix, layer=2, query_cell=(0, 0), head=3)
    assert one.shape == (1, gh, gw) and torch.equal(one[0].flatten(), attention[2, 3, prefix, prefix:])


def test_explorer_draws_the_chosen_layer_head_and_query_with_no_new_forward_pass(model, forwards, photos):
    demo = explorer((model, TRAINED), images=photos)
    assert forwards[0] == 1 and demo.captures == 1
    with torch.no_grad():
        reference = capture(model, preprocess(photos["rgb"], model).tensor)["attention"][0]  # (L, H, N, N)
    forwards[0] = 0
    pictures = {demo.view.value}
    demo.layer.value, demo.head.value = 5, 1
    demo.row.value, demo.col.value = 2, 9
    pictures.add(demo.view.value)
    token = 1 + 2 * 14 + 9
    assert demo.drawn.layer == 5 and demo.drawn.head == 1 and demo.drawn.query_cell == (2, 9)
    torch.testing.assert_close(demo.drawn.maps, reference[5, 1, token, 1:].reshape(1, 14, 14))
    demo.head.value = ALL_HEADS
    torch.testing.assert_close(demo.drawn.maps, reference[5, :, token, 1:].reshape(3, 14, 14))
    pictures.add(demo.view.value)
    assert len(pictures) == 3, "every change redraws the picture"
    assert forwards[0] == 0 and demo.captures == 1, "a change of layer, head or query runs no forward pass"


def test_a_click_moves_the_query_and_redraws_once(model, photos):
    demo = explorer((model, TRAINED), images=photos)
    redraws = demo.redraws
    demo.picker.cell = [3, 11]  # what the browser sends after a click on that patch
    assert (demo.row.value, demo.col.value) == (3, 11)
    assert demo.drawn.query_cell == (3, 11) and demo.redraws == redraws + 1
    demo.row.value = 4  # and the sliders move the picker's outline
    assert demo.picker.cell == [4, 11]


def test_one_forward_pass_per_image_then_the_cache(model, forwards, photos):
    demo = explorer((model, TRAINED), images=photos)
    summary = demo.summary.value
    demo.image.value = "gray"
    assert forwards[0] == 2 and demo.drawn.image == "gray" and demo.summary.value != summary
    demo.image.value = "rgb"
    demo.image.value = "gray"
    assert forwards[0] == 2 and demo.captures == 2


def test_uploads_of_both_ipywidgets_versions_are_added_and_shown(model, photos):
    content = png_bytes()
    v8 = ({"name": "red.png", "type": "image/png", "size": len(content), "content": memoryview(content)},)
    v7 = {"red.png": {"metadata": {"name": "red.png"}, "content": content}}
    assert uploaded_files(v8) == uploaded_files(v7) == {"red.png": content}
    demo = explorer((model, TRAINED), images=photos)
    demo._uploaded(v8)
    assert demo.image.value == "upload: red.png" and demo.drawn.image == "upload: red.png"
    assert demo.captures == 2
    demo._uploaded({"red.png": {"content": png_bytes(colour=(0, 0, 250))}})  # another file, same name
    assert demo.captures == 3 and np.asarray(demo.cache["upload: red.png"].crop)[0, 0, 2] == 250


def test_a_bad_upload_is_one_red_line_naming_the_file(model, photos):
    demo = explorer((model, TRAINED), images=photos)
    demo._uploaded({"notes.txt": {"content": b"not an image"}})
    assert "notes.txt: not an image" in demo.status.value and "red" in demo.status.value
    assert demo.image.value == "rgb"
    with pytest.raises(ImageError, match="empty.png: file is empty"):
        image_from_bytes("empty.png", b"")
    with pytest.raises(ImageError, match="cut.png: truncated"):
        image_from_bytes("cut.png", png_bytes()[:60])


def test_an_unreadable_image_is_a_red_line_and_the_widgets_keep_working(model, photos, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    demo = explorer((model, TRAINED), images={**photos, "broken": tmp_path / "broken.png"})
    demo.image.value = "broken"
    assert "broken.png: not an image" in demo.status.value and "red" in demo.status.value
    demo.layer.value = 2  # no traceback from the callback
    assert "broken.png" in demo.status.value
    demo.image.value = "rgb"
    assert demo.drawn.image == "rgb" and demo.drawn.layer == 2
    with pytest.raises(VitInspectError, match="images is empty"):
        explorer((model, TRAINED), images={})


def test_untrained_and_unknown_weights_are_labelled_in_red(model, photos):
    assert weights_warning(TRAINED) is None
    assert weights_warning(UNTRAINED) == "UNTRAINED"
    assert weights_warning(None) == "UNVERIFIED weights"
    trained, untrained = (explorer((model, p), images=photos) for p in (TRAINED, UNTRAINED))
    assert explorer(model, images=photos).warning == "UNVERIFIED weights"

    def red_in_titles(demo):
        pixels = np.asarray(demo.panels.picture).astype(int)  # (height, width, 3)
        x, y = demo.panels.origins[0]
        titles = pixels[:y]  # everything above the first panel: the title lines
        return ((titles[..., 0] > 150) & (titles[..., 1] < 80) & (titles[..., 2] < 80)).sum()

    assert red_in_titles(untrained) > 50 and red_in_titles(trained) == 0
    assert untrained.summary_figure.axes[0].title.get_color() == "red"


def test_head_panels_share_one_scale_from_zero_by_default_and_outline_the_query():
    crop = Image.new("RGB", (64, 64), (128, 128, 128))
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 2] = 0.5  # head 0: its maximum at row 1, col 2
    maps[1] = 0.25       # head 1: flat
    maps[1, 3, 0] = 1.0
    lut = colormaps["inferno"]
    top, bottom, quarter, half = (np.round(np.array(lut(v)[:3]) * 255) for v in (1.0, 0.0, 0.25, 0.5))

    def patch_colour(panels, panel, row, col):
        pixels, (x, y), k = np.asarray(panels.picture).astype(int), panels.origins[panel], panels.patch_px
        return pixels[y + row * k + k // 2, x + col * k + k // 2]

    shared = draw_head_panels(crop, maps, (2, 3), heads=[0, 1], panel_px=64, alpha=1.0)
    assert shared.vmax == [1.0, 1.0], "compared panels share one scale: 0 to the largest value of all"
    assert np.abs(patch_colour(shared, 0, 1, 2) - half).max() <= 1, "0.5 is half way up the shared scale"
    assert np.abs(patch_colour(shared, 1, 3, 0) - top).max() <= 1
    assert np.abs(patch_colour(shared, 0, 0, 0) - bottom).max() <= 1, "zero takes the bottom colour"
    assert np.abs(patch_colour(shared, 1, 0, 0) - quarter).max() <= 1, "the scale starts at 0, not at the minimum"
    own = draw_head_panels(crop, maps, (2, 3), heads=[0, 1], panel_px=64, alpha=1.0, vmax=[0.5, 1.0])
    assert np.abs(patch_colour(own, 0, 1, 2) - top).max() <= 1, "on its own scale a panel's maximum is the top colour"
    pixels, k = np.asarray(own.picture).astype(int), own.patch_px
    x, y = own.origins[1]
    assert (pixels[y + 2 * k + 1, x + 3 * k + k // 2] == [0, 255, 255]).all(), "query (row 2, col 3) outlined"
    strip_x = x + 4 * k + 6 + 7
    assert np.abs(pixels[y, strip_x] - top).max() <= 1 and np.abs(pixels[y + 4 * k - 1, strip_x] - bottom).max() <= 1
    assert plot_head_panels(own).axes[0].get_images()[0].get_array().shape[:2] == pixels.shape[:2]
    with pytest.raises(ValueError, match="3 values for 2 panels"):
        draw_head_panels(crop, maps, None, heads=[0, 1], vmax=[1, 2, 3])


@pytest.fixture()
def reference(model, photos):
    """Every layer's attention (L, H, N, N) of each photo, from a capture of its own."""
    with torch.no_grad():
        return {name: capture(model, preprocess(path, model).tensor)["attention"][0] for name, path in photos.items()}


def test_the_class_token_as_query_and_each_panels_share_on_it(model, forwards, photos, reference):
    demo = explorer((model, TRAINED), images=photos)
    forwards[0] = 0
    demo.layer.value, demo.query.value = 4, 0  # the menu's "[CLS] token"
    ref = reference["rgb"][4, :, 0]  # (H, N): the class token's rows
    assert demo.drawn.query == 0 and demo.drawn.query_cell is None
    torch.testing.assert_close(demo.drawn.maps, ref[:, 1:].reshape(3, 14, 14))
    torch.testing.assert_close(demo.drawn.prefix_share, ref[:, 0])
    assert "query [CLS]" in demo.drawn.title
    demo.query.value = PATCH_QUERY
    token = 1 + 7 * 14 + 7
    torch.testing.assert_close(demo.drawn.prefix_share, reference["rgb"][4, :, token, 0])
    demo.query.value = 0
    demo.picker.cell = [1, 2]  # a click makes a patch the query again
    assert demo.query.value == PATCH_QUERY and demo.drawn.query_cell == (1, 2)
    assert forwards[0] == 0, "no forward pass for any of it"
    assert share_note(0.31, ["[CLS]"]) == "31% on [CLS]" and share_note(0.004, ["[CLS]"]) == "0.4% on [CLS]"
    assert share_note(0.5, ["[CLS]", "prefix 1"]) == "50% on the prefix tokens"


def check_prefix_share(function):
    rows = torch.tensor([[0.31, 0.09, 0.6], [0.0, 0.5, 0.5]])  # (K, N) with 1 prefix token
    assert torch.allclose(function(rows, 1), torch.tensor([0.31, 0.0]))
    assert torch.allclose(function(rows, 2), torch.tensor([0.40, 0.5]))


def test_prefix_share_mutation_is_caught():
    passes(check_prefix_share, prefix_share)
    fails(check_prefix_share, lambda rows, n: rows[..., n:].sum(dim=-1))  # the patches' share instead
    fails(check_prefix_share, lambda rows, n: rows[..., :1].sum(dim=-1))  # only the class token, registers dropped


def check_one_scale_by_default(demo):
    demo.scale.value = "shared"
    demo.head.value = ALL_HEADS
    tops = demo.drawn.vmax
    assert len(set(tops)) == 1 and tops[0] == pytest.approx(float(demo.drawn.maps.max()))
    assert "one colour scale for all panels" in demo.drawn.title


def test_one_colour_scale_for_all_heads_by_default_a_scale_per_head_on_request(model, photos, monkeypatch):
    demo = explorer((model, TRAINED), images=photos)
    passes(check_one_scale_by_default, demo)
    demo.scale.value = "per panel"
    per_head = demo.drawn.maps.flatten(1).amax(dim=1).tolist()
    assert demo.drawn.vmax == pytest.approx(per_head) and len(set(demo.drawn.vmax)) == 3
    assert "each panel on its own colour scale" in demo.drawn.title
    with monkeypatch.context() as patch:  # the planted bug: every panel on its own scale whatever the toggle says
        patch.setattr(plotting, "panel_scales", lambda maps, vmax=None: maps.flatten(1).amax(dim=1).tolist())
        fails(check_one_scale_by_default, demo)


def test_play_its_speed_and_the_arrow_keys_step_through_blocks_and_heads(model, forwards, photos):
    demo = explorer((model, TRAINED), images=photos)
    forwards[0] = 0
    demo.play.value = 3  # what the Play button sends at each tick
    assert demo.layer.value == 3 and demo.drawn.layer == 3 and "layer 3" in demo.drawn.title
    demo.speed.value = 400
    assert demo.play.interval == 400, "the speed menu sets the Play interval (ms a block)"
    demo.picker._handle_custom_msg({"key": "ArrowRight"}, [])  # what the picker sends for a key
    assert demo.drawn.layer == 4 and demo.play.value == 4, "the slider and Play follow the keys"
    demo.picker._handle_custom_msg({"key": "ArrowLeft"}, [])
    demo.picker._handle_custom_msg({"key": "ArrowLeft"}, [])
    assert demo.drawn.layer == 2
    demo.layer.value = demo.layer.max
    demo.picker._handle_custom_msg({"key": "ArrowRight"}, [])
    assert demo.drawn.layer == demo.layer.max, "no step past the last block"
    demo.picker._handle_custom_msg({"key": "ArrowDown"}, [])
    assert demo.drawn.head == 0 and "head 0" in demo.drawn.title
    demo.picker._handle_custom_msg({"key": "ArrowUp"}, [])
    demo.picker._handle_custom_msg({"key": "ArrowUp"}, [])
    assert demo.drawn.head == 2, "up from head 0 goes round through 'all heads' to the last head"
    demo.picker._handle_custom_msg({"key": "Enter"}, [])
    assert demo.drawn.head == 2 and forwards[0] == 0


def test_the_title_always_names_layer_head_and_query(model, photos):
    demo = explorer((model, TRAINED), images=photos)
    demo.layer.value, demo.head.value, demo.row.value, demo.col.value = 2, 1, 3, 4
    assert demo.drawn.title.startswith("rgb: layer 2, head 1, query patch (row 3, col 4)")
    demo.head.value = ALL_HEADS
    assert "layer 2, all heads, query patch (row 3, col 4)" in demo.drawn.title


def test_two_images_side_by_side_on_one_scale(model, forwards, photos, reference):
    demo = explorer((model, TRAINED), images=photos)
    forwards[0] = 0
    demo.compare.value, demo.image_b.value, demo.head.value, demo.layer.value = "image", "gray", 1, 6
    token = 1 + 7 * 14 + 7
    expected = torch.stack([reference["rgb"][6, 1, token, 1:], reference["gray"][6, 1, token, 1:]])  # (2, N - 1)
    torch.testing.assert_close(demo.drawn.maps, expected.reshape(2, 14, 14))
    assert demo.drawn.views == [("rgb", 6), ("gray", 6)]
    assert demo.drawn.vmax == [pytest.approx(float(expected.max()))] * 2, "both views on one scale"
    assert "A: rgb | B: gray; layer 6, head 1" in demo.drawn.title
    assert forwards[0] == 1 and demo.captures == 2, "the second image: one forward pass, then cached"
    demo.head.value = ALL_HEADS
    assert demo.drawn.maps.shape == (6, 14, 14) and len(demo.panels.origins) == 6


def test_two_layers_of_one_image_side_by_side_on_one_scale(model, forwards, photos, reference):
    demo = explorer((model, TRAINED), images=photos)
    forwards[0] = 0
    demo.compare.value, demo.layer_b.value, demo.layer.value, demo.query.value = "layer", 9, 0, 0
    expected = torch.cat([reference["rgb"][0, :, 0, 1:], reference["rgb"][9, :, 0, 1:]])  # (2H, N - 1)
    torch.testing.assert_close(demo.drawn.maps, expected.reshape(6, 14, 14))
    assert demo.drawn.views == [("rgb", 0), ("rgb", 9)] and len(set(demo.drawn.vmax)) == 1
    assert "A: layer 0 | B: layer 9" in demo.drawn.title and forwards[0] == 0
    demo.compare.value = "off"
    assert demo.drawn.views == [("rgb", 0)] and demo.drawn.maps.shape == (3, 14, 14)


def test_size_opacity_and_sharp_png_panels(model, photos):
    demo = explorer((model, TRAINED), images=photos)
    assert demo.size.value == "large" and demo.panels.patch_px == SIZES["large"][0] // 14
    assert demo.view.format == "png" and demo.view.value[:8] == b"\x89PNG\r\n\x1a\n", "PNG: no blur on edges and text"
    width = demo.panels.picture.width
    demo.size.value = "small"
    assert demo.panels.patch_px == SIZES["small"][0] // 14 and demo.panels.picture.width < width
    demo.opacity.value = 0.0  # the photo alone: the crop shows through unchanged
    crop = np.asarray(demo.cache["rgb"].crop.resize((14 * demo.panels.patch_px,) * 2, Image.BICUBIC)).astype(int)
    x, y = demo.panels.origins[1]
    k = demo.panels.patch_px
    panel = np.asarray(demo.panels.picture).astype(int)[y + k:y + 3 * k, x:x + 3 * k]  # away from the query box
    assert np.abs(panel - crop[k:3 * k, :3 * k]).max() <= 1
    demo.opacity.value = 1.0
    panel = np.asarray(demo.panels.picture).astype(int)[y + k:y + 3 * k, x:x + 3 * k]
    assert np.abs(panel - crop[k:3 * k, :3 * k]).max() > 50, "at full opacity the colours cover the photo"


def test_rollout_fusion_and_discard_ratio_redraw_the_summary_without_a_forward_pass(model, forwards, photos,
                                                                                        reference):
    demo = explorer((model, UNTRAINED), images=photos)
    forwards[0] = 0
    summary = demo.summary.value
    demo.fusion.value, demo.discard.value = "max", 0.5
    expected = rollout_to_grid(attention_rollout(reference["rgb"][None], "max", 0.5), (14, 14), 1)[0]  # (gh, gw)
    torch.testing.assert_close(demo.rollout, expected)
    assert demo.summary.value != summary and forwards[0] == 0
    title = demo.summary_figure.axes[0].get_title()
    assert "heads: max, discard 50%" in title and "UNTRAINED" in title


def test_the_methods_menu_explains_once_per_image_method_and_class_then_redraws_without_a_forward_pass(
        model, forwards, photos):
    demo = explorer((model, TRAINED), images=photos)
    top, second = (value for _, value in demo.target.options[:2])
    forwards[0] = 0
    demo.method.value = "input_x_gradient"  # a gradient method: the model runs forwards and backwards once
    assert forwards[0] >= 1 and demo.explained == 1 and demo.drawn.method == "input_x_gradient"
    with torch.no_grad():
        pixels = preprocess(photos["rgb"], model).tensor
    expected = {target: explain(model, pixels, "input_x_gradient", target)[0] for target in (top, second)}
    torch.testing.assert_close(demo.drawn.maps[0], expected[top])
    assert demo.drawn.target == top and f"input_x_gradient for class {demo.target.options[0][0]}" in demo.drawn.title
    forwards[0] = 0
    demo.layer.value, demo.opacity.value, demo.size.value, demo.scale.value = 3, 0.8, "small", "per panel"
    assert forwards[0] == 0 and demo.explained == 1, "a redraw of an explanation runs no forward pass"
    demo.target.value = second  # another class: computed once
    torch.testing.assert_close(demo.drawn.maps[0], expected[second])
    assert demo.explained == 2
    forwards[0] = 0
    demo.target.value = top
    demo.method.value = QUERY_ATTENTION
    demo.method.value = "input_x_gradient"
    demo.target.value = second
    assert forwards[0] == 0 and demo.explained == 2, "cached per image, method and class"
    demo.compare.value = "image"  # image B: one capture and one explanation, then one scale for both
    assert demo.drawn.maps.shape == (2, 14, 14) and len(set(demo.drawn.vmax)) == 2, "per-panel scale still chosen"
    demo.scale.value = "shared"
    assert len(set(demo.drawn.vmax)) == 1 and demo.explained == 3 and demo.captures == 2


_PICKER_PAGE = """<!DOCTYPE html>
<html><body><div id="root" style="width: 280px"></div><pre id="result"></pre>
<script type="module">
const source = SOURCE;
const module = await import(URL.createObjectURL(new Blob([source], {type: "text/javascript"})));
const state = {src: PICTURE, grid: [GH, GW], cell: [0, 0]};
const calls = [];
const model = {get: (key) => state[key], set: (key, value) => { state[key] = value; calls.push([key, value]); },
               on: () => {}, save_changes: () => calls.push(["save_changes"]),
               send: (content) => calls.push(["send", content])};
const el = document.getElementById("root");
module.default.render({model, el});
const img = el.querySelector("img");
await new Promise((resolve) => img.complete ? resolve() : img.addEventListener("load", resolve));
const box = img.getBoundingClientRect();
for (const [row, col] of CLICKS) {
  img.dispatchEvent(new MouseEvent("click", {bubbles: true,
    clientX: box.left + (col + 0.5) * box.width / GW, clientY: box.top + (row + 0.5) * box.height / GH}));
}
for (const key of PRESSED) {
  el.dispatchEvent(new KeyboardEvent("keydown", {key, bubbles: true, cancelable: true}));
}
document.getElementById("result").textContent = JSON.stringify(
  {calls, width: box.width, natural: img.naturalWidth, focusable: el.tabIndex});
</script></body></html>
"""


def test_the_picker_turns_a_click_in_the_browser_into_the_patch_under_it(tmp_path):
    """The picker's own JavaScript in headless Chromium, the picture shown smaller than its pixels."""
    import base64
    import json
    import os
    import re

    from vit_inspect.attention_explorer import _PICKER_ESM
    from vit_inspect.export import dump_dom, find_chromium
    from vit_inspect.plotting import image_bytes, patch_picker_image

    if find_chromium() is None:
        if os.environ.get("VIT_INSPECT_REQUIRE_CHROMIUM"):
            pytest.fail("VIT_INSPECT_REQUIRE_CHROMIUM is set but chromium is not on PATH")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); CI installs it and runs this")
    grid = (7, 10)  # not square, so a transposed row/column cannot pass
    picture = patch_picker_image(Image.new("RGB", (160, 112), (90, 120, 30)), grid, (0, 0), patch_px=36)
    url = "data:image/png;base64," + base64.b64encode(image_bytes(picture)).decode("ascii")
    clicks = [[3, 8], [6, 0], [0, 9]]
    keys = ["ArrowRight", "a", "ArrowUp", "ArrowLeft", "ArrowDown"]  # "a" is not ours: not sent
    page = tmp_path / "picker.html"
    page.write_text(_PICKER_PAGE.replace("SOURCE", json.dumps(_PICKER_ESM)).replace("PICTURE", json.dumps(url))
                    .replace("GH", str(grid[0])).replace("GW", str(grid[1])).replace("CLICKS", json.dumps(clicks))
                    .replace("PRESSED", json.dumps(keys)))
    found = re.search(r'<pre id="result">(.*?)</pre>', dump_dom(page), flags=re.DOTALL)
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["width"] == 280 and result["natural"] == 360, "drawn smaller than its natural size"
    sent = [["send", {"key": key}] for key in keys if key != "a"]
    assert result["calls"] == [item for click in clicks for item in (["cell", click], ["save_changes"])] + sent
    assert result["focusable"] == 0, "the widget takes the keyboard focus, so the arrow keys reach it"
