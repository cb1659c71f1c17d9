"""The simulated world: the embedded default input of the pipeline.

Writes the raw data contract (core/contract.py) into the landing area for any date range,
deterministic per (seed, date), plus the true click probability of every impression into the
truth area (never read by the pipeline). Entry points:

    python -m simworld --start 2026-01-01 --end 2026-02-02
    simworld.generate.generate_day(cfg, day) / generate_range(cfg, start, end)
    simworld.truth.oracle_auc(cfg, day)
"""
