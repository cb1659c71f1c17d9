"""Data-quality suites as code (GX 1.x) and the runner that validates DataFrames with Data Docs.

    runner.py    validate(cfg, df, suite, asset_name, run_name) -> QualityResult; raise_on_critical
    bronze.py    build_impressions_suite, build_ads_suite, build_landing_schema_suite
    examples.py  project_examples + build_examples_suite (encoded examples per split)
    lookup.py    project_lookup + build_lookup_suite (ad-embedding lookup table)
"""
