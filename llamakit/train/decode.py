"""Word-level decoding of tag scores: per-word argmax, or the best sequence that is valid IOB2.

A per-word argmax can emit `I-X` after `O` or after `B-Y`: a tag sequence no annotator writes, and
one that seqeval's strict IOB2 mode scores as a wrong entity. `viterbi` instead picks the
sequence with the highest total log-probability among those where every `I-X` continues an `X`
entity (`B-X` or `I-X` just before it) — the constrained decoding of CRF taggers, applied to the
independent per-word distributions of a softmax classifier. It changes nothing where the argmax
sequence is already valid.
"""

from __future__ import annotations

import numpy as np

DECODERS = ("argmax", "viterbi")


def iob2_constraints(labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(start_ok[L], follows_ok[L, L]): which tags may open a sentence, and which may follow which."""
    def inside_of(tag: str) -> str | None:
        return tag[2:] if tag.startswith("I-") else None

    n = len(labels)
    start_ok = np.array([inside_of(t) is None for t in labels])
    follows_ok = np.ones((n, n), dtype=bool)
    for j, tag in enumerate(labels):
        kind = inside_of(tag)
        if kind is not None:
            follows_ok[:, j] = [prev in (f"B-{kind}", f"I-{kind}") for prev in labels]
    return start_ok, follows_ok


def viterbi(logprobs: np.ndarray, start_ok: np.ndarray, follows_ok: np.ndarray) -> list[int]:
    """The valid tag sequence (indices) maximising the summed per-word log-probabilities."""
    n_words, _ = logprobs.shape
    if n_words == 0:
        return []
    forbidden = np.where(follows_ok, 0.0, -np.inf)
    score = np.where(start_ok, logprobs[0], -np.inf)
    back = np.zeros(logprobs.shape, dtype=np.int64)
    for w in range(1, n_words):
        cand = score[:, None] + forbidden  # [previous tag, tag]
        back[w] = cand.argmax(axis=0)
        score = cand.max(axis=0) + logprobs[w]
    path = [int(score.argmax())]
    for w in range(n_words - 1, 0, -1):
        path.append(int(back[w, path[-1]]))
    return path[::-1]


def is_valid_iob2(tags: list[str]) -> bool:
    prev = "O"
    for tag in tags:
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            return False
        prev = tag
    return True
