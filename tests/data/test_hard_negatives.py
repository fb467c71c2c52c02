"""Word-swap hard negatives: exactly one group word changes, to another word of its group."""

import numpy as np
import pytest

from jvlm.data import shapes
from jvlm.data.hard_negatives import WordSwapNegatives

GROUPS = [list(shapes.SHAPES), list(shapes.COLORS)]


def test_each_negative_swaps_one_word_within_its_group():
    neg = WordSwapNegatives(GROUPS, k=4)
    caption = "a small red circle to the left of a large blue star, on stripes"
    rng = np.random.default_rng(0)
    seen_groups = set()
    for _ in range(50):
        captions, valid = neg(caption, rng)
        assert len(captions) == 4 and valid.all()
        for c in captions:
            diff = [(a, b) for a, b in zip(caption.split(), c.split()) if a != b]
            assert len(c.split()) == len(caption.split()) and len(diff) == 1, c
            (old, new), = diff
            old, new = old.rstrip(","), new.rstrip(",")
            group = neg.group_of[old]
            assert neg.group_of[new] == group and new != old
            seen_groups.add(group)
    assert seen_groups == {0, 1}


def test_a_caption_without_group_words_has_no_valid_negatives():
    captions, valid = WordSwapNegatives(GROUPS, k=2)("nothing to swap here", np.random.default_rng(0))
    assert captions == ["nothing to swap here"] * 2 and not valid.any()


def test_words_inside_other_words_are_not_swapped():
    captions, valid = WordSwapNegatives([["red", "blue"]], k=3)("a reddish square", np.random.default_rng(0))
    assert not valid.any()


def test_same_rng_same_negatives():
    neg = WordSwapNegatives(GROUPS, k=3)
    a = neg("a large green cross above a small pink diamond", np.random.default_rng(7))
    b = neg("a large green cross above a small pink diamond", np.random.default_rng(7))
    assert a[0] == b[0]


@pytest.mark.parametrize("groups, match", [([["circle"]], "two distinct words"),
                                           ([["red", "blue"], ["blue", "green"]], "two swap groups"),
                                           ([["Big Red", "blue"]], "single lower-case words"),
                                           ([], "word groups")])
def test_malformed_groups_are_refused(groups, match):
    with pytest.raises(ValueError, match=match):
        WordSwapNegatives(groups, k=1)
