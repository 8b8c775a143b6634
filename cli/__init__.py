"""The `convbus` command: starts the three services, and holds the operator's tools.

One module per group of subcommands: `services` (api, child, tracker, up), `dlq`, `overview`,
`database` (migrate, prune), `bench`. `processes` runs the services as processes on this
machine (for `convbus up`, the tests and `make bench`). Nothing here is a service: the services
never import this package.
"""
