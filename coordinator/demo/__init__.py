"""`coordinator demo`: a phantom consortium run end to end with the real commands."""
