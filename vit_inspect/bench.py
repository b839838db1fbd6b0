"""Speed and memory of ``capture`` and the analyses, as side-by-side ratios.

    python -m vit_inspect.bench        (also: make bench)

The machine may be shared and noisy, so every figure is a ratio measured in one
process on the same inputs: the candidates run interleaved, once each per round, in a
rotating order; after a warm-up, the median of the per-round ratios is printed with
its min-max. For the many-image figure the candidates take turns batch by batch, and a
round is one pass over all the images. The reference is the faster (by median) of the
plain fused and the plain unfused ``model(x)``. Weights are untrained and inputs random:
the amount of arithmetic, hence the speed, does not depend on their values.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import timm
import torch
from torch import nn

from .attention_maps import analyse_attention, attention_rollout, mean_attention_distance, reusable
from .explanations import METHODS as EXPLAIN_METHODS
from .explanations import explain, untouched
from .model_info import grid_size_of, num_prefix_tokens_of, patch_size_of
from .recorder import capture, fused_attention
from .training import ABLATION_RECIPE, TrainingData, build_vit, train_vit
from .weights import create_untrained

BENCH_MODEL = "vit_base_patch16_224"
VIT_B16_GFLOPS = 35.1  # ViT-B/16 at 224x224: 17.56 G multiply-adds per image
MATMUL_SIDE = 4096


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per round for each candidate; all run once per round, the order rotated."""
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = timed(candidates[name])
            if round_index >= warmup:
                times[name].append(seconds)
    return times


def plain_reference(times: dict[str, list[float]]) -> str:
    """The faster of the plain fused and unfused forwards, by median."""
    return min(("plain fused", "plain unfused"), key=lambda name: statistics.median(times[name]))


def ratio_line(label: str, numerator: list[float], denominator: list[float]) -> str:
    """Median of the per-round ratios; also the ratio of the minimum times (the least disturbed run of
    each) and the interquartile interval of the per-round ratios, which show how far the median can be trusted."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return (f"  {label:<44} {statistics.median(ratios):5.3f}x  (min-time ratio {min(numerator) / min(denominator):.3f}; "
            f"middle half {low:.3f}-{high:.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} pairs)")


def batchwise(candidates: dict[str, Callable[[torch.Tensor], object]], batches: list[torch.Tensor],
              passes: int) -> dict[str, list[float]]:
    """Seconds per pass over all ``batches`` for each candidate.

    The candidates take turns batch by batch, the order rotated at every batch, so a slow
    spell of a shared machine falls on all of them rather than on one candidate's whole pass.
    """
    names = list(candidates)
    times: dict[str, list[float]] = {name: [0.0] * passes for name in names}
    for step in range(passes * len(batches)):
        images, shift = batches[step % len(batches)], step % len(names)
        for name in names[shift:] + names[:shift]:
            times[name][step // len(batches)] += timed(functools.partial(candidates[name], images))
    return times


def plain_forward(model: nn.Module, fused: bool) -> Callable[[torch.Tensor], None]:
    """``model(images)`` with fused attention on or off."""
    def run(images: torch.Tensor) -> None:
        with torch.inference_mode(), fused_attention(model, enabled=fused):
            model(images)
    return run


def plain_forwards(model: nn.Module) -> dict[str, Callable[[torch.Tensor], None]]:
    """The plain fused and unfused forward passes, by name."""
    return {"plain fused": plain_forward(model, True), "plain unfused": plain_forward(model, False)}


def attention_extract(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """timm's AttentionExtract (fx) for the same outputs: logits and all layers stacked."""
    from timm.utils import AttentionExtract
    with fused_attention(model, enabled=False):  # traced once, with the explicit softmax
        extractor = AttentionExtract(model, names=["*attn.softmax", "head"], method="fx")
    softmax_names = [name for name in extractor.names if name.endswith("softmax")]

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = extractor(images)
            return torch.stack([out[name] for name in softmax_names], dim=1)  # (B, L, H, N, N)
    return run


