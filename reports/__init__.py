"""The HTML run report of a daily run (reports.run_report), its inline SVG charts (reports.svg),
calibration bins (reports.calibration) and attention-map overlays (reports.attention_maps)."""
