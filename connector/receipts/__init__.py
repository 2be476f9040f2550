"""Receipts: DSN and MDN fetched from the application mailbox, turned into ZAM^Z02/Z03."""
