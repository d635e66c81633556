"""History across nights: a run store, change points over every series, and a trend page.

    store.py    the SQLite (WAL) run store: runs, records, acknowledgements; schema version, migrations
    ingest.py   result files into the store (idempotent)
    series.py   one value per night per cell x fingerprint x metric
    detect.py   change points (ruptures' binary segmentation + a t-test; an exact rule for deterministic
                metrics) and the drift since a pinned reference
    latest.py   the latest nights as the nightly gate reads them (regression / unknown / same)
    trend.py    the self-contained plotly trend page
    cli.py      `python -m reports history ingest|changes|trend|show|ack`

Commands: see cli.py. reports sits above the engine: this package imports trainkit.engine and
reports, never trainkit.commands or nightly.
"""
