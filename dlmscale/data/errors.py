"""Errors raised for bad data inputs (defined with the others in dlmscale.errors, so modules
outside the data package can raise them without importing it)."""
from dlmscale.errors import DataError

__all__ = ["DataError"]
