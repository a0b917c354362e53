"""The site's front door: PACS pull or receive into ``WORKSPACE/incoming``, then scan and
ingest into the case store (the identifier deny-list is recorded on the way)."""
