"""Operating shop: the local supervisor (`make run`), code generation and `shopctl`."""
