"""Entry points: option parsing, the launcher and the pipeline graph."""
