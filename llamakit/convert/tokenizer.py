"""Tokenizers across formats, through transformers' own converters.

Meta ships one `tokenizer.model`: a sentencepiece model for Llama 1/2, a tiktoken BPE rank
file for Llama 3+. HF directories carry `tokenizer.json` (+ config). GGUF carries the
vocabulary as metadata, which transformers' GGUF tokenizer conversion reads.

Every function returns a short note for the summary; a missing tokenizer is a note,
never an error: the weights convert regardless.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

# Meta's llama3 tokenizer.py: the 256 special tokens that follow the BPE ranks.
LLAMA3_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
_N_SPECIAL = 256


def llama3_special_tokens(*, llama31: bool) -> list[str]:
    if llama31:  # Llama 3.1+: tool-calling tokens take reserved slots
        head = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
                "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
        return head + [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + _N_SPECIAL - len(head))]
    head = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
            "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|reserved_special_token_4|>", "<|eot_id|>"]
    return head + [f"<|reserved_special_token_{i}|>" for i in range(5, 5 + _N_SPECIAL - len(head))]


# Meta's llama4/tokenizer.py: the o200k split pattern, and 2048 specials after the BPE ranks, in this order.
LLAMA4_PATTERN = (r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
                  r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
                  r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def llama4_special_tokens() -> list[str]:
    """BASIC + text post-train (200005..200079) + vision (200080..201133) + reasoning (201134..201143) specials, then
    `<|reserved_special_token_N|>` up to 2048, as llama4/tokenizer.py's Tokenizer numbers them."""
    def reserved(name, count, start=0):
        return [f"<|{name}_reserved_special_token_{i}|>" for i in range(start, start + count)]

    text = ["<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>", *reserved("text_post_train", 6),
            "<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>", *reserved("text_post_train", 61, 8)]
    vision = ["<|image_start|>", "<|image_end|>", *reserved("vision", 2), "<|tile_x_separator|>", "<|tile_y_separator|>",
              *reserved("vision", 4, 2), "<|image|>", *reserved("vision", 1, 6), "<|patch|>", *reserved("vision", 1041, 7)]
    reasoning = [*reserved("reasoning", 8), "<|reasoning_thinking_start|>", "<|reasoning_thinking_end|>"]
    named = ["<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
             *text, *vision, *reasoning]
    return named + [f"<|reserved_special_token_{i}|>" for i in range(2048 - len(named))]


def tiktoken_ranks(path: Path) -> int | None:
    """How many BPE ranks a tiktoken rank file holds, or None unless they are exactly 0..N-1 (Meta's tokenizers
    number their specials from N on)."""
    with open(path, "rb") as f:
        ranks = sorted(int(line.split()[1]) for line in f if line.strip())
    return len(ranks) if ranks == list(range(len(ranks))) else None


def llama4_meta_to_hf(tok_path: Path | None, out: Path) -> tuple[str, dict]:
    """tokenizer.json + tokenizer_config.json from Llama 4's tiktoken tokenizer.model, with Meta's 2048 specials;
    returns (note, ids of bos/eos/pad and the stop tokens Meta's generation ends on)."""
    if tok_path is None or tokenizer_kind(tok_path) != "tiktoken":
        return "skipped (no tiktoken tokenizer.model beside the checkpoint)", {}
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    if tiktoken_ranks(tok_path) is None:
        return f"skipped ({tok_path.name}: its ranks are not numbered 0..N-1, which Meta's tokenizer assumes)", {}
    specials = llama4_special_tokens()
    backend = TikTokenConverter(vocab_file=str(tok_path), pattern=LLAMA4_PATTERN, extra_special_tokens=specials).converted()
    bos, eos, pad = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad|>"
    n_ranks = backend.token_to_id(bos)
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, n_ranks)]),
    ])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad,
                                  model_input_names=["input_ids", "attention_mask"], clean_up_tokenization_spaces=False)
    tok.save_pretrained(str(out))
    (out / "original").mkdir(exist_ok=True)
    shutil.copyfile(tok_path, out / "original" / "tokenizer.model")  # where HF's Llama 4 repos keep it
    ids = {"n_ranks": n_ranks, "bos_token_id": n_ranks, "eos_token_id": n_ranks + 1,
           "pad_token_id": backend.token_to_id(pad),
           "stop_token_ids": [n_ranks + 1, backend.token_to_id("<|eom|>"), backend.token_to_id("<|eot|>")]}
    return f"tiktoken {tok_path.name} → tokenizer.json ({n_ranks} BPE ranks + {len(specials)} Llama 4 special)", ids


