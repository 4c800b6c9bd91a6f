"""`python -m pacavit.hub ...`: see `pacavit.hub.cli`."""

from .cli import main

main()
