"""The site side of federation: the ``role=site`` handler of the shared ClientApp."""
