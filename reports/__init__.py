"""The HTML run report of a daily run (reports.run_report) and its inline SVG charts (reports.svg).

The report only renders the records the stages wrote (core.records); it imports nothing but core."""
