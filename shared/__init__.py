"""What the API, the child runtime and the tracker share: settings, schemas, topology, models."""
