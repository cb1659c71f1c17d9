"""The online predictor: the model head (FieldEmbedding + DCN, no CNN) over the lookup table.

    predictor = Predictor.from_current(cfg)            # the published `current` version
    result = predictor.score_records([{"user_id": 1, "ad_id": 7, ...}, ...])
    result.scores, result.fallbacks                    # pCTR (B,), requests whose ad was not in the table

Loading verifies every file against its manifest checksum first (the model file against the
sha256 the lookup manifest recorded), refuses to load on a mismatch naming the file, and reads the
model with ``torch.load(weights_only=True)``; only the FieldEmbedding and DCN weights are built.
A published version (``load_version``, ``from_current``) is verified from the pointer down: the
pointer's sha256 of version.json, then version.json's sha256 of every file (serving.registry).

The hot path is vectorised: encoding runs per field over the batch (numpy), the ad index is a
numpy ``searchsorted`` over the sorted ad ids, and the head runs as an ``InferenceHead``: the
``ModelHead``'s weights laid out once for inference (one concatenated table and one gather for the
single-valued fields, one ``embedding_bag`` for all multi-valued fields) and the DCN's own folded
form (``models.layers.DCN.folded``: the model's forward over pre-transposed weights and ``addmm``
+ in-place ReLU for every Linear).

Precision (``Predictor(..., precision=...)``, default ``"auto"``):
  fp32  the model's arithmetic; scores equal ``ModelHead``'s within 1e-4 (the score_match gate).
  bf16  the Linear layers of the DCN's MLPs in bfloat16 (inputs, weights and outputs rounded to
        bfloat16, products accumulated in fp32); embeddings, cross net and output layer stay fp32.
        Meant to keep scores within 1e-3 of fp32 (``PRECISION_TOLERANCE``); about twice as fast
        where the CPU has native bf16 dot products (AVX512-BF16 or AMX), slower where it has not.
  auto  bf16 when the version was validated in bf16 and this CPU computes bf16 natively
        (``native_bf16``), else fp32.
The validate stage scores the holdout's covered ads in every precision and records those whose
scores stay within their tolerance of fp32 as the version's ``serving_precisions`` (fp32 always:
the score_match gate); ``Predictor.load_version`` refuses a precision the version was not validated
in, and "auto" never picks one. ``Predictor.load`` of bare files knows no validation: "auto" is fp32
there and an explicit precision is the caller's responsibility.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.config import ModelConfig, PipelineConfig, build
from features.encoder import ENCODER_FILE, load_encoder_file
from features.spec import FeatureSpec
from models.layers import DCN, FieldEmbedding
from serving import registry
from serving.lookup import IntegrityError, LookupTable, loaded_files, read_manifest, sha256_file
from serving.requests import EncodedRequests, RequestColumns, RequestEncoder, columns_from_records

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
PRECISIONS = ("fp32", "bf16")
_MLP_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the dtype of the DCN's MLP Linears per precision
AUTO = "auto"  # see the module docstring and resolve_precision
DEFAULT_PRECISION = AUTO
# Max |score - fp32 model score| each precision is meant to keep (validate records it, tests check it).
PRECISION_TOLERANCE = {"fp32": 1e-4, "bf16": 1e-3}
VALIDATION_FILE = "validation.json"  # a published version's validation record (serving_precisions)


def read_validated_precisions(record_path: str | os.PathLike) -> tuple[str, ...]:
    """The precisions a validation record (spark_jobs/validate.py) allows serving in: its
    ``serving_precisions``, or fp32 alone when the file or the field is missing."""
    try:
        record = json.loads(Path(record_path).read_text())
    except FileNotFoundError:
        return ("fp32",)
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{record_path}: unreadable validation record ({e})") from None
    allowed = tuple(p for p in record.get("serving_precisions", ["fp32"]) if p in PRECISIONS)
    return allowed if "fp32" in allowed else ("fp32", *allowed)


def native_bf16() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (AVX512-BF16 or AMX-BF16, from
    /proc/cpuinfo's flags; False where that file does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(requested: str, validated: Iterable[str] | None = None) -> str:
    """The arithmetic to serve in: ``requested`` ("auto" or one of PRECISIONS) given the precisions a
    version was validated in (None: unknown, e.g. bare files). "auto" -> bf16 only if validated in bf16
    and ``native_bf16()``, else fp32; an explicit precision outside ``validated`` is refused."""
    if requested == AUTO:
        return "bf16" if validated is not None and "bf16" in validated and native_bf16() else "fp32"
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; allowed: {AUTO}, {', '.join(PRECISIONS)}")
    if validated is not None and requested not in validated:
        raise ValueError(f"precision {requested!r} was not validated for this version (its validation record "
                         f"allows {', '.join(validated)}): its scores in {requested} were not checked or exceeded "
                         f"{PRECISION_TOLERANCE[requested]:g}; serve it in fp32 or '{AUTO}'")
    return requested


class ModelHead(nn.Module):
    """The CTR model without its visual tower: x_v comes from the lookup table."""

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.variant == "dcn":
            raise ValueError("variant 'dcn' has no visual input; the lookup-table predictor serves visual variants")
        self.spec = spec
        self.cfg = cfg
        self.embedding = FieldEmbedding(spec, cfg.embedding_dim)
        self.dcn = DCN(self.embedding.out_dim, cfg.visual_dim, cfg)

    @classmethod
    def from_model_file(cls, path: str | os.PathLike) -> "ModelHead":
        """The head of a models.train.save_model file (weights_only load; tower weights skipped)."""
        payload = torch.load(path, map_location="cpu", weights_only=True)
        try:
            spec = FeatureSpec.from_json(payload["spec"])
            cfg = build(ModelConfig, json.loads(payload["model_config"]), "model")
            state = payload["state_dict"]
        except (KeyError, TypeError) as e:
            raise IntegrityError(f"{path}: not a models.train.save_model file (missing {e})") from None
        head = cls(spec, cfg)
        wanted = {k: v for k, v in state.items() if k.startswith(("embedding.", "dcn."))}
        head.load_state_dict(wanted, strict=True)
        return head.eval()

    def forward(self, single: torch.Tensor, multi_values: dict[str, torch.Tensor],
                multi_offsets: dict[str, torch.Tensor], x_v: torch.Tensor) -> torch.Tensor:
        """Logits (B,) from encoded fields and x_v (B, visual_dim)."""
        x_nv = self.embedding(single, multi_values, multi_offsets)  # (B, D_nv)
        return self.dcn(x_nv, x_v)


class InferenceHead:
    """A ``ModelHead`` laid out for scoring (no autograd, no module dispatch), at one precision.

    Embeddings: the single-valued fields' tables concatenated into one (each field's ids shifted by
    its table's start), gathered in one ``embedding``; the multi-valued fields' tables likewise,
    pooled in one mean ``embedding_bag`` over all fields' bags. The DCN runs its own forward over
    its folded layers (``DCN.folded``): the Linear layers of its MLPs at ``precision``, the cross
    net and the output layer always in float32. Weights are copied at construction: later changes to the ``ModelHead`` are not seen.
    """

    def __init__(self, head: ModelHead, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
        self.precision = precision
        emb, dcn = head.embedding, head.dcn
        self.single_names, self.multi_names, self.dim = emb.single_names, emb.multi_names, emb.dim
        single = [emb.single[n].weight.detach() for n in self.single_names]
        multi = [emb.multi[n].weight.detach() for n in self.multi_names]
        self.single_sizes = np.array([len(w) for w in single], dtype=np.int64)  # (n_single,)
        self.multi_sizes = np.array([len(w) for w in multi], dtype=np.int64)  # (n_multi,)
        self.single_table = torch.cat(single) if single else torch.zeros(0, emb.dim)  # (sum V_f, d_e)
        self.multi_table = torch.cat(multi) if multi else torch.zeros(0, emb.dim)  # (sum V_f, d_e)
        self.single_base = torch.from_numpy(np.cumsum(self.single_sizes) - self.single_sizes)  # (n_single,)
        self.multi_base = (np.cumsum(self.multi_sizes) - self.multi_sizes).tolist()
        self.dcn = dcn.folded(_MLP_DTYPE[precision])

    def embed(self, single: np.ndarray, multi_values: Mapping[str, np.ndarray],
              multi_offsets: Mapping[str, np.ndarray]) -> torch.Tensor:
        """x_nv (B, n_fields * d_e) float32: FieldEmbedding's output for the same encoded inputs."""
        b = int(single.shape[0])
        if single.shape != (b, len(self.single_names)):
            raise ValueError(f"encoded single-valued fields have shape {single.shape}, the model expects "
                             f"(B, {len(self.single_names)}) in the order {self.single_names}")
        parts = []
        if self.single_names:
            bad = (single < 0) | (single >= self.single_sizes)  # (B, n_single)
            if bad.any():
                j = int(np.argwhere(bad)[0, 1])
                raise ValueError(f"encoded id {int(single[bad][0])} of field {self.single_names[j]!r} is outside "
                                 f"the model's vocabulary (size {self.single_sizes[j]}): encoder and model differ")
            ids = torch.from_numpy(single) + self.single_base  # (B, n_single)
            gathered = F.embedding(ids, self.single_table)  # (B, n_single, d_e)
            parts.append(gathered.view(b, len(self.single_names) * self.dim))  # (B, n_single * d_e)
        if self.multi_names:
            values, offsets, start = [], [], 0
            for name, size, base in zip(self.multi_names, self.multi_sizes, self.multi_base):
                v, o = multi_values[name], multi_offsets[name]
                if o.shape != (b,) or (b and o[0] != 0):
                    raise ValueError(f"offsets of field {name!r} must be (B,) = ({b},) starting at 0, got shape "
                                     f"{o.shape}{' starting at ' + str(int(o[0])) if o.size else ''}")
                if v.size and (v.min() < 0 or v.max() >= size):
                    raise ValueError(f"an encoded id of field {name!r} is outside the model's vocabulary "
                                     f"(size {size}, ids {int(v.min())}..{int(v.max())}): encoder and model differ")
                values.append(v + base)
                offsets.append(o + start)
                start += len(v)
            pooled = F.embedding_bag(torch.from_numpy(np.concatenate(values)), self.multi_table,
                                     torch.from_numpy(np.concatenate(offsets)), mode="mean")  # (n_multi * B, d_e)
            n_multi = len(self.multi_names)
            pooled = pooled.view(n_multi, b, self.dim).transpose(0, 1)  # (B, n_multi, d_e)
            parts.append(pooled.reshape(b, n_multi * self.dim))  # (B, n_multi * d_e)
        return torch.cat(parts, dim=1)  # (B, n_fields * d_e), fields in FieldEmbedding's order

    def logits(self, single: np.ndarray, multi_values: Mapping[str, np.ndarray],
               multi_offsets: Mapping[str, np.ndarray], x_v: np.ndarray) -> torch.Tensor:
        """Logits (B,) float32 of encoded requests and their visual inputs x_v (B, visual_dim);
        call under ``torch.inference_mode()``."""
        x_nv = self.embed(single, multi_values, multi_offsets)  # (B, D_nv)
        if x_nv.shape[0] == 0:
            return torch.zeros(0)
        return self.dcn(x_nv, torch.from_numpy(x_v)).clone()  # (B,), not a view of the reused output buffer


