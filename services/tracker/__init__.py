"""The tracker: consumes every send and event of the bus into the SQL database."""
