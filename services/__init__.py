"""The three services of the bus (api, child, tracker) and the `convbus` command."""
