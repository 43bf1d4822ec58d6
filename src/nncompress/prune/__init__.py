"""Pruning: masks (pure), the Mask parametrization, methods, schedules, lottery tickets."""
