"""CGT Hub core: the therapy order master record, its journey, chain of identity, audit and messaging."""

__version__ = "0.1.0"
