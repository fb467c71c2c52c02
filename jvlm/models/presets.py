"""Tower size presets (big_vision / SigLIP naming). A name like "B/16" is size B with patch 16."""

from __future__ import annotations

# width, depth, mlp_dim, num_heads of a ViT or text Transformer of each size.
SIZES = {
    "mu": dict(width=32, depth=1, mlp_dim=64, num_heads=2),
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "So400m": dict(width=1152, depth=27, mlp_dim=4304, num_heads=16),  # shape-optimized (Alabdulmohsin et al.)
}

# Published SigLIP settings: image resolution, text context and vocabulary (SentencePiece, 32k).
SIGLIP = {
    "B/16": dict(image_size=224, max_text_len=64, vocab_size=32_000),
    "L/16": dict(image_size=256, max_text_len=64, vocab_size=32_000),
    "So400m/14": dict(image_size=224, max_text_len=64, vocab_size=32_000),
}


def parse(name: str) -> tuple[dict, int]:
    """"B/16" -> (SIZES["B"], 16)."""
    size, _, patch = name.partition("/")
    if size not in SIZES or not patch.isdigit():
        raise ValueError(f"unknown preset {name!r}; use SIZE/PATCH with SIZE in {', '.join(SIZES)}, e.g. 'B/16'")
    return dict(SIZES[size]), int(patch)
