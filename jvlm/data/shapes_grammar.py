"""A parser of the shapes caption grammar (`jvlm.data.shapes.render_caption`), for scoring generated captions.

`parse(caption)` returns the objects a caption names (size, colour, shape, in order), the relations it states
between them, and whether it is *consistent*: the objects are distinct, every "the ..." refers to an object the
caption named (the one its template says), and the relations do not contradict each other (no object left of
itself, no cycle such as A left of B left of C left of A, on either axis). A caption outside the grammar returns
None. The language models score their samples with it, and the VLMs their generated captions.

The caption is first lexed into phrases (greedy, longest phrase first): an object "a small red circle", a reference
"the small red circle", "a single ...", a relation, a background, a location, a prefix, a literal word or a comma.
The sequence of phrase kinds must then match one of the generator's templates exactly.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from jvlm.data import shapes

Obj = tuple[str, str, str]  # (size, colour, shape)

_RELATIONS = {"to the left of": "left", "left of": "left", "to the right of": "right", "right of": "right",
              "above": "above", "below": "below", "beneath": "below"}
_BACKGROUNDS = ("on a gradient background", "on a smooth background", "on a striped background", "on stripes",
                "on a cloudy background", "on a blotchy background")
_LOCATIONS = ("in the top left corner", "at the top", "in the top right corner", "on the left", "in the center",
              "on the right", "in the bottom left corner", "at the bottom", "in the bottom right corner")
_PREFIXES = ("a picture of", "an image of", "there is", "a drawing of", "a rendering of")
_COUNT_PREFIXES = ("a picture of", "an image of", "there are", "a drawing of")
_LITERALS = ("one shape", "two shapes", "three shapes", "which is", "with", "and", "is", ",")


class Parsed(NamedTuple):
    objects: list[Obj]
    relations: list[tuple[int, str, int]]   # (i, "left" | "right" | "above" | "below", j): object i is ... of j
    consistent: bool
    reason: str                              # why not consistent ("" when it is)


def _lex(caption: str) -> list[tuple[str, object]] | None:
    words = caption.lower().replace(",", " , ").split()
    phrases = [(p.split(), ("REL", r)) for p, r in _RELATIONS.items()]
    phrases += [(p.split(), ("BG", None)) for p in _BACKGROUNDS]
    phrases += [(p.split(), ("LOC", None)) for p in _LOCATIONS]
    phrases += [(p.split(), ("PFX", p)) for p in set(_PREFIXES) | set(_COUNT_PREFIXES)]
    phrases += [(p.split(), (p, None)) for p in _LITERALS]
    phrases.sort(key=lambda pk: -len(pk[0]))
    out, i = [], 0
    while i < len(words):
        w = words[i:i + 5]
        if len(w) >= 4 and w[0] in ("a", "the") and _is_desc(w[1:4]):
            out.append(("A" if w[0] == "a" else "THE", tuple(w[1:4])))
            i += 4
            continue
        if len(w) >= 5 and w[:2] == ["a", "single"] and _is_desc(w[2:5]):
            out.append(("SINGLE", tuple(w[2:5])))
            i += 5
            continue
        for phrase, token in phrases:
            if words[i:i + len(phrase)] == phrase:
                out.append(token)
                i += len(phrase)
                break
        else:
            return None
    return out


def _is_desc(w) -> bool:
    return len(w) == 3 and w[0] in shapes.SIZES and w[1] in shapes.COLORS and w[2] in shapes.SHAPES


# Templates: (pattern over phrase kinds, which phrases of kind A/SINGLE introduce objects (implicit: in order),
# the relations as (subject, relation phrase, object) by object index, and the references THE must make).
# In patterns, "PFX?" is an optional prefix from the given set, "X?" an optional phrase.
_TEMPLATES = [
    ("PFX? A LOC? BG?", _PREFIXES, [], []),
    ("PFX? SINGLE LOC? BG?", _PREFIXES, [], []),
    ("PFX? one_shape , A LOC?", _PREFIXES, [], []),
    ("A is LOC", (), [], []),
    ("PFX? A REL A BG?", _PREFIXES, [(0, 0, 1)], []),
    ("A is REL A", (), [(0, 0, 1)], []),
    ("PFX? two_shapes , A REL A", _COUNT_PREFIXES, [(0, 0, 1)], []),
    ("PFX? A and A , THE is REL THE", _PREFIXES, [("r0", 0, "r1")], [0, 1]),
    ("PFX? A REL A , and A REL THE", _PREFIXES, [(0, 0, 1), (2, 1, "r0")], [(0, 1)]),
    ("PFX? A REL A , which_is REL A", _PREFIXES, [(0, 0, 1), (1, 1, 2)], []),
    ("A is REL A and REL A", (), [(0, 0, 1), (0, 1, 2)], []),
    ("PFX? three_shapes , A REL A , which_is REL A", _COUNT_PREFIXES, [(0, 0, 1), (1, 1, 2)], []),
    ("PFX? A , A and A , with THE REL THE and THE REL THE", _PREFIXES,
     [("r0", 0, "r1"), ("r2", 1, "r3")], [0, 1, 2, (0, 1)]),
]


def _kind(token) -> str:
    kind = token[0]
    return kind.replace(" ", "_") if kind not in ("A", "THE", "SINGLE", "REL", "BG", "LOC", "PFX") else kind


def _match(pattern: str, tokens) -> bool:
    regex = "".join(f"(?:{p[:-1]} )?" if p.endswith("?") else f"{p} " for p in pattern.split())
    return re.fullmatch(regex, "".join(f"{_kind(t)} " for t in tokens)) is not None


def parse(caption: str) -> Parsed | None:
    tokens = _lex(caption)
    if not tokens:
        return None
    for pattern, prefixes, rels, refs in _TEMPLATES:
        if not _match(pattern, tokens):
            continue
        if any(t[0] == "PFX" and t[1] not in prefixes for t in tokens):
            continue
        objects = [t[1] for t in tokens if t[0] in ("A", "SINGLE")]
        references = [t[1] for t in tokens if t[0] == "THE"]
        relations_said = [t[1] for t in tokens if t[0] == "REL"]
        return _check(objects, references, refs, rels, relations_said)
    return None


def _check(objects, references, ref_rules, rel_rules, said) -> Parsed:
    relations: list[tuple[int, str, int]] = []
    if len(set(objects)) < len(objects):
        return Parsed(objects, relations, False, "an object is named twice")
    ref_index = []
    for ref, rule in zip(references, ref_rules):
        allowed = rule if isinstance(rule, tuple) else (rule,)
        if ref not in objects or objects.index(ref) not in allowed:
            return Parsed(objects, relations, False, f"'the {' '.join(ref)}' refers to no object it may")
        ref_index.append(objects.index(ref))
    resolve = lambda x: ref_index[int(x[1:])] if isinstance(x, str) else x  # noqa: E731
    for subject, k, obj in rel_rules:
        relations.append((resolve(subject), said[k], resolve(obj)))
    for axis, forward in (("x", {"left": 1, "right": -1}), ("y", {"above": 1, "below": -1})):
        edges = []
        for i, r, j in relations:
            if r in forward:
                if i == j:
                    return Parsed(objects, relations, False, "an object is placed relative to itself")
                edges.append((i, j) if forward[r] > 0 else (j, i))
        if _has_cycle(edges, len(objects)):
            return Parsed(objects, relations, False, f"the relations on the {axis} axis contradict each other")
    return Parsed(objects, relations, True, "")


def _has_cycle(edges, n) -> bool:
    succ = {i: [b for a, b in edges if a == i] for i in range(n)}
    state = [0] * n

    def visit(u):
        state[u] = 1
        for v in succ[u]:
            if state[v] == 1 or (state[v] == 0 and visit(v)):
                return True
        state[u] = 2
        return False

    return any(state[u] == 0 and visit(u) for u in range(n))
