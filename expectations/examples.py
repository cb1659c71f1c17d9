"""Suite for the encoded examples of one run date and split (see features/spec.py).

GX checks columns, not array elements, so multi-valued columns are validated through a projection:

    result = validate(cfg, project_examples(examples_df, spec), build_examples_suite(spec, cfg, "holdout"),
                      "examples_holdout", run_name)

`project_examples` keeps the id columns, the label and every f_<field>, and replaces each
m_<field> array by three derived columns: m_<field>__size (null when the array is null),
m_<field>__min and m_<field>__max (null for empty arrays, which GX's range checks skip).
Every id must lie in [0, vocab size), 0 being the OOV id.
"""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from core.config import PipelineConfig
from expectations.runner import expectation, new_suite
from features.spec import FeatureSpec

SPLITS = ("train", "holdout")
ID_COLUMNS = ("impression_id", "ad_id", "category_idx")
LABEL = "label"


def project_examples(examples_df: DataFrame, spec: FeatureSpec) -> DataFrame:
    """The DataFrame the examples suite validates: ids, label, f_* and per-array size/min/max."""
    singles = [f"f_{name}" for name in spec.single]
    multis = [f"m_{name}" for name in spec.multi]
    missing = [c for c in (*ID_COLUMNS, LABEL, *singles, *multis) if c not in examples_df.columns]
    if missing:
        raise ValueError(f"examples DataFrame lacks columns {missing} named by the feature spec; "
                         f"it has {examples_df.columns}")
    derived = []
    for col in multis:
        derived += [F.size(col).alias(f"{col}__size"),
                    F.array_min(col).alias(f"{col}__min"),
                    F.array_max(col).alias(f"{col}__max")]
    return examples_df.select(*ID_COLUMNS, LABEL, *singles, *derived)


def build_examples_suite(spec: FeatureSpec, cfg: PipelineConfig, split: str) -> gx.ExpectationSuite:
    """Suite `examples_<split>` for `project_examples(examples_df, spec)` of one split.

    All critical: no null ids or labels, every id within its vocabulary, label in {0, 1}, label
    rate within [quality.ctr_min, quality.ctr_max], at least one row (an empty holdout cannot be
    evaluated).
    """
    if split not in SPLITS:
        raise ValueError(f"bad split {split!r}; allowed: {', '.join(SPLITS)}")
    if "category_id" not in spec.single:
        raise ValueError(f"feature spec has no 'category_id' vocabulary; fields: {sorted(spec.single)}")
    q = cfg.quality
    exps = [expectation(gxe.ExpectTableRowCountToBeBetween, critical=True, min_value=1, max_value=None)]
    exps += [expectation(gxe.ExpectColumnValuesToNotBeNull, critical=True, column=c)
             for c in (*ID_COLUMNS, LABEL, *(f"f_{n}" for n in spec.single), *(f"m_{n}__size" for n in spec.multi))]
    exps += [
        expectation(gxe.ExpectColumnValuesToBeInSet, critical=True, column=LABEL, value_set=[0, 1]),
        expectation(gxe.ExpectColumnMeanToBeBetween, critical=True, column=LABEL, min_value=q.ctr_min,
                    max_value=q.ctr_max),
        expectation(gxe.ExpectColumnValuesToBeBetween, critical=True, column="category_idx", min_value=0,
                    max_value=spec.n_categories - 1),
    ]
    for name, size in spec.single.items():
        exps.append(expectation(gxe.ExpectColumnValuesToBeBetween, critical=True, column=f"f_{name}",
                                min_value=0, max_value=size - 1))
    for name, size in spec.multi.items():
        exps.append(expectation(gxe.ExpectColumnValuesToBeBetween, critical=True, column=f"m_{name}__min",
                                min_value=0, max_value=None))
        exps.append(expectation(gxe.ExpectColumnValuesToBeBetween, critical=True, column=f"m_{name}__max",
                                min_value=None, max_value=size - 1))
    return new_suite(f"examples_{split}", exps)
