"""Pure evaluation metrics on embedding similarities (numpy, host side)."""

from __future__ import annotations

import numpy as np


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[int, float]:
    """scores [N, C], labels [N] -> {k: fraction of rows whose label is among the k best classes}."""
    ranks = np.argsort(-scores, axis=1)
    return {k: float(np.mean((ranks[:, :k] == labels[:, None]).any(axis=1))) for k in ks}


def retrieval_recall(similarity: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    """similarity [N, N] between images (rows) and texts (columns); pair i is the match.

    i2t_recall@k: fraction of images whose own text ranks in the top k texts; t2i likewise.
    """
    target = np.arange(similarity.shape[0])
    i2t = topk_accuracy(similarity, target, ks)
    t2i = topk_accuracy(similarity.T, target, ks)
    return {**{f"i2t_recall@{k}": v for k, v in i2t.items()}, **{f"t2i_recall@{k}": v for k, v in t2i.items()}}


def class_prompts(class_names, templates) -> list[str]:
    """Every template filled with every class name, class-major: [c0t0, c0t1, ..., c1t0, ...]."""
    return [t.format(name) for name in class_names for t in templates]


TEMPLATE_REDUCTIONS = ("mean_embedding", "max")


def configured_reduction(eval_config) -> str:
    """A run's `eval.template_reduce`; runs saved before the option existed used the mean embedding."""
    return eval_config.get("template_reduce", "mean_embedding")


def template_scores(image_emb: np.ndarray, prompt_emb: np.ndarray, num_classes: int, num_templates: int,
                    reduce: str = "mean_embedding") -> np.ndarray:
    """Zero-shot cosine scores [N, C] from image embeddings [N, D] and the embeddings of
    class_prompts(names, templates) [C*T, D].

    "mean_embedding": CLIP's prompt ensembling, the cosine with each class's normalized mean prompt.
    "max": the cosine with the class's best-matching prompt. When the templates enumerate a nuisance
    attribute that the towers bind to the class (a size, a count), the image matches one template and
    the mean of the others blurs it; the max marginalizes over the nuisance instead.
    """
    if reduce == "mean_embedding":
        return np.asarray(image_emb) @ average_templates(prompt_emb, num_classes, num_templates).T
    if reduce == "max":
        per_prompt = np.asarray(prompt_emb).reshape(num_classes, num_templates, -1)
        return np.einsum("nd,ctd->nct", np.asarray(image_emb), per_prompt).max(-1)
    raise ValueError(f"template reduction {reduce!r}: use one of {TEMPLATE_REDUCTIONS}")


def average_templates(embeddings: np.ndarray, num_classes: int, num_templates: int) -> np.ndarray:
    """Prompt ensembling: embeddings of class_prompts(...) -> one re-normalized mean per class."""
    emb = np.asarray(embeddings).reshape(num_classes, num_templates, -1).mean(1)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)
