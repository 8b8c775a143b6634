"""`python -m cli` is `convbus`."""

from cli.main import main

main()
