"""Bytes out: sparse index formats, entropy coding, the .nnc container."""
