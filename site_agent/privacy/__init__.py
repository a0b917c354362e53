"""The privacy screen: identifier deny-list, default-deny PHI scan of exported files,
memorisation screen of synthetic cases, membership-inference check of generative weights."""
