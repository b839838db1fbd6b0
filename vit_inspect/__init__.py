"""vit-inspect: open up a timm Vision Transformer step by step."""
from .attention import fused_attention, fused_attention_flags
from .errors import ImageError, VitInspectError, WeightsError
from .images import (Preprocessed, data_config_of, denormalize, load_image, preprocess,
                     data_dir, sample_images, tensor_to_image, to_rgb)
from .labels import TopK, class_name, top_k
from .model_info import grid_size_of, num_prefix_tokens_of, patch_size_of
from .weights import (DEFAULT_MODEL, LoadedViT, Provenance, create_untrained, download_weights,
                      load_vit, save_weights)

__version__ = "0.1.0"
