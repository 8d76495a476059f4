"""A small tiktoken rank file (the format of Llama 3/4's tokenizer.model: `base64(token) rank` lines), trained here.

Ranks 0..255 are the single bytes; each further rank is the most frequent adjacent pair of a plain
byte-pair-encoding run over CORPUS, so every token decomposes into lower-ranked ones as tiktoken's
(and transformers' TikTokenConverter's) merge order requires. Nothing here imports llamakit.
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from pathlib import Path

CORPUS = ("The quick brown fox jumps over the lazy dog. Llama 4 Scout and Maverick read images and text; "
          "the tokenizer splits words, numbers like 12345 and punctuation!! Hello world, hello again: "
          "the theory of the other thing is that these three then there.") * 3


def write_rank_file(path: Path, n_ranks: int, corpus: str = CORPUS) -> Path:
    words = Counter(re.findall(r" ?\S+|\s+", corpus))
    split = {w: [bytes([b]) for b in w.encode()] for w in words}
    ranks = [bytes([b]) for b in range(256)]
    seen = set(ranks)
    while len(ranks) < n_ranks:
        pairs = Counter()
        for w, parts in split.items():
            for a, b in zip(parts, parts[1:]):
                pairs[a, b] += words[w]
        best = next(((a, b) for (a, b), _ in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
                     if a + b not in seen), None)
        if best is None:
            raise ValueError(f"the corpus gives only {len(ranks)} ranks")
        merged = best[0] + best[1]
        ranks.append(merged)
        seen.add(merged)
        for w, parts in split.items():
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            split[w] = out
    Path(path).write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(ranks)))
    return Path(path)
