"""The checkout's `python -m nightly` (not installed): the job's code is trainkit.nightly, which an
installed trainkit runs as `trainkit-nightly`."""
