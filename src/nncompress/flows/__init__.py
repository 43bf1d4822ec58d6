"""End-to-end workflows behind the CLI commands (train dense -> compress -> fine-tune -> measure)."""
