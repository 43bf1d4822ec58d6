"""Execution of compressed models: sparse kernels (`sparse`), the integer-only reference engine
(`engine.IntegerEngine`, with `requant`, `layers`, `ops`, `plan`, `simulate`) and fast int8 layers
on PyTorch's oneDNN kernels (`int8_torch.to_int8_`)."""
