"""The coordinator's trust store (pinned site keys) and the verified bundle import."""
