"""End-to-end runs: the real service in a subprocess against a real Redis and a fake platform."""
