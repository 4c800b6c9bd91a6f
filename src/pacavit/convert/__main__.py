"""`python -m pacavit.convert ...`: see `pacavit.convert.cli`."""

from .cli import main

main()
