"""The HTML run report of a daily run (reports.run_report), its inline SVG charts (reports.svg),
calibration bins (reports.calibration), attention-map overlays (reports.attention_maps), and the
records the validate stage writes for it (reports.report_data)."""
