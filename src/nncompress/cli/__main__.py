"""`python -m nncompress.cli`."""
from . import main

main()
