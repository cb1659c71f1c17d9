"""One typed, frozen configuration for a whole run.

Built once per run from defaults, an optional JSON/TOML file and overrides (for example the
DAG's params), then passed around as an object or as JSON (to Spark jobs and trainers).
Unknown keys and bad values are errors that name the key and what is allowed.

    cfg = load_config("conf/demo.toml", overrides={"features.window_days": 8})
    cfg.features.window_days  # 8
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"bad value for '{key}': {value!r}; allowed: {allowed}")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class BadDataConfig:
    """Knobs that inject contract violations into the simulated landing data (all off by default).

    Rates are the share of the day's rows that get the defect.
    """

    null_required_rate: float = 0.0  # required impression fields set to null
    unknown_ad_rate: float = 0.0  # impressions pointing at ad ids absent from the catalog
    bad_label_rate: float = 0.0  # click labels outside {0, 1}
    negative_price_rate: float = 0.0  # catalog rows with a negative price
    out_of_day_ts_rate: float = 0.0  # event timestamps outside the partition's day
    duplicate_id_rate: float = 0.0  # impression rows repeated with the same impression_id
    corrupt_image_rate: float = 0.0  # ads whose image file is not a decodable image
    missing_image_rate: float = 0.0  # ads whose image file is absent
    escaping_image_uri_rate: float = 0.0  # image URIs pointing outside the landing area
    empty_day: bool = False  # the day's impression file has no rows
    extra_column: bool = False  # an undocumented extra column in the impressions file
    missing_column: bool = False  # a documented optional column dropped from the file

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("float", float):
                _check(0.0 <= v <= 1.0, f"world.bad_data.{f.name}", v, "a rate in [0, 1]")

    @property
    def any_on(self) -> bool:
        return any(bool(getattr(self, f.name)) for f in dataclasses.fields(self))


@dataclass(frozen=True)
class WorldConfig:
    """The simulated world that writes the data contract (the embedded default input)."""

    seed: int = 7  # everything is a deterministic function of (seed, date)
    epoch: str = "2026-01-01"  # day 0 of the world; ads born before it form the initial catalog
    impressions_per_day: int = 20_000
    n_users: int = 50_000
    n_categories: int = 24  # leaf categories (the paper has 3310; must also run with that)
    n_top_categories: int = 6  # parents in the category tree
    n_brands: int = 500
    n_shops: int = 800
    n_locations: int = 40
    initial_ads: int = 6_000  # ads alive on day 0
    new_ads_per_day: int = 300  # cold ads born every day
    mean_ad_lifetime_days: float = 60.0  # ads retire after an exponential lifetime
    title_vocab: int = 5_000
    query_vocab: int = 3_000
    zipf_users: float = 1.1  # Zipf exponents of popularity
    zipf_ads: float = 1.05
    zipf_queries: float = 1.1
    zipf_categories: float = 0.6  # Zipf exponent of the leaf categories' shares of the ads (larger: more rare ones)
    # Probability that a leaf category's attractive colour x quadrant conjunction is its parent's
    # (shared by every sibling that draws it) rather than its own: 0 siblings share nothing, 1 all do.
    sibling_share: float = 0.0
    image_size: int = 64  # square RGB images, 32..224
    base_ctr: float = 0.03  # average click-through rate
    w_generic: float = 1.0  # weight of the generic appearance cue (brightness)
    w_position: float = 1.5  # weight of the category-independent positional pattern
    w_category: float = 2.0  # weight of the category-specific colour x region conjunction
    category_specificity: float = 0.5  # 0: all pattern weight category-independent, 1: all category-specific
    # Brand logos: a small square in one image corner whose colour x corner conjunction is
    # attractive for the ad's brand only (each brand has its own target), worth w_brand in the
    # click model. brand_logos false draws none (the worlds of before the knob); w_brand 0 with
    # logos drawn is the control world whose logos carry no click signal.
    brand_logos: bool = False
    w_brand: float = 0.0
    bad_data: BadDataConfig = field(default_factory=BadDataConfig)

    def __post_init__(self) -> None:
        _check(self.impressions_per_day >= 0, "world.impressions_per_day", self.impressions_per_day, "an integer >= 0")
        for name in ("n_users", "n_categories", "n_top_categories", "n_brands", "n_shops", "n_locations",
                     "initial_ads", "title_vocab", "query_vocab"):
            _check(getattr(self, name) >= 1, f"world.{name}", getattr(self, name), "an integer >= 1")
        _check(self.n_top_categories <= self.n_categories, "world.n_top_categories", self.n_top_categories,
               f"an integer in [1, n_categories={self.n_categories}]")
        _check(self.new_ads_per_day >= 0, "world.new_ads_per_day", self.new_ads_per_day, "an integer >= 0")
        _check(self.mean_ad_lifetime_days > 0, "world.mean_ad_lifetime_days", self.mean_ad_lifetime_days, "a number > 0")
        _check(32 <= self.image_size <= 224, "world.image_size", self.image_size, "an integer in [32, 224]")
        _check(0.0 < self.base_ctr < 0.5, "world.base_ctr", self.base_ctr, "a rate in (0, 0.5)")
        _check(0.0 <= self.category_specificity <= 1.0, "world.category_specificity",
               self.category_specificity, "a number in [0, 1]")
        _check(0.0 <= self.sibling_share <= 1.0, "world.sibling_share", self.sibling_share, "a number in [0, 1]")
        for name in ("zipf_users", "zipf_ads", "zipf_queries", "zipf_categories"):
            _check(getattr(self, name) > 0, f"world.{name}", getattr(self, name), "a number > 0")
        for name in ("w_generic", "w_position", "w_category", "w_brand"):
            _check(getattr(self, name) >= 0, f"world.{name}", getattr(self, name), "a number >= 0")
        _check(self.w_brand == 0 or self.brand_logos, "world.w_brand", self.w_brand,
               "0 unless world.brand_logos is true (a brand cue needs logos to be drawn)")
        _parse_date(self.epoch, "world.epoch")


@dataclass(frozen=True)
class StorageConfig:
    """Where things live. Local folders by default; any Hadoop URI (s3a://...) on a cluster."""

    root: str = "var"  # base for the defaults below; relative paths are resolved against the CWD
    landing_uri: str = ""  # upstream drops (default <root>/landing)
    warehouse_uri: str = ""  # Delta tables (default <root>/warehouse)
    truth_uri: str = ""  # simulator's true click probabilities, never read by the pipeline (default <root>/truth)
    artifacts_uri: str = ""  # models, lookup-table files, registry pointer (default <root>/artifacts)
    reports_uri: str = ""  # Data Docs and run reports (default <root>/reports)
    # Published versions and the live pointer (default <artifacts>/published): a local folder (the
    # pointer is current.json, switched by an atomic rename) or object storage (the pointer is the
    # registry table's live row, switched by one Delta commit); serving/registry.py
    published_uri: str = ""

    def resolved(self) -> "StorageConfig":
        root = self.root if "://" in self.root else os.path.abspath(self.root)

        def pick(v: str, sub: str) -> str:
            if v:
                return v if "://" in v else os.path.abspath(v)
            return f"{root.rstrip('/')}/{sub}"

        artifacts = pick(self.artifacts_uri, "artifacts")
        published = self.published_uri if "://" in self.published_uri else os.path.abspath(self.published_uri)
        return StorageConfig(root=root, landing_uri=pick(self.landing_uri, "landing"),
                             warehouse_uri=pick(self.warehouse_uri, "warehouse"),
                             truth_uri=pick(self.truth_uri, "truth"), artifacts_uri=artifacts,
                             reports_uri=pick(self.reports_uri, "reports"),
                             published_uri=published if self.published_uri else f"{artifacts.rstrip('/')}/published")


# Parts of Spark/Hadoop setting names that carry credentials (fs.s3a.access.key, fs.s3a.secret.key,
# fs.s3a.session.token, per-bucket variants, ...): refused in spark.extra_conf.
SECRET_CONF_KEYS = ("access.key", "secret.key", "session.token", "password")


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "cscnn-pipeline"
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    ui_enabled: bool = False
    delta_package: str = "io.delta:delta-spark_4.2_2.13:4.4.0"  # 4.4.1 is not on Maven Central (404); the 4.4.0 jar serves the 4.4.1 Python package
    ivy_dir: str = ""  # Maven/ivy cache for the Delta jars (default ~/.cache/cscnn-pipeline/ivy)
    # Further Maven packages (group:artifact:version), resolved once per machine and cached like
    # Delta's, e.g. "org.apache.hadoop:hadoop-aws:3.5.0" for s3a:// storage
    packages: tuple[str, ...] = ()
    extra_conf: dict[str, str] = field(default_factory=dict)  # any further spark.* settings
    # Where a stage's Spark runs (core.spark.get_spark): "local" = this machine's long-lived Spark
    # Connect server, started on first use (core/spark_server.py); "sc://host:port" = that Spark
    # Connect server; "" = a Spark of the stage's own process (a JVM per stage). A stage under
    # spark-submit always uses the JVM spark-submit started.
    remote: str = "local"

    def __post_init__(self) -> None:
        _check(self.shuffle_partitions >= 1, "spark.shuffle_partitions", self.shuffle_partitions, "an integer >= 1")
        _check(self.remote in ("", "local") or self.remote.startswith("sc://"), "spark.remote", self.remote,
               '"local", "" or a Spark Connect URL sc://host:port')
        for k in self.extra_conf:
            _check(k.startswith("spark."), "spark.extra_conf", k, "keys starting with 'spark.'")
            _check(not any(s in k.lower() for s in SECRET_CONF_KEYS), "spark.extra_conf", k,
                   "no credentials in a config file: object-storage keys come from the environment "
                   "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)")
        for p in self.packages:
            _check(len(p.split(":")) == 3 and all(p.split(":")), "spark.packages", p,
                   "Maven coordinates group:artifact:version, e.g. org.apache.hadoop:hadoop-aws:3.5.0")


@dataclass(frozen=True)
class QualityConfig:
    """Bounds of the data-quality suites."""

    ctr_min: float = 0.002
    ctr_max: float = 0.2
    volume_ratio_min: float = 0.5  # the day's rows / mean of the trailing days
    volume_ratio_max: float = 2.0
    trailing_days: int = 7
    min_rows: int = 1
    # Largest share of a day's landing impressions, and of its landing ads, that ingest may
    # quarantine: clean upstream logs lose well under 1%, a broken export loses whole slices.
    max_quarantine_rate: float = 0.05
    # A Spark DataFrame of at most this many rows is collected and validated by GX's pandas engine:
    # the same expectations and Data Docs pages, without GX's Spark jobs per metric (a suite on a
    # few thousand rows takes seconds instead of tens of seconds). 0: always validate on Spark.
    pandas_max_rows: int = 200_000

    def __post_init__(self) -> None:
        _check(0 <= self.max_quarantine_rate <= 1, "quality.max_quarantine_rate", self.max_quarantine_rate,
               "a number in [0, 1]")
        _check(0 <= self.ctr_min < self.ctr_max <= 1, "quality.ctr_min/ctr_max", (self.ctr_min, self.ctr_max),
               "0 <= ctr_min < ctr_max <= 1")
        _check(0 < self.volume_ratio_min < self.volume_ratio_max, "quality.volume_ratio_min/max",
               (self.volume_ratio_min, self.volume_ratio_max), "0 < min < max")
        _check(self.trailing_days >= 1, "quality.trailing_days", self.trailing_days, "an integer >= 1")
        _check(self.pandas_max_rows >= 0, "quality.pandas_max_rows", self.pandas_max_rows, "an integer >= 0")


FAILED_DAYS_POLICIES = ("exclude", "fail")


@dataclass(frozen=True)
class FeaturesConfig:
    window_days: int = 32  # W: train on [D-W, D-1], hold out D
    allow_short_window: bool = False  # missing window days: error (False) or warning (True)
    n_bins: int = 16  # quantile bins per numeric field
    min_count: int = 5  # default frequency threshold for vocabularies
    min_count_per_field: dict[str, int] = field(default_factory=dict)  # field -> threshold
    group_size: int = 25  # at most this many impressions of one ad in a training group
    incremental: bool = True  # sum daily counts instead of rescanning the window
    seed: int = 17  # deterministic group shuffling
    # Window days whose latest quality verdict failed (ops/day_status): "exclude" trains on the
    # other days and names them in the run's record; "fail" stops the stage instead.
    failed_days: str = "exclude"

    def __post_init__(self) -> None:
        _check(self.failed_days in FAILED_DAYS_POLICIES, "features.failed_days", self.failed_days,
               ", ".join(FAILED_DAYS_POLICIES))
        _check(self.window_days >= 1, "features.window_days", self.window_days, "an integer >= 1")
        _check(self.n_bins >= 2, "features.n_bins", self.n_bins, "an integer >= 2")
        _check(self.min_count >= 1, "features.min_count", self.min_count, "an integer >= 1")
        _check(self.group_size >= 1, "features.group_size", self.group_size, "an integer >= 1")
        for k, v in self.min_count_per_field.items():
            _check(isinstance(v, int) and v >= 1, f"features.min_count_per_field.{k}", v, "an integer >= 1")


VARIANTS = ("dcn", "cnn_fixed", "cnn_finetune", "cbam", "cscnn")
BACKBONES = ("resnet18", "light")
PRIOR_HIERARCHIES = ("none", "parent")
# Item fields that may key CSCNN priors (model.prior_fields), and the feature-spec field of each.
PRIOR_FIELDS = {"category": "category_id", "brand": "brand_id", "shop": "shop_id"}


@dataclass(frozen=True)
class ModelConfig:
    variant: str = "cscnn"  # one of VARIANTS (the rungs of the paper's Table 8)
    backbone: str = "light"  # "resnet18" (paper) or "light" (small images on CPU)
    embedding_dim: int = 4  # d_e per field
    deep_dims: tuple[int, ...] = (1024, 512, 256)
    cross_layers: int = 3
    head_dims: tuple[int, ...] = (256,)  # final ReLU-MLP before the sigmoid
    visual_dim: int = 150  # x_v
    prior_channels: int = 20  # C'
    prior_spatial: int = 7  # H' = W'
    reduction: int = 4  # channel-attention MLP reduction r
    attention_layers: int = 4  # L': attention on the last L' conv layers (never conv1)
    # CSCNN's category priors: "none", one prior per category (the paper); "parent", each category's
    # prior is its parent category's prior plus its own offset, so rare and new categories borrow
    # from their siblings (needs the single field parent_category_id).
    prior_hierarchy: str = "none"
    # Item fields whose ids key CSCNN priors: "category" (the paper), plus "brand" and/or "shop".
    # Each field has its own channel prior (concatenated into the channel MLP's input, C' each)
    # and spatial prior (one more input map of the spatial conv).
    prior_fields: tuple[str, ...] = ("category",)

    @property
    def extra_prior_fields(self) -> tuple[str, ...]:
        """prior_fields beyond the category, in order (e.g. ("brand",))."""
        return tuple(f for f in self.prior_fields if f != "category")

    def __post_init__(self) -> None:
        _check(self.variant in VARIANTS, "model.variant", self.variant, ", ".join(VARIANTS))
        allowed = ", ".join(PRIOR_FIELDS)
        for name in self.prior_fields:
            _check(name in PRIOR_FIELDS, "model.prior_fields", list(self.prior_fields),
                   f"a list of distinct names from {allowed}, with category")
        _check("category" in self.prior_fields and len(set(self.prior_fields)) == len(self.prior_fields),
               "model.prior_fields", list(self.prior_fields), f"a list of distinct names from {allowed}, with category")
        _check(self.prior_hierarchy in PRIOR_HIERARCHIES, "model.prior_hierarchy", self.prior_hierarchy,
               ", ".join(PRIOR_HIERARCHIES))
        _check(self.backbone in BACKBONES, "model.backbone", self.backbone, ", ".join(BACKBONES))
        for name in ("embedding_dim", "visual_dim", "prior_channels", "prior_spatial", "reduction"):
            _check(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), "an integer >= 1")
        _check(self.cross_layers >= 0, "model.cross_layers", self.cross_layers, "an integer >= 0")
        _check(self.attention_layers >= 0, "model.attention_layers", self.attention_layers, "an integer >= 0")
        _check(len(self.deep_dims) >= 1 and all(d >= 1 for d in self.deep_dims), "model.deep_dims",
               self.deep_dims, "a non-empty list of positive integers")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 1024  # impressions per batch
    lr: float = 1e-3
    # Learning-rate multiplier of CSCNN's prior tables (category, parent, brand, shop priors): they
    # start at zero and Adam moves a row by about lr per update, so one epoch at lr leaves them small.
    prior_lr_scale: float = 1.0
    weight_decay: float = 0.0
    epochs: int = 1
    max_steps: int = 0  # 0: no limit
    checkpoint_every: int = 200  # steps
    early_stopping_patience: int = 2  # evaluations without validation improvement
    eval_every: int = 0  # steps between validation evaluations (0: once per epoch)
    # Share of the window's training rows held out as the validation split (a hash of impression_id
    # and train.seed: features.examples.validation_split); it alone picks the best weights and stops
    # early, so the run date's holdout is scored only by the gates. 0: no split, the last weights.
    validation_fraction: float = 0.05
    # At most this many validation rows, whatever the window's size: the split is held in memory to
    # be scored, so a larger window gets a proportionally smaller fraction (0: no cap).
    validation_max_rows: int = 200_000
    # Rows the trainer reads from the examples table at a time (features.example_stream): with the
    # prefetched ones, its memory for training data, independent of the window's size.
    chunk_rows: int = 65_536
    # Decoded ad images kept between chunks and epochs (least recently used dropped first), so an
    # ad's PNG is decoded once while they fit; bounds that memory whatever the number of ads.
    image_cache_mb: int = 512
    device: str = "auto"  # auto, cpu, cuda
    amp: bool = True  # mixed precision on CUDA
    num_workers: int = 0
    grouped: bool = True  # embed each ad image once per batch
    pretrain_steps: int = 300  # pretraining steps of the cnn_fixed backbone (categories + colour statistics)
    warm_start: bool = True  # start from the last published model when shapes match
    # On CPU, deterministic kernels (torch.use_deterministic_algorithms) so that the same data, seed
    # and config train the same weights bit for bit: without them the backward of the visual
    # tower's per-impression gather sums in a varying order, and two runs of one setting differed
    # by about 0.001 AUC. CUDA runs are not bitwise repeatable either way.
    deterministic: bool = True
    seed: int = 1

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _check(self.lr > 0, "train.lr", self.lr, "a number > 0")
        _check(self.prior_lr_scale > 0, "train.prior_lr_scale", self.prior_lr_scale, "a number > 0")
        _check(self.epochs >= 1, "train.epochs", self.epochs, "an integer >= 1")
        _check(0 <= self.validation_fraction < 0.5, "train.validation_fraction", self.validation_fraction,
               "a number >= 0 and < 0.5 (0: no validation split)")
        _check(self.validation_max_rows >= 0, "train.validation_max_rows", self.validation_max_rows,
               "an integer >= 0 (0: no cap)")
        _check(self.chunk_rows >= 1, "train.chunk_rows", self.chunk_rows, "an integer >= 1")
        _check(self.image_cache_mb >= 0, "train.image_cache_mb", self.image_cache_mb, "an integer >= 0 (0: no cache)")
        _check(self.device in ("auto", "cpu", "cuda"), "train.device", self.device, "auto, cpu, cuda")


