"""vit-inspect: open up a timm Vision Transformer step by step."""
from .attention import fused_attention, fused_attention_flags
from .errors import ImageError, VitInspectError, WeightsError
from .images import (Preprocessed, data_config_of, denormalize, load_image, preprocess,
                     data_dir, sample_images, tensor_to_image, to_rgb)
from .labels import TopK, class_name, top_k
from .model_info import grid_size_of, num_prefix_tokens_of, patch_size_of
from .weights import (DEFAULT_MODEL, LoadedViT, Provenance, create_untrained, download_weights,
                      load_vit, save_weights)

# walk-through steps (patches, position embeddings, attention, encoder, head); figures: vit_inspect.plot_steps
from .encoder import (block_by_hand, final_norm_by_hand, gelu_exact, gelu_tanh, layer_norm_by_hand,
                      linear_by_hand, mlp_by_hand, run_blocks_one_at_a_time)
from .head import POOLINGS, classify_by_hand, head_by_hand, pool_tokens
from .manual_attention import (MISTAKE_DESCRIPTIONS, MISTAKES, attention_by_hand, mistake_errors,
                               query_attention_maps, timm_attention_weights, token_index)
from .patches import (FLATTEN_ORDERS, patch_embed_by_hand, patch_embed_filter_components,
                      patch_embed_filter_variance, patch_embedding_matrix, patchify, patchify_einops)
from .posembed import (model_at_resolution, neighbour_similarity_stats, patch_pos_embed, pos_embed_similarity,
                       prefix_tokens, resample_pos_embed, tokens_with_position)

# attention analysis: every layer's attention in one pass, rollout, mean attention distance;
# figures: vit_inspect.plot_analysis, speed: python -m vit_inspect.bench
from .analysis import (HEAD_FUSIONS, attention_rollout, average_attention_distance, discard_lowest, fuse_heads,
                       grid_argmax, image_batches, mean_attention_distance, patch_centres, patch_distances,
                       rollout_to_grid, uniform_attention_distance)
from .recorder import capture

__version__ = "0.1.0"