def tokenizer_kind(path: Path) -> str | None:
    """'tiktoken' (text lines of `base64 rank`), 'sentencepiece' (a protobuf), or None."""
    try:
        head = Path(path).read_bytes()[:4096]
    except OSError:
        return None
    if re.match(rb"^[A-Za-z0-9+/]+={0,2} \d+\r?\n", head):
        return "tiktoken"
    try:
        import sentencepiece as spm

        spm.SentencePieceProcessor(model_file=str(path))
        return "sentencepiece"
    except Exception:  # noqa: BLE001 - sentencepiece raises RuntimeError/OSError for non-models
        return None


def find_meta_tokenizer(directory: Path) -> Path | None:
    """Meta's downloads put tokenizer.model in the model dir (Llama 3) or its parent (Llama 2)."""
    for p in (directory / "tokenizer.model", directory.parent / "tokenizer.model"):
        if p.is_file():
            return p
    return None


def meta_to_hf(tok_path: Path | None, out: Path, *, llama31: bool) -> tuple[str, dict]:
    """HF tokenizer files from Meta's tokenizer.model; returns (note, special token ids)."""
    if tok_path is None:
        return "skipped (no tokenizer.model beside the checkpoint)", {}
    kind = tokenizer_kind(tok_path)
    if kind == "sentencepiece":
        import sentencepiece as spm
        from transformers import LlamaTokenizer

        # loaded from a directory of its own: OUT is being filled with weights meanwhile
        work = out / ".tokenizer-work"
        work.mkdir()
        shutil.copyfile(tok_path, work / "tokenizer.model")
        tok = LlamaTokenizer.from_pretrained(str(work), add_bos_token=True, add_eos_token=False)
        shutil.rmtree(work)
        shutil.copyfile(tok_path, out / "tokenizer.model")
        tok.save_pretrained(str(out))
        sp = spm.SentencePieceProcessor(model_file=str(tok_path))
        ids = {"bos_token_id": sp.bos_id(), "eos_token_id": sp.eos_id()}
        return f"sentencepiece {tok_path.name} → tokenizer.json ({sp.get_piece_size()} pieces)", ids
    if kind == "tiktoken":
        from tokenizers import processors
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter

        specials = llama3_special_tokens(llama31=llama31)
        backend = TikTokenConverter(vocab_file=str(tok_path), pattern=LLAMA3_PATTERN, extra_special_tokens=specials).converted()
        bos, eos = specials[0], specials[1]
        bos_id = backend.token_to_id(bos)
        backend.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]),
        ])
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos,
                                      model_input_names=["input_ids", "attention_mask"], clean_up_tokenization_spaces=True)
        tok.save_pretrained(str(out))
        (out / "original").mkdir(exist_ok=True)
        shutil.copyfile(tok_path, out / "original" / "tokenizer.model")  # where HF's Llama 3 repos keep it
        n_bpe = bos_id
        return (f"tiktoken {tok_path.name} → tokenizer.json ({n_bpe} BPE ranks + {len(specials)} special)",
                {"bos_token_id": bos_id, "eos_token_id": backend.token_to_id(eos)})
    return f"skipped ({tok_path} is neither a sentencepiece nor a tiktoken model)", {}


def hf_to_meta(src: Path, out: Path) -> str:
    for p in (src / "tokenizer.model", src / "original" / "tokenizer.model"):
        if p.is_file() and tokenizer_kind(p):
            shutil.copyfile(p, out / "tokenizer.model")
            return f"{tokenizer_kind(p)} tokenizer.model copied"
    return "skipped (the HF directory has no sentencepiece/tiktoken tokenizer.model, which is what Meta's format uses)"


_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                       "chat_template.jinja", "chat_template.json", "added_tokens.json")


def hf_to_hf(src: Path, out: Path) -> str:
    copied = [n for n in _HF_TOKENIZER_FILES if (src / n).is_file()]
    for n in copied:
        shutil.copyfile(src / n, out / n)
    if (src / "original" / "tokenizer.model").is_file():
        (out / "original").mkdir(exist_ok=True)
        shutil.copyfile(src / "original" / "tokenizer.model", out / "original" / "tokenizer.model")
    return f"copied {', '.join(copied)}" if copied else "skipped (the source has no tokenizer files)"


def meta_to_meta(src: Path, out: Path) -> str:
    p = find_meta_tokenizer(src)
    if p is None:
        return "skipped (no tokenizer.model beside the checkpoint)"
    shutil.copyfile(p, out / "tokenizer.model")
    return "tokenizer.model copied"


def gguf_to_hf(gguf_path: Path, out: Path) -> str:
    """transformers' GGUF tokenizer conversion (vocabulary, merges, special tokens, chat template)."""
    from transformers import PreTrainedTokenizerFast

    # the class AutoTokenizer resolves to for a GGUF, minus its parse of the whole file for a model config
    tok = PreTrainedTokenizerFast.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok.save_pretrained(str(out))
    return f"GGUF vocabulary → tokenizer.json ({len(tok)} tokens)"
