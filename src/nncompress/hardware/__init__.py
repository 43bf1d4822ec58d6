"""Hardware cost models: energy per layer (energy.py), zero-skipping accelerator simulation."""
