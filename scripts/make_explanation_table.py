"""Compute notebook 12's ranking table on the shipped digits ViT and write data/explanations_digits.json.

    python scripts/make_explanation_table.py [--force]

About 5-10 minutes on one CPU thread: trains the shuffled-label twin (the recipe of the
shipped weights, the same steps), then scores every method on the 360 test digits.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from vit_inspect.explanations import SHIPPED_RANKING, faithful_methods, ranking_table, save_ranking, \
    shuffled_label_model
from vit_inspect.images import data_dir
from vit_inspect.training import TrainConfig, load_dataset, model_input, shipped_weights, training_metadata
from vit_inspect.weights import load_vit

OPTIONS = {"sanity": 64, "road": 64, "ig_steps": 16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite the existing table")
    args = parser.parse_args(argv)
    out = data_dir() / SHIPPED_RANKING
    if out.exists() and not args.force:
        print(f"{out} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = load_vit(weights="digits", verbose=False).model
    config = TrainConfig(**training_metadata(shipped_weights())["train_config"])
    data = load_dataset("digits")
    shuffled = shuffled_label_model(model, data, config, seed=0)
    print(f"shuffled-label twin trained in {time.perf_counter() - start:.0f} s")
    images, labels = model_input(model, data.test_images), data.test_labels
    table = ranking_table(model, shuffled, images, labels, **OPTIONS)
    notes = {"model": "data/vit_digits.safetensors", "images": "the 360 test digits (split seed 0)",
             "target": "true label", "fill": "per-channel mean of the 360 test images", "steps": 8,
             "shuffled_labels": f"same recipe {dataclasses.asdict(config)}, labels permuted with seed 0",
             "random_seeds": [0, 1, 2], **OPTIONS, "interval": "mean +- 1.96 standard errors over images",
             "seconds": "per image, one CPU thread, shared machine: noisy"}
    save_ranking(table, out, notes)
    for measure, methods in faithful_methods(table).items():
        print(f"{measure}: beats brightness and edges: {methods}")
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