def bench_capture(model: nn.Module, batch: int, rounds: int) -> dict[str, list[float]]:
    images = torch.randn(batch, 3, 224, 224)
    extract = attention_extract(model)
    reused = capture(model, images)["attention"]  # (B, L, H, N, N), written again every round
    plain = {name: functools.partial(run, images) for name, run in plain_forwards(model).items()}
    candidates = {**plain, "capture": lambda: capture(model, images),
                  "capture, reused output": lambda: capture(model, images, attention_out=reused),
                  "AttentionExtract": lambda: extract(images)}
    times = interleaved(candidates, rounds)
    reference = plain_reference(times)
    print(f"\ncapture of all layers' attention + logits, batch {batch} "
          f"(reference: {reference}, median {statistics.median(times[reference]):.3f} s)")
    print(ratio_line("capture / plain forward", times["capture"], times[reference]))
    print(ratio_line("capture, reused output / plain forward", times["capture, reused output"],
                     times[reference]))
    print(ratio_line("AttentionExtract + stack / plain forward", times["AttentionExtract"], times[reference]))
    print(ratio_line("capture / AttentionExtract + stack", times["capture"], times["AttentionExtract"]))
    print(ratio_line("plain unfused / plain fused", times["plain unfused"], times["plain fused"]))
    return times


def full_tensor_analyses(model: nn.Module) -> Callable[[torch.Tensor], None]:
    """Rollout and distance from the stored (B, L, H, N, N) attention, one output reused across calls."""
    grid, patch, prefix = grid_size_of(model), patch_size_of(model), num_prefix_tokens_of(model)
    tokens = prefix + grid[0] * grid[1]
    kept: dict[str, torch.Tensor] = {}

    def run(images: torch.Tensor) -> None:
        reuse = reusable(kept.get("output"), images.shape[0], tokens)
        attention = capture(model, images, attention_out=reuse)["attention"]  # (B, L, H, N, N)
        if reuse is None:
            kept["output"] = attention
        attention_rollout(attention)
        mean_attention_distance(attention, grid, prefix, patch)
    return run


def bench_analyses(model: nn.Module, num_images: int, batch: int, passes: int) -> None:
    batches = list(torch.randn(num_images, 3, 224, 224).split(batch))
    candidates = {**plain_forwards(model),
                  # rollout and distance inside the forward pass: no (B, L, H, N, N) tensor
                  "streamed": lambda images: analyse_attention(model, images),
                  "full tensor": full_tensor_analyses(model)}
    for run in candidates.values():
        run(batches[0])  # warm-up: one batch of each is enough after the capture figures
    times = batchwise(candidates, batches, passes)
    reference = plain_reference(times)
    print(f"\ncapture + rollout + mean attention distance for {num_images} images in batches of {batch}, "
          f"the candidates taking turns batch by batch "
          f"(reference: {num_images} {reference} forwards, median {statistics.median(times[reference]):.1f} s)")
    print(ratio_line(f"streamed analyses / {num_images} plain forwards", times["streamed"], times[reference]))
    print(ratio_line("full-tensor analyses / plain forwards", times["full tensor"], times[reference]))
    print(ratio_line("streamed / full-tensor analyses", times["streamed"], times["full tensor"]))


EXPLORER_REDRAW_TARGET_S = 0.150


def bench_explorer(model: nn.Module, model_name: str, changes: int = 24, rounds: int = 2) -> None:
    """The lecture explorer (notebook 10): a redraw after a change, and a new image.

    Absolute times, not ratios: the target is what a lecturer waits for. A redraw is what a
    slider, the head menu or a click causes (no forward pass); a new image is one capture,
    the rollout, the summary figure and the first redraw.
    """
    from .attention_explorer import ALL_HEADS, explorer
    from .weights import Provenance

    demo = explorer((model, Provenance(model_name, "random", False, None, 0)))
    names = list(demo.image.options)
    new_image = []
    for _ in range(rounds):
        for name in names[1:] + names[:1]:
            demo.cache.pop(name, None)
            new_image.append(timed(lambda: setattr(demo.image, "value", name)))
    print(f"\nattention explorer, {model_name} (target: a redraw after a change <= "
          f"{EXPLORER_REDRAW_TARGET_S * 1000:.0f} ms; absolute times)")
    for label, head in (("one head", 0), ("all heads", ALL_HEADS)):
        demo.head.value = head
        seconds = [timed(lambda i=i: _explorer_change(demo, i)) for i in range(changes)]
        median = statistics.median(seconds)
        verdict = "met" if median <= EXPLORER_REDRAW_TARGET_S else "NOT met"
        print(f"  redraw after a change, {label:<10}       {median * 1000:6.0f} ms median "
              f"(min {min(seconds) * 1000:.0f}, max {max(seconds) * 1000:.0f}, {len(seconds)} changes): {verdict}")
    print(f"  new image (capture + rollout + figures)    {statistics.median(new_image) * 1000:6.0f} ms median "
          f"(min {min(new_image) * 1000:.0f}, max {max(new_image) * 1000:.0f}, {len(new_image)} images)")
    assert demo.captures == 1 + len(new_image), "a redraw ran a forward pass"


