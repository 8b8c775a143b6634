"""The three services of the bus: api, child, tracker (the `convbus` command is in cli/)."""
