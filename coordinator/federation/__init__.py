"""The coordinator's side of federation: the ServerApp (rounds, reply validation,
checkpoints, resume, outputs), the ``role=target`` node handler, and the ``federate`` runner."""
