from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def digits():
    from nncompress.zoo import load_dataset
    return load_dataset("digits")


@pytest.fixture(scope="session")
def mnist10k():
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST test set not found in {MNIST_DIR}")
    from nncompress.zoo import load_dataset
    return load_dataset("mnist-10k", MNIST_DIR)


@pytest.fixture
def main(monkeypatch, capsys):
    """Run `nncompress ARGS` in this process (fast: no subprocess); returns (exit code, stdout, stderr)."""
    import sys

    from nncompress import cli

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["nncompress", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        captured = capsys.readouterr()
        return exit_.value.code, captured.out, captured.err
    return run
