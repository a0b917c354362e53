"""Federation pieces both sides need: record keys and message types, the site-owned policy,
and the one ClientApp that every SuperNode runs (it dispatches on the node's ``role``).

Nothing here imports torch or flwr at module top level except ``client_app`` (which Flower
loads on a node), so the CLIs stay fast.
"""
