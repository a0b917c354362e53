"""The coordinator: holds only the external institution's data; imports signed bundles, runs
the study and the federation. It never holds code that reads a source site's data."""
