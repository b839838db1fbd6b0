"""vit-inspect: open up a timm Vision Transformer step by step.

Every function a notebook or a student calls is importable from here
(``from vit_inspect import load_vit, capture``); figures come from one place,
``vit_inspect.plotting``. The module map is in docs/modules.md.

Names load on first use (PEP 562), so ``vit-inspect --help`` answers without waiting
for torch and timm.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# module -> the public names importable from it (some are re-exported there from their home module);
# internals stay importable from their modules only
_EXPORTS: dict[str, tuple[str, ...]] = {
    # shared ground
    "errors": ("VitInspectError", "WeightsError", "ImageError"),
    "model_info": ("DEFAULT_MODEL", "patch_size_of", "grid_size_of", "num_prefix_tokens_of",
                   "token_index", "tokens_to_grid"),
    "weights": ("load_vit", "create_untrained", "save_weights", "download_weights", "Provenance", "LoadedViT"),
    "images": ("load_image", "preprocess", "Preprocessed", "data_config_of", "denormalize",
               "tensor_to_image", "sample_images", "data_dir", "image_batches", "crop_box", "crop_warnings"),
    "labels": ("top_k", "TopK", "class_name"),
    "recorder": ("capture", "fused_attention", "timm_attention_weights", "LayerAnalysis"),
    # one module per notebook
    "patches": ("FLATTEN_ORDERS", "patchify", "patchify_einops", "patch_embedding_matrix",
                "patch_embed_by_hand", "patch_embed_filter_components", "patch_embed_filter_variance",
                "filter_components", "filter_variance"),
    "position_embeddings": ("patch_pos_embed", "pos_embed_similarity", "neighbour_similarity_stats",
                            "prefix_tokens", "tokens_with_position", "resample_pos_embed",
                            "model_at_resolution"),
    "attention_by_hand": ("MISTAKES", "MISTAKE_DESCRIPTIONS", "self_attention_by_hand", "mistake_errors",
                          "attention_entropy", "query_attention_maps"),
    "encoder_stack": ("layer_norm_by_hand", "gelu_exact", "gelu_tanh", "linear_by_hand", "mlp_by_hand",
                      "block_by_hand", "final_norm_by_hand", "run_blocks_one_at_a_time", "gelu_of"),
    "classification_head": ("POOLINGS", "pool_tokens", "head_by_hand", "classify_by_hand"),
    "attention_maps": ("HEAD_FUSIONS", "fuse_heads", "attention_rollout", "rollout_to_grid", "grid_argmax",
                       "patch_brightness", "map_correlation", "bright_ratio", "map_vs_brightness",
                       "spatial_null_correlations",
                       "patch_centres", "patch_distances", "mean_attention_distance",
                       "uniform_attention_distance", "average_attention_distance", "StreamedRollout",
                       "StreamedDistance", "analyse_attention"),
    "from_scratch": ("SCRATCH_FROM_TIMM", "ScratchConfig", "ScratchViT", "PatchEmbedding", "MultiHeadAttention",
                     "MLP", "Block", "from_timm", "scratch_config_of", "timm_steps", "step_differences",
                     "ParameterRow", "parameter_table", "parameter_groups", "perturb_parameters"),
    "huggingface": ("HF_CHECKPOINT", "TIMM_TWIN", "HF_INSTALL", "HF_PREPROCESSOR_CONFIG", "HF_TOLERANCE",
                    "HF_KEY_MAP", "KeyRow", "require_transformers", "key_map", "split_qkv", "merge_qkv", "hf_config_of",
                    "timm_to_hf", "hf_to_timm", "hf_steps", "hf_image_processor", "compare_preprocessing",
                    "checkpoint_differences", "hf_checkpoint_cached", "twin_checkpoints_cached",
                    "load_hf_checkpoint"),
    "training": ("DATASETS", "SHIPPED_WEIGHTS", "ABLATIONS", "ABLATION_RECIPE", "ABLATION_SEEDS", "AblationTable",
                 "save_ablations", "load_ablations", "ViTSpec", "TrainConfig", "TrainingData",
                 "build_vit", "spec_of", "untrained_like", "load_dataset", "model_input", "train_vit",
                 "predict_logits", "evaluate", "accuracy", "save_trained", "training_metadata", "shipped_weights",
                 "load_trained", "locality_per_epoch", "pixels_to_image", "pooled_features", "confusion_matrix",
                 "linear_baseline", "class_token_maps", "patch_ink", "ink_ratio", "first_block_distance",
                 "importance_order", "random_order", "delete_patches", "deletion_curve", "deletion_curves",
                 "curve_area", "rank_correlation", "randomise_top_blocks", "randomised_maps", "randomisation_curves",
                 "run_ablations", "digits_writers"),
    "attention_explorer": ("explorer",),
    "explanations": ("METHODS", "explain"),
    # the homework's self-check, called by the graded cell after each task cell
    "homework_tasks": ("check_answer",),
    "fine_tuning": ("FINE_TUNE_MODES", "FRACTIONS", "PER_CLASS", "SWEEP_SEEDS", "FineTuned", "fine_tune", "reuse_table",
                    "changed_parameters", "head_parameters", "input_size_of", "SmallCNN", "build_cnn", "parameter_count",
                    "subset", "stratified_indices", "per_class", "classes_part", "epochs_for", "data_hunger_row",
                    "data_hunger", "pretrain_source", "transfer_row", "transfer", "load_sweep", "spread",
                    "chosen_training_images", "save_fine_tuned", "compare_modes", "resize_pixels"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'vit_inspect' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
