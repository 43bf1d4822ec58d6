"""Execution of compressed models: sparse kernels, integer-only engine."""
