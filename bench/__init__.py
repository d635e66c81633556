"""The checkout's entry point to the benchmark matrix (not installed): see conftest.py."""