def bench_explorer_two_views(model: nn.Module, model_name: str, changes: int = 24) -> None:
    """The explorer comparing two images, and two layers, side by side on one scale: a redraw after a change.

    Absolute times against the same target as one view: both images' attention is cached,
    so a change redraws twice the panels and runs no forward pass.
    """
    from .attention_explorer import ALL_HEADS, explorer
    from .weights import Provenance

    demo = explorer((model, Provenance(model_name, "random", False, None, 0)))
    print(f"\nattention explorer, two views side by side, {model_name} (target: a redraw after a change <= "
          f"{EXPLORER_REDRAW_TARGET_S * 1000:.0f} ms; absolute times)")
    for compare, label in (("image", "two images"), ("layer", "two layers")):
        demo.compare.value = compare
        for head_label, head in (("one head", 0), ("all heads", ALL_HEADS)):
            demo.head.value = head
            seconds = [timed(lambda i=i: _explorer_change(demo, i)) for i in range(changes)]
            median = statistics.median(seconds)
            verdict = "met" if median <= EXPLORER_REDRAW_TARGET_S else "NOT met"
            print(f"  redraw, {label}, {head_label:<10}         {median * 1000:6.0f} ms median "
                  f"(min {min(seconds) * 1000:.0f}, max {max(seconds) * 1000:.0f}, {len(seconds)} changes): {verdict}")
    assert demo.captures == 2, "a redraw ran a forward pass"


def _explorer_change(demo, step: int) -> None:
    """One change as a lecturer makes them: layer, query by slider, query by click, in turn."""
    gh, gw = demo.grid
    kind = step % 3
    if kind == 0:
        demo.layer.value = (demo.layer.value + 1) % (demo.layer.max + 1)
    elif kind == 1:
        demo.row.value = (demo.row.value + 3) % gh
    else:
        demo.picker.cell = [(step * 5) % gh, (step * 7) % gw]


def forward_gflops(model: nn.Module) -> float:
    """Floating-point operations (2 per multiply-add) of one image's forward pass, in GFLOPs.

    Patch embedding, per block qkv/proj/MLP linears and the two attention products, the head.
    """
    gh, gw = grid_size_of(model)
    N, D, P = num_prefix_tokens_of(model) + gh * gw, model.embed_dim, patch_size_of(model)
    hidden = model.blocks[0].mlp.fc1.out_features
    per_block = 2 * N * (4 * D * D + 2 * D * hidden) + 2 * 2 * N * N * D
    embed = 2 * gh * gw * D * 3 * P * P
    head = 2 * D * getattr(model, "num_classes", 0)
    return (embed + len(model.blocks) * per_block + head) / 1e9


def bench_gflops(model: nn.Module, times: dict[str, list[float]], batch: int, rounds: int) -> None:
    a, b = torch.randn(MATMUL_SIDE, MATMUL_SIDE), torch.randn(MATMUL_SIDE, MATMUL_SIDE)
    matmul = interleaved({"matmul": lambda: a @ b}, rounds)["matmul"]
    matmul_gflops = 2 * MATMUL_SIDE ** 3 / 1e9
    per_image = forward_gflops(model)
    print(f"\nachieved GFLOP/s of the plain forward at batch {batch} ({per_image:.1f} GFLOPs per image; "
          f"ViT-B/16 at 224 is about {VIT_B16_GFLOPS}), against a large matmul:")
    for name in ("plain fused", "plain unfused"):
        seconds = statistics.median(times[name])
        print(f"  {name:<44} {per_image * batch / seconds:6.1f} GFLOP/s (median)")
    print(f"  {f'float32 matmul {MATMUL_SIDE}x{MATMUL_SIDE} @ {MATMUL_SIDE}x{MATMUL_SIDE}':<44} "
          f"{matmul_gflops / statistics.median(matmul):6.1f} GFLOP/s (median), "
          f"{matmul_gflops / min(matmul):.1f} best of {len(matmul)}")


