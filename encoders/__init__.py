"""Text to vectors for streamrec: model registry and versions, the transformer encoder,
micro-batching for async callers, and the embedding cache.

Never imports ``streams`` or faust; import the submodules directly (``encoders.text`` loads
torch, so this package root stays cheap to import).
"""
