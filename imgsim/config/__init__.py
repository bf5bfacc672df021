"""Configuration: flags declared once (options), parsed (parser), checked against the world (preflight)."""
