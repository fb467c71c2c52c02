import numpy as np
import pytest

from jvlm.eval.metrics import retrieval_recall, topk_accuracy


def test_topk_accuracy():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3]])
    assert topk_accuracy(scores, np.array([0, 1, 2]), ks=(1, 2)) == {1: 1 / 3, 2: 1.0}


def test_retrieval_recall_directions_differ():
    # image 0 -> text 0 (hit); image 1 -> text 0 (miss, text 1 second); image 2 -> text 2 (hit)
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.0, 0.2, 0.9]])
    r = retrieval_recall(sim, ks=(1, 2))
    assert r["i2t_recall@1"] == 2 / 3 and r["i2t_recall@2"] == 1.0
    # text 0 -> image 0 (hit); text 1 -> image 1 (0.7 beats 0.2, 0.1: hit); text 2 -> image 2 (hit)
    assert r["t2i_recall@1"] == 1.0


def test_prompt_ensembling_helpers():
    from jvlm.eval.metrics import average_templates, class_prompts
    assert class_prompts(["red circle", "blue star"], ["a {}", "one {}"]) == [
        "a red circle", "one red circle", "a blue star", "one blue star"]
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 0.0]])
    np.testing.assert_allclose(average_templates(emb, 2, 2), [[2 ** -0.5, 2 ** -0.5], [1.0, 0.0]])


def test_template_scores_max_takes_each_class_best_prompt_and_mean_embedding_averages():
    from jvlm.eval.metrics import class_prompts, template_scores
    rng = np.random.default_rng(0)
    prompts = rng.normal(size=(3 * 2, 4))  # 3 classes x 2 templates, class-major
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    images = rng.normal(size=(5, 4))
    by_class = prompts.reshape(3, 2, 4)
    expected_max = np.array([[max(x @ by_class[c, t] for t in range(2)) for c in range(3)] for x in images])
    np.testing.assert_allclose(template_scores(images, prompts, 3, 2, "max"), expected_max, rtol=1e-6)
    mean = by_class.mean(1)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(template_scores(images, prompts, 3, 2, "mean_embedding"), images @ mean.T, rtol=1e-6)
    assert class_prompts(["a", "b"], ["x {}", "y {}"]) == ["x a", "y a", "x b", "y b"]  # the layout assumed
    with pytest.raises(ValueError, match="mean_embedding"):
        template_scores(images, prompts, 3, 2, "median")


def test_max_over_templates_recovers_a_class_bound_to_a_nuisance_word():
    # Class 0's "small" and "large" prompts point in opposite directions; an image matching "large class 0"
    # is class 0 under max, while the mean of the two prompts cancels and loses to class 1.
    from jvlm.eval.metrics import template_scores
    prompts = np.array([[1.0, 0.0], [-1.0, 0.05], [0.6, 0.8], [0.6, 0.8]])
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    image = np.array([[1.0, 0.0]])
    assert template_scores(image, prompts, 2, 2, "max").argmax() == 0
    assert template_scores(image, prompts, 2, 2, "mean_embedding").argmax() == 1


def test_part_accuracies_split_a_class_into_its_colour_and_its_shape():
    from jvlm.data import shapes
    from jvlm.eval.generation_metrics import part_accuracies
    names = shapes.class_names()
    labels = np.array([names.index(n) for n in ("red circle", "red circle", "blue star", "green cross")])
    pred = np.array([names.index(n) for n in ("red circle", "red square", "pink star", "red square")])
    assert part_accuracies(pred, labels) == {"color_accuracy": 0.5, "shape_accuracy": 0.5}


class _PixelJudge:
    """A stand-in 64px judge: embeds images as their pixels at 8x8, and scores classes by a fixed random
    projection."""
    image_size = 64

    def encode_image(self, images):
        from PIL import Image
        small = [np.asarray(Image.fromarray(im).resize((8, 8), Image.BILINEAR)) for im in images]
        return np.stack(small).reshape(len(images), -1).astype(np.float64) / 255.0

    def class_scores(self, emb, names, templates):
        return emb @ np.random.default_rng(0).standard_normal((emb.shape[1], len(names)))


def test_a_generator_that_returns_real_images_scores_the_ceiling_at_its_own_resolution():
    # Generated 32px images are compared with real 32px images (resized by the judge alike), not with the
    # 64px renders a 64px judge was trained on: images identical to the real ones score exactly the ceiling.
    from jvlm.eval.generation_metrics import judge_metrics, real_single_objects
    images, labels = real_single_objects(48, 32, seed=0)
    m = judge_metrics(_PixelJudge(), images, labels, seed=0, templates=("a {}",), num_real=48)
    assert m["eval/prompt_accuracy"] == m["eval/judge_real_accuracy"]
    assert m["eval/fd_siglip"] == pytest.approx(0.0, abs=1e-6)
