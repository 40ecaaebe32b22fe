"""Type stubs for the ``kbypass._core`` extension (mirrors ``rust/kbypass-python/src``)."""

__version__: str