@dataclass(frozen=True)
class InferenceConfig:
    budget_ads: int = 0  # rows in the lookup table (0: no row budget)
    budget_bytes: int = 0  # bytes of the serving file's rows: embedding + ad id + category (0: no byte budget)
    reduction: str = "float16"  # none (float32), float16, pca
    pca_dims: int = 32
    batch_size: int = 512  # images per forward pass of the visual tower

    def __post_init__(self) -> None:
        _check(self.reduction in ("none", "float16", "pca"), "inference.reduction", self.reduction,
               "none, float16, pca")
        _check(self.budget_ads >= 0, "inference.budget_ads", self.budget_ads, "an integer >= 0 (0: no row budget)")
        _check(self.budget_bytes >= 0, "inference.budget_bytes", self.budget_bytes,
               "an integer >= 0 (0: no byte budget)")
        _check(self.pca_dims >= 1, "inference.pca_dims", self.pca_dims, "an integer >= 1")
        _check(self.batch_size >= 1, "inference.batch_size", self.batch_size, "an integer >= 1")


@dataclass(frozen=True)
class GateConfig:
    auc_floor: float = 0.55
    live_tolerance: float = 0.005  # new AUC may be at most this much below the live model's
    coverage_min: float = 0.90  # share of holdout impressions whose ad is in the table
    score_match_tol: float = 1e-4
    norm_min: float = 1e-6  # GX bounds on the L2 norm of each stored lookup-table row (serving)
    norm_max: float = 1e4

    def __post_init__(self) -> None:
        _check(0 <= self.auc_floor <= 1, "gates.auc_floor", self.auc_floor, "a number in [0, 1]")
        _check(0 <= self.coverage_min <= 1, "gates.coverage_min", self.coverage_min, "a number in [0, 1]")
        _check(0 <= self.norm_min <= self.norm_max, "gates.norm_min/norm_max", (self.norm_min, self.norm_max),
               "0 <= norm_min <= norm_max")


