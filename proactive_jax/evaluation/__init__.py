"""Evaluation: quality and latency metrics, head sweeps, tables and plots."""
