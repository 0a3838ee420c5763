"""Data: the example schema, readers with a rejects file, synthetic demo data."""
