"""Who may receive mail: the MSSanté trust-space whitelist and recipient address rules."""
