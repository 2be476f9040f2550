"""Tests of the pipeline stages that are pure functions (e-mail building)."""
