"""`python -m renderfarm_cli`: the same as farm."""

from renderfarm_cli.app import main

main()
