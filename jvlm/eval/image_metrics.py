"""Reconstruction metrics on uint8-range images, and PNG grids a person can look at."""

from __future__ import annotations

import os

import numpy as np


def psnr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8-range images [N, H, W, C] (inputs are clipped to [0, 255])."""
    x = np.clip(np.asarray(x, np.float64), 0, 255)
    y = np.clip(np.asarray(y, np.float64), 0, 255)
    mse = np.mean((x - y) ** 2, axis=(1, 2, 3))
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def _gaussian_filter(x: np.ndarray, sigma: float = 1.5, size: int = 11) -> np.ndarray:
    """Separable Gaussian blur over axes 1 and 2 of [N, H, W, C], 'valid' region only."""
    t = np.arange(size) - (size - 1) / 2
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    x = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 1, x)
    return np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 2, x)


def ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03) of
    uint8-range images [N, H, W, C], averaged over channels and positions."""
    x = np.clip(np.asarray(x, np.float64), 0, 255)
    y = np.clip(np.asarray(y, np.float64), 0, 255)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _gaussian_filter(x), _gaussian_filter(y)
    sxx = _gaussian_filter(x * x) - mx**2
    syy = _gaussian_filter(y * y) - my**2
    sxy = _gaussian_filter(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(axis=(1, 2, 3))


def save_grid(path: str, rows: list[np.ndarray], pad: int = 2) -> str:
    """Writes rows of uint8 images (each [N, H, W, 3]) as one PNG grid: row r, column i = rows[r][i]."""
    from PIL import Image

    n, h, w, c = rows[0].shape
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), 255, np.uint8)
    for r, images in enumerate(rows):
        for i, img in enumerate(np.clip(np.asarray(images), 0, 255).astype(np.uint8)):
            top, left = pad + r * (h + pad), pad + i * (w + pad)
            grid[top:top + h, left:left + w] = img
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
