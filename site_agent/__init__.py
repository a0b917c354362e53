"""The site agent: runs inside a hospital; only synthetic images or model weights ever leave."""