@dataclass
class ScoreResult:
    scores: np.ndarray  # (B,) pCTR float32
    in_table: np.ndarray  # (B,) bool: the ad's embedding came from the table (else the fallback)

    @property
    def fallbacks(self) -> int:
        return int((~self.in_table).sum())


class Predictor:
    """Scores raw contract requests with one version's encoder, model head and lookup table."""

    def __init__(self, head: ModelHead, table: LookupTable, encoder: Any, version: Mapping[str, Any] | None = None,
                 precision: str = DEFAULT_PRECISION, validated_precisions: Iterable[str] | None = None):
        """``precision``: "auto" or one of PRECISIONS, resolved against ``validated_precisions`` (the
        version's validation record; None for files without one) by ``resolve_precision``."""
        precision = resolve_precision(precision, None if validated_precisions is None else tuple(validated_precisions))
        if table.visual_dim != head.cfg.visual_dim:
            raise IntegrityError(f"lookup table rows decode to {table.visual_dim} dims, the model expects "
                                 f"visual_dim={head.cfg.visual_dim}: table and model are from different runs")
        self.head = head  # the reference module (its weights are what inference was built from)
        self.inference = InferenceHead(head, precision)
        self.precision = precision
        self.table = table
        self.encoder = encoder
        self.request_encoder = None if encoder is None else RequestEncoder(
            encoder, head.embedding.single_names, head.embedding.multi_names)
        self.version = dict(version or {})
        self.requests_scored = 0
        self.fallbacks = 0  # requests whose ad was missing from the table, since loading

    @classmethod
    def load(cls, model_path: str | os.PathLike, lookup_dir: str | os.PathLike,
             version: Mapping[str, Any] | None = None, precision: str = DEFAULT_PRECISION,
             validated_precisions: Iterable[str] | None = None, verify_lookup: bool = True) -> "Predictor":
        """Verify the lookup folder's files (unless ``verify_lookup`` is False: the caller verified
        them, e.g. through a version's chain) and the model file against the lookup manifest, then
        load (``precision`` and ``validated_precisions``: see ``Predictor``)."""
        lookup_dir = Path(lookup_dir)
        manifest = read_manifest(lookup_dir)
        model_path = Path(model_path)
        if not model_path.is_file():
            raise IntegrityError(f"{model_path.name}: model file {model_path} is missing")
        if sha256_file(model_path) != manifest["model_sha256"]:
            raise IntegrityError(f"{model_path.name}: checksum mismatch with {lookup_dir / 'manifest.json'} "
                                 f"(expected sha256 {manifest['model_sha256'][:16]}...); refusing to load it")
        table = LookupTable.load(lookup_dir, verify=verify_lookup)
        if ENCODER_FILE not in manifest["files"]:
            raise IntegrityError(f"{ENCODER_FILE}: not listed in {lookup_dir / 'manifest.json'}; "
                                 "the version lacks the run's feature encoder")
        encoder = load_encoder_file(lookup_dir / ENCODER_FILE)
        head = ModelHead.from_model_file(model_path)
        info = {"model_version": manifest.get("model_version"), "run_date": manifest.get("run_date"),
                "reduction": manifest.get("reduction"), **(version or {})}
        log.info("predictor loaded: %s (%d ads, %s)", info, len(table), manifest.get("reduction"))
        return cls(head, table, encoder, info, precision, validated_precisions)

    @classmethod
    def load_version(cls, version_dir: str | os.PathLike, version: Mapping[str, Any] | None = None,
                     precision: str = DEFAULT_PRECISION) -> "Predictor":
        """A published version folder v<N>-<D>/ (model/model.pt + lookup/ + validation.json), served
        only in a precision its validation record allows (fp32 when the record names none).

        The chain of trust is verified first (serving.registry.verify_version): ``version``'s
        ``version_sha256`` (the pointer's) must match version.json, which must list every file
        loaded here with its sha256. A legacy pointer (no ``version_sha256``) is checked against
        the lookup manifest only and served in fp32 only, with a warning."""
        version_dir = Path(version_dir)
        entry = dict(version or {})
        info = registry.verify_version(version_dir, entry.get("version_sha256"))
        if registry.is_legacy(entry):
            log.warning("%s", registry.legacy_message({**info, **entry}))
            return cls.load(version_dir / "model" / MODEL_FILE, version_dir / "lookup", version, precision,
                            ("fp32",))
        manifest = read_manifest(version_dir / "lookup")
        # validation.json may be absent (fp32 only); when present it is listed, hence verified.
        registry.require_listed(info, [f"model/{MODEL_FILE}", "lookup/manifest.json",
                                       *(f"lookup/{name}" for name in loaded_files(manifest))], version_dir)
        return cls.load(version_dir / "model" / MODEL_FILE, version_dir / "lookup", version, precision,
                        read_validated_precisions(version_dir / VALIDATION_FILE), verify_lookup=False)

    @classmethod
    def from_current(cls, cfg: PipelineConfig, precision: str = DEFAULT_PRECISION) -> "Predictor":
        """The version the `current` pointer names (serving.registry)."""
        current = registry.read_current(cfg)
        if current is None:
            raise FileNotFoundError("nothing is published yet: no current pointer under the artifacts' "
                                    "published/ folder; run the publish stage first")
        return cls.load_version(registry.version_dir(cfg, current), current, precision)

    # ------------------------------------------------------------------ scoring

    def encode(self, cols: RequestColumns) -> EncodedRequests:
        """Model inputs of validated request columns (the run's encoder, direct vocabulary lookups)."""
        if self.request_encoder is None:
            raise ValueError("this predictor has no feature encoder; score already encoded requests "
                             "with score_encoded, or load a version (Predictor.load) to score raw requests")
        return self.request_encoder.encode(cols)

    def score_encoded(self, enc: EncodedRequests) -> ScoreResult:
        """pCTR of already encoded requests (table lookup + one InferenceHead pass)."""
        x_v, hit = self.table.lookup(enc.ad_id, enc.category)  # (B, visual_dim), (B,)
        with torch.inference_mode():
            logits = self.inference.logits(enc.single, enc.multi_values, enc.multi_offsets, x_v)  # (B,)
            scores = logits.sigmoid_().numpy()
        self.requests_scored += len(scores)
        self.fallbacks += int((~hit).sum())
        return ScoreResult(scores, hit)

    def score_columns(self, cols: RequestColumns) -> ScoreResult:
        """pCTR of validated request columns."""
        return self.score_encoded(self.encode(cols))

    def score_records(self, records: Iterable[Mapping[str, Any]]) -> ScoreResult:
        """pCTR of request dicts in the raw contract (see serving.requests); RequestError on a bad one."""
        return self.score_columns(columns_from_records(records))