def _status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (Linux), e.g. VmRSS or VmHWM."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def _reset_peak_rss() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def memory_probe(kind: str, batch: int, model_name: str) -> dict:
    """Peak resident memory growth of one ``kind`` run in this (fresh) process, in KiB.

    The peak (VmHWM) is reset through /proc/self/clear_refs just before the run, so model
    construction does not mask it (``ru_maxrss`` cannot be reset; it is reported too).
    """
    model = create_untrained(model_name)
    images = torch.randn(batch, 3, 224, 224)
    if kind == "capture":
        run = lambda: capture(model, images)  # noqa: E731
    elif kind == "streamed analyses":
        run = lambda: analyse_attention(model, images)  # noqa: E731
    elif kind == "full-tensor analyses":
        run = lambda: full_tensor_analyses(model)(images)  # noqa: E731
    elif kind == "AttentionExtract":
        extract = attention_extract(model)
        run = lambda: extract(images)  # noqa: E731
    else:
        run = functools.partial(plain_forward(model, True), images)
    reset = _reset_peak_rss()
    before = _status_kib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kept = run()  # the outputs stay alive until the peak is read, as they would for a caller
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del kept
    return {"kind": kind, "rss_before_kib": before, "peak_kib": peak, "peak_was_reset": reset,
            "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def bench_memory(batch: int, model_name: str) -> None:
    print(f"\npeak memory at batch {batch}: growth of the peak resident set size over one run, each in a "
          "fresh subprocess\n  (Linux VmHWM, reset via /proc/self/clear_refs after the model is built; "
          "outputs kept alive until the peak is read):")
    for kind in MEMORY_KINDS:
        command = [sys.executable, "-m", "vit_inspect.bench", "--memory-probe", kind,
                   "--batch", str(batch), "--model", model_name]
        probe = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        growth = (probe["peak_kib"] - probe["rss_before_kib"]) / 1024
        caveat = "" if probe.get("peak_was_reset", True) else " - peak NOT reset: ru_maxrss growth, a lower bound"
        print(f"  {kind:<44} +{growth:6.0f} MiB (peak {probe['peak_kib'] / 1024:.0f} MiB){caveat}")


# ---------------------------------------------------------------- 12 explanations

EXPLAIN_IG_STEPS = 8


def forward_backward(model: nn.Module, fused: bool) -> Callable[[torch.Tensor], None]:
    """One forward and one backward pass to the input (parameters frozen, as ``explain`` runs them)."""
    def run(images: torch.Tensor) -> None:
        with untouched(model), fused_attention(model, enabled=fused):
            pixels = images.detach().requires_grad_(True)
            torch.autograd.grad(model(pixels)[:, 0].sum(), pixels)
    return run


def bench_explanations(model: nn.Module, batch: int, rounds: int) -> None:
    """Each method of ``explain`` on a batch, as a ratio to what it must at least cost.

    References: a plain forward (unfused attention where the method needs the attention
    matrix, fused otherwise) and a forward + backward to the input; integrated gradients per
    path point.
    """
    images = torch.randn(batch, 3, *model.patch_embed.img_size)
    target = torch.zeros(batch, dtype=torch.long)
    references = {**plain_forwards(model), "fwd+bwd fused": forward_backward(model, True),
                  "fwd+bwd unfused": forward_backward(model, False)}
    methods = {m: functools.partial(explain, model, method=m, target=target, ig_steps=EXPLAIN_IG_STEPS)
               for m in EXPLAIN_METHODS}
    candidates = {name: functools.partial(run, images) for name, run in {**references, **methods}.items()}
    times = interleaved(candidates, rounds)
    print(f"\nexplain(model, images, method) for a batch of {batch}, integrated gradients with "
          f"{EXPLAIN_IG_STEPS} path points (reference medians: fused forward "
          f"{statistics.median(times['plain fused']):.3f} s, fused forward + backward "
          f"{statistics.median(times['fwd+bwd fused']):.3f} s)")
    reference_of = {"attention": "plain unfused", "rollout": "plain unfused", "chefer": "fwd+bwd unfused",
                    "gradcam": "fwd+bwd fused", "input_x_gradient": "fwd+bwd fused"}
    for method in EXPLAIN_METHODS:
        reference = reference_of.get(method, "plain fused")
        if method == "integrated_gradients":
            per_step = [t / EXPLAIN_IG_STEPS for t in times[method]]
            print(ratio_line("integrated gradients, per path point / fwd+bwd", per_step, times["fwd+bwd fused"]))
            continue
        print(ratio_line(f"{method} / {reference}", times[method], times[reference]))


# ---------------- training step (notebooks 09 and 11)


def plain_training_epoch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int) -> None:
    """The textbook loop: AdamW, cross-entropy, one pass over uint8 ``images`` (n, 3, S, S) in fixed batches."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    model.train()
    for start in range(0, len(labels), batch):
        x = (images[start:start + batch].float() / 255 - 0.5) / 0.5  # (B, 3, S, S) in [-1, 1]
        loss = torch.nn.functional.cross_entropy(model(x), labels[start:start + batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def bench_training(rounds: int, num_images: int = 512, batch: int = 64) -> None:
    """Images/s of ``train_vit`` (one epoch, no augmentation) against the plain loop, same timm model and images."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_images, 3, 32, 32), generator=generator, dtype=torch.uint8)  # (n, 3, S, S)
    labels = torch.randint(0, 10, (num_images,), generator=generator)  # (n,)
    data = TrainingData("random", images, labels, images[:1], labels[:1], (), "bench", None)  # one test image
    config = dataclasses.replace(ABLATION_RECIPE, epochs=1, batch_size=batch)
    ours, plain = build_vit(), build_vit()
    times = interleaved({"train_vit": lambda: train_vit(ours, data, config, progress=False, device="cpu", threads=None),
                         "plain loop": lambda: plain_training_epoch(plain, images, labels, batch)}, rounds)
    print(f"\ntraining step: notebook 09's ViT ({sum(p.numel() for p in ours.parameters()):,} parameters, 32x32), "
          f"one epoch of {num_images} images in batches of {batch} (target: train_vit >= 0.95x the plain loop's images/s)")
    for name, seconds in times.items():
        print(f"  {name:<44} {num_images / statistics.median(seconds):7.0f} images/s (median)")
    print(ratio_line("train_vit images/s / plain loop images/s", times["plain loop"], times["train_vit"]))


