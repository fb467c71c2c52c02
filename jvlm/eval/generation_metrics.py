"""Judging generated images without internet: a contrastive model trained by this project (the judge)
classifies them zero-shot and embeds them.

- `eval/prompt_accuracy`: the fraction of images generated for a class prompt that the judge assigns
  to that class among all colour x shape classes (chance 1/48); `_seen` / `_unseen` split it by whether
  the class was in the generator's training data.
- `eval/judge_real_accuracy`: the judge's own zero-shot accuracy on real held-out single-object
  images of the same classes: the ceiling of prompt accuracy.
- `eval/fd_siglip`: the Fréchet distance between Gaussians fitted to the judge's image embeddings of the
  generated and of real held-out images (FID's formula with the judge's image tower, SigLIP or CLIP, in place
  of Inception; the name is the issue's).
"""

from __future__ import annotations

import numpy as np

from jvlm.data import shapes


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½) between Gaussians fitted to the rows of a and b."""
    from scipy import linalg

    if a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two sets of at least 2 embeddings of one width, got {a.shape} and {b.shape}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # singular product: offset both covariances slightly, as FID does
        eye = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + eye) @ (cov_b + eye))
    root = np.real(root)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def real_single_objects(num: int, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`num` held-out single-object images over all classes (the zero-shot splits, seen and unseen classes in
    proportion 40:8) and their class ids."""
    unseen = num * len(shapes.unseen_class_indices()) // len(shapes.class_names())
    images, labels = [], []
    for split, n in (("zeroshot_seen", num - unseen), ("zeroshot_unseen", unseen)):
        src = shapes.ShapesSource(split, image_size=image_size, seed=seed)
        for i in range(n):
            ex = src[i]
            images.append(ex["image"])
            labels.append(int(ex["label"]))
    return np.stack(images), np.asarray(labels)


def part_accuracies(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Colour and shape accuracy of predicted colour x shape class ids (`shapes.class_names()` order)."""
    n = len(shapes.SHAPES)
    pred, labels = np.asarray(pred), np.asarray(labels)
    return {"color_accuracy": float(np.mean(pred // n == labels // n)),
            "shape_accuracy": float(np.mean(pred % n == labels % n))}


def judge_metrics(judge, images: np.ndarray, labels: np.ndarray, seed: int, templates: tuple[str, ...],
                  num_real: int = 480) -> dict[str, float]:
    """The module's metrics for generated uint8 images with their prompts' class ids."""
    names = shapes.class_names()
    gen = judge.encode_image(images)
    unseen = np.isin(labels, shapes.unseen_class_indices())
    # Real images at the generated images' size, resized by the judge exactly as they are: a 64px judge
    # scores native 64px renders higher than 32px ones upsampled, which would overstate the ceiling.
    real_images, real_labels = real_single_objects(num_real, images.shape[1], seed)
    real = judge.encode_image(real_images)
    # One call: the class prompts are encoded once for the generated and the real images.
    pred_all = np.argmax(judge.class_scores(np.concatenate([gen, real]), names, templates), axis=-1)
    pred, real_pred = pred_all[:len(gen)], pred_all[len(gen):]
    out = {"eval/prompt_accuracy": float(np.mean(pred == labels)),
           "eval/judge_real_accuracy": float(np.mean(real_pred == real_labels)),
           "eval/fd_siglip": frechet_distance(gen, real)}
    # Which half of the class the generator gets wrong: the colour, the shape, or both.
    out.update({f"eval/prompt_{k}": v for k, v in part_accuracies(pred, labels).items()})
    out.update({f"eval/judge_real_{k}": v for k, v in part_accuracies(real_pred, real_labels).items()})
    if (~unseen).any():
        out["eval/prompt_accuracy_seen"] = float(np.mean(pred[~unseen] == labels[~unseen]))
    if unseen.any():
        out["eval/prompt_accuracy_unseen"] = float(np.mean(pred[unseen] == labels[unseen]))
    return out
