import numpy as np

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
