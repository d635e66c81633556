"""trainkit reports: result records -> tables, charts and verdicts.

    python -m reports build RESULTS... -o report.html      one self-contained page (+ .csv, .md)
    python -m reports compare BASELINE CANDIDATE -o compare.html   noise-aware per-cell verdicts

Modules, in the order data flows through them: records (files -> records, pure Python), load
(records -> tidy pandas frame), summary (the per-cell table), figures (plotly charts), html (page
assembly), build (`build_report`, what bench calls), verdict (the pure-Python decision rule a
regression gate reuses) and compare (files -> verdict page). pandas and plotly are the `reports`
extra; importing this package imports neither.
"""
