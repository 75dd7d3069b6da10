"""renderfarm-cli: the farm command."""
