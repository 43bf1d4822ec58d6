"""Quantization: primitives (pure), granularity, fake quantizers (STE), PTQ methods."""