@dataclass(frozen=True)
class PipelineConfig:
    world: WorldConfig = field(default_factory=WorldConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    gates: GateConfig = field(default_factory=GateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PipelineConfig":
        return build(cls, json.loads(text), "")

    def config_hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def replace(self, overrides: Mapping[str, Any]) -> "PipelineConfig":
        """A copy with dotted-key overrides applied, validated like a file."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return build(PipelineConfig, data, "")


# What a DAG run's free `overrides` param may set: keys of these sections only, the knobs of one
# model run; never where data lives (storage.*), how Spark and its JVM start (spark.*) or the
# upstream stages. dags/cscnn_daily.py mirrors it without importing it (a test checks both agree).
RUN_OVERRIDE_SECTIONS = ("model", "train", "gates")


# --------------------------------------------------------------------------- building


def _parse_date(value: str, key: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ConfigError(f"bad value for '{key}': {value!r}; allowed: a date YYYY-MM-DD") from None


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            sections = ", ".join(k for k, v in node.items() if isinstance(v, dict)) or "none"
            raise ConfigError(f"unknown config key '{key}': '{'.'.join(parts[:i + 1])}' is not a section; "
                              f"allowed sections: {sections}")
        node = node[part]
    node[parts[-1]] = value


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"bad value for '{key}': expected a table/object, got {value!r}")
        return build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(f"bad value for '{key}': {value!r}; allowed: true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"bad value for '{key}': {value!r}; allowed: an integer")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"bad value for '{key}': {value!r}; allowed: an integer") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"bad value for '{key}': {value!r}; allowed: a number")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"bad value for '{key}': {value!r}; allowed: a number") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"bad value for '{key}': {value!r}; allowed: a string")
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"bad value for '{key}': {value!r}; allowed: a list")
        return tuple(_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        k_tp, v_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"bad value for '{key}': {value!r}; allowed: a table/object")
        return {_coerce(k_tp, k, key): _coerce(v_tp, v, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"internal: unsupported union type at '{key}'")
    raise ConfigError(f"internal: unsupported config type {tp!r} at '{key}'")


def build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with the allowed ones."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f" in section '{prefix}'" if prefix else ""
        raise ConfigError(f"unknown config key(s) {', '.join(repr(u) for u in unknown)}{where}; "
                          f"allowed: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            key = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(hints[name], data[name], key)
    return cls(**kwargs)


def load_config(path: str | os.PathLike | None = None,
                overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Defaults <- optional file (.toml or .json) <- dotted-key overrides.

    The environment variable CSCNN_CONFIG names a file when `path` is None. The file may be on
    object storage (s3a://...: the config the DAG's build_config task writes beside the run's
    artifacts; core.storage).
    """
    data: dict[str, Any] = {}
    path = path or os.environ.get("CSCNN_CONFIG") or None
    if path:
        p = Path(path)
        if "://" in str(path) and not str(path).startswith("file://"):
            from core import storage  # here: core.storage imports this module's users

            try:
                text = storage.read_text(str(path))
            except FileNotFoundError:
                raise ConfigError(f"config file not found: {str(path)!r}") from None
        elif not p.is_file():
            raise ConfigError(f"config file not found: {str(p)!r}")
        else:
            text = p.read_text()
        try:
            data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot parse config file {str(p)!r}: {e}") from None
    cfg = build(PipelineConfig, data, "")
    if overrides:
        cfg = cfg.replace(overrides)
    return cfg


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse CLI `--set key=value` items; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"bad override {item!r}; expected key=value, e.g. features.window_days=8")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out