def print_header(model_name: str) -> None:
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"vit-inspect benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), timm {timm.__version__}, Python {platform.python_version()}")
    print(f"model: {model_name} with UNTRAINED (random, seeded) weights and random inputs - "
          "speed does not depend on the values")
    print(f"load average (1, 5, 15 min) at start: {load}; the machine may be shared, so only "
          "ratios measured side by side are reported")


SECTIONS = ("capture-batch-1", "capture-batch-N", "analyses", "memory", "explorer", "explorer-two-views",
            "explanations", "training")
MEMORY_KINDS = ("plain fused", "capture", "AttentionExtract", "streamed analyses", "full-tensor analyses")


def run_section(section: str, args: argparse.Namespace) -> None:
    """One section of the benchmark, in this process; ratios within it are side by side."""
    if section == "memory":
        bench_memory(args.batch, args.model)
        return
    if section == "training":
        bench_training(args.pairs)
        return
    model = create_untrained(args.model)
    if section == "capture-batch-1":
        bench_capture(model, 1, args.pairs)
    elif section == "capture-batch-N":
        bench_gflops(model, bench_capture(model, args.batch, args.pairs), args.batch, args.pairs)
    elif section == "explorer":
        bench_explorer(model, args.model)
    elif section == "explorer-two-views":
        bench_explorer_two_views(model, args.model)
    elif section == "explanations":
        bench_explanations(model, args.batch, args.pairs)
    else:
        bench_analyses(model, args.images, args.batch, args.pairs_images)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_inspect.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=BENCH_MODEL)
    parser.add_argument("--pairs", type=int, default=7, help="rounds after warm-up (default: 7)")
    parser.add_argument("--pairs-images", type=int, default=5,
                        help="passes over the images for the many-image figure (default: 5)")
    parser.add_argument("--images", type=int, default=64, help="images for the analyses figure (default: 64)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--section", default=None, choices=SECTIONS,
                        help="run one section alone, in this process (default: all, each in a fresh process)")
    args = parser.parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.batch, args.model)))
        return 0
    if args.section:
        print(f"load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
        run_section(args.section, args)
        return 0
    print_header(args.model)
    print("each section below runs in a fresh process, so one section's memory-allocator state "
          "(100+ MB buffers) does not bias the next", flush=True)
    forwarded = [f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items()
                 if key not in ("section", "memory_probe")]
    for section in (s for s in SECTIONS if s != "memory"):
        subprocess.run([sys.executable, "-m", "vit_inspect.bench", "--section", section, *forwarded], check=True)
    bench_memory(args.batch, args.model)
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
