"""The mask builder against masks written out by hand: causal, packed segments, prefix-LM, bidirectional blocks,
sliding windows, and a query decoded at a later position against a KV cache."""

import jax.numpy as jnp
import numpy as np

from jvlm.models import masks


def build(seg_q, seg_k, grp_q, grp_k, **kw):
    arr = lambda x: jnp.asarray([x], jnp.int32)  # noqa: E731  one row
    return np.asarray(masks.attention_mask(arr(seg_q), arr(seg_k), arr(grp_q), arr(grp_k), **kw))[0, 0]


def test_causal_within_packed_segments_and_padding_seen_by_nobody():
    seg = [1, 1, 1, 2, 2, 0]
    pos = [0, 1, 2, 0, 1, 0]
    m = build(seg, seg, pos, pos)
    expected = np.array([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],   # the second document starts afresh
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0],   # a padding query sees nothing, and no query sees padding
    ], bool)
    np.testing.assert_array_equal(m, expected)


def test_prefix_lm_block_is_bidirectional_and_the_suffix_causal():
    pos = jnp.arange(6)[None]
    groups = np.asarray(masks.prefix_groups(pos, jnp.asarray([3])))[0]
    assert groups.tolist() == [2, 2, 2, 3, 4, 5]
    m = build([1] * 6, [1] * 6, groups, groups)
    expected = np.tril(np.ones((6, 6), bool))
    expected[:3, :3] = True  # the prefix sees all of itself
    np.testing.assert_array_equal(m, expected)


def test_bidirectional_blocks_inside_a_causal_sequence():
    # text, text, [image x3], text, [image x2]: each image is one block, seen whole by what follows it.
    starts = jnp.asarray([[1, 1, 1, 0, 0, 1, 1, 0]])
    groups = np.asarray(masks.block_groups(starts))[0]
    assert groups.tolist() == [0, 1, 2, 2, 2, 3, 4, 4]
    m = build([1] * 8, [1] * 8, groups, groups)
    for q in range(8):
        for k in range(8):
            assert m[q, k] == (groups[k] <= groups[q]), (q, k)
    assert m[2, 4] and not m[1, 2] and m[6, 7] and not m[5, 6]


def test_sliding_window_counts_the_query_itself():
    pos = list(range(6))
    m = build([1] * 6, [1] * 6, pos, pos, q_position=jnp.asarray([pos]), kv_position=jnp.asarray([pos]), window=3)
    expected = np.tril(np.ones((6, 6), bool)) & ~np.tril(np.ones((6, 6), bool), -3)
    np.testing.assert_array_equal(m, expected)
    no_window = build([1] * 6, [1] * 6, pos, pos, q_position=jnp.asarray([pos]), kv_position=jnp.asarray([pos]),
                      window=0)
    np.testing.assert_array_equal(no_window, np.tril(np.ones((6, 6), bool)))


def test_a_query_at_a_later_position_reads_the_cache_by_its_metadata():
    # A cache of 8 slots: a 2-token prefix block (image), a 2-token prompt padded to 3, then this decoded token in
    # slot 5 at position 4; slots 6-7 are still empty. is_causal would let the query (row 0 of a 1-row query) see
    # only key 0; positions and groups decide instead.
    kv_seg = [1, 1, 1, 1, 0, 1, 0, 0]
    kv_pos = [0, 1, 2, 3, 0, 4, 0, 0]
    kv_grp = [1, 1, 2, 3, 0, 4, 0, 0]
    m = build([1], kv_seg, [4], kv_grp)
    assert m.tolist() == [[True, True, True, True, False, True, False, False]]
    assert int(masks.next_group(jnp.asarray([kv_grp]), jnp.asarray([kv_seg]))[0]) == 5
    # with a window of 3 only positions 2..4 remain
    w = build([1], kv_seg, [4], kv_grp, q_position=jnp.asarray([[4]]), kv_position=jnp.asarray([kv_pos]), window=3)
    assert w.tolist() == [[False, False, True, True, False, True, False, False]]
