"""Adapters that plug the memory and reasoning libraries into the proxy's pipeline."""
