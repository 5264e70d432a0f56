"""SAM backends and their uses: model registry, embedding cache, SE maps, decoder-only prompting."""

from .build import SAM_MODEL_TYPES, build_sam
from .prompt import decode_prompts, encode_image, encode_images

__all__ = ["SAM_MODEL_TYPES", "build_sam", "decode_prompts", "encode_image", "encode_images"]
