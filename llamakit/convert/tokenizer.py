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
