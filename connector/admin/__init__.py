"""Operators' functions (search, timeline, retry, cancel, audit export), shared by the admin HTTP
API and the command line."""
