"""The site-agent command line (one module per command group)."""
